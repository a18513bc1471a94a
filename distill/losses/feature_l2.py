"""Feature-consistency distillation: squared L2 between normalised student and teacher embeddings.

``L = mean_i || s_i/|s_i| - t_i/|t_i| ||^2`` (the "FC"/"FCD" baseline of the unified-KD and CoupleFace
papers). A student narrower than the teacher is mapped up by a learned linear projector first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LossDims, LossInputs, LossTerm, Projector


class FeatureL2Loss(LossTerm):
    needs_teacher = True

    def __init__(self, dims: LossDims) -> None:
        super().__init__()
        if dims.teacher_dim is None:
            raise ValueError("feature_l2 needs a teacher")
        self.projector = Projector(dims.student_dim, dims.teacher_dim)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        assert inputs.teacher is not None
        return normalised_l2(self.projector(inputs.student), inputs.teacher)


def normalised_l2(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``mean_i || s_i/|s_i| - t_i/|t_i| ||^2`` (= 2 - 2 cos), ``t`` taken in ``s``'s dtype."""
    s, t = F.normalize(s, dim=1), F.normalize(t.to(s.dtype), dim=1)
    return (s - t).pow(2).sum(dim=1).mean()
