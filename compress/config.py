"""Stage two's settings: NNCF INT8 quantization and quantization-aware distillation."""

from __future__ import annotations

from dataclasses import dataclass, field

from distill.config import LossSpec, TrainConfig, validate_train
from distill.errors import InputError

KEEP_CHOICES = ("best_on_dev", "qat", "ptq")


@dataclass
class QatConfig:
    """Stage two: NNCF INT8 quantization of the distilled student, then distillation with fake-quant.

    The scheme is fixed to what both targets run natively: symmetric INT8, per-channel weights,
    per-tensor activations, zero point 0 (see compress/quantize.py).
    """

    enabled: bool = True  # false: no INT8 artifacts; export uses the fp32 student only
    calibration_images: int = 256  # training images drawn (seeded) for range calibration (PTQ and QAT)
    calibration_batch: int = 32
    # activation range init: histogram (best on MobileFaceNet in shared/research/spike-qat-scales.md),
    # mean_minmax (NNCF's default) or minmax
    range_estimator: str = "histogram"
    fast_bias_correction: bool = True
    # which INT8 model ships (export reads qat.json's "shipped"): "best_on_dev" = the QAT model unless the
    # PTQ model scores higher on the data's dev sets (never on the reported val sets; the QAT model without
    # a dev set); "qat" = always the QAT model; "ptq" = the PTQ model, and no QAT fine-tuning at all (the
    # fast path when post-training quantization already keeps the fp32 accuracy)
    keep: str = "best_on_dev"
    # [] = the distill.losses of stage one (their heads/projectors start from the stage-one state)
    losses: list[LossSpec] = field(default_factory=list)
    # weight of ``fp32_anchor`` added to those terms: the INT8 model's normalised embedding pulled towards
    # its own fp32 version's on the same view (NNCF's QAT knowledge distillation, the uncompressed model as
    # teacher); 0 = off
    fp32_anchor: float = 0.0
    # lr 0.0005: the student is converged, and larger steps undo more than fake quantization costs; chosen
    # on the dev set, never the val set (benchmarks/results/qat_lr.md: 0.005 lost to PTQ there on average)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=0.3, lr=0.0005, weight_decay=5e-5, warmup_steps=0, freeze_bn=True, checkpoint_every=50
        )
    )


def validate_qat(q: QatConfig) -> None:
    validate_train("qat.train", q.train)
    if q.range_estimator not in ("histogram", "mean_minmax", "minmax"):
        raise InputError(
            f"qat.range_estimator: must be histogram, mean_minmax or minmax; got '{q.range_estimator}'"
        )
    if q.keep not in KEEP_CHOICES:
        raise InputError(f"qat.keep: must be one of {', '.join(KEEP_CHOICES)}; got '{q.keep}'")
    if not q.fp32_anchor >= 0:
        raise InputError(f"qat.fp32_anchor: a loss weight, must be >= 0; got {q.fp32_anchor}")
    if q.fp32_anchor > 0 and q.keep == "ptq":
        raise InputError("qat.fp32_anchor: qat.keep: ptq trains no QAT model, so there is nothing to anchor")
    if q.calibration_images < 1 or q.calibration_batch < 1:
        raise InputError("qat.calibration_images and qat.calibration_batch: must be >= 1")
