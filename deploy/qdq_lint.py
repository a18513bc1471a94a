"""Lint an INT8 Q/DQ ONNX for what TensorRT's explicit quantization accepts, before it reaches a device.

TensorRT cannot be installed in CI (no GPU, no NVIDIA index: shared/research/deploy.md §2.3), so the
constraints its ONNX parser and Q/DQ layers enforce are checked here on the ONNX itself:

* ``opset``: default-domain opset >= 13 (per-channel Q/DQ needs 13);
* ``domain``: only the standard ONNX domain (NNCF without ``strip`` leaves
  ``org.openvinotoolkit::FakeQuantize``, which only OpenVINO runs);
* ``qdq_present``: an INT8 model with no QuantizeLinear/DequantizeLinear is not quantized at all;
* ``dtype``: quantized tensors are int8; TensorRT's IQuantizeLayer has no uint8 (NNCF emits uint8 after
  ReLU; a QuantizeLinear without zero point and without ``output_dtype`` also means uint8);
* ``zero_point``: constant and all 0 (TensorRT quantization is symmetric);
* ``scale``: constant, finite and > 0 (TensorRT builds scales into the engine);
* ``activation_per_tensor``: activation Q/DQ have one scale (TensorRT and TFLite want per-tensor);
* ``weight_axis``: per-channel weight Q/DQ quantize along axis 0 (output channels; ONNX's default is 1).

A Q/DQ node belongs to a weight when its data input is a constant (an initializer, a ``Constant`` output,
or the output of a QuantizeLinear fed by one); everything else is an activation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from deploy.onnx_fp16 import load_onnx

MIN_OPSET = 13
STANDARD_DOMAINS = ("", "ai.onnx")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_INT8 = onnx.TensorProto.INT8
_UINT8 = onnx.TensorProto.UINT8


@dataclass(frozen=True)
class LintIssue:
    node: str  # node name (or "<model>" for whole-model rules)
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.node}: [{self.rule}] {self.message}"


def lint_qdq(onnx_path_or_model: str | os.PathLike | onnx.ModelProto) -> list[LintIssue]:
    """All TensorRT Q/DQ rule violations in the model; an empty list means it passes."""
    model = (
        onnx_path_or_model
        if isinstance(onnx_path_or_model, onnx.ModelProto)
        else load_onnx(onnx_path_or_model)
    )
    graph = model.graph
    issues: list[LintIssue] = []

    opset = _default_opset(model)
    if opset < MIN_OPSET:
        issues.append(LintIssue("<model>", "opset", f"default-domain opset {opset} < {MIN_OPSET}"))

    for i, node in enumerate(graph.node):
        if node.domain not in STANDARD_DOMAINS:
            issues.append(
                LintIssue(
                    _node_name(node, i),
                    "domain",
                    f"{node.domain}::{node.op_type} is a custom-domain op; TensorRT parses standard ops only",
                )
            )

    qdq = [(i, n) for i, n in enumerate(graph.node) if n.op_type in QDQ_OPS and n.domain in STANDARD_DOMAINS]
    if not qdq:
        issues.append(LintIssue("<model>", "qdq_present", "no QuantizeLinear/DequantizeLinear nodes"))
        return issues

    consts = _constants(graph)
    elem_types = _elem_types(model)
    weight_q_outputs = {n.output[0] for _, n in qdq if n.op_type == "QuantizeLinear" and n.input[0] in consts}
    for i, node in qdq:
        is_weight = node.input[0] in consts or node.input[0] in weight_q_outputs
        issues.extend(_lint_node(node, _node_name(node, i), is_weight, consts, elem_types))
    return issues


def format_issues(issues: list[LintIssue]) -> str:
    """One line per issue, for logs and error messages."""
    return "\n".join(str(issue) for issue in issues)


def _lint_node(
    node: onnx.NodeProto,
    name: str,
    is_weight: bool,
    consts: dict[str, np.ndarray],
    elem_types: dict[str, int],
) -> list[LintIssue]:
    issues: list[LintIssue] = []
    scale_name = node.input[1]
    zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    qtype = _quantized_type(node, zp_name, consts, elem_types, attrs)
    if qtype is not None and qtype != _INT8:
        what = "uint8" if qtype == _UINT8 else onnx.TensorProto.DataType.Name(qtype).lower()
        issues.append(LintIssue(name, "dtype", f"quantized type is {what}; TensorRT Q/DQ needs int8"))

    scale = consts.get(scale_name)
    if scale is None:
        issues.append(LintIssue(name, "scale", f"scale '{scale_name}' is not a constant"))
    elif scale.size == 0 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        issues.append(LintIssue(name, "scale", "scale must be finite and > 0"))

    if zp_name is not None:
        zp = consts.get(zp_name)
        if zp is None:
            issues.append(LintIssue(name, "zero_point", f"zero point '{zp_name}' is not a constant"))
        elif np.any(zp.astype(np.float64) != 0):
            issues.append(LintIssue(name, "zero_point", "zero point must be 0 (symmetric quantization)"))

    if scale is not None and scale.size > 1:
        axis = int(attrs.get("axis", 1))
        if not is_weight:
            issues.append(
                LintIssue(
                    name,
                    "activation_per_tensor",
                    f"activation quantized per-channel ({scale.size} scales); use one scale",
                )
            )
        elif axis != 0:
            issues.append(
                LintIssue(name, "weight_axis", f"per-channel weight quantized along axis {axis}, expected 0")
            )
    return issues


def _quantized_type(
    node: onnx.NodeProto,
    zp_name: str | None,
    consts: dict[str, np.ndarray],
    elem_types: dict[str, int],
    attrs: dict,
) -> int | None:
    """The integer type of the quantized side of a Q or DQ node, None when it cannot be told."""
    quantized = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
    if elem_types.get(quantized):
        return elem_types[quantized]
    if zp_name is not None and zp_name in elem_types:
        return elem_types[zp_name]
    if node.op_type == "QuantizeLinear":
        # ONNX: without a zero point (and without output_dtype, opset 21) the output is uint8.
        return int(attrs.get("output_dtype", 0)) or _UINT8
    return None


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in STANDARD_DOMAINS:
            return int(imp.version)
    return 0


def _node_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values known at build time: initializers, ``Constant`` outputs and ``Identity`` of either.

    The TorchScript exporter shares one zero-point initializer between Q/DQ pairs through Identity
    nodes; TensorRT folds those, so they count as constants.
    """
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:  # nodes are topologically sorted, so a chain resolves in one pass
        if node.domain not in STANDARD_DOMAINS:
            continue
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor the model declares or shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best effort; declared types still count
        inferred = model
    graph = inferred.graph
    types: dict[str, int] = {}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
        elif node.op_type == "Identity" and node.input[0] in types:
            types[node.output[0]] = types[node.input[0]]
    return types
