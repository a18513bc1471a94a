"""NNCF's fake quantization on a CPU, in PyTorch ops: the same numbers, no C++ build, a faster backward.

NNCF runs its quantizers through C++ kernels that it compiles with torch's JIT builder on first use (a
compiler, 20 s on an idle 2-core machine, minutes on a busy one, and a lock file that an interrupted
build leaves behind: ``compress/nncf_extension.py``). Those kernels are ATen ops in C++, nothing a
Python sequence of the same ops cannot do, and their backward first recomputes the forward (about 17
passes over each activation). Here the forward is the same op sequence (bit-identical output), the
backward the same arithmetic on what the forward kept (10 passes): the input gradient is bit-identical.
The range gradient is the same products summed in one reduction, where NNCF reduces one dimension at a
time (a per-tensor scale: the batch dimension first, then autograd the rest), which on the channels-last
activations QAT trains with is a strided reduction (38x one pass over a 64x128x56x56 tensor on 2 cores,
one measurement beside other work; a quarter of a QAT step's time in a cProfile); the sums then differ
by float rounding only. ``tests/test_fake_quant.py`` checks all of it
against NNCF's own kernels, a float64 sum and NNCF's reference implementation.

Only where no CUDA GPU is present: on a GPU box NNCF stays as it ships (its CUDA kernels for the GPU,
its C++ ones for anything on the CPU), the path no facekd code changes and no CPU test could check.
``FACEKD_NNCF_CPU_KERNELS=1`` leaves NNCF as it ships on a CPU machine too (its C++ kernels, built by
``compress/nncf_extension.py``).
"""

from __future__ import annotations

import os
from typing import Any

import torch

OPT_OUT_ENV = "FACEKD_NNCF_CPU_KERNELS"  # "1": NNCF's own C++ CPU kernels instead of these


def quantize_forward(x: torch.Tensor, low: torch.Tensor, span: torch.Tensor, levels: int) -> torch.Tensor:
    """NNCF's ``Quantize_forward`` op for op: clamp to [low, low + span], round on ``levels`` steps."""
    scale = torch.full_like(span, levels - 1).div_(span)  # C++ ``scalar / tensor`` divides (Python's inverts)
    out = torch.clamp(x, low, low + span)  # = max(min(x, high), low) as span > 0 (NNCF keeps it so)
    zero_point = (-low * scale).round_()
    out -= low
    out *= scale
    out -= zero_point
    out.round_()
    return out.div_(scale)


