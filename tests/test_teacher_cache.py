"""The teacher-embedding cache: every image once, plain and mirrored, sharded across ranks, atomic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.teacher import Teacher, cache_teacher_embeddings, open_teacher_cache, shard_batches


class Faces:
    def __init__(self, n: int = 10) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, size=(n, 112, 112, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], 0


def left_half_mean(x: torch.Tensor) -> torch.Tensor:
    """A teacher whose answer changes under a mirror: per-channel mean of the left half of the image."""
    return x[:, :, :, :56].mean(dim=(2, 3))


def test_shard_batches_deals_batches_round_robin():
    # 10 images, batches of 3, 2 ranks: batches [0:3] [3:6] [6:9] [9:10] dealt 0, 1, 0, 1
    assert shard_batches(10, 3, 0, 2) == [range(0, 3), range(6, 9)]
    assert shard_batches(10, 3, 1, 2) == [range(3, 6), range(9, 10)]
    assert shard_batches(10, 3) == [range(0, 3), range(3, 6), range(6, 9), range(9, 10)]
    assert shard_batches(2, 4, 1, 2) == []  # more ranks than batches: a rank may have nothing to do
    for n, b, w in [(1, 1, 3), (100, 7, 3), (64, 64, 2), (65, 8, 4)]:
        seen = [i for r in range(w) for batch in shard_batches(n, b, r, w) for i in batch]
        assert sorted(seen) == list(range(n))  # every image exactly once


def test_cache_holds_plain_and_mirrored_embeddings(tmp_path):
    faces = Faces()
    teacher = Teacher(embed=left_half_mean, embedding_dim=3, source="test")
    cache_teacher_embeddings(teacher, faces, tmp_path, batch_size=4, progress=False)
    plain, flipped = open_teacher_cache(tmp_path)
    x = (faces.images.astype(np.float64) - 127.5) / 127.5  # NHWC in [-1, 1]
    np.testing.assert_allclose(plain, x[:, :, :56].mean(axis=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(flipped, x[:, :, 56:].mean(axis=(1, 2)), atol=1e-5)  # mirror: right half
    assert isinstance(plain, np.memmap) and plain.dtype == np.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flipped.npy", "plain.npy"]


def test_crash_leaves_no_cache_that_looks_complete(tmp_path):
    calls = {"n": 0}

    def failing(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("GPU fell off the bus")
        return left_half_mean(x)

    teacher = Teacher(embed=failing, embedding_dim=3, source="test")
    with pytest.raises(RuntimeError):
        cache_teacher_embeddings(teacher, Faces(), tmp_path, batch_size=4, progress=False)
    assert not (tmp_path / "plain.npy").exists() and not (tmp_path / "flipped.npy").exists()
