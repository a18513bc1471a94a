"""EKD: hand-counted soft ranks, an independent loop implementation, EMA thresholds, top-K pick, DDP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from distill.losses.base import LossDims, LossInputs
from distill.losses.ekd import EKDLoss, select_negatives, upper_pairs

DIMS = LossDims(student_dim=2, teacher_dim=2, num_classes=4)


def unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def inputs(s, t, y):
    return LossInputs(
        student=torch.as_tensor(s, dtype=torch.float64),
        labels=torch.as_tensor(y),
        teacher=torch.as_tensor(t, dtype=torch.float64),
    )


# Hand example. Student angles 0/60/90/180 deg, teacher 0/30/90/20 deg, labels 0 0 1 1.
# Pair cosines (student | teacher):  (0,1) pos .5 | .866   (2,3) pos 0 | .342
#   (0,2) neg 0 | 0   (0,3) neg -1 | .940   (1,2) neg .866 | .5   (1,3) neg -.5 | .985
# Thresholds s: .05 .15 .25 .35 .45 .55 ; t: .1 .2 .3 .4 .6 .8 ; a tiny temperature makes the soft rank an
# exact count:  student ranks (0,1)=5 (2,3)=0 (0,2)=0 (0,3)=0 (1,2)=6 (1,3)=0
#               teacher ranks (0,1)=6 (2,3)=3 (0,2)=0 (0,3)=6 (1,2)=4 (1,3)=6
# L_pos = ((5-6)^2 + (0-3)^2)/2 = 5. Negatives by student similarity: (1,2), (0,2), (1,3), (0,3) with
# squared rank gaps 4, 0, 36, 36.
HAND_S = [unit(0), unit(60), unit(90), unit(180)]
HAND_T = [unit(0), unit(30), unit(90), unit(20)]
HAND_Y = [0, 0, 1, 1]


def hand_loss(top_k):
    term = EKDLoss(DIMS, top_k=top_k, temperature=1e-4).double().eval()
    term.s_anchor.copy_(torch.tensor([0.05, 0.15, 0.25, 0.35, 0.45, 0.55]))
    term.t_anchor.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.6, 0.8]))
    return term(inputs(HAND_S, HAND_T, HAND_Y)).item()


@pytest.mark.parametrize(
    "top_k, neg",
    [(1, 4.0), (2, 2.0), (3, 40.0 / 3.0), (4, 19.0), (2000, 19.0), (0, 0.0)],
)
def test_hand_example_all_positives_and_exactly_top_k_student_negatives(top_k, neg):
    # picking the teacher's hardest negative first would give 36 for top_k=1
    assert hand_loss(top_k) == pytest.approx(0.02 * 5.0 + 0.01 * neg, abs=1e-12)


def test_selection_helpers():
    rows, cols, pos = upper_pairs(torch.tensor([3, 1, 3, 1]))
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    ]
    assert pos.tolist() == [False, True, False, False, True, False]
    sims = torch.tensor([0.1, 0.9, -0.3, 0.5, 0.7])
    assert select_negatives(sims, 3).tolist() == [1, 4, 3]
    assert select_negatives(sims, 10).tolist() == [1, 4, 3, 0, 2]


# ---- independent reference: explicit loops, python sorting ----


def ref_thresholds(neg, anchors):
    ordered = sorted(neg, reverse=True)
    return [ordered[len(ordered) // a] for a in anchors]


def ref_rank(x, thresholds, temp):
    total = 0.0
    for th in thresholds:
        e = min(max(-(x - th) / temp, -50.0), 50.0)
        total += 1.0 / (1.0 + math.exp(e))
    return total


def ref_ekd(s, t, y, s_th, t_th, top_k, temp=0.01):
    s = s / np.linalg.norm(s, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    pos, neg = [], []
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            pair = (float(s[i] @ s[j]), float(t[i] @ t[j]))
            (pos if y[i] == y[j] else neg).append(pair)
    neg.sort(key=lambda p: -p[0])
    neg = neg[:top_k]

    def mse(pairs):
        return sum((ref_rank(a, s_th, temp) - ref_rank(b, t_th, temp)) ** 2 for a, b in pairs) / len(pairs)

    return 0.02 * mse(pos) + 0.01 * mse(neg)


def batch(seed, n=30, d=6, classes=8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    centres = rng.normal(size=(classes, d))
    s = centres[y] + 0.8 * rng.normal(size=(n, d))
    t = centres[y] + 0.5 * rng.normal(size=(n, d))
    return s, t, y


def neg_pairs(x, y):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return [float(x[i] @ x[j]) for i in range(len(y)) for j in range(i + 1, len(y)) if y[i] != y[j]]


def test_thresholds_follow_the_ema_and_the_loss_uses_the_updated_ones():
    anchors = (10, 100, 1000, 10000, 100000, 1000000)
    term = EKDLoss(LossDims(6, 6, 8), top_k=50).double()
    assert term.s_anchor.tolist() == [0.0] * 6 and term.t_anchor.tolist() == [0.0] * 6
    s1, t1, y1 = batch(1)
    s2, t2, y2 = batch(2)
    out1 = term(inputs(s1, t1, y1)).item()
    s_th = [0.01 * v for v in ref_thresholds(neg_pairs(s1, y1), anchors)]
    t_th = [0.01 * v for v in ref_thresholds(neg_pairs(t1, y1), anchors)]
    np.testing.assert_allclose(term.s_anchor.numpy(), s_th, rtol=1e-12)
    np.testing.assert_allclose(term.t_anchor.numpy(), t_th, rtol=1e-12)
    assert out1 == pytest.approx(ref_ekd(s1, t1, y1, s_th, t_th, 50), rel=1e-9)
    out2 = term(inputs(s2, t2, y2)).item()
    s_th = [
        0.99 * a + 0.01 * b for a, b in zip(s_th, ref_thresholds(neg_pairs(s2, y2), anchors), strict=True)
    ]
    t_th = [
        0.99 * a + 0.01 * b for a, b in zip(t_th, ref_thresholds(neg_pairs(t2, y2), anchors), strict=True)
    ]
    np.testing.assert_allclose(term.s_anchor.numpy(), s_th, rtol=1e-12)
    np.testing.assert_allclose(term.t_anchor.numpy(), t_th, rtol=1e-12)
    assert out2 == pytest.approx(ref_ekd(s2, t2, y2, s_th, t_th, 50), rel=1e-9)
    # eval mode leaves the thresholds alone; they are checkpointed buffers
    term.eval()
    term(inputs(s1, t1, y1))
    np.testing.assert_allclose(term.s_anchor.numpy(), s_th, rtol=1e-12)
    assert set(term.state_dict()) == {"s_anchor", "t_anchor"}


def test_matches_reference_with_batch_thresholds_and_custom_knobs():
    s, t, y = batch(3, n=40)
    anchors = (4, 20, 200)
    term = EKDLoss(LossDims(6, 6, 8), top_k=37, anchors=anchors, momentum=1.0).double()
    got = term(inputs(s, t, y)).item()
    s_th = ref_thresholds(neg_pairs(s, y), anchors)
    t_th = ref_thresholds(neg_pairs(t, y), anchors)
    assert got == pytest.approx(ref_ekd(s, t, y, s_th, t_th, 37), rel=1e-9)
    assert got > 1e-4  # thresholds inside the data: the ranks really differ


def test_gradcheck_float64():
    s, t, y = batch(4, n=16)
    term = EKDLoss(LossDims(6, 6, 8), top_k=20, momentum=1.0).double()
    term(inputs(s, t, y))  # thresholds from this batch, then frozen by eval()
    term.eval()
    x = torch.tensor(s, requires_grad=True)
    tt, yy = torch.tensor(t), torch.tensor(y)
    grad = torch.autograd.grad(term(LossInputs(student=x, labels=yy, teacher=tt)), x)[0]
    assert grad.abs().max() > 1e-3  # some pairs sit near a threshold
    assert torch.autograd.gradcheck(lambda v: term(LossInputs(student=v, labels=yy, teacher=tt)), (x,))


def test_no_negatives_or_no_positives_is_finite():
    term = EKDLoss(DIMS).double()
    s = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    out = term(LossInputs(student=s, labels=torch.tensor([1, 1, 1]), teacher=torch.randn(3, 2)))
    out.backward()
    assert torch.isfinite(out) and term.s_anchor.tolist() == [0.0] * 6
    out = term(LossInputs(student=s, labels=torch.tensor([0, 1, 2]), teacher=torch.randn(3, 2)))
    assert torch.isfinite(out)


def test_gather_callable_is_used():
    s, t, y = batch(5, n=12)
    extra_s, extra_t, extra_y = batch(6, n=12)
    other = {"s": torch.tensor(extra_s), "t": torch.tensor(extra_t), "y": torch.tensor(extra_y)}

    def gather(x):
        key = "y" if x.dtype == torch.int64 else ("s" if x.requires_grad else "t")
        return torch.cat([x, other[key].to(x.dtype)])

    x = torch.tensor(s, requires_grad=True)
    term = EKDLoss(LossDims(6, 6, 8), momentum=1.0, gather=gather).double()
    got = term(LossInputs(student=x, labels=torch.tensor(y), teacher=torch.tensor(t))).item()
    full = EKDLoss(LossDims(6, 6, 8), momentum=1.0).double()
    s_all, t_all, y_all = (
        np.concatenate([s, extra_s]),
        np.concatenate([t, extra_t]),
        np.concatenate([y, extra_y]),
    )
    assert got == pytest.approx(full(inputs(s_all, t_all, y_all)).item(), rel=1e-12)


# ---- DDP: two gloo ranks reproduce the single-process global-batch loss and (after DDP's mean) gradient


def _rank_main(rank, world, init_file, out_dir, s, t, y):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        n = s.shape[0] // world
        sl = slice(rank * n, (rank + 1) * n)
        x = s[sl].clone().requires_grad_(True)
        term = EKDLoss(LossDims(6, 6, 8), top_k=40, momentum=0.5).double()
        loss = term(LossInputs(student=x, labels=y[sl], teacher=t[sl]))
        loss.backward()
        torch.save(
            {"loss": loss.detach(), "grad": x.grad, "s_anchor": term.s_anchor.clone()},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_rank_all_gather_matches_single_process(tmp_path):
    s, t, y = batch(7, n=24)
    s, t, y = torch.tensor(s), torch.tensor(t), torch.tensor(y)
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path), s, t, y), nprocs=2, join=True)
    x = s.clone().requires_grad_(True)
    term = EKDLoss(LossDims(6, 6, 8), top_k=40, momentum=0.5).double()
    ref = term(LossInputs(student=x, labels=y, teacher=t))
    ref.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["loss"].item() == pytest.approx(ref.item(), rel=1e-12)
        torch.testing.assert_close(got["s_anchor"], term.s_anchor)
        # local slice gradient x world size: DDP's mean over ranks then gives the single-process gradient
        torch.testing.assert_close(got["grad"], 2 * x.grad[rank * 12 : (rank + 1) * 12])
