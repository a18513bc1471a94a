"""Pixels in: artifacts whose input is what a camera pipeline has, with the normalisation inside.

The project's models take ``(x - 127.5) / 127.5`` float NCHW. An app holds RGB bytes, NHWC (an Android
``Bitmap``'s pixels, a camera frame); converting every pixel by hand is where apps go wrong (channel
order, scale, layout). A pixel-input artifact takes ``[N, 112, 112, 3]`` RGB, uint8 (or float 0..255),
and does the rest itself:

* float files (fp32, fp16): the layout change, the cast and the normalisation are ops of the graph
  (ONNX: Cast, Transpose, Sub, Mul in front; LiteRT: converted from a wrapper, which leaves no TRANSPOSE);
* the full-integer .tflite: the input tensor is uint8 with scale 1/127.5 and zero point 128, so one
  integer QUANTIZE (uint8 -> int8) replaces the input transpose; no float op is added. It reads
  ``(p - 128) / 127.5``, half a grey level below ``(p - 127.5) / 127.5``: a zero point must be an
  integer, so the exact value cannot be expressed; its parity against the fake-quant model is measured
  like every INT8 file's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.atomic import atomic_path
from distill.data.transforms import IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD

INPUT_KINDS = ("normalized", "pixels")
PIXEL_DTYPES = ("uint8", "float32")
PIXELS_NAME = "pixels"
INT8_PIXEL_SCALE = 1.0 / PIXEL_STD  # the uint8 input tensor of the full-integer .tflite
INT8_PIXEL_ZERO_POINT = 128


class PixelInput(nn.Module):
    """``model`` behind NHWC RGB pixels (uint8 or float 0..255): permute, cast, normalise, run."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float()
        return self.model((x - PIXEL_MEAN) / PIXEL_STD)


def pixel_sample(batch_size: int, dtype: str, image_size: int = IMAGE_SIZE, seed: int = 0) -> torch.Tensor:
    """A random NHWC pixel batch of the artifact's input type (the converter traces with it)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch_size, image_size, image_size, 3), generator=g, dtype=torch.uint8)
    return x if dtype == "uint8" else x.float()


def pixels_from_normalized(x: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
    """The project's normalised NCHW floats back to the NHWC pixels they came from (exact for 8-bit)."""
    p = np.clip(np.rint(np.asarray(x, np.float32) * PIXEL_STD + PIXEL_MEAN), 0, 255).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(p, dtype=np.dtype(dtype))


def onnx_pixel_input(path: str | os.PathLike, dtype: str = "uint8") -> Path:
    """Rewrite the ONNX at ``path`` (atomically) to take NHWC RGB pixels: Cast, Transpose, Sub, Mul in front.

    Works for fp32, fp16 (fp32 I/O) and Q/DQ INT8 files alike; TensorRT takes a uint8 NHWC input and fuses
    the arithmetic into the first layer.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    old = graph.input[0]
    dims = [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3:
        raise ValueError(f"{path}: expected an NCHW RGB input, got {dims}")
    elem = TensorProto.UINT8 if dtype == "uint8" else TensorProto.FLOAT
    new = helper.make_tensor_value_info(PIXELS_NAME, elem, [dims[0], dims[2], dims[3], 3])
    x = PIXELS_NAME
    nodes = []
    if dtype == "uint8":
        nodes.append(helper.make_node("Cast", [x], ["pixels_f"], to=TensorProto.FLOAT, name="pixels_cast"))
        x = "pixels_f"
    nodes.append(helper.make_node("Transpose", [x], ["pixels_nchw"], perm=[0, 3, 1, 2], name="pixels_nchw"))
    consts = [
        numpy_helper.from_array(np.array(PIXEL_MEAN, np.float32), "pixels_mean"),
        numpy_helper.from_array(np.array(1.0 / PIXEL_STD, np.float32), "pixels_inv_std"),
    ]
    nodes.append(
        helper.make_node("Sub", ["pixels_nchw", "pixels_mean"], ["pixels_centred"], name="pixels_sub")
    )
    nodes.append(helper.make_node("Mul", ["pixels_centred", "pixels_inv_std"], [old.name], name="pixels_mul"))
    graph.initializer.extend(consts)
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old_nodes)
    graph.input.remove(old)
    graph.input.insert(0, new)
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def tflite_int8_pixel_input(content: bytes) -> bytes:
    """A full-integer .tflite with int8 NCHW input -> uint8 NHWC pixels through one integer QUANTIZE.

    The input's TRANSPOSE (NCHW -> NHWC, the converter's first op) goes; a QUANTIZE reads the new uint8
    pixel tensor (scale 1/127.5, zero point 128) into the int8 tensor the transpose used to write, with
    that tensor's own scale and zero point (a requantisation, integer only).
    """
    from ai_edge_litert import schema_py_generated as schema

    from deploy.tflite_int8 import _read_model, pack_model

    model = _read_model(content)
    graph = model.subgraphs[0]
    (inp,) = graph.inputs
    tensor = graph.tensors[inp]
    if tensor.type != schema.TensorType.INT8 or list(tensor.shape)[1] != 3:
        raise ValueError("pixel input needs an int8 NCHW input (export.tflite_int8_io: int8)")

    def builtin(op) -> int:
        code = model.operatorCodes[op.opcodeIndex]
        return max(int(code.builtinCode), int(code.deprecatedBuiltinCode))

    readers = [op for op in graph.operators if inp in list(op.inputs)]
    if len(readers) != 1 or builtin(readers[0]) != schema.BuiltinOperator.TRANSPOSE:
        raise ValueError("pixel input: the int8 graph does not start with the input's TRANSPOSE")
    transpose = readers[0]
    perm_buffer = model.buffers[graph.tensors[transpose.inputs[1]].buffer].data
    if perm_buffer is None or list(np.frombuffer(bytes(perm_buffer), dtype=np.int32)) != [0, 2, 3, 1]:
        raise ValueError("pixel input: the input's TRANSPOSE is not NCHW -> NHWC")
    nhwc = transpose.outputs[0]

    pixels = schema.TensorT()
    n, _, h, w = list(tensor.shape)
    pixels.shape = [n, h, w, 3]
    pixels.type = schema.TensorType.UINT8
    pixels.buffer = 0
    pixels.name = PIXELS_NAME
    q = schema.QuantizationParametersT()
    q.scale = [INT8_PIXEL_SCALE]
    q.zeroPoint = [INT8_PIXEL_ZERO_POINT]
    pixels.quantization = q
    graph.tensors.append(pixels)
    pixel_index = len(graph.tensors) - 1

    quantize_code = schema.BuiltinOperator.QUANTIZE
    opcode = next(
        (
            i
            for i, c in enumerate(model.operatorCodes)
            if max(c.builtinCode, c.deprecatedBuiltinCode) == quantize_code
        ),
        None,
    )
    if opcode is None:
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
        code.version = 2
        model.operatorCodes.append(code)
        opcode = len(model.operatorCodes) - 1
    quantize = schema.OperatorT()
    quantize.opcodeIndex = opcode
    quantize.inputs = [pixel_index]
    quantize.outputs = [nhwc]
    graph.operators = [quantize if op is transpose else op for op in graph.operators]
    graph.inputs = [pixel_index]
    for signature in model.signatureDefs or []:
        for entry in signature.inputs or []:
            if int(entry.tensorIndex) == inp:
                entry.tensorIndex = pixel_index
                entry.name = PIXELS_NAME
    return pack_model(model)
