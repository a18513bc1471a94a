"""EKD's batch composition: uniformly random samples plus identity-balanced groups, resumable.

EKD needs positive pairs in every batch, which a uniform batch over 85k identities barely contains.
TFace's ``BalancedBatchSampler`` (losses.md §2.1) therefore builds each per-GPU batch from
``general_batch`` uniformly random images followed by ``P`` identities x ``K`` images (an identity with
fewer than ``K`` images has its images repeated in order). ArcFace is trained on the general part only,
EKD on the whole batch; ``general_mask`` tells the two apart.

Unlike TFace (Python's global ``random``), batch ``k`` of rank ``r`` is a pure function of
``(seed, k, r)``, so a resumed run replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


class BalancedBatchSampler:
    """Yields index lists of ``general_batch + P*K`` (general part first), forever, from ``start_step``."""

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        general_batch: int,
        identities_per_batch: int,
        images_per_identity: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        labels = np.asarray(labels).reshape(-1)
        if labels.size == 0:
            raise ValueError("balanced sampler: the dataset has no labels")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"balanced sampler: labels must be integers, got dtype {labels.dtype}")
        if general_batch < 0 or identities_per_batch < 0 or images_per_identity < 1:
            raise ValueError(
                "balanced sampler: general_batch and identities_per_batch must be >= 0 and "
                f"images_per_identity >= 1, got {general_batch}, {identities_per_batch}, "
                f"{images_per_identity}"
            )
        if general_batch + identities_per_batch == 0:
            raise ValueError("balanced sampler: general_batch and identities_per_batch are both 0")
        if general_batch > labels.size:
            raise ValueError(f"balanced sampler: general_batch {general_batch} > {labels.size} samples")
        if not 0 <= rank < world_size:
            raise ValueError(f"balanced sampler: rank {rank} not in [0, {world_size})")
        order = np.argsort(labels, kind="stable")
        _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        if identities_per_batch > len(counts):
            raise ValueError(
                f"balanced sampler: identities_per_batch {identities_per_batch} > "
                f"{len(counts)} identities in the dataset"
            )
        self.num_samples = int(labels.size)
        self.general_batch = int(general_batch)
        self.identities_per_batch = int(identities_per_batch)
        self.images_per_identity = int(images_per_identity)
        self.seed = int(seed)
        self.start_step = int(start_step)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self._order = order  # dataset indices grouped by label, ascending within a label
        self._starts = starts
        self._counts = counts

    @property
    def batch_size(self) -> int:
        """Per-rank batch length."""
        return self.general_batch + self.identities_per_batch * self.images_per_identity

    def general_mask(self) -> torch.Tensor:
        """(batch_size,) bool: True on the uniformly random part of a per-rank batch (the ArcFace part)."""
        mask = torch.zeros(self.batch_size, dtype=torch.bool)
        mask[: self.general_batch] = True
        return mask

    def batch(self, step: int, rank: int | None = None) -> list[int]:
        """Indices of rank ``rank``'s batch at global step ``step`` (a pure function of seed, step, rank)."""
        r = self.rank if rank is None else rank
        rng = np.random.default_rng([self.seed & 0xFFFFFFFFFFFFFFFF, int(step), int(r)])
        picked = [rng.choice(self.num_samples, size=self.general_batch, replace=False)]
        k = self.images_per_identity
        for c in rng.choice(len(self._counts), size=self.identities_per_batch, replace=False):
            members = self._order[self._starts[c] : self._starts[c] + self._counts[c]]
            if len(members) > k:
                picked.append(rng.choice(members, size=k, replace=False))
            else:  # fewer (or exactly K): repeat the identity's images in order, as TFace does
                picked.append(np.resize(members, k))
        return [int(i) for i in np.concatenate(picked)]

    def global_batch(self, step: int) -> list[int]:
        """All ranks' batches of step ``step`` concatenated in rank order."""
        return [i for r in range(self.world_size) for i in self.batch(step, r)]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1
