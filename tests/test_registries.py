"""Shared checks over the registries: every loss term in LOSSES and every backbone in BACKBONES gets them
automatically, so a new entry cannot skip them. Method-specific values live in each term's own test file.
"""

from __future__ import annotations

import io

import pytest
import torch

from distill.losses import LOSSES, LossDims, LossInputs
from distill.models.checkpoint import load_model, save_model
from distill.models.factory import BACKBONES, build_backbone

B, DS, DT, C = 12, 8, 10, 4


def _head_checkpoint(tmp_path) -> str:
    """A student checkpoint with a trained margin head: what student_head (SH-KD step 2) reads."""
    model = build_backbone("mobilefacenet", embedding_dim=DT)
    path = tmp_path / "student.pt"
    head = torch.nn.functional.normalize(torch.randn(C, DT), dim=1)
    save_model(
        path,
        model,
        "mobilefacenet",
        {"embedding_dim": DT},
        extra={"head_weight": head, "head_kind": "arcface"},
    )
    return str(path)


def _dims(name: str) -> LossDims:
    """What each term is built with: teacher terms see a wider teacher; the no-teacher terms do not."""
    if name == "student_head":  # SH-KD step 2: the teacher trains through a student's head, no teacher
        return LossDims(student_dim=DT, teacher_dim=None, num_classes=C)
    if LOSSES[name].needs_reference:  # stage two's anchor: the student's own fp32 version as reference
        return LossDims(student_dim=DS, teacher_dim=None, num_classes=C, reference_dim=DS)
    if not getattr(LOSSES[name], "needs_teacher", False):
        return LossDims(student_dim=DS, teacher_dim=None, num_classes=C)
    head = torch.nn.functional.normalize(torch.randn(C, DT), dim=1)
    return LossDims(student_dim=DS, teacher_dim=DT, num_classes=C, teacher_head=head)


def _term(name: str, dims: LossDims, tmp_path) -> torch.nn.Module:
    params = {"checkpoint": _head_checkpoint(tmp_path)} if name == "student_head" else {}
    return LOSSES[name](dims, **params)


def _inputs(dims: LossDims, seed: int = 0) -> LossInputs:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(B) % C
    student = torch.randn(B, dims.student_dim, generator=g, requires_grad=True)
    teacher = torch.randn(B, DT, generator=g)
    reference = torch.randn(B, dims.student_dim, generator=g)
    return LossInputs(
        student=student, labels=labels, teacher=teacher, indices=torch.arange(B), step=1, reference=reference
    )


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_term_gives_a_finite_scalar_with_a_gradient_and_survives_a_state_dict(name, tmp_path):
    torch.manual_seed(0)
    dims = _dims(name)
    term = _term(name, dims, tmp_path)
    term.train()
    inputs = _inputs(dims)
    loss = term(inputs)
    assert loss.ndim == 0 and torch.isfinite(loss), name
    loss.backward()
    assert inputs.student.grad is not None and torch.isfinite(inputs.student.grad).all(), name
    assert inputs.student.grad.abs().sum() > 0, f"{name}: no gradient reaches the student embedding"

    buf = io.BytesIO()  # the engine checkpoints every term's state (heads, projectors, memory banks)
    torch.save(term.state_dict(), buf)
    buf.seek(0)
    again = _term(name, dims, tmp_path)
    again.load_state_dict(torch.load(buf, weights_only=True))
    term.eval(), again.eval()
    probe = _inputs(dims, seed=1)
    torch.testing.assert_close(term(probe), again(probe), msg=name)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_embeds_112_crops_and_round_trips_its_checkpoint(name, tmp_path):
    torch.manual_seed(0)
    kwargs = {"base_width": 4} if name.startswith("iresnet") else {}
    model = build_backbone(name, embedding_dim=16, **kwargs).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 16) and torch.isfinite(out).all()
        torch.testing.assert_close(model(x[:1]), out[:1], rtol=1e-4, atol=1e-4)  # rows independent
    path = tmp_path / f"{name}.pt"
    save_model(path, model, name, {"embedding_dim": 16, **kwargs})
    loaded, meta = load_model(path)
    assert meta["arch"] == name
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out)
