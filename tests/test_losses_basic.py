"""Feature-consistency and margin loss terms: values pinned by independent numpy/loop computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.config import LossSpec
from distill.errors import InputError
from distill.losses import LossDims, LossInputs, build_losses
from distill.losses.feature_l2 import FeatureL2Loss
from distill.losses.margin import ArcFaceLoss


def test_feature_l2_value_by_hand():
    s = np.array([[3.0, 4.0], [1.0, 0.0]])
    t = np.array([[0.0, 2.0], [0.0, -5.0]])
    # normalised: s1=(.6,.8) t1=(0,1) -> |.6,-.2|^2 = .36+.04 = .40 ; s2=(1,0) t2=(0,-1) -> 1+1 = 2
    expected = (0.40 + 2.0) / 2
    loss = FeatureL2Loss(LossDims(2, 2, 3))
    got = loss(LossInputs(student=torch.tensor(s), labels=torch.tensor([0, 1]), teacher=torch.tensor(t)))
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_feature_l2_projector_when_widths_differ_and_gradcheck():
    torch.manual_seed(0)
    loss = FeatureL2Loss(LossDims(student_dim=3, teacher_dim=5, num_classes=2)).double()
    w = loss.projector.proj.weight  # (5, 3) learned map
    s = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, dtype=torch.float64)
    # independent: explicit per-row loop
    ref = 0.0
    for i in range(4):
        p = (w @ s[i]).detach().numpy()
        p = p / np.linalg.norm(p)
        q = t[i].numpy() / np.linalg.norm(t[i].numpy())
        ref += float(((p - q) ** 2).sum())
    out = loss(LossInputs(student=s, labels=torch.zeros(4, dtype=torch.long), teacher=t))
    assert out.item() == pytest.approx(ref / 4, rel=1e-9)

    def f(x):
        return FeatureL2Loss.forward(
            loss, LossInputs(student=x, labels=torch.zeros(4, dtype=torch.long), teacher=t)
        )

    assert torch.autograd.gradcheck(f, (s,))


def test_arcface_loss_equals_cross_entropy_by_hand():
    torch.manual_seed(1)
    loss = ArcFaceLoss(LossDims(4, None, 3), scale=8.0, margin=0.3)
    emb = torch.randn(2, 4)
    labels = torch.tensor([2, 0])
    w = loss.head.weight.detach().numpy()
    total = 0.0
    for i in range(2):
        e = emb[i].numpy() / np.linalg.norm(emb[i].numpy())
        cos = [float(e @ (w[j] / np.linalg.norm(w[j]))) for j in range(3)]
        y = int(labels[i])
        theta = math.acos(max(-1.0, min(1.0, cos[y])))
        logits = [8.0 * c for c in cos]
        logits[y] = (
            8.0 * math.cos(theta + 0.3) if theta + 0.3 < math.pi else 8.0 * (cos[y] - 0.3 * math.sin(0.3))
        )
        total += -logits[y] + math.log(sum(math.exp(v) for v in logits))
    got = loss(LossInputs(student=emb, labels=labels)).item()
    assert got == pytest.approx(total / 2, rel=1e-5)


def test_build_losses_by_name_and_errors():
    dims = LossDims(8, 16, 5)
    terms = build_losses(
        [LossSpec("arcface", 1.0), LossSpec("feature_l2", 2.0), LossSpec("arcface", 0.5)], dims
    )
    assert list(terms.keys()) == ["arcface", "feature_l2", "arcface#2"]
    with pytest.raises(InputError, match=r"losses\[0\].name: unknown loss 'l3'"):
        build_losses([LossSpec("l3")], dims)
    with pytest.raises(InputError, match="needs a teacher"):
        build_losses([LossSpec("feature_l2")], LossDims(8, None, 5))
    with pytest.raises(InputError, match=r"losses\[0\].params"):
        build_losses([LossSpec("arcface", 1.0, {"margn": 0.2})], dims)
