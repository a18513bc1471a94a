"""fp16 ONNX: float16 weights and compute, float32 model input and output.

TensorRT 11 removed the ``--fp16`` builder flag: networks are strongly typed, so an fp16 engine is built
from an ONNX whose tensors already are float16 (shared/research/deploy.md §2.1). The conversion uses
onnxconverter-common's maintained ``float16`` converter (the tool polygraphy also uses) rather than a
hand-written one, because it also retypes value_info, Constant nodes and subgraphs and inserts the Casts
at the float32 I/O boundary. The result is checked with ``onnx.checker`` before it is renamed into place.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import onnx

from distill.atomic import atomic_path
from distill.errors import InputError

FP16_MAX = 65504.0
FP16_MIN_SUBNORMAL = 2.0**-24
QDQ_FP16_SCALE_OPSET = 19  # QuantizeLinear/DequantizeLinear accept float16 scales from opset 19


def convert_onnx_fp16(src: str | os.PathLike, dst: str | os.PathLike, keep_io_types: bool = True) -> Path:
    """Write a float16 copy of the ONNX at ``src`` to ``dst`` (atomic) and return ``dst``.

    ``keep_io_types`` keeps the graph inputs/outputs float32 (Cast nodes at the boundary), so callers
    and runtimes feed the same arrays as to the fp32 model. Weights beyond float16's range are clamped
    to +-65504 and tiny non-zero ones kept at the smallest subnormal instead of flushing to 0.
    """
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise RuntimeError(
            "fp16 ONNX conversion needs onnxconverter-common (pip install onnxconverter-common)"
        ) from exc

    src_path, dst_path = Path(src), Path(dst)
    model = load_onnx(src_path)
    if has_float16(model):
        raise InputError(f"{src_path}: already holds float16 tensors; convert the float32 model instead")
    block = list(float16.DEFAULT_OP_BLOCK_LIST)
    if _default_opset(model) < QDQ_FP16_SCALE_OPSET:
        block += ["QuantizeLinear", "DequantizeLinear"]  # keep their float32 scales valid
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will be truncated to.*")  # the clamping documented above
        converted = float16.convert_float_to_float16(
            model,
            min_positive_val=FP16_MIN_SUBNORMAL,
            max_finite_val=FP16_MAX,
            keep_io_types=keep_io_types,
            op_block_list=block,
        )
    with atomic_path(dst_path) as tmp:
        onnx.save(converted, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return dst_path


def has_float16(model: onnx.ModelProto) -> bool:
    """Does the model store any float16 initializer or Constant?"""
    fp16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == fp16 for t in model.graph.initializer):
        return True
    return any(
        attr.t.data_type == fp16
        for node in model.graph.node
        if node.op_type == "Constant"
        for attr in node.attribute
    )


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file or raise InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ONNX file not found")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0
