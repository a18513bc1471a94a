"""A small training job run as a separate process by the kill-and-resume test.

python -m tests.helpers.train_job OUT_DIR    # trains (or resumes) to the end, saves final.pt
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.config import LossSpec, TrainConfig
from distill.engine.train import TeacherTargets, TrainJob, train
from distill.losses import LossDims, build_losses

SPECS = [
    LossSpec("arcface", 1.0, {"scale": 16.0, "margin": 0.2}),
    LossSpec("feature_l2", 1.0),
    LossSpec("rpsd", 1.0, {"bank_size": 16, "k_neg": 4}),
    LossSpec("ekd", 1.0, {"top_k": 10}),
]
STEPS = 14


class SlowFaces:
    """Decoding takes 40 ms per image, so a step lasts long enough to be killed in the middle of a run."""

    def __init__(self, n=40, classes=5):
        rng = np.random.default_rng(0)
        self.labels = np.arange(n) % classes
        self.images = rng.integers(0, 255, size=(n, 112, 112, 3), dtype=np.uint8)
        self.num_classes = classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        time.sleep(0.04)
        return self.images[i], int(self.labels[i])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 8, stride=8)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 14 * 14, 8)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def main(out_dir: Path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    teacher = TeacherTargets(
        rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(40, 6)).astype(np.float32)
    )
    terms = build_losses(SPECS, LossDims(8, 6, 5))
    cfg = TrainConfig(epochs=100, batch_size=8, lr=0.05, max_steps=STEPS, checkpoint_every=2, seed=4)
    job = TrainJob(
        name="killable",
        model=Net(),
        losses=terms,
        weights={k: s.weight for k, s in zip(terms.keys(), SPECS, strict=True)},
        dataset=SlowFaces(),
        cfg=cfg,
        out_dir=out_dir,
        teacher=teacher,
        progress=False,
    )
    train(job)
    torch.save({"model": job.model.state_dict(), "losses": job.losses.state_dict()}, out_dir / "final.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
