"""EKD's balanced batches: composition, repetition of small identities, uniformity, determinism, resume."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from distill.engine.balanced_sampler import BalancedBatchSampler

# identity i has SIZES[i] images; images of one identity are scattered over the dataset
SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(10), SIZES))


def members(label):
    return [i for i, v in enumerate(LABELS) if v == label]  # ascending dataset order


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_batch_composition():
    g, p, k = 5, 4, 4
    sampler = BalancedBatchSampler(LABELS, g, p, k, seed=1)
    assert sampler.batch_size == 21
    assert sampler.general_mask().tolist() == [True] * 5 + [False] * 16
    seen_small = False
    for batch in take(sampler, 50):
        assert len(batch) == 21 and all(isinstance(i, int) for i in batch)
        general, balanced = batch[:g], batch[g:]
        assert len(set(general)) == g and all(0 <= i < len(LABELS) for i in general)
        groups = [balanced[j * k : (j + 1) * k] for j in range(p)]
        group_labels = [int(LABELS[grp[0]]) for grp in groups]
        assert len(set(group_labels)) == p  # P distinct identities
        for grp, label in zip(groups, group_labels, strict=True):
            own = members(label)
            assert all(LABELS[i] == label for i in grp)
            if len(own) >= k:
                assert len(set(grp)) == k  # K distinct images
            else:  # fewer than K images: the identity's images repeated in order
                expected = [own[j % len(own)] for j in range(k)]
                assert grp == expected
                seen_small = True
    assert seen_small


def test_same_seed_and_step_same_batch_resume_is_exact():
    a = take(BalancedBatchSampler(LABELS, 3, 2, 4, seed=7), 12)
    b = take(BalancedBatchSampler(LABELS, 3, 2, 4, seed=7, start_step=8), 4)
    assert b == a[8:]
    assert BalancedBatchSampler(LABELS, 3, 2, 4, seed=7).batch(5) == a[5]
    assert take(BalancedBatchSampler(LABELS, 3, 2, 4, seed=8), 12) != a
    assert len({tuple(x) for x in a}) > 10  # batches change from step to step


def test_identities_are_drawn_uniformly_not_by_image_count():
    labels = np.concatenate([np.zeros(1000, dtype=np.int64), np.repeat(np.arange(1, 10), 5)])
    sampler = BalancedBatchSampler(labels, 4, 1, 2, seed=3)
    counts = Counter()
    general_big = 0
    steps = 2000
    for batch in take(sampler, steps):
        counts[int(labels[batch[4]])] += 1
        general_big += sum(1 for i in batch[:4] if labels[i] == 0)
    # one identity of ten: ~200 picks (sd ~13), far from the 1000/1045 an image-weighted draw would give
    assert 130 < counts[0] < 270
    assert len(counts) == 10
    # the general part is uniform over images: the big identity holds 1000/1045 of them
    assert general_big / (4 * steps) == pytest.approx(1000 / 1045, abs=0.02)


def test_ranks_differ_and_global_batch_concatenates_them():
    r0 = BalancedBatchSampler(LABELS, 3, 2, 2, seed=4, rank=0, world_size=2)
    r1 = BalancedBatchSampler(LABELS, 3, 2, 2, seed=4, rank=1, world_size=2)
    for step in range(5):
        assert r0.batch(step) != r1.batch(step)
        assert r0.global_batch(step) == r0.batch(step) + r1.batch(step) == r1.global_batch(step)
    assert take(r1, 3) == [r1.batch(s) for s in range(3)]


def test_works_as_a_dataloader_batch_sampler():
    data = torch.arange(len(LABELS))
    loader = torch.utils.data.DataLoader(data, batch_sampler=BalancedBatchSampler(LABELS, 2, 3, 2, seed=0))
    first = next(iter(loader))
    assert first.tolist() == BalancedBatchSampler(LABELS, 2, 3, 2, seed=0).batch(0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(general_batch=2, identities_per_batch=11, images_per_identity=2),  # only 10 identities
        dict(general_batch=100, identities_per_batch=1, images_per_identity=2),  # > 55 samples
        dict(general_batch=2, identities_per_batch=1, images_per_identity=0),
        dict(general_batch=0, identities_per_batch=0, images_per_identity=2),
    ],
)
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        BalancedBatchSampler(LABELS, seed=0, **kwargs)
