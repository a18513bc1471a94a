"""Class-sharded margin softmax: two gloo processes equal the full head of one process, exactly."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from distill.losses.partial_fc import ShardedMarginSoftmax, shard_range
from distill.models.heads import ArcFaceHead, CosFaceHead

D, C, B = 16, 11, 6  # 11 classes over 2 ranks: shards of 6 and 5
KINDS = {"arcface": (ArcFaceHead, 0.5), "cosface": (CosFaceHead, 0.35)}


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(C, D, generator=g)
    emb = torch.randn(2 * B, D, generator=g)  # the global batch: rank 0 holds rows 0..5, rank 1 rows 6..11
    labels = torch.randint(0, C, (2 * B,), generator=g)
    return weight, emb, labels


def full_head(kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss, weight gradient and embedding gradient of the one-process head on the global batch."""
    head_cls, margin = KINDS[kind]
    weight, emb, labels = data()
    head = head_cls(D, C, scale=16.0, margin=margin)
    head.weight.data.copy_(weight)
    emb = emb.clone().requires_grad_(True)
    loss = F.cross_entropy(head(emb, labels), labels)
    loss.backward()
    return loss.detach(), head.weight.grad, emb.grad


def test_shards_cover_every_class_once():
    for n, world in ((11, 2), (12, 3), (5, 5), (100_003, 8)):
        ranges = [shard_range(n, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        sizes = [e - s for s, e in ranges]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        shard_range(3, 0, 4)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_one_process_is_the_full_head(kind):
    want_loss, want_w, want_e = full_head(kind)
    weight, emb, labels = data()
    head = ShardedMarginSoftmax(D, C, kind=kind, scale=16.0, margin=KINDS[kind][1])
    head.weight.data.copy_(weight)
    emb = emb.clone().requires_grad_(True)
    loss = head(emb, labels)
    loss.backward()
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(head.weight.grad, want_w)
    torch.testing.assert_close(emb.grad, want_e)


def _worker(rank: int, world: int, port: int, kind: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    weight, emb, labels = data()
    head = ShardedMarginSoftmax(D, C, kind=kind, scale=16.0, margin=KINDS[kind][1])
    head.weight.data.copy_(weight[head.start : head.end])
    local = emb[rank * B : (rank + 1) * B].clone().requires_grad_(True)
    loss = head(local, labels[rank * B : (rank + 1) * B])
    loss.backward()
    torch.save(
        {"loss": loss.detach(), "w": head.weight.grad, "e": local.grad, "range": (head.start, head.end)},
        f"{out}/rank{rank}.pt",
    )
    # sampling on: the positives of the global batch are always among the centres used
    from distill.losses.gather import all_gather_no_grad

    torch.manual_seed(rank)
    sampled = ShardedMarginSoftmax(D, C, kind=kind, scale=16.0, sample_rate=0.2)
    for _ in range(5):
        mine = torch.randint(0, C, (B,))
        sampled(torch.randn(B, D), mine)
        everyone = all_gather_no_grad(mine)  # another rank's sample of my class needs my centre too
        positives = everyone[(everyone >= sampled.start) & (everyone < sampled.end)]
        assert torch.isin(positives, sampled.last_sampled).all()
        assert sampled.last_sampled.min() >= sampled.start and sampled.last_sampled.max() < sampled.end
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_two_gloo_processes_equal_the_full_head(kind, tmp_path):
    want_loss, want_w, want_e = full_head(kind)
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, kind, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        start, end = got["range"]
        torch.testing.assert_close(got["loss"], want_loss)  # the global batch's loss on every rank
        torch.testing.assert_close(got["w"], want_w[start:end])  # each shard's gradient, complete locally
        # the local rows' gradient, times the world size: DDP then averages the backbone's gradients
        torch.testing.assert_close(got["e"], 2 * want_e[rank * B : (rank + 1) * B])
    assert (0, 6) == torch.load(tmp_path / "rank0.pt", weights_only=True)["range"]


def test_sampling_keeps_every_positive_of_the_global_batch():
    torch.manual_seed(0)
    head = ShardedMarginSoftmax(D, 1000, kind="cosface", scale=16.0, sample_rate=0.1)
    for _ in range(5):
        labels = torch.randint(0, 1000, (B,))
        loss = head(torch.randn(B, D), labels)
        used = head.last_sampled
        assert torch.isin(labels, used).all() and used.numel() == 100 and torch.isfinite(loss)
        assert torch.equal(used, torch.unique(used))  # sorted, no class twice


def test_half_precision_inputs_compute_in_float32():
    weight, emb, labels = data()
    head = ShardedMarginSoftmax(D, C, kind="arcface", scale=64.0)
    head.weight.data.copy_(weight)
    loss_fp16 = head(emb.half(), labels)
    assert loss_fp16.dtype == torch.float32 and torch.isfinite(loss_fp16)
    torch.testing.assert_close(loss_fp16, head(emb.half().float(), labels))
