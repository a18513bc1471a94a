"""MarginDistillation (Svitov & Alyamkin, arXiv 2003.02586), as the authors' MXNet ``margin_distillation``.

The student is classified by the teacher's *frozen* class centres, so it must place each face at the
angle the teacher's space expects; the ArcFace margin is per sample and larger for faces the teacher
itself puts close to their centre (losses.md §5.2):

    c_i = <normalize(t_i), Ŵ_t[y_i]>          teacher sample vs its teacher centre (no grad)
    m_i = M_min + (M_max - M_min) * c_i / max_batch(c)
    logit_ij = s*cos θ_ij ;  logit_{i,y_i} = s*cos(θ_{i,y_i} + m_i) ;  L = CE(logits, y)

As in the authors' code there is no clamp of ``m_i`` and no ``cos(π - m)`` fallback (``fallback=True``
adds insightface's fallback with the per-sample margin); ``cos θ`` is clamped to ``±(1 - eps)`` before
``arccos`` only to keep its gradient finite. ``max_batch`` is over this rank's batch, as the per-device
MXNet symbol. The student is projected to the teacher width when the widths differ.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from distill.losses.base import LossDims, LossInputs, LossTerm, Projector
from distill.losses.classifier_sharing import require_teacher_head
from distill.losses.gather import all_gather_no_grad, distributed_world
from distill.losses.partial_fc import ShardedMarginSoftmax, gather_full_weight, shard_of
from distill.models.heads import ArcFaceHead


def per_sample_margin(
    teacher: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor, margin_min: float, margin_max: float
) -> torch.Tensor:
    """``m_i`` from the teacher embeddings and the *normalised* teacher centres (no grad)."""
    with torch.no_grad():
        c = (F.normalize(teacher, dim=1) * centres[labels]).sum(dim=1)
        return margin_from_cosines(c, margin_min, margin_max)


def margin_from_cosines(c: torch.Tensor, margin_min: float, margin_max: float) -> torch.Tensor:
    """``m_i = M_min + (M_max - M_min) * c_i / max(c)`` for the teacher-to-centre cosines ``c``."""
    d_max = c.max()
    if d_max.abs() < 1e-12:  # degenerate teacher: avoid 0/0, fall back to the smallest margin
        return torch.full_like(c, margin_min)
    return margin_min + (margin_max - margin_min) * c / d_max


class MarginDistillationLoss(LossTerm):
    """ArcFace over the teacher's frozen centres with the teacher-driven per-sample margin."""

    needs_teacher = True
    needs_teacher_head = True

    def __init__(
        self,
        dims: LossDims,
        scale: float = 64.0,
        margin_max: float = 0.5,
        margin_min: float = 0.2,
        fallback: bool = False,
        eps: float = 1e-7,
        sharded: bool = False,
    ) -> None:
        super().__init__()
        weight = require_teacher_head(dims, "margin_distillation")
        if scale <= 0:
            raise ValueError(f"margin_distillation.scale: must be > 0, got {scale}")
        if margin_max < margin_min:
            raise ValueError(
                f"margin_distillation: margin_max {margin_max} must be >= margin_min {margin_min}"
            )
        self.scale = float(scale)
        self.margin_max = float(margin_max)
        self.margin_min = float(margin_min)
        self.fallback = bool(fallback)
        self.eps = float(eps)
        self.projector = Projector(dims.student_dim, int(dims.teacher_dim))
        # a buffer, not a parameter: never optimised, still checkpointed with the term
        centres = weight.detach().to(torch.promote_types(weight.dtype, torch.float32))
        self.register_buffer("centres", F.normalize(centres, dim=1))
        # Partial FC (distill/losses/margin.py): the frozen centres class-sharded by rank while training;
        # max(c) is then over the global batch (one process on that batch gives the same loss)
        self.sharded = bool(sharded)
        self.head: ShardedMarginSoftmax | None = None

    def shard(self) -> ShardedMarginSoftmax:
        """Keep only this rank's rows of the frozen centres (call after the process group is up)."""
        if self.head is None:
            full = ArcFaceHead(self.centres.shape[1], self.centres.shape[0], scale=self.scale)
            with torch.no_grad():
                full.weight.copy_(self.centres)
            full.weight.requires_grad_(False)
            self.head = shard_of(full, "arcface")
            self.centres = None  # type: ignore[assignment]  # a None buffer leaves the state_dict
        return self.head

    def unshard(self) -> None:
        """The full centres again, gathered from every rank (a collective)."""
        if self.head is not None:
            device = self.head.weight.device
            self.centres = gather_full_weight(self.head).to(device)
            self.head = None

    def _target(self, cos_y: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
        """``cos(theta_y + m_i)``, with insightface's fallback when asked (see the module docstring)."""
        theta = torch.acos(cos_y.clamp(-1.0 + self.eps, 1.0 - self.eps))
        target = torch.cos(theta + margin)
        if self.fallback:
            th = torch.cos(math.pi - margin)
            mm = torch.sin(math.pi - margin) * margin
            target = torch.where(cos_y > th, target, cos_y - mm)
        return target

    def _forward_sharded(self, inputs: LossInputs, head: ShardedMarginSoftmax) -> torch.Tensor:
        """The global batch's loss: ``c_i`` is computed where the centre of ``y_i`` lives, then shared."""
        assert inputs.teacher is not None
        with torch.no_grad():
            teacher = F.normalize(all_gather_no_grad(inputs.teacher.float()), dim=1)
            labels = all_gather_no_grad(inputs.labels.long())
            owned = (labels >= head.start) & (labels < head.end)
            c = torch.zeros(labels.shape[0], device=teacher.device)
            centres = F.normalize(head.weight[labels[owned] - head.start].float(), dim=1)
            c[owned] = (teacher[owned] * centres).sum(dim=1)
            if distributed_world() > 1:
                dist.all_reduce(c)
            margin = margin_from_cosines(c, self.margin_min, self.margin_max)
        f = self.projector(inputs.student)
        return head(f, inputs.labels, target_fn=lambda cos_y, rows: self._target(cos_y, margin[rows]))

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        if inputs.teacher is None:
            raise ValueError("margin_distillation needs the teacher embeddings (LossInputs.teacher)")
        if self.head is not None:
            return self._forward_sharded(inputs, self.head)
        f = F.normalize(self.projector(inputs.student), dim=1)
        centres = self.centres.to(f.dtype)
        labels = inputs.labels.long()
        margin = per_sample_margin(
            inputs.teacher.to(f.dtype), centres, labels, self.margin_min, self.margin_max
        )
        cos = (f @ centres.t()).clamp(-1.0, 1.0)
        index = labels.unsqueeze(1)
        cos_y = cos.gather(1, index).squeeze(1)
        target = self._target(cos_y, margin)
        logits = cos.scatter(1, index, target.unsqueeze(1)) * self.scale
        return F.cross_entropy(logits, labels)
