"""Classifier sharing: TH-KD through the teacher's frozen ArcFace head, and the SH-KD frozen-head block."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from distill.losses.base import LossDims, LossInputs
from distill.losses.classifier_sharing import TeacherHeadLoss, frozen_head_from
from distill.models.heads import ArcFaceHead


def ref_arcface_ce(f, w, y, scale, margin):
    """Loop reference: angles via arccos, insightface fallback past pi - m, log-sum-exp by hand."""
    total = 0.0
    for i in range(len(y)):
        e = f[i] / np.linalg.norm(f[i])
        logits = []
        for j in range(len(w)):
            c = float(e @ (w[j] / np.linalg.norm(w[j])))
            if j == y[i]:
                if c > math.cos(math.pi - margin):
                    c = math.cos(math.acos(min(1.0, max(-1.0, c))) + margin)
                else:
                    c = c - math.sin(math.pi - margin) * margin
            logits.append(scale * c)
        top = max(logits)
        total += top + math.log(sum(math.exp(v - top) for v in logits)) - logits[y[i]]
    return total / len(y)


def test_hand_example():
    dims = LossDims(2, 2, 2, teacher_head=torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64))
    term = TeacherHeadLoss(dims, scale=2.0, margin=0.5)
    # embedding 30 deg from class 0's centre (60 deg from class 1's):
    # target logit 2*cos(pi/6 + 0.5), other 2*cos(pi/3); CE = log(1 + exp(other - target))
    emb = torch.tensor([[5 * math.cos(math.pi / 6), 5 * math.sin(math.pi / 6)]], dtype=torch.float64)
    got = term(LossInputs(student=emb, labels=torch.tensor([0])))
    target, other = 2.0 * math.cos(math.pi / 6 + 0.5), 2.0 * math.cos(math.pi / 3)
    assert got.item() == pytest.approx(math.log1p(math.exp(other - target)), abs=1e-12)


def test_matches_reference_with_projector_and_head_stays_frozen():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 4))
    dims = LossDims(student_dim=3, teacher_dim=4, num_classes=5, teacher_head=torch.tensor(w))
    term = TeacherHeadLoss(dims, scale=16.0, margin=0.4).double()
    x = torch.tensor(rng.normal(size=(6, 3)), requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    out = term(LossInputs(student=x, labels=y))
    proj = term.projector.proj.weight.detach().numpy()
    assert out.item() == pytest.approx(
        ref_arcface_ce(x.detach().numpy() @ proj.T, w, y.tolist(), 16.0, 0.4), rel=1e-10
    )
    out.backward()
    assert term.head.weight.grad is None and not term.head.weight.requires_grad
    assert term.projector.proj.weight.grad is not None and x.grad is not None
    np.testing.assert_array_equal(term.head.weight.detach().numpy(), w)  # a copy of the teacher centres
    assert all(p is not term.head.weight for p in term.parameters() if p.requires_grad)


def test_fallback_branch_past_pi_minus_m():
    # student opposite to its class centre: cos = -1 <= cos(pi - m) -> target cos - m*sin(m)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    term = TeacherHeadLoss(LossDims(2, 2, 2, teacher_head=w), scale=4.0, margin=0.5)
    got = term(LossInputs(student=torch.tensor([[-1.0, 0.0]], dtype=torch.float64), labels=torch.tensor([0])))
    target = 4.0 * (-1.0 - math.sin(math.pi - 0.5) * 0.5)
    other = 0.0
    assert got.item() == pytest.approx(-target + math.log(math.exp(target) + math.exp(other)), abs=1e-12)


def test_optional_kl_term_against_reference():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 3))
    dims = LossDims(3, 3, 4, teacher_head=torch.tensor(w))
    term = TeacherHeadLoss(dims, scale=8.0, margin=0.3, ce_weight=0.5, kl_weight=2.0, kl_temperature=4.0)
    s, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    y = [0, 1, 2, 3, 1]
    got = term(LossInputs(student=torch.tensor(s), labels=torch.tensor(y), teacher=torch.tensor(t))).item()

    def softmax_rows(z):
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    zs = 8.0 * (s / np.linalg.norm(s, axis=1, keepdims=True)) @ wn.T / 4.0
    zt = 8.0 * (t / np.linalg.norm(t, axis=1, keepdims=True)) @ wn.T / 4.0
    ps, pt = softmax_rows(zs), softmax_rows(zt)
    kl = float(np.sum(pt * (np.log(pt) - np.log(ps)))) / 5
    expected = 0.5 * ref_arcface_ce(s, w, y, 8.0, 0.3) + 2.0 * kl * 16.0
    assert got == pytest.approx(expected, rel=1e-10)


def test_gradcheck_float64():
    rng = np.random.default_rng(2)
    dims = LossDims(3, 4, 5, teacher_head=torch.tensor(rng.normal(size=(5, 4))))
    term = TeacherHeadLoss(dims, scale=8.0, kl_weight=1.0).double()
    x = torch.tensor(rng.normal(size=(4, 3)), requires_grad=True)
    t, y = torch.tensor(rng.normal(size=(4, 4))), torch.tensor([0, 2, 4, 1])
    assert torch.autograd.gradcheck(lambda v: term(LossInputs(student=v, labels=y, teacher=t)), (x,))


def test_missing_or_mismatched_teacher_head_is_a_clear_error():
    with pytest.raises(ValueError, match="teacher's margin head"):
        TeacherHeadLoss(LossDims(4, 4, 3))
    with pytest.raises(ValueError, match="expected \\(3, 4\\)"):
        TeacherHeadLoss(LossDims(4, 4, 3, teacher_head=torch.zeros(3, 5)))


def test_frozen_head_from_is_a_fixed_readout_for_a_training_backbone():
    w = torch.randn(6, 4, dtype=torch.float64)
    head = frozen_head_from(w, scale=10.0, margin=0.2)
    assert isinstance(head, ArcFaceHead) and head.scale == 10.0 and head.margin == 0.2
    assert not head.weight.requires_grad and head.weight.dtype == torch.float64
    torch.testing.assert_close(head.weight.detach(), w)
    assert head.weight.data_ptr() != w.data_ptr()  # a copy: the source is never touched
    # SH-KD step 2: a backbone learns in front of the frozen head; the engine optimises requires_grad params
    backbone = nn.Linear(3, 4).double()
    model = nn.ModuleDict({"backbone": backbone, "head": head})
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 6, (8,))
    before = backbone.weight.detach().clone()
    loss = nn.functional.cross_entropy(head(backbone(x), y), y)
    loss.backward()
    opt.step()
    torch.testing.assert_close(head.weight.detach(), w)
    assert not torch.equal(backbone.weight.detach(), before)
    with pytest.raises(ValueError):
        frozen_head_from(torch.zeros(4))


# ------------------------------------------------------------------------- SH-KD: student_head term
def _student_checkpoint(path, weight, head="cosface", params=None):
    from distill.models.checkpoint import save_model
    from distill.models.mobilefacenet import MobileFaceNet

    extra = {
        "head_weight": torch.as_tensor(weight, dtype=torch.float32),
        "losses": [{"name": head, "weight": 1.0, "params": params or {"scale": 16.0, "margin": 0.2}}],
    }
    save_model(
        path, MobileFaceNet(embedding_dim=weight.shape[1]), "mobilefacenet", {"embedding_dim": 4}, extra
    )
    return path


def test_student_head_is_cosface_ce_through_the_students_frozen_centres(tmp_path):
    from distill.losses import LOSSES

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4))
    ckpt = _student_checkpoint(tmp_path / "student.pt", w)
    term = LOSSES["student_head"](
        LossDims(student_dim=4, teacher_dim=None, num_classes=3), checkpoint=str(ckpt)
    )
    f = rng.normal(size=(5, 4))
    y = np.array([0, 2, 1, 1, 0])
    # hand reference: CosFace with the student's own s=16, m=0.2, centres and features L2-normalised
    total = 0.0
    for i in range(5):
        e = f[i] / np.linalg.norm(f[i])
        cos = np.array([e @ (w[j] / np.linalg.norm(w[j])) for j in range(3)])
        logits = 16.0 * (cos - 0.2 * (np.arange(3) == y[i]))
        total += np.log(np.exp(logits).sum()) - logits[y[i]]
    x = torch.tensor(f, dtype=torch.float32, requires_grad=True)
    loss = term(LossInputs(student=x, labels=torch.tensor(y), teacher=None, step=0))
    assert loss.item() == pytest.approx(total / 5, rel=1e-5)
    loss.backward()
    assert x.grad is not None and term.head.weight.grad is None  # the centres stay frozen
    assert not any(p.requires_grad for p in term.parameters())
    assert torch.allclose(term.head.weight, torch.tensor(w, dtype=torch.float32))


def test_student_head_gradient_matches_finite_differences(tmp_path):
    from distill.losses import LOSSES

    w = np.random.default_rng(1).normal(size=(3, 4))
    ckpt = _student_checkpoint(tmp_path / "s.pt", w, head="arcface", params={"scale": 8.0, "margin": 0.3})
    term = LOSSES["student_head"](LossDims(4, None, 3), checkpoint=str(ckpt)).double()
    assert term.kind == "arcface"
    x = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 1])
    assert torch.autograd.gradcheck(
        lambda t: term(LossInputs(student=t, labels=labels, teacher=None, step=0)), (x,)
    )


def test_student_head_refuses_a_width_or_class_mismatch_and_a_missing_path(tmp_path):
    from distill.config import LossSpec
    from distill.errors import InputError
    from distill.losses import build_losses

    ckpt = _student_checkpoint(tmp_path / "s.pt", np.ones((3, 4)))
    spec = [LossSpec("student_head", 1.0, {"checkpoint": str(ckpt)})]
    with pytest.raises(InputError, match="set the teacher's embedding_dim to the student's width"):
        build_losses(spec, LossDims(student_dim=512, teacher_dim=None, num_classes=3), where="teacher.losses")
    with pytest.raises(InputError, match="checkpoint: path of the trained student"):
        build_losses([LossSpec("student_head")], LossDims(4, None, 3), where="teacher.losses")
