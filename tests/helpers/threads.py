"""Run a piece of a test at a fixed torch thread count, whatever the worker's share of the cores."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

# Training results depend on the thread count (oneDNN splits reductions by thread). The committed CI
# baseline and the margins of the tiny preset's parity checks were made with 2 threads, CI's core count.
REFERENCE_THREADS = 2


@contextlib.contextmanager
def torch_threads(n: int = REFERENCE_THREADS) -> Iterator[None]:
    """Set torch's intra-op threads to ``n`` inside the block, then give the worker its own count back."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
