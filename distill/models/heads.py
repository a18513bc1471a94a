"""Margin-softmax classification heads (ArcFace, CosFace) that turn embeddings into training logits.

Both hold class centres ``weight`` of shape (num_classes, D). ``forward`` returns scaled logits with the
margin applied to each sample's target class only; feed them to plain ``F.cross_entropy``.
``cosine`` returns the margin-free, unscaled cosine matrix (for teacher-head KD and for monitoring).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def arcface_target(cos_target: torch.Tensor, margin: float) -> torch.Tensor:
    """ArcFace's target logit ``cos(theta + m)`` with insightface's non-easy-margin fallback (see
    :class:`ArcFaceHead`); every ArcFace-style term (sharded head, AdaDistill) uses this one."""
    # clamp keeps the sqrt derivative finite at cos = +-1.
    sin_target = torch.sqrt((1.0 - cos_target * cos_target).clamp_min(1e-12))
    with_margin = cos_target * math.cos(margin) - sin_target * math.sin(margin)
    th, mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin
    return torch.where(cos_target > th, with_margin, cos_target - mm)


def margin_target(kind: str, cos_target: torch.Tensor, margin: float) -> torch.Tensor:
    """The target logit of an ``arcface`` or ``cosface`` head (``cos - m``) before scaling."""
    return arcface_target(cos_target, margin) if kind == "arcface" else cos_target - margin


class _MarginHead(nn.Module):
    def __init__(self, embedding_dim: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        if embedding_dim < 1 or num_classes < 1:
            raise ValueError(
                f"embedding_dim and num_classes must be positive, got {embedding_dim}, {num_classes}"
            )
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.scale = float(scale)
        self.margin = float(margin)
        # insightface PartialFC initialises the centres with N(0, 0.01); only their direction matters.
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim).normal_(0.0, 0.01))

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, C) cosines between L2-normalised embeddings and class centres; no margin, no scale."""
        cos = F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=1).t()
        return cos.clamp(-1.0, 1.0)

    def _target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits (B, C): ``scale * cos`` with the target column replaced by its margin version."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"embeddings must be (B, {self.embedding_dim}), got {tuple(embeddings.shape)}")
        if labels.shape != (embeddings.shape[0],):
            raise ValueError(f"labels must be ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        cos = self.cosine(embeddings)
        index = labels.long().unsqueeze(1)
        target = self._target_logit(cos.gather(1, index))
        return cos.scatter(1, index, target) * self.scale

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, "
            f"scale={self.scale}, margin={self.margin}"
        )


class ArcFaceHead(_MarginHead):
    """Additive angular margin: target logit ``cos(theta + m)``.

    Non-easy-margin handling as insightface ``CombinedMarginLoss`` (the ``th``/``mm`` trick): when
    ``theta + m > pi`` (i.e. ``cos theta <= cos(pi - m)``), ``cos(theta + m)`` would stop decreasing in
    theta, so the target logit becomes the CosFace-like ``cos theta - m sin m`` instead, which keeps the
    logit monotone and continuous at the switch point.
    """

    def __init__(
        self, embedding_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.5
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale, margin)

    def _target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return arcface_target(cos_target, self.margin)


class CosFaceHead(_MarginHead):
    """Additive cosine margin: target logit ``cos theta - m``."""

    def __init__(
        self, embedding_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.35
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale, margin)

    def _target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.margin
