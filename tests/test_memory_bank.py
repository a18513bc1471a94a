"""MemoryBank: FIFO order, wrap-around, batches longer than the bank, exact resume, identical DDP banks.

The reference is a plain-Python queue written one row at a time (the bank writes whole batches with
vectorised indices and keeps only the tail of an over-long batch).
"""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distill.losses.base import LossDims, LossInputs
from distill.losses.memory_bank import MemoryBank, all_gather_no_grad
from distill.losses.rpsd import RPSDLoss


class RefQueue:
    """Ring buffer that writes row by row: the obvious, slow definition of a FIFO bank."""

    def __init__(self, size: int, dim: int) -> None:
        self.rows = [[0.0] * dim for _ in range(size)]
        self.labels = [-1] * size
        self.ptr = 0
        self.count = 0

    def push(self, rows: list[list[float]], labels: list[int]) -> None:
        for row, label in zip(rows, labels, strict=True):
            self.rows[self.ptr] = list(row)
            self.labels[self.ptr] = label
            self.ptr = (self.ptr + 1) % len(self.rows)
            self.count = min(self.count + 1, len(self.rows))


def _batch(start: int, n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(start, start + n)
    emb = ids[:, None].double() + torch.arange(dim).double()[None, :] / 10
    return emb, ids * 7


def _assert_same(bank: MemoryBank, ref: RefQueue) -> None:
    assert bank.emb.tolist() == ref.rows
    assert bank.labels.tolist() == ref.labels
    assert int(bank.ptr) == ref.ptr
    assert int(bank.count) == ref.count == len(bank)


def test_fifo_order_and_wrap_around():
    bank = MemoryBank(4, 2, dtype=torch.float64)
    e, y = _batch(0, 3, 2)
    bank.enqueue(e, y)
    emb, labels = bank.valid()
    assert emb.tolist() == e.tolist() and labels.tolist() == y.tolist()
    assert int(bank.ptr) == 3
    e2, y2 = _batch(3, 3, 2)  # ids 3, 4, 5 -> slots 3, 0, 1: the oldest (0, 1) are overwritten
    bank.enqueue(e2, y2)
    assert bank.labels.tolist() == [28, 35, 14, 21]
    assert bank.emb[:, 0].tolist() == [4.0, 5.0, 2.0, 3.0]
    assert int(bank.ptr) == 2 and len(bank) == 4
    assert sorted(bank.valid()[1].tolist()) == [14, 21, 28, 35]


def test_random_batches_including_longer_than_bank_match_reference():
    bank = MemoryBank(5, 3, dtype=torch.float64)
    ref = RefQueue(5, 3)
    start = 0
    for n in [2, 1, 7, 0, 3, 5, 11, 4, 1, 6]:
        e, y = _batch(start, n, 3)
        bank.enqueue(e, y)
        ref.push(e.tolist(), y.tolist())
        start += n
        _assert_same(bank, ref)
        emb, labels = bank.valid()
        assert emb.shape == (ref.count, 3) and labels.shape == (ref.count,)


def test_batch_longer_than_bank_keeps_newest_rows_at_the_right_slots():
    bank = MemoryBank(4, 1, dtype=torch.float64)
    bank.enqueue(torch.tensor([[0.0]]), torch.tensor([0]))  # ptr = 1
    bank.enqueue(torch.arange(1.0, 11.0, dtype=torch.float64)[:, None], torch.arange(1, 11))
    # rows 1..10 written at slots 1,2,3,0,1,... : the last four (7, 8, 9, 10) sit at slots 3, 0, 1, 2
    assert bank.labels.tolist() == [8, 9, 10, 7]
    assert int(bank.ptr) == (1 + 10) % 4 and len(bank) == 4


def test_enqueue_detaches_and_valid_returns_copies():
    bank = MemoryBank(3, 2)
    x = torch.randn(2, 2, requires_grad=True)
    bank.enqueue(x * 2, torch.tensor([1, 2]))
    assert not bank.emb.requires_grad
    emb, _ = bank.valid()
    emb.zero_()
    assert torch.equal(bank.emb[:2], (x * 2).detach())


def test_state_dict_round_trip_resumes_exactly():
    a = MemoryBank(6, 3)
    ref = RefQueue(6, 3)
    for start, n in [(0, 4), (4, 5)]:
        e, y = _batch(start, n, 3)
        a.enqueue(e, y)
        ref.push(e.float().tolist(), y.tolist())
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = MemoryBank(6, 3)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert set(b.state_dict()) == {"emb", "labels", "ptr", "count"}
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key
    e, y = _batch(9, 4, 3)
    a.enqueue(e, y)
    b.enqueue(e, y)
    ref.push(e.float().tolist(), y.tolist())
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key
    assert b.labels.tolist() == ref.labels and int(b.ptr) == ref.ptr


def test_explicit_gather_enqueues_the_global_batch():
    other = torch.full((2, 2), 9.0)

    def gather(t: torch.Tensor) -> torch.Tensor:  # pretend to be rank 0 of two, rank 1 holding `other`
        tail = other if t.is_floating_point() else torch.tensor([90, 91])
        return torch.cat([t, tail.to(t.dtype)])

    bank = MemoryBank(8, 2)
    bank.enqueue(torch.ones(3, 2), torch.tensor([1, 2, 3]), gather=gather)
    emb, labels = bank.valid()
    assert labels.tolist() == [1, 2, 3, 90, 91]
    assert emb[:, 0].tolist() == [1.0, 1.0, 1.0, 9.0, 9.0]


def test_all_gather_without_process_group_is_a_copy():
    t = torch.randn(3, 2, requires_grad=True)
    out = all_gather_no_grad(t)
    assert torch.equal(out, t.detach()) and not out.requires_grad


def test_enqueue_rejects_wrong_shapes():
    bank = MemoryBank(4, 3)
    with pytest.raises(ValueError, match="embeddings"):
        bank.enqueue(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        bank.enqueue(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


# ------------------------------------------------------------------------------------------- DDP (gloo)


def _rank_rows(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uneven per-rank batches (rank 0: 2 rows, rank 1: 3 rows) with globally unique values."""
    n = 2 + rank
    ids = [1000 * rank + 10 * step + i for i in range(n)]
    emb = torch.tensor([[float(v), float(v) + 0.5, -float(v)] for v in ids])
    return emb, torch.tensor(ids)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        bank = MemoryBank(8, 3)
        for step in range(3):
            bank.enqueue(*_rank_rows(rank, step))  # gather=None: the helper all-gathers
        # RPSD enqueues through the same path: its bank must also be global and identical
        torch.manual_seed(100 + rank)  # different local batches per rank
        loss = RPSDLoss(LossDims(3, 3, 5), bank_size=6, k_neg=2)
        loss(
            LossInputs(
                torch.randn(2 + rank, 3), torch.tensor([0, 1, 2][: 2 + rank]), torch.randn(2 + rank, 3)
            )
        )
        torch.save(
            {"bank": bank.state_dict(), "rpsd": loss.bank.state_dict()}, Path(out_dir) / f"rank{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_process_gloo_ranks_hold_identical_global_bank(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    ref = RefQueue(8, 3)
    for step in range(3):  # the global batch is rank 0's rows then rank 1's
        for rank in range(2):
            e, y = _rank_rows(rank, step)
            ref.push(e.tolist(), y.tolist())
    for state in states:
        assert state["bank"]["emb"].tolist() == ref.rows
        assert state["bank"]["labels"].tolist() == ref.labels
        assert int(state["bank"]["ptr"]) == ref.ptr and int(state["bank"]["count"]) == 8
    for key in states[0]["rpsd"]:
        assert torch.equal(states[0]["rpsd"][key], states[1]["rpsd"][key]), key
    assert int(states[0]["rpsd"]["count"]) == 5  # 2 + 3 rows from the two ranks
    assert states[0]["rpsd"]["labels"][:5].tolist() == [0, 1, 0, 1, 2]
