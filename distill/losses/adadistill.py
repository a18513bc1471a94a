"""AdaDistill (Boutros, Štruc, Damer, ECCV 2024; code ``fdbtrs/AdaDistill``): class centres made of the
teacher's embeddings, with the amount of teacher knowledge set per sample by the student's own progress.

The centres are not learned by gradient. Every training step, before the loss, each sample moves the
centre of its class towards its normalised teacher embedding (losses.md §6.1):

    w_y <- α w_y + (1 − α) t̂                      (Eq. 7: α = clamp(cos(s, t), 1e-6, 1))
    α'  = clamp(cos(s, t) · clamp(cos(w_y, t), 1e-6, 1), 1e-6, 1)        (Eq. 8, ``weighted``, default)

Early in training cos(s, t) is small: the centre is nearly the teacher embedding (an easy target); as the
student catches up the centre keeps more of its history. The student is then trained with ArcFace
(s=64, m=0.45, the released config) or CosFace (m=0.35) against the normalised centres. No extra
hyper-parameter beyond the margin loss's own.

Where our reading differs from the public code, on purpose: with several samples of one class in a batch
the code keeps one arbitrary write; here they are applied one after another in batch order (the global
batch under torchrun, identical on every rank). The student is projected to the teacher's width when the
widths differ (the paper's student has the teacher's 512-d). Centres start as the code's N(0, 0.01)
and are updated only in training mode, so evaluation leaves them as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LossDims, LossInputs, LossTerm, Projector
from distill.losses.gather import all_gather_no_grad
from distill.models.heads import margin_target

ALPHA_FLOOR = 1e-6


def adadistill_alpha(
    student: torch.Tensor, teacher: torch.Tensor, centres: torch.Tensor, weighted: bool
) -> torch.Tensor:
    """α (Eq. 7) or α' (Eq. 8) per sample; ``centres`` are each sample's current class centre."""
    a = F.cosine_similarity(student, teacher, dim=1)
    if weighted:
        a = a * F.cosine_similarity(centres, teacher, dim=1).clamp(ALPHA_FLOOR, 1.0)
    return a.clamp(ALPHA_FLOOR, 1.0)


class AdaDistillLoss(LossTerm):
    """Margin softmax over centres that track the teacher embeddings (AdaArcDistill / AdaCosDistill)."""

    needs_teacher = True

    def __init__(
        self, dims: LossDims, kind: str = "arcface", scale: float = 64.0, margin: float | None = None,
        weighted: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ValueError(f"adadistill.kind: must be 'arcface' or 'cosface', got {kind!r}")
        if scale <= 0:
            raise ValueError(f"adadistill.scale: must be > 0, got {scale}")
        self.kind, self.scale, self.weighted = kind, float(scale), bool(weighted)
        self.margin = float(margin if margin is not None else (0.45 if kind == "arcface" else 0.35))
        self.projector = Projector(dims.student_dim, int(dims.teacher_dim))
        # the code's kernel, N(0, 0.01), stored as rows; a buffer: moved by the rule above, not by SGD
        self.register_buffer("centres", torch.empty(dims.num_classes, int(dims.teacher_dim)).normal_(0, 0.01))
        self.last_alpha: torch.Tensor | None = None  # the step's α, for logs and tests

    @torch.no_grad()
    def update_centres(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> None:
        """Apply the update of every sample of the (global) batch in order; records the α used."""
        t_hat = F.normalize(teacher.float(), dim=1)
        alphas = torch.empty(labels.shape[0], device=labels.device)
        for i, y in enumerate(labels.tolist()):  # in order: a class seen twice moves twice
            w = self.centres[y]
            alpha = adadistill_alpha(
                student[i : i + 1].float(), teacher[i : i + 1].float(), w[None], self.weighted
            )
            self.centres[y] = alpha * w + (1.0 - alpha) * t_hat[i]
            alphas[i] = alpha
        self.last_alpha = alphas

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        if inputs.teacher is None:
            raise ValueError("adadistill needs the teacher embeddings (LossInputs.teacher)")
        s = self.projector(inputs.student)
        labels = inputs.labels.long()
        if self.training:  # the whole global batch moves the centres, the same way on every rank
            self.update_centres(
                all_gather_no_grad(s.detach()), all_gather_no_grad(inputs.teacher), all_gather_no_grad(labels)
            )
        cos = (F.normalize(s, dim=1) @ F.normalize(self.centres.to(s.dtype), dim=1).t()).clamp(-1.0, 1.0)
        index = labels.unsqueeze(1)
        logits = (
            cos.scatter(1, index, margin_target(self.kind, cos.gather(1, index), self.margin)) * self.scale
        )
        return F.cross_entropy(logits, labels)
