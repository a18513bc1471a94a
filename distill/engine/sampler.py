"""A resumable batch sampler: batch number ``k`` of a run is a pure function of (seed, k).

The order of each epoch is a seeded permutation, so resuming at global step ``k`` reproduces the exact
remaining batches even with DataLoader workers prefetching ahead (their lead is never checkpointed;
the engine's step counter is).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class ResumableBatchSampler:
    """Yields lists of indices (full batches only), sharded across ``world_size`` ranks, forever.

    Rank ``r`` takes the ``r``-th slice of each global batch, so the union over ranks of step ``k`` is
    exactly the single-process global batch of step ``k`` (what the DDP equivalence test relies on).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < batch_size * world_size:
            raise ValueError(
                f"{num_samples} samples cannot fill one global batch of {batch_size * world_size}"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def global_batch(self, step: int) -> list[int]:
        """Indices of the whole (all ranks) batch of global step ``step``."""
        epoch, pos = divmod(step, self.batches_per_epoch)
        gb = self.batch_size * self.world_size
        return self.epoch_order(epoch)[pos * gb : (pos + 1) * gb].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        order_epoch, order = -1, None
        gb = self.batch_size * self.world_size
        while True:
            epoch, pos = divmod(step, self.batches_per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, self.epoch_order(epoch)
            start = pos * gb + self.rank * self.batch_size
            yield order[start : start + self.batch_size].tolist()
            step += 1