def reduce_to(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` summed to ``ref``'s shape in one reduction (a scalar range: one pass over ``t``).

    What NNCF's C++ ``sum_like`` plus autograd's broadcast reduction compute, in another order: they
    sum one dimension at a time, which on a channels-last tensor is a strided reduction over the batch.
    """
    if ref.numel() == 1:
        return t.sum().view(ref.shape)
    lead = t.dim() - ref.dim()  # dims ``ref`` lacks are broadcast too, as autograd would sum them
    dims = [d for d in range(t.dim()) if d < lead or ref.size(d - lead) == 1]
    return t.sum(dims, keepdim=True).view(ref.shape)


def quantize_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    error: torch.Tensor,
    low: torch.Tensor,
    span: torch.Tensor,
    level_low: int,
    level_high: int,
    asymmetric: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """NNCF's ``Quantize_backward`` from the forward's ``error`` (output − input) instead of a recompute.

    Returns (grad of the input, of ``low`` when ``asymmetric``, of ``span``): straight-through inside the
    range, and NNCF's range gradient (the scaled rounding error inside, 1 above, level_low/level_high below).
    """
    alpha = (torch.tensor(level_low, dtype=x.dtype) / level_high).item()  # as the C++ computes it
    above = x.gt(low + span)
    below = x.lt(low)
    err = error.mul(torch.ones_like(span).div_(span))
    err.masked_fill_(above, 1)
    err.masked_fill_(below, alpha)
    err.mul_(grad)
    grad_span = reduce_to(err, span)
    outside = above.logical_or_(below)
    grad_input = grad.clone().masked_fill_(outside, 0)  # clone keeps the memory format, as the C++ does
    if not asymmetric:
        return grad_input, None, grad_span
    grad_low = reduce_to(grad.clone().masked_fill_(outside.logical_not_(), 0), low)
    return grad_input, grad_low, grad_span


class _Symmetric(torch.autograd.Function):
    """Replaces ``nncf.torch.quantization.quantize_functions.QuantizeSymmetric`` (same arguments)."""

    @staticmethod
    def forward(ctx: Any, x, scale, level_low, level_high, levels):  # noqa: ANN001 - autograd's signature
        if x.dtype in (torch.bfloat16, torch.float16):
            scale = scale.type(x.dtype)
        low = scale * (level_low / level_high)
        span = scale - low
        return _forward(ctx, x, low, span, levels, level_low, level_high)

    @staticmethod
    def backward(ctx: Any, grad):  # noqa: ANN001
        grad_input, _, grad_span = _backward(ctx, grad, asymmetric=False)
        return grad_input, grad_span, None, None, None  # NNCF passes the range's gradient to the scale


class _Asymmetric(torch.autograd.Function):
    """Replaces ``nncf.torch.quantization.quantize_functions.QuantizeAsymmetric`` (same arguments)."""

    @staticmethod
    def forward(ctx: Any, x, low, span, level_low, level_high, levels):  # noqa: ANN001
        if x.dtype in (torch.bfloat16, torch.float16):
            low, span = low.type(x.dtype), span.type(x.dtype)
        return _forward(ctx, x, low, span, levels, level_low, level_high)

    @staticmethod
    def backward(ctx: Any, grad):  # noqa: ANN001
        return (*_backward(ctx, grad, asymmetric=True), None, None, None)


def _forward(ctx: Any, x, low, span, levels, level_low, level_high) -> torch.Tensor:  # noqa: ANN001
    ctx.level_low, ctx.level_high = level_low, level_high
    out = quantize_forward(x, low, span, levels)
    ctx.save_for_backward(x, out - x, low, span)
    return out


def _backward(ctx: Any, grad: torch.Tensor, asymmetric: bool) -> tuple[Any, Any, Any]:
    x, error, low, span = ctx.saved_tensors
    return quantize_backward(grad, x, error, low, span, ctx.level_low, ctx.level_high, asymmetric)


def use_torch_kernels() -> bool:
    """Route NNCF's quantizers through this module on a machine without a CUDA GPU (unless
    ``FACEKD_NNCF_CPU_KERNELS=1``); idempotent.

    Returns whether they are in use. NNCF's ``symmetric_quantize`` and ``asymmetric_quantize`` look their
    autograd classes up in their module at every call: replacing those two names is the whole change
    (private API, hence :func:`nncf_quantize_functions` checks what it replaces and fails loudly).
    """
    if os.environ.get(OPT_OUT_ENV) == "1" or torch.cuda.is_available():
        return False
    module = nncf_quantize_functions()
    module.QuantizeSymmetric = _Symmetric
    module.QuantizeAsymmetric = _Asymmetric
    return True


def nncf_quantize_functions() -> Any:
    """NNCF's ``quantize_functions`` module, checked to still call its autograd classes by these names."""
    from nncf.torch.quantization import quantize_functions as module

    pairs = (("symmetric_quantize", "QuantizeSymmetric"), ("asymmetric_quantize", "QuantizeAsymmetric"))
    for fn, cls in pairs:
        names = getattr(getattr(module, fn, None), "__code__", None)
        if names is None or cls not in names.co_names or not hasattr(module, cls):
            raise RuntimeError(
                f"NNCF changed: nncf.torch.quantization.quantize_functions.{fn} no longer calls {cls}; "
                f"update compress/fake_quant.py or set {OPT_OUT_ENV}=1"
            )
    return module
