"""MarginDistillation: per-sample margins from the teacher, frozen teacher centres, loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.losses.base import LossDims, LossInputs
from distill.losses.margin_distillation import MarginDistillationLoss, per_sample_margin


def unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_hand_example():
    centres = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)  # norms do not matter
    term = MarginDistillationLoss(LossDims(2, 2, 2, teacher_head=centres), scale=4.0)
    # teacher: sample 0 on its centre (c=1), sample 1 at 60 deg from its centre (c=.5); D_max = 1
    # margins 0.2 + 0.3*c = 0.5 and 0.35
    teacher = torch.tensor([unit(0), unit(30)], dtype=torch.float64)
    # student: sample 0 at 20 deg from centre 0 (70 from centre 1); sample 1 10 deg from centre 1 (80 from 0)
    student = torch.tensor([unit(20), unit(80)], dtype=torch.float64) * 7.0
    got = term(LossInputs(student=student, labels=torch.tensor([0, 1]), teacher=teacher)).item()
    t0, o0 = 4 * math.cos(math.radians(20) + 0.5), 4 * math.cos(math.radians(70))
    t1, o1 = 4 * math.cos(math.radians(10) + 0.35), 4 * math.cos(math.radians(80))
    expected = (math.log1p(math.exp(o0 - t0)) + math.log1p(math.exp(o1 - t1))) / 2
    assert got == pytest.approx(expected, abs=1e-12)


def test_per_sample_margin_is_normalised_by_the_batch_max_and_not_clamped():
    centres = torch.eye(2, dtype=torch.float64)
    teacher = torch.tensor([[0.8, 0.6], [0.4, math.sqrt(0.84)], [-0.2, math.sqrt(0.96)]], dtype=torch.float64)
    m = per_sample_margin(teacher, centres, torch.tensor([0, 0, 0]), margin_min=0.2, margin_max=0.5)
    # c = .8, .4, -.2 ; D_max = .8 -> .2 + .3*c/.8
    np.testing.assert_allclose(m.numpy(), [0.5, 0.35, 0.125], atol=1e-12)


def ref_loss(f, w, t, y, scale, m_min, m_max, fallback):
    def nrm(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    f, w, t = nrm(f), nrm(w), nrm(t)
    c = [float(t[i] @ w[y[i]]) for i in range(len(y))]
    total = 0.0
    for i in range(len(y)):
        m = m_min + (m_max - m_min) * c[i] / max(c)
        logits = []
        for j in range(len(w)):
            cos = float(f[i] @ w[j])
            if j == y[i]:
                if fallback and cos <= math.cos(math.pi - m):
                    cos = cos - math.sin(math.pi - m) * m
                else:
                    cos = math.cos(math.acos(cos) + m)
            logits.append(scale * cos)
        top = max(logits)
        total += top + math.log(sum(math.exp(v - top) for v in logits)) - logits[y[i]]
    return total / len(y)


def case(seed, n=7, ds=3, dt=4, classes=5):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(classes, dt))
    y = rng.integers(0, classes, size=n)
    t = w[y] + 0.7 * rng.normal(size=(n, dt))  # teacher samples near their centres: c > 0
    return rng.normal(size=(n, ds)), w, t, y


@pytest.mark.parametrize("fallback", [False, True])
def test_matches_loop_reference_with_projector(fallback):
    s, w, t, y = case(0)
    s[0] = -s[0]  # make sure some target angle is large
    dims = LossDims(3, 4, 5, teacher_head=torch.tensor(w))
    term = MarginDistillationLoss(
        dims, scale=16.0, margin_max=0.6, margin_min=0.1, fallback=fallback
    ).double()
    proj = term.projector.proj.weight.detach().numpy()
    got = term(LossInputs(student=torch.tensor(s), labels=torch.tensor(y), teacher=torch.tensor(t))).item()
    assert got == pytest.approx(ref_loss(s @ proj.T, w, t, list(y), 16.0, 0.1, 0.6, fallback), rel=1e-10)


def test_fallback_changes_only_targets_past_pi_minus_m():
    centres = torch.eye(2, dtype=torch.float64)
    teacher = torch.tensor([unit(0)], dtype=torch.float64)  # c = 1 -> m = 0.5
    student = torch.tensor([unit(175)], dtype=torch.float64)  # theta = 175 deg > pi - 0.5
    args = LossInputs(student=student, labels=torch.tensor([0]), teacher=teacher)
    plain = MarginDistillationLoss(LossDims(2, 2, 2, teacher_head=centres), scale=1.0)(args).item()
    guarded = MarginDistillationLoss(LossDims(2, 2, 2, teacher_head=centres), scale=1.0, fallback=True)(
        args
    ).item()
    other = math.cos(math.radians(85))
    no_fb = math.cos(math.radians(175) + 0.5)
    fb = math.cos(math.radians(175)) - math.sin(math.pi - 0.5) * 0.5
    assert plain == pytest.approx(math.log1p(math.exp(other - no_fb)), abs=1e-12)
    assert guarded == pytest.approx(math.log1p(math.exp(other - fb)), abs=1e-12)


def test_centres_are_frozen_buffers_and_gradcheck():
    s, w, t, y = case(1)
    dims = LossDims(3, 4, 5, teacher_head=torch.tensor(w))
    term = MarginDistillationLoss(dims, scale=8.0).double()
    assert "centres" in term.state_dict()
    assert all(p.shape != (5, 4) for p in term.parameters())  # only the projector is trained
    np.testing.assert_allclose(term.centres.numpy(), w / np.linalg.norm(w, axis=1, keepdims=True), atol=1e-12)
    x = torch.tensor(s, requires_grad=True)
    tt, yy = torch.tensor(t), torch.tensor(y)
    assert torch.autograd.gradcheck(lambda v: term(LossInputs(student=v, labels=yy, teacher=tt)), (x,))


def test_missing_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="teacher's margin head"):
        MarginDistillationLoss(LossDims(2, 2, 2))
    term = MarginDistillationLoss(LossDims(2, 2, 2, teacher_head=torch.eye(2)))
    with pytest.raises(ValueError, match="teacher embeddings"):
        term(LossInputs(student=torch.ones(1, 2), labels=torch.tensor([0])))
