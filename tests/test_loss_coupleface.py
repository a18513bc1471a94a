"""CoupleFace (reconstruction): hand-computed relations, mining rule, loop reference with a bank."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.losses.base import LossDims, LossInputs
from distill.losses.coupleface import CoupleFaceLoss, informative_mask


def unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def run(term, s, t, y):
    return term(
        LossInputs(
            student=torch.as_tensor(s, dtype=torch.float64),
            labels=torch.as_tensor(y),
            teacher=torch.as_tensor(t, dtype=torch.float64),
        )
    ).item()


# Student angles 0/90/100 deg, teacher 0/60/120 deg, labels 0 0 1.
# student cos: (0,1)=0 (0,2)=cos100 (1,2)=cos10 ; teacher cos: (0,1)=.5 (0,2)=-.5 (1,2)=.5
# anchor 0: positive 1 -> (0-.5)^2 ; negative 2 -> (cos100+.5)^2
# anchor 1: positive 0 -> (0-.5)^2 ; negative 2 -> (cos10-.5)^2
# anchor 2: negatives 0 (teacher -.5) and 1 (teacher .5): top-1 by teacher is 1 -> (cos10-.5)^2
S3 = [unit(0), unit(90), unit(100)]
T3 = [unit(0), unit(60), unit(120)]
Y3 = [0, 0, 1]
P = 0.25
N0 = (math.cos(math.radians(100)) + 0.5) ** 2
N1 = (math.cos(math.radians(10)) - 0.5) ** 2


@pytest.mark.parametrize(
    "top_k, use_pos, expected",
    [
        (1, True, (2 * P + N0 + 2 * N1) / 5),
        (0, True, P),
        (1, False, (N0 + 2 * N1) / 3),
        (2, True, (2 * P + 2 * N0 + 2 * N1) / 6),  # anchor 2 now takes both negatives
    ],
)
def test_relation_loss_by_hand(top_k, use_pos, expected):
    term = CoupleFaceLoss(
        LossDims(2, 2, 2),
        fcd_weight=0.0,
        top_k_negatives=top_k,
        use_positives=use_pos,
        weight_temperature=None,
    ).double()
    assert run(term, S3, T3, Y3) == pytest.approx(expected, abs=1e-12)


def test_feature_consistency_part_by_hand():
    term = CoupleFaceLoss(LossDims(2, 2, 2), mrd_weight=0.0).double()
    # ||s_i - t_i||^2 of unit vectors = 2 - 2cos: angles 0, 30, 20 deg apart
    expected = (0.0 + (2 - 2 * math.cos(math.radians(30))) + (2 - 2 * math.cos(math.radians(20)))) / 3
    assert run(term, S3, T3, Y3) == pytest.approx(expected, abs=1e-12)


def test_informative_mask_rule():
    teacher = torch.tensor([[9.0, 0.9, 0.1, 0.5, 0.7], [0.3, 9.0, 0.8, 0.2, 0.6]])
    positive = torch.tensor([[True, True, False, False, False], [False, True, True, False, False]])
    valid = torch.tensor([[False, True, True, True, True], [True, False, True, True, False]])
    got = informative_mask(teacher, positive, valid, top_k_negatives=2)
    # row 0: positive 1; negatives 2,3,4 -> top-2 by teacher = 4 (.7), 3 (.5)
    # row 1: positive 2; valid negatives 0 (.3), 3 (.2) (4 is invalid despite .6)
    assert got.tolist() == [[False, True, False, True, True], [True, False, True, True, False]]
    got = informative_mask(teacher, positive, valid, top_k_negatives=1, use_positives=False)
    assert got.tolist() == [[False, False, False, False, True], [True, False, False, False, False]]


# ---- loop reference (weights, projector, bank) ----


def ref_coupleface(s, p, t, y, bank, bank_y, k, tau, w_fcd, w_mrd):
    def nrm(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    s, p, t = nrm(s), nrm(p), nrm(t)
    fcd = np.mean([np.sum((p[i] - t[i]) ** 2) for i in range(len(y))])
    num = den = 0.0
    for i in range(len(y)):
        cands = [(float(s[i] @ s[j]), float(t[i] @ t[j]), y[i] == y[j]) for j in range(len(y)) if j != i]
        cands += [(float(p[i] @ b), float(t[i] @ b), y[i] == lb) for b, lb in zip(bank, bank_y, strict=True)]
        negs = sorted([c for c in cands if not c[2]], key=lambda c: -c[1])[:k]
        for rs, rt, _ in [c for c in cands if c[2]] + negs:
            w = math.exp((rt - 1.0) / tau)
            num += w * (rs - rt) ** 2
            den += w
    return w_fcd * fcd + w_mrd * num / den


def data(seed, n, ds, dt, classes=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, ds)), rng.normal(size=(n, dt)), rng.integers(0, classes, size=n)


def test_matches_loop_reference_with_projector_weights_and_a_fifo_bank():
    term = CoupleFaceLoss(
        LossDims(3, 4, 3),
        fcd_weight=0.7,
        mrd_weight=1.3,
        top_k_negatives=3,
        weight_temperature=0.3,
        bank_size=5,
    ).double()
    w = term.projector.proj.weight.detach().numpy()
    s1, t1, y1 = data(1, 4, 3, 4)
    s2, t2, y2 = data(2, 4, 3, 4)
    s3, t3, y3 = data(3, 4, 3, 4)
    tn = [t / np.linalg.norm(t, axis=1, keepdims=True) for t in (t1, t2, t3)]
    # step 1: empty bank
    got = run(term, s1, t1, y1)
    assert got == pytest.approx(ref_coupleface(s1, s1 @ w.T, t1, y1, [], [], 3, 0.3, 0.7, 1.3), rel=1e-10)
    assert int(term.bank_filled) == 4 and int(term.bank_ptr) == 4
    # step 2: the bank holds step 1's teacher embeddings (the loss is computed before the enqueue)
    got = run(term, s2, t2, y2)
    ref = ref_coupleface(s2, s2 @ w.T, t2, y2, tn[0], y1, 3, 0.3, 0.7, 1.3)
    assert got == pytest.approx(ref, rel=1e-10)
    # FIFO with wrap-around: slot 4 <- t2[0], slots 0..2 <- t2[1:], pointer 3, full
    assert int(term.bank_filled) == 5 and int(term.bank_ptr) == 3
    expected_bank = np.stack([tn[1][1], tn[1][2], tn[1][3], tn[0][3], tn[1][0]])
    np.testing.assert_allclose(term.bank.numpy(), expected_bank, atol=1e-12)
    bank_y = [y2[1], y2[2], y2[3], y1[3], y2[0]]
    assert term.bank_labels.tolist() == bank_y
    got = run(term, s3, t3, y3)
    ref = ref_coupleface(s3, s3 @ w.T, t3, y3, expected_bank, bank_y, 3, 0.3, 0.7, 1.3)
    assert got == pytest.approx(ref, rel=1e-10)
    assert {"bank", "bank_labels", "bank_ptr", "bank_filled"} <= set(term.state_dict())


def test_batch_larger_than_bank_keeps_the_newest_and_eval_does_not_enqueue():
    term = CoupleFaceLoss(LossDims(3, 3, 3), bank_size=2).double()
    s, t, y = data(4, 5, 3, 3)
    term.eval()
    run(term, s, t, y)
    assert int(term.bank_filled) == 0
    term.train()
    run(term, s, t, y)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    np.testing.assert_allclose(term.bank.numpy(), tn[3:], atol=1e-12)
    assert term.bank_labels.tolist() == list(y[3:])


def test_gradcheck_float64_with_bank_and_projector():
    torch.manual_seed(0)
    term = CoupleFaceLoss(LossDims(3, 4, 3), top_k_negatives=2, bank_size=4).double()
    s0, t0, y0 = data(5, 4, 3, 4)
    run(term, s0, t0, y0)  # fill the bank
    term.eval()
    s, t, y = data(6, 5, 3, 4)
    x = torch.tensor(s, requires_grad=True)
    tt, yy = torch.tensor(t), torch.tensor(y)
    assert torch.autograd.gradcheck(lambda v: term(LossInputs(student=v, labels=yy, teacher=tt)), (x,))


def test_single_sample_batch_is_finite():
    term = CoupleFaceLoss(LossDims(2, 2, 2)).double()
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    out = term(LossInputs(student=x, labels=torch.tensor([0]), teacher=torch.tensor([[1.0, 0.0]])))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()
