"""Classifier sharing ("It's All in the Head", Ben-Baruch et al., arXiv 2201.06945) for face models.

The teacher's classifier encodes where its embedding space puts each identity; making the student be
readable by that classifier pulls the student's embedding into the teacher's geometry (losses.md §4).

TH-KD (teacher-head KD), ``TeacherHeadLoss``: the teacher's trained margin head, frozen, is applied to
the student embedding (projected to the teacher width when the widths differ) and trained with ArcFace
cross-entropy -- the face form of TH-KD, identical to AdaDistill's "ArcDistill" baseline. The public
code is CIFAR-only and also adds ``KL(softmax(z_t/T) || softmax(h_t(f_s)/T))·T²`` with the teacher's own
logits; that term is available here with ``kl_weight > 0`` (default 0: the face code was never released,
so its face weights are unknown). Use it next to the student's own ``arcface`` term.

SH-KD (student-head KD, a "student-aware" teacher), ``StudentHeadLoss`` (``student_head``), is a
two-run recipe (docs/distillation.md, "SH-KD"):

1. Train a student normally (any run: its checkpoint keeps the trained margin head ``W_s``, C x D_s).
2. Train the teacher with ``student_head`` as its only loss, pointing at that checkpoint: the frozen
   ``W_s`` is the teacher's classifier, cross-entropy only, so the teacher backbone learns an embedding
   the student's head can read (the teacher's width must equal D_s).
3. Distil a fresh student from that teacher with any representation-KD term (``feature_l2``, ``ekd``...)
   -- in the same run as step 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LossDims, LossInputs, LossTerm, Projector
from distill.losses.partial_fc import ShardedMarginSoftmax, gather_full_weight, shard_of
from distill.models.heads import ArcFaceHead, CosFaceHead


def frozen_head_from(weight: torch.Tensor, scale: float = 64.0, margin: float = 0.5) -> ArcFaceHead:
    """An ArcFace head holding a copy of ``weight`` (C, D) with ``requires_grad`` off.

    The optimiser filters on ``requires_grad``, so the centres stay exactly as given while the
    backbone in front of them trains; they are still saved in ``state_dict`` for an exact resume.
    """
    if weight.ndim != 2 or weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(f"head weight must be a (num_classes, dim) matrix, got shape {tuple(weight.shape)}")
    dtype = torch.promote_types(weight.dtype, torch.float32)  # float64 centres stay float64
    head = ArcFaceHead(int(weight.shape[1]), int(weight.shape[0]), scale=scale, margin=margin).to(dtype)
    with torch.no_grad():
        head.weight.copy_(weight.detach())
    head.weight.requires_grad_(False)
    return head


def require_teacher_head(dims: LossDims, name: str) -> torch.Tensor:
    """``dims.teacher_head`` checked against (num_classes, teacher_dim); a clear error when absent."""
    if dims.teacher_head is None or dims.teacher_dim is None:
        raise ValueError(
            f"{name} needs the teacher's margin head (class centres); the teacher checkpoint has none"
        )
    expected = (dims.num_classes, dims.teacher_dim)
    if tuple(dims.teacher_head.shape) != expected:
        raise ValueError(
            f"{name}: teacher head has shape {tuple(dims.teacher_head.shape)}, expected {expected} "
            "(num_classes, teacher_dim): was the teacher trained on this dataset?"
        )
    return dims.teacher_head


class TeacherHeadLoss(LossTerm):
    """TH-KD: ArcFace cross-entropy of the (projected) student through the teacher's frozen head."""

    needs_teacher = True
    needs_teacher_head = True

    def __init__(
        self,
        dims: LossDims,
        scale: float = 64.0,
        margin: float = 0.5,
        ce_weight: float = 1.0,
        kl_weight: float = 0.0,
        kl_temperature: float = 4.0,
        sharded: bool = False,
    ) -> None:
        super().__init__()
        weight = require_teacher_head(dims, "teacher_head loss")
        if kl_temperature <= 0:
            raise ValueError(f"teacher_head.kl_temperature: must be > 0, got {kl_temperature}")
        if sharded and kl_weight:
            # the KL term needs both full softmaxes; the sharded head completes only the cross-entropy
            raise ValueError("teacher_head: sharded: true needs kl_weight 0")
        self.sharded = bool(sharded)
        self.head = frozen_head_from(weight, scale=scale, margin=margin)
        self.projector = Projector(dims.student_dim, int(dims.teacher_dim))
        self.ce_weight = float(ce_weight)
        self.kl_weight = float(kl_weight)
        self.kl_temperature = float(kl_temperature)

    def shard(self) -> ShardedMarginSoftmax:
        """Keep only this rank's rows of the frozen teacher head (Partial FC, as distill/losses/margin.py)."""
        if not isinstance(self.head, ShardedMarginSoftmax):
            self.head = shard_of(self.head, "arcface")
        return self.head

    def unshard(self) -> None:
        """The full frozen head again, gathered from every rank (a collective)."""
        part = self.head
        if isinstance(part, ShardedMarginSoftmax):
            full = frozen_head_from(gather_full_weight(part), scale=part.scale, margin=part.margin)
            self.head = full.to(part.weight.device)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        f = self.projector(inputs.student)
        head = self.head
        if isinstance(head, ShardedMarginSoftmax):
            return self.ce_weight * head(f, inputs.labels)  # the global batch's exact cross-entropy
        loss = self.ce_weight * F.cross_entropy(head(f, inputs.labels), inputs.labels)
        if self.kl_weight:
            if inputs.teacher is None:
                raise ValueError("teacher_head with kl_weight > 0 needs the teacher embeddings")
            temp = self.kl_temperature
            z_s = head.cosine(f) * head.scale / temp
            with torch.no_grad():
                z_t = head.cosine(inputs.teacher.to(f.dtype)) * head.scale / temp
            kl = F.kl_div(
                F.log_softmax(z_s, dim=1), F.log_softmax(z_t, dim=1), log_target=True, reduction="batchmean"
            )
            loss = loss + self.kl_weight * kl * temp * temp
        return loss


