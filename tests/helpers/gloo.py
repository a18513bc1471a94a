"""What the multi-process (gloo, CPU) training tests share: a tiny face set, a BN-free net, rank setup."""

from __future__ import annotations

import os
import socket

import numpy as np
import torch
from torch import nn


class Faces:
    """``n`` random 112x112 RGB crops, labels cycling over ``classes`` identities."""

    def __init__(self, n: int = 32, classes: int = 4) -> None:
        rng = np.random.default_rng(0)
        self.labels = np.arange(n) % classes
        self.images = rng.integers(0, 255, size=(n, 112, 112, 3), dtype=np.uint8)
        self.num_classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])


class NoBatchNormNet(nn.Module):
    """BN statistics are per-process by design, so equivalence across processes is shown on a BN-free net."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.fc = nn.Linear(4 * 14 * 14, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def become_rank(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives a worker, and one thread so two workers share two cores fairly."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
