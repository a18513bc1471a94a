"""Loss terms selected by name from the config: ``losses: [{name: arcface, weight: 1}, ...]``."""

from __future__ import annotations

from torch import nn

from distill.config import LossSpec
from distill.errors import InputError
from distill.losses.adadistill import AdaDistillLoss
from distill.losses.base import LossDims, LossInputs, LossTerm
from distill.losses.classifier_sharing import StudentHeadLoss, TeacherHeadLoss
from distill.losses.coupleface import CoupleFaceLoss
from distill.losses.ekd import EKDLoss
from distill.losses.feature_l2 import FeatureL2Loss
from distill.losses.fp32_anchor import FP32AnchorLoss
from distill.losses.gkd import GKDLoss
from distill.losses.iled import ILEDLoss
from distill.losses.margin import ArcFaceLoss, CosFaceLoss
from distill.losses.margin_distillation import MarginDistillationLoss
from distill.losses.rpsd import RPSDLoss

# name in the config -> loss term class (each module's docstring gives the formula and its source)
LOSSES: dict[str, type[LossTerm]] = {
    "arcface": ArcFaceLoss,
    "cosface": CosFaceLoss,
    "feature_l2": FeatureL2Loss,
    "iled": ILEDLoss,
    "rpsd": RPSDLoss,
    "ekd": EKDLoss,
    "coupleface": CoupleFaceLoss,
    "teacher_head": TeacherHeadLoss,
    "student_head": StudentHeadLoss,
    "margin_distillation": MarginDistillationLoss,
    "adadistill": AdaDistillLoss,
    "gkd": GKDLoss,
    "fp32_anchor": FP32AnchorLoss,  # stage two only: pulls the INT8 model to its own fp32 version
}

__all__ = ["LOSSES", "LossDims", "LossInputs", "LossTerm", "build_losses"]


def build_losses(specs: list[LossSpec], dims: LossDims, where: str = "losses") -> nn.ModuleDict:
    """Instantiate the named terms; the dict keys are the names (``name#2`` for a repeated name)."""
    if not specs:
        raise InputError(f"{where}: at least one loss term is required")
    terms = nn.ModuleDict()
    for i, spec in enumerate(specs):
        if spec.name not in LOSSES:
            raise InputError(
                f"{where}[{i}].name: unknown loss '{spec.name}'; choose one of {', '.join(LOSSES)}"
            )
        cls = LOSSES[spec.name]
        if cls.needs_teacher and dims.teacher_dim is None:
            raise InputError(f"{where}[{i}]: loss '{spec.name}' needs a teacher, and this run has none")
        if cls.needs_reference and dims.reference_dim is None:
            raise InputError(
                f"{where}[{i}]: loss '{spec.name}' compares the INT8 model with its fp32 version, which only "
                "stage two has (set qat.fp32_anchor, or name it in qat.losses)"
            )
        try:
            term = cls(dims, **spec.params)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}[{i}].params: {exc}") from None
        key = spec.name if spec.name not in terms else f"{spec.name}#{i}"
        terms[key] = term
    return terms
