"""Stage two's anchor: squared L2 between the normalised embeddings of the INT8 (fake-quant) student and
of its own frozen fp32 version on the same view, ``L = mean_i || q_i/|q_i| - r_i/|r_i| ||^2 = 2 - 2 cos``.

Quantization-aware training with the full-precision model as teacher is the QAT recipe of NNCF's
``knowledge_distillation`` algorithm (type ``mse``, the uncompressed model as teacher) and of Intel
Neural Compressor's distillation for quantization: it makes fine-tuning repair what rounding changed
rather than re-learn the task. Embeddings are compared normalised because verification reads cosines.
"""

from __future__ import annotations

import torch

from distill.losses.base import LossDims, LossInputs, LossTerm
from distill.losses.feature_l2 import normalised_l2


class FP32AnchorLoss(LossTerm):
    needs_reference = True

    def __init__(self, dims: LossDims) -> None:
        super().__init__()
        if dims.reference_dim is None:
            raise ValueError(
                "fp32_anchor needs the fp32 model as reference (stage two only: qat.fp32_anchor)"
            )
        if dims.reference_dim != dims.student_dim:
            raise ValueError(
                f"fp32_anchor: reference width {dims.reference_dim} differs from the student's "
                f"{dims.student_dim}"
            )

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        assert inputs.reference is not None
        return normalised_l2(inputs.student, inputs.reference)  # feature L2's formula, fp32 as target
