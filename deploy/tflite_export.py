"""Export a PyTorch embedding model to a TFLite flatbuffer with litert-torch (the Android artifact).

litert-torch traces with ``torch.export``, so the batch size of the sample input is baked into the model
(fixed-shape I/O, NCHW as in PyTorch). The written file is loaded into the LiteRT interpreter before it is
renamed into place, so a file at ``path`` always loads. Precision variants (fp16, int8) reuse
:func:`convert_and_write` with their own quantisation config or flatbuffer post-processing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from deploy.onnx_export import example_input, export_copy
from distill.atomic import atomic_path
from distill.data.transforms import IMAGE_SIZE


def export_tflite_fp32(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    batch_size: int = 1,
    image_size: int = IMAGE_SIZE,
    pixels: str | None = None,
) -> Path:
    """Write ``model`` as a float32 .tflite (float32 output) and return the path.

    The input is the normalised float32 NCHW batch, or with ``pixels`` ("uint8"/"float32") NHWC RGB
    pixels with the normalisation inside (deploy/pixel_input.py).
    """
    return convert_and_write(model, path, batch_size=batch_size, image_size=image_size, pixels=pixels)


def export_tflite_fp16(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    batch_size: int = 1,
    image_size: int = IMAGE_SIZE,
    pixels: str | None = None,
) -> Path:
    """Write ``model`` as an fp16-weights .tflite (LiteRT "float16 quantization") and return the path.

    Conv/depthwise/fully-connected weights are stored as float16 and dequantized by DEQUANTIZE ops; the
    model input and output and all activations stay float32, so apps feed the same tensors as to fp32.
    XNNPACK folds the DEQUANTIZE at load time; GPU delegates run fp16 natively. About half the file size.
    """
    return convert_and_write(
        model, path, batch_size=batch_size, image_size=image_size, postprocess=fp16_weights, pixels=pixels
    )


def fp16_weights(tflite_model: bytes) -> bytes:
    """A float32 .tflite flatbuffer with its weights cast to float16 (AI Edge Quantizer, weight-only).

    AI Edge Quantizer's ``float_casting`` algorithm is its fp16 weight-only scheme (the one litert-torch's
    ``full_fp16_recipe`` selects); applied to every op that supports it, activations untouched.
    """
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe_manager

    recipe = recipe_manager.RecipeManager()
    recipe.add_weight_only_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        num_bits=16,
        algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING,
    )
    qt = quantizer.Quantizer(bytearray(tflite_model), recipe.get_quantization_recipe())
    result = qt.quantize(enable_progress_bar=False, enable_progress_report=False)
    return bytes(result.quantized_model)


def convert_and_write(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    batch_size: int = 1,
    image_size: int = IMAGE_SIZE,
    quant_config: Any = None,
    postprocess: Callable[[bytes], bytes] | None = None,
    pixels: str | None = None,
) -> Path:
    """Convert with litert-torch (optionally with a ``litert_torch`` QuantConfig) and write atomically.

    ``postprocess`` rewrites the converted flatbuffer (e.g. :func:`fp16_weights`) before the load check.
    litert-torch is imported here, not at module import, because it pulls in jax and takes seconds.
    """
    import litert_torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    net = export_copy(model)
    sample = (example_input(batch_size, image_size),)
    if pixels:  # NHWC pixels in, normalisation inside: the converter leaves no input TRANSPOSE
        from deploy.pixel_input import PixelInput, pixel_sample

        net = PixelInput(net).eval()
        sample = (pixel_sample(batch_size, pixels, image_size),)
    edge_model = litert_torch.convert(net, sample, quant_config=quant_config)
    target = Path(path)
    with atomic_path(target) as tmp:
        edge_model.export(str(tmp))
        if postprocess is not None:
            tmp.write_bytes(postprocess(tmp.read_bytes()))
        _check_loads(tmp, expected_input_shape=tuple(sample[0].shape))
    return target


def _check_loads(path: Path, expected_input_shape: tuple[int, ...]) -> None:
    """Fail before the rename if the interpreter cannot allocate the model or its input shape is off."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inputs = interpreter.get_input_details()
    if len(inputs) != 1 or tuple(int(d) for d in inputs[0]["shape"]) != expected_input_shape:
        got = [tuple(int(d) for d in i["shape"]) for i in inputs]
        raise RuntimeError(f"{path}: converted model has inputs {got}, expected one {expected_input_shape}")
