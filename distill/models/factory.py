"""Backbone names -> constructors: the one place configs and checkpoints turn a name into a model."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from distill.errors import InputError
from distill.models.iresnet import iresnet18, iresnet50, iresnet100
from distill.models.mobilefacenet import MobileFaceNet

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "mobilefacenet": MobileFaceNet,
    "iresnet18": iresnet18,
    "iresnet50": iresnet50,
    "iresnet100": iresnet100,
}


def build_backbone(name: str, embedding_dim: int, **kwargs) -> nn.Module:
    """Construct backbone ``name``; InputError for unknown names or options it does not take."""
    if name not in BACKBONES:
        raise InputError(f"unknown model '{name}'; choose one of {', '.join(sorted(BACKBONES))}")
    try:
        return BACKBONES[name](embedding_dim=embedding_dim, **kwargs)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"model '{name}': bad options {kwargs | {'embedding_dim': embedding_dim}}: {exc}"
        ) from exc
