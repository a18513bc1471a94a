"""Margin-softmax classification losses (ArcFace, CosFace) as loss terms.

The head's class centres are trained with the model; the teacher's head is saved in its checkpoint so
later methods (classifier sharing, MarginDistillation) can reuse it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LossDims, LossInputs, LossTerm
from distill.models.heads import ArcFaceHead, CosFaceHead


def _general_part(inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows the classifier trains on: all, or only the uniform part of a balanced (EKD) batch."""
    if inputs.general is None:
        return inputs.student, inputs.labels
    return inputs.student[inputs.general], inputs.labels[inputs.general]


class ArcFaceLoss(LossTerm):
    """Cross-entropy over ArcFace logits ``s*cos(theta_y + m)`` (Deng et al.; s=64, m=0.5)."""

    def __init__(self, dims: LossDims, scale: float = 64.0, margin: float = 0.5) -> None:
        super().__init__()
        self.head = ArcFaceHead(dims.student_dim, dims.num_classes, scale=scale, margin=margin)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        emb, labels = _general_part(inputs)
        return F.cross_entropy(self.head(emb, labels), labels)


class CosFaceLoss(LossTerm):
    """Cross-entropy over CosFace logits ``s*(cos(theta_y) - m)`` (Wang et al.; s=64, m=0.35)."""

    def __init__(self, dims: LossDims, scale: float = 64.0, margin: float = 0.35) -> None:
        super().__init__()
        self.head = CosFaceHead(dims.student_dim, dims.num_classes, scale=scale, margin=margin)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        emb, labels = _general_part(inputs)
        return F.cross_entropy(self.head(emb, labels), labels)
