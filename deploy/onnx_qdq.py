"""INT8 Q/DQ ONNX for TensorRT from an NNCF-quantized model, linted before it is written.

NNCF's own export path: ``nncf.strip(..., StripFormat.NATIVE)`` turns its quantizers into torch
FakeQuantize modules, which the TorchScript exporter writes as standard QuantizeLinear/DequantizeLinear
pairs (the dynamo exporter fails on them: shared/research/deploy.md §1.3). The result must pass the
TensorRT rules of :mod:`deploy.qdq_lint`; otherwise nothing is written and the offending nodes are named.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from deploy.onnx_export import DEFAULT_OPSET, export_onnx
from deploy.qdq_lint import lint_qdq
from distill.atomic import atomic_path
from distill.data.transforms import IMAGE_SIZE


class QdqLintError(RuntimeError):
    """The INT8 ONNX breaks a TensorRT Q/DQ rule; the message names the nodes."""


def strip_to_fake_quant(qmodel: nn.Module, image_size: int = IMAGE_SIZE) -> nn.Module:
    """A copy of the NNCF model with torch FakeQuantize modules in place of NNCF's quantizers."""
    import nncf

    return nncf.strip(
        qmodel.cpu().eval(),
        do_copy=True,
        strip_format=nncf.StripFormat.NATIVE,
        example_input=torch.zeros(1, 3, image_size, image_size),
    ).eval()


def export_qdq_onnx(
    qmodel: nn.Module,
    path: str | os.PathLike,
    *,
    batch_size: int | None = 1,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write the Q/DQ ONNX of ``qmodel`` to ``path`` if it passes the linter; raise QdqLintError if not."""
    if opset < 13:
        raise QdqLintError(f"opset {opset}: per-channel Q/DQ needs opset >= 13")
    target = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = export_onnx(
            strip_to_fake_quant(qmodel), Path(tmp) / target.name, batch_size=batch_size, opset=opset
        )
        issues = lint_qdq(candidate)
        if issues:
            shown = "; ".join(str(i) for i in issues[:8])
            more = f" (+{len(issues) - 8} more)" if len(issues) > 8 else ""
            raise QdqLintError(f"{target.name}: {len(issues)} TensorRT Q/DQ rule violations: {shown}{more}")
        with atomic_path(target) as out:
            shutil.copyfile(candidate, out)
    return target
