"""The resumable sampler: batch k depends only on (seed, k), and ranks shard the global batch."""

from __future__ import annotations

import itertools

from distill.engine.sampler import ResumableBatchSampler


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_resume_reproduces_the_remaining_batches():
    full = take(ResumableBatchSampler(50, 8, seed=3), 20)  # crosses epochs (6 batches per epoch)
    resumed = take(ResumableBatchSampler(50, 8, seed=3, start_step=13), 7)
    assert resumed == full[13:]


def test_each_epoch_is_a_permutation_without_repeats():
    s = ResumableBatchSampler(50, 8, seed=0)
    epoch0 = [i for b in take(s, 6) for i in b]
    assert len(set(epoch0)) == 48 and all(0 <= i < 50 for i in epoch0)
    epoch1 = [i for b in take(s, 12)[6:] for i in b]
    assert epoch0 != epoch1  # a new order every epoch


def test_ranks_shard_the_single_process_global_batch():
    single = ResumableBatchSampler(64, 8, seed=5, world_size=2)
    r0 = take(ResumableBatchSampler(64, 4, seed=5, rank=0, world_size=2), 5)
    r1 = take(ResumableBatchSampler(64, 4, seed=5, rank=1, world_size=2), 5)
    ref = ResumableBatchSampler(64, 4, seed=5, world_size=2)
    for k in range(5):
        assert r0[k] + r1[k] == ref.global_batch(k)
    assert single.batches_per_epoch == 4
