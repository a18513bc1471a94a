"""GKD: the grouped KL terms against the authors' formula written here in numpy, the groups, the warm-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.losses import LossDims, LossInputs
from distill.losses.gkd import GKDLoss, gkd_terms, primary_mask


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def numpy_gkd(z_s, z_t, y, alpha, beta, lamda, T, n):
    """The released code's arithmetic: groups from the student logits (target forced in), -1000 masking."""
    forced = z_s.copy()
    forced[np.arange(len(y)), y] = 999999
    hard = np.zeros_like(z_s)
    for i, row in enumerate(forced):
        hard[i, np.argsort(-row, kind="stable")[:n]] = 1
    soft = 1 - hard
    ps, pt = softmax(z_s / T), softmax(z_t / T)
    bs = np.stack([(ps * hard).sum(1), (ps * soft).sum(1)], 1)
    bt = np.stack([(pt * hard).sum(1), (pt * soft).sum(1)], 1)
    kl = lambda p, q: np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(q)), 0))  # noqa: E731
    binary = kl(bt, bs) * T**2 / len(y)
    qt, qs = softmax(z_t / T - 1000 * soft), softmax(z_s / T - 1000 * soft)
    primary = kl(qt, qs) * T**2 / len(y)
    rt, rs = softmax(z_t / T - 1000 * hard), softmax(z_s / T - 1000 * hard)
    secondary = kl(rt, rs) * T**2 / len(y)
    return alpha * binary + beta * primary + lamda * secondary, (binary, primary, secondary)


@pytest.mark.parametrize("n", [1, 3, 7])
def test_grouped_terms_equal_the_authors_formula(n):
    g = np.random.default_rng(n)
    z_s, z_t = g.normal(scale=5, size=(6, 9)), g.normal(scale=5, size=(6, 9))
    y = g.integers(0, 9, size=6)
    _, (b, p, s) = numpy_gkd(z_s, z_t, y, 1, 8, 0, 4.0, n)
    got = gkd_terms(torch.tensor(z_s), torch.tensor(z_t), torch.tensor(y), 4.0, n)
    assert got["binary"].item() == pytest.approx(b, rel=1e-6, abs=1e-9)
    assert got["primary"].item() == pytest.approx(p, rel=1e-6, abs=1e-9)
    assert got["secondary"].item() == pytest.approx(s, rel=1e-6, abs=1e-9)


def test_the_target_is_always_primary():
    z = torch.tensor([[5.0, 4.0, 3.0, -9.0]])
    assert primary_mask(z, torch.tensor([3]), 2).tolist() == [[True, False, False, True]]


def test_loss_is_ce_plus_the_ramped_grouped_kl_and_has_the_right_gradient():
    torch.manual_seed(0)
    C, Ds, Dt = 7, 5, 6
    dims = LossDims(student_dim=Ds, teacher_dim=Dt, num_classes=C, teacher_head=torch.randn(C, Dt))
    term = GKDLoss(dims, primary=3, warmup_steps=10).double()
    s = torch.randn(8, Ds, dtype=torch.float64, requires_grad=True)
    t, y = torch.randn(8, Dt, dtype=torch.float64), torch.arange(8) % C
    z_s = term.head(s, y).detach().numpy()
    z_t = term.teacher_head(t, y).detach().numpy()
    kd, _ = numpy_gkd(z_s, z_t, y.numpy(), 1.0, 8.0, 0.0, 4.0, 3)
    ce = np.mean(np.log(np.exp(z_s).sum(1)) - z_s[np.arange(8), y.numpy()])
    for step, ramp in ((0, 0.0), (5, 0.5), (40, 1.0)):
        got = term(LossInputs(student=s, labels=y, teacher=t, step=step))
        assert got.item() == pytest.approx(ce + ramp * kd, rel=1e-6)

    def f(x):
        return term(LossInputs(student=x, labels=y, teacher=t, step=40))

    assert torch.autograd.gradcheck(f, (s,), eps=1e-6, atol=1e-5)
    assert not term.teacher_head.weight.requires_grad  # the teacher's head stays as trained


def test_a_run_without_a_teacher_head_is_told_so():
    with pytest.raises(ValueError, match="gkd needs the teacher's margin head"):
        GKDLoss(LossDims(student_dim=4, teacher_dim=4, num_classes=3))
