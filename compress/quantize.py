"""NNCF post-training quantization of a student in the one scheme both targets run natively.

TensorRT (explicit Q/DQ) and LiteRT's full-integer kernels both want symmetric INT8 with zero point 0,
per-channel weights along the output-channel axis and one scale per activation tensor (depthwise-conv
inputs included), and TensorRT has no unsigned INT8. NNCF's defaults differ on two points, set here:
``per_channel=False`` for activations and ``OverflowFix.DISABLE`` (the half-range first layer is an
Intel-CPU workaround). NNCF picks unsigned ranges after ReLU and refuses ``signedness_to_force`` under
its generic hardware config, so signedness is checked instead (:func:`scheme_problems`, and the Q/DQ
linter on the ONNX); MobileFaceNet's PReLU activations are signed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from distill.data.transforms import to_model_input
from distill.errors import InputError

SCHEME = "int8 symmetric, per-channel weights (axis 0), per-tensor signed activations, zero point 0"
RANGE_ESTIMATORS = ("histogram", "mean_minmax", "minmax")


def nncf_parameters(range_estimator: str = "histogram") -> Any:
    """NNCF's advanced parameters for :data:`SCHEME`."""
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    estimators = {
        "histogram": RangeEstimatorParametersSet.HISTOGRAM,
        "mean_minmax": RangeEstimatorParametersSet.MEAN_MINMAX,
        "minmax": RangeEstimatorParametersSet.MINMAX,
    }
    if range_estimator not in estimators:
        choices = ", ".join(RANGE_ESTIMATORS)
        raise InputError(f"qat.range_estimator: unknown '{range_estimator}'; choose one of {choices}")
    return AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.DISABLE,
        activations_quantization_params=QuantizationParameters(per_channel=False),
        activations_range_estimator_params=estimators[range_estimator],
    )


def calibration_batches(dataset: Any, images: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """``images`` training images drawn without replacement (seeded), as normalised NCHW batches."""
    if len(dataset) < images:
        raise InputError(
            f"qat.calibration_images: {images} asked, but the training set has only {len(dataset)} images"
        )
    order = np.random.default_rng(seed).choice(len(dataset), size=images, replace=False)
    batches = []
    for start in range(0, images, batch_size):
        chunk = [dataset[int(i)][0] for i in order[start : start + batch_size]]
        x = torch.from_numpy(np.stack([np.asarray(img, dtype=np.uint8) for img in chunk]))
        batches.append(to_model_input(x))
    return batches


def quantize_model(
    model: nn.Module,
    batches: list[torch.Tensor],
    *,
    range_estimator: str = "histogram",
    fast_bias_correction: bool = True,
) -> nn.Module:
    """A new NNCF-quantized copy of ``model`` (fake-quant hooks; ranges calibrated on ``batches``)."""
    import nncf

    from compress.fake_quant import use_torch_kernels

    use_torch_kernels()  # calibration and QAT run the quantizers without NNCF's C++ build
    model = model.cpu().float().eval()
    return nncf.quantize(
        model,
        nncf.Dataset(batches),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(batches),  # NNCF counts dataset items, and an item here is a batch
        fast_bias_correction=fast_bias_correction,
        advanced_parameters=nncf_parameters(range_estimator),
    )


def quantizers(qmodel: nn.Module) -> dict[str, nn.Module]:
    """NNCF's quantizer modules by hook name (``pre_hooks.<op>__1.0`` = a weight, ``post_hooks`` = output)."""
    from nncf.torch.function_hook import get_hook_storage

    return dict(get_hook_storage(qmodel).named_hooks())


def scheme_problems(qmodel: nn.Module) -> list[str]:
    """Ways the quantized model departs from :data:`SCHEME` (empty when it conforms)."""
    problems = []
    for name, q in quantizers(qmodel).items():
        qmin, qmax, scale, zp = q.get_parameters_for_torch_fq()
        is_weight = name.startswith("pre_hooks.") and name.endswith("__1.0")
        if int(q.num_bits) != 8:
            problems.append(f"{name}: {int(q.num_bits)} bits")
        if torch.any(torch.as_tensor(zp) != 0):
            problems.append(f"{name}: non-zero zero point")
        if qmin >= 0:
            problems.append(f"{name}: unsigned range [{qmin}, {qmax}]")
        if not is_weight and torch.as_tensor(scale).numel() != 1:
            problems.append(f"{name}: activation with {torch.as_tensor(scale).numel()} scales")
    return problems


def quantizer_counts(qmodel: nn.Module) -> dict[str, int]:
    """How many weight and activation quantizers NNCF placed (for the manifest)."""
    names = list(quantizers(qmodel))
    weights = sum(1 for n in names if n.startswith("pre_hooks.") and n.endswith("__1.0"))
    return {"weights": weights, "activations": len(names) - weights}