class StudentHeadLoss(LossTerm):
    """SH-KD step 2: margin cross-entropy of the model being trained through a student's frozen head.

    ``checkpoint`` is a facekd student checkpoint whose ``extra.head_weight`` holds its trained margin
    head; ``kind``/``scale``/``margin`` default to the head the student was trained with (CosFace or
    ArcFace, recorded in the checkpoint), so the teacher is judged by the student's own decision rule.
    """

    needs_teacher = False

    def __init__(
        self,
        dims: LossDims,
        checkpoint: str = "",
        kind: str = "",
        scale: float = 0.0,
        margin: float = -1.0,
    ) -> None:
        super().__init__()
        from distill.models.checkpoint import load_model

        if not checkpoint:
            raise ValueError(
                "student_head.checkpoint: path of the trained student (step 1 of SH-KD) required"
            )
        _, meta = load_model(checkpoint)
        extra = meta.get("extra") or {}
        weight = extra.get("head_weight")
        if weight is None:
            raise ValueError(f"student_head.checkpoint: {checkpoint} holds no trained margin head")
        expected = (dims.num_classes, dims.student_dim)
        if tuple(weight.shape) != expected:
            raise ValueError(
                f"student_head: the student's head is {tuple(weight.shape)} (classes x width), but this "
                f"model has {dims.student_dim}-d embeddings and the data {dims.num_classes} classes: set the "
                "teacher's embedding_dim to the student's width and use the same training set"
            )
        trained = next((s for s in extra.get("losses", []) if s.get("name") in ("arcface", "cosface")), {})
        kind = kind or trained.get("name", "arcface")
        if kind not in ("arcface", "cosface"):
            raise ValueError(f"student_head.kind: must be arcface or cosface, got '{kind}'")
        params = trained.get("params", {}) if trained.get("name") == kind else {}
        default_scale, default_margin = (64.0, 0.5) if kind == "arcface" else (64.0, 0.35)
        scale = scale or float(params.get("scale", default_scale))
        margin = margin if margin >= 0 else float(params.get("margin", default_margin))
        cls = ArcFaceHead if kind == "arcface" else CosFaceHead
        self.head = cls(int(weight.shape[1]), int(weight.shape[0]), scale=scale, margin=margin)
        with torch.no_grad():
            self.head.weight.copy_(weight.detach().to(self.head.weight.dtype))
        self.head.weight.requires_grad_(False)
        self.kind = kind

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return F.cross_entropy(self.head(inputs.student, inputs.labels), inputs.labels)
