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

import numpy as np
import onnx
import torch
from onnx import numpy_helper
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
        model = fold_weight_quantizers(onnx.load(candidate))
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, candidate)
        issues = lint_qdq(candidate)
        if issues:
            shown = "; ".join(str(i) for i in issues[:8])
            more = f" (+{len(issues) - 8} more)" if len(issues) > 8 else ""
            raise QdqLintError(f"{target.name}: {len(issues)} TensorRT Q/DQ rule violations: {shown}{more}")
        with atomic_path(target) as out:
            shutil.copyfile(candidate, out)
    return target


def fold_weight_quantizers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store quantized weights as int8 initializers: ``Q(W_float) -> DQ`` becomes ``W_int8 -> DQ``.

    The exporter writes each weight in float followed by QuantizeLinear, so the file is as large as the
    fp32 one; TensorRT and onnxruntime accept either form, and the folded one is a quarter of the size.
    Rounding is half-to-even, as QuantizeLinear specifies, so the dequantized weights are unchanged.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}

    def const(name: str) -> np.ndarray | None:
        name = alias.get(name, name)
        return numpy_helper.to_array(inits[name]) if name in inits else None

    users: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    keep = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            keep.append(node)
            continue
        w, scale, zp = const(node.input[0]), const(node.input[1]), const(node.input[2])
        if w is None or scale is None or zp is None or zp.dtype != np.int8:
            keep.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        q = np.rint(w / scale.reshape(shape)) + zp.reshape(shape if zp.size > 1 else ()).astype(np.float64)
        q = np.clip(q, -128, 127).astype(np.int8)
        graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        if users.get(node.input[0], 0) == 1 and node.input[0] in inits:
            graph.initializer.remove(inits.pop(node.input[0]))  # the float copy is no longer needed
    del graph.node[:]
    graph.node.extend(keep)
    return model
