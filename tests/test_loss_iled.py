"""ILED: values pinned by hand / numpy, hard-sample selection, ratio schedule, gradients in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.errors import InputError
from distill.losses.base import LossDims, LossInputs
from distill.losses.iled import ILEDLoss, hard_count, rho_at

# Hand-made batch: cosines 1, 0, 1/sqrt(2), -1  ->  d = 0, 1, 1 - 1/sqrt(2), 2
S = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
T = [[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]
D = [0.0, 1.0, 1.0 - 1.0 / math.sqrt(2.0), 2.0]
LABELS = torch.tensor([0, 1, 2, 3])


def _run(loss: ILEDLoss, step: int = 0, dtype=torch.float64) -> float:
    inputs = LossInputs(
        student=torch.tensor(S, dtype=dtype), labels=LABELS, teacher=torch.tensor(T, dtype=dtype), step=step
    )
    return loss(inputs).item()


@pytest.mark.parametrize(
    "knobs, expected",
    [
        ({"mining": "none"}, sum(D) / 4),
        ({"mining": "topk", "rho_end": 0.5, "anneal_steps": 0}, (2.0 + 1.0) / 2),
        ({"mining": "topk", "rho_end": 0.75, "anneal_steps": 0}, (2.0 + 1.0 + D[2]) / 3),
        ({"mining": "topk", "rho_end": 0.1, "anneal_steps": 0}, 2.0),  # ceil(0.4) = 1 sample
        ({"mining": "topk", "rho_end": 1.0, "anneal_steps": 0}, sum(D) / 4),
    ],
)
def test_values_by_hand(knobs, expected):
    loss = ILEDLoss(LossDims(3, 3, 4), **knobs)
    assert _run(loss) == pytest.approx(expected, abs=1e-12)
    assert _run(loss, dtype=torch.float32) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_soft_mining_value_numpy(tau):
    d = np.array(D)
    e = np.exp(d / tau - np.max(d / tau))
    w = 4 * e / e.sum()
    expected = float((w * d).sum() / w.sum())
    loss = ILEDLoss(LossDims(3, 3, 4), mining="soft", tau=tau)
    assert _run(loss) == pytest.approx(expected, abs=1e-12)
    assert expected > sum(D) / 4  # soft weighting leans towards the hard samples


def test_rho_is_annealed_with_the_step():
    loss = ILEDLoss(LossDims(3, 3, 4), mining="topk", rho_start=1.0, rho_end=0.25, anneal_steps=100)
    assert _run(loss, step=0) == pytest.approx(sum(D) / 4, abs=1e-12)  # rho 1 -> all 4
    assert _run(loss, step=50) == pytest.approx((2.0 + 1.0 + D[2]) / 3, abs=1e-12)  # rho .625 -> 3
    assert _run(loss, step=75) == pytest.approx((2.0 + 1.0) / 2, abs=1e-12)  # rho .4375 -> 2
    assert _run(loss, step=100) == pytest.approx(2.0, abs=1e-12)  # rho .25 -> 1
    assert _run(loss, step=10_000) == pytest.approx(2.0, abs=1e-12)


def test_schedule_helpers():
    assert rho_at(0, 0.9, 0.3, 60) == pytest.approx(0.9)
    assert rho_at(30, 0.9, 0.3, 60) == pytest.approx(0.6)
    assert rho_at(600, 0.9, 0.3, 60) == pytest.approx(0.3)
    assert rho_at(5, 0.9, 0.3, 0) == pytest.approx(0.3)
    assert hard_count(0.3, 10) == 3  # 0.3 * 10 = 3.0000000000000004 in floating point
    assert hard_count(0.01, 10) == 1
    assert hard_count(1.0, 7) == 7
    assert hard_count(0.51, 10) == 6


def test_topk_selects_the_hardest_and_only_they_get_gradient():
    torch.manual_seed(0)
    b = 12
    loss = ILEDLoss(LossDims(6, 6, 3), mining="topk", rho_end=0.25, anneal_steps=0).double()
    s = torch.randn(b, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(b, 6, dtype=torch.float64)
    loss(LossInputs(student=s, labels=torch.zeros(b, dtype=torch.long), teacher=t)).backward()
    sn, tn = s.detach().numpy(), t.numpy()
    d = [1 - sn[i] @ tn[i] / np.linalg.norm(sn[i]) / np.linalg.norm(tn[i]) for i in range(b)]
    hardest = set(np.argsort(d)[::-1][:3].tolist())  # ceil(0.25 * 12) = 3
    has_grad = {i for i in range(b) if s.grad[i].abs().max() > 0}
    assert has_grad == hardest


def _gradcheck_inputs(seed: int, b: int = 5, ds: int = 3, dt: int = 5):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, ds, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(b, dt, dtype=torch.float64, generator=g)
    return s, t


@pytest.mark.parametrize("mining", ["topk", "none"])
def test_gradcheck_float64_through_module_with_projector(mining):
    torch.manual_seed(3)
    loss = ILEDLoss(LossDims(3, 5, 2), mining=mining, rho_end=0.6, anneal_steps=0).double()
    s, t = _gradcheck_inputs(1)
    d = loss.distances(LossInputs(s, torch.zeros(5, dtype=torch.long), t)).detach()
    gaps = d.sort().values.diff()
    assert gaps.min() > 1e-3  # the top-3 set cannot change under gradcheck's 1e-6 perturbations

    def f(x, w):  # the projector's weight is an input too: both are trained
        inputs = LossInputs(x, torch.zeros(5, dtype=torch.long), t)
        return torch.func.functional_call(loss, {"projector.proj.weight": w}, (inputs,))

    w0 = loss.projector.proj.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (s, w0))


def test_soft_weights_are_stop_gradient():
    """Analytic gradient == finite differences of sum(w0 * d(x)) / sum(w0) with w0 frozen (numpy)."""
    tau = 0.7
    loss = ILEDLoss(LossDims(4, 4, 2), mining="soft", tau=tau).double()
    s, t = _gradcheck_inputs(2, b=6, ds=4, dt=4)
    loss(LossInputs(s, torch.zeros(6, dtype=torch.long), t)).backward()
    tn = t.numpy()

    def dist(x: np.ndarray) -> np.ndarray:
        return np.array([1 - x[i] @ tn[i] / np.linalg.norm(x[i]) / np.linalg.norm(tn[i]) for i in range(6)])

    x0 = s.detach().numpy().copy()
    d0 = dist(x0)
    w0 = np.exp(d0 / tau) / np.exp(d0 / tau).sum() * 6
    numeric = np.zeros_like(x0)
    eps = 1e-6
    for i in range(6):
        for j in range(4):
            hi, lo = x0.copy(), x0.copy()
            hi[i, j] += eps
            lo[i, j] -= eps
            numeric[i, j] = ((w0 * dist(hi)).sum() - (w0 * dist(lo)).sum()) / w0.sum() / (2 * eps)
    np.testing.assert_allclose(s.grad.numpy(), numeric, atol=1e-8)


def test_bad_knobs_raise_input_error():
    dims = LossDims(3, 3, 2)
    with pytest.raises(InputError, match="iled.mining"):
        ILEDLoss(dims, mining="hardest")
    with pytest.raises(InputError, match="iled.rho_end"):
        ILEDLoss(dims, rho_end=0.0)
    with pytest.raises(InputError, match="iled.tau"):
        ILEDLoss(dims, mining="soft", tau=0.0)
    with pytest.raises(ValueError, match="teacher"):
        ILEDLoss(LossDims(3, None, 2))
