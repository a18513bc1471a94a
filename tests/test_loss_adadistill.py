"""AdaDistill: α / α', the centre update and the loss against a computation written here in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.losses import LossDims, LossInputs
from distill.losses.adadistill import AdaDistillLoss, adadistill_alpha

D, C = 5, 3


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def np_alpha(s, t, w, weighted):
    a = float(unit(s) @ unit(t))
    if weighted:
        a *= min(max(float(unit(w) @ unit(t)), 1e-6), 1.0)
    return min(max(a, 1e-6), 1.0)


def term(kind="arcface", weighted=True, seed=0):
    torch.manual_seed(seed)
    return AdaDistillLoss(LossDims(student_dim=D, teacher_dim=D, num_classes=C), kind=kind, weighted=weighted)


def batch(seed=1):
    g = np.random.default_rng(seed)
    s, t = g.normal(size=(4, D)), g.normal(size=(4, D))
    labels = np.array([2, 0, 2, 1])  # class 2 twice: updated twice, in batch order
    return s, t, labels


@pytest.mark.parametrize("weighted", [True, False])
def test_alpha_and_the_centre_update_in_batch_order(weighted):
    loss = term(weighted=weighted)
    w = loss.centres.numpy().astype(np.float64).copy()
    s, t, labels = batch()
    want_alpha = []
    for i, y in enumerate(labels):  # Eq. 7 / Eq. 8, one sample after the other
        a = np_alpha(s[i], t[i], w[y], weighted)
        w[y] = a * w[y] + (1 - a) * unit(t[i])
        want_alpha.append(a)
    loss.update_centres(
        torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), torch.tensor(labels)
    )
    np.testing.assert_allclose(loss.last_alpha.numpy(), want_alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss.centres.numpy(), w, rtol=1e-5, atol=1e-6)


def test_alpha_ends_early_training_near_the_teacher_and_late_training_near_the_history():
    t = torch.tensor([[1.0, 0.0, 0.0]])
    w = torch.tensor([[0.0, 1.0, 0.0]])
    assert adadistill_alpha(-t, t, w, weighted=False).item() == pytest.approx(1e-6)  # lost: take the teacher
    assert adadistill_alpha(t, t, t, weighted=True).item() == pytest.approx(1.0)  # caught up: keep the centre
    assert adadistill_alpha(t, t, w, weighted=True).item() == pytest.approx(1e-6)  # centre off: take teacher


@pytest.mark.parametrize("kind, margin", [("arcface", 0.45), ("cosface", 0.35)])
def test_loss_value_equals_a_numpy_margin_softmax_over_the_updated_centres(kind, margin):
    loss = term(kind=kind)
    assert loss.margin == margin  # the released defaults
    s, t, labels = batch(seed=3)
    w = loss.centres.numpy().astype(np.float64).copy()
    for i, y in enumerate(labels):
        a = np_alpha(s[i], t[i], w[y], True)
        w[y] = a * w[y] + (1 - a) * unit(t[i])
    cos = np.clip(unit(s) @ unit(w).T, -1, 1)
    for i, y in enumerate(labels):
        c = cos[i, y]
        if kind == "cosface":
            cos[i, y] = c - margin
        elif c > math.cos(math.pi - margin):
            cos[i, y] = math.cos(math.acos(c) + margin)
        else:
            cos[i, y] = c - math.sin(math.pi - margin) * margin
    z = 64.0 * cos
    ce = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - z[np.arange(4), labels]
    got = loss(LossInputs(student=torch.tensor(s, dtype=torch.float32), labels=torch.tensor(labels),
                          teacher=torch.tensor(t, dtype=torch.float32)))  # fmt: skip
    assert got.item() == pytest.approx(ce.mean(), rel=1e-4)


def test_gradient_matches_finite_differences_and_evaluation_leaves_the_centres():
    loss = term(kind="cosface").double().eval()
    before = loss.centres.clone()
    s, t, labels = batch(seed=4)
    student = torch.tensor(s, requires_grad=True)

    def f(x):
        return loss(LossInputs(student=x, labels=torch.tensor(labels), teacher=torch.tensor(t)))

    assert torch.autograd.gradcheck(f, (student,), eps=1e-6, atol=1e-5)
    assert torch.equal(loss.centres, before)  # eval: no update


def test_a_student_narrower_than_the_teacher_is_projected():
    loss = AdaDistillLoss(LossDims(student_dim=3, teacher_dim=D, num_classes=C))
    out = loss(LossInputs(student=torch.randn(4, 3, requires_grad=True), labels=torch.tensor([0, 1, 2, 0]),
                          teacher=torch.randn(4, D)))  # fmt: skip
    out.backward()
    assert torch.isfinite(out) and loss.projector.proj.weight.grad is not None
    with pytest.raises(ValueError, match="kind"):
        AdaDistillLoss(LossDims(D, D, C), kind="softmax")
