"""The contract every loss term follows, so one training loop serves every distillation method.

A loss term is an ``nn.Module`` built from ``LossDims`` and its own keyword knobs, called with a
``LossInputs`` and returning a scalar. Its parameters (margin heads, projectors) are trained with the
student; its buffers (memory banks, EMA thresholds) are checkpointed with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LossDims:
    """What a loss needs to know to build its parameters."""

    student_dim: int
    teacher_dim: int | None  # None when no teacher takes part (teacher training, no-KD baseline)
    num_classes: int
    teacher_head: torch.Tensor | None = None  # (num_classes, teacher_dim) class centres of the teacher's head
    # width of the frozen reference model's embedding (stage two: the fp32 student); None without one
    reference_dim: int | None = None


@dataclass
class LossInputs:
    """One step's tensors. ``student`` is the raw (unnormalised) student embedding, with grad."""

    student: torch.Tensor  # (B, Ds)
    labels: torch.Tensor  # (B,) int64
    teacher: torch.Tensor | None = None  # (B, Dt) cached teacher embedding of the same images, no grad
    indices: torch.Tensor | None = None  # (B,) dataset indices of the images
    step: int = 0
    general: torch.Tensor | None = None  # (B,) bool: the uniformly sampled part of a balanced batch
    # (B, Dr) the frozen reference model's embedding of the same view, no grad (stage two: the fp32 student)
    reference: torch.Tensor | None = None


class LossTerm(nn.Module):
    """Base class: set ``needs_teacher`` and implement ``forward(inputs) -> scalar``."""

    needs_teacher: bool = False
    # reads the teacher's classifier (its class centres, ``LossDims.teacher_head``): an ONNX teacher has none
    needs_teacher_head: bool = False
    # reads ``LossInputs.reference``: only a stage that trains against a frozen copy (QAT) provides one
    needs_reference: bool = False

    def forward(self, inputs: LossInputs) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class Projector(nn.Module):
    """Linear map from the student width to the teacher width (identity when they match).

    Learned with the student and dropped at export: only the backbone ships.
    """

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.proj = (
            nn.Identity() if student_dim == teacher_dim else nn.Linear(student_dim, teacher_dim, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
