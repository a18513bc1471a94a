"""Margin-softmax classification losses (ArcFace, CosFace) as loss terms.

The head's class centres are trained with the model; the teacher's head is saved in its checkpoint so
later methods (classifier sharing, MarginDistillation) can reuse it.

``sharded: true`` (Partial FC, distill/losses/partial_fc.py) makes the engine swap the full head for this
rank's shard of it once the process group exists (:meth:`MarginLoss.shard`) and gather it back into a
full head when training ends (:meth:`MarginLoss.unshard`), so everything after training (the saved
``head_weight``, stage two) sees the usual full head. ``sample_rate`` < 1 samples negative centres.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses.base import LossDims, LossInputs, LossTerm
from distill.losses.partial_fc import ShardedMarginSoftmax, gather_full_weight, shard_of
from distill.models.heads import ArcFaceHead, CosFaceHead

_HEADS: dict[str, type[ArcFaceHead] | type[CosFaceHead]] = {"arcface": ArcFaceHead, "cosface": CosFaceHead}


def _general_part(inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows the classifier trains on: all, or only the uniform part of a balanced (EKD) batch."""
    if inputs.general is None:
        return inputs.student, inputs.labels
    return inputs.student[inputs.general], inputs.labels[inputs.general]


class MarginLoss(LossTerm):
    """Cross-entropy over margin logits; the head is full, or this rank's shard while training sharded."""

    kind = ""

    def __init__(
        self, dims: LossDims, scale: float, margin: float, sharded: bool = False, sample_rate: float = 1.0
    ) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if sample_rate < 1.0 and not sharded:
            raise ValueError("sample_rate < 1 samples the centres of the sharded head: set sharded: true")
        self.sharded, self.sample_rate = bool(sharded), float(sample_rate)
        head_cls = _HEADS[self.kind]
        self.head: nn.Module = head_cls(dims.student_dim, dims.num_classes, scale=scale, margin=margin)

    def shard(self) -> ShardedMarginSoftmax:
        """Replace the full head by this rank's rows of it (call after the process group is up)."""
        if not isinstance(self.head, ShardedMarginSoftmax):
            self.head = shard_of(self.head, self.kind, self.sample_rate)
        return self.head

    def unshard(self) -> None:
        """Gather every rank's rows back into a full head (a collective: every rank calls it)."""
        part = self.head
        if not isinstance(part, ShardedMarginSoftmax):
            return
        full = _HEADS[self.kind](part.embedding_dim, part.num_classes, scale=part.scale, margin=part.margin)
        with torch.no_grad():
            full.weight.copy_(gather_full_weight(part).to(full.weight))
        self.head = full.to(part.weight.device)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        emb, labels = _general_part(inputs)
        if isinstance(self.head, ShardedMarginSoftmax):
            return self.head(emb, labels)  # the global batch's exact cross-entropy
        return F.cross_entropy(self.head(emb, labels), labels)


class ArcFaceLoss(MarginLoss):
    """Cross-entropy over ArcFace logits ``s*cos(theta_y + m)`` (Deng et al.; s=64, m=0.5)."""

    kind = "arcface"

    def __init__(
        self,
        dims: LossDims,
        scale: float = 64.0,
        margin: float = 0.5,
        sharded: bool = False,
        sample_rate: float = 1.0,
    ) -> None:
        super().__init__(dims, scale, margin, sharded, sample_rate)


class CosFaceLoss(MarginLoss):
    """Cross-entropy over CosFace logits ``s*(cos(theta_y) - m)`` (Wang et al.; s=64, m=0.35)."""

    kind = "cosface"

    def __init__(
        self,
        dims: LossDims,
        scale: float = 64.0,
        margin: float = 0.35,
        sharded: bool = False,
        sample_rate: float = 1.0,
    ) -> None:
        super().__init__(dims, scale, margin, sharded, sample_rate)
