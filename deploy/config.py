"""Export settings: artifact shapes, opset, parity, INT8 .tflite options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distill.errors import InputError


@dataclass
class ExportConfig:
    """Stage three: artifact shapes and opset."""

    batch_size: int = 1  # 0 = dynamic batch (ONNX only; phones want a static batch)
    opset: int = 17
    parity_images: int = 32
    # INT8 .tflite (from stage two): "calibrate" re-calibrates the QAT weights with LiteRT's own observers,
    # "carry" imposes NNCF's learned scales on the LiteRT graph. calibrate is the default because it gave
    # the better accuracy in benchmarks/qat_int8.py (86.42 vs 85.83 %, default preset); carry follows the
    # fake-quant model more closely (cosine 0.9995 vs 0.9993)
    tflite_int8_scales: str = "calibrate"
    tflite_int8_io: str = "int8"  # int8 | float32 input/output tensors of the INT8 .tflite
    # what the artifacts take: "pixels" = NHWC RGB pixels with the normalisation inside the graph
    # (deploy/pixel_input.py), "normalized" = (x - 127.5) / 127.5 float NCHW; "auto": pixels for the
    # android target, normalized for the others. pixel_dtype: uint8 or float32 (0..255) for float files;
    # the full-integer .tflite always takes uint8
    input: str = "auto"
    pixel_dtype: str = "uint8"
    # golden vectors beside every artifact (deploy/golden.py): crops from this folder of aligned 112x112
    # images, or ("") the first images of the verification set; how many
    golden_crops: str = ""
    golden_count: int = 8


def validate_export(e: ExportConfig) -> None:
    if e.tflite_int8_scales not in ("carry", "calibrate"):
        raise InputError(
            f"export.tflite_int8_scales: must be 'carry' or 'calibrate'; got '{e.tflite_int8_scales}'"
        )
    if e.tflite_int8_io not in ("int8", "float32"):
        raise InputError(f"export.tflite_int8_io: must be 'int8' or 'float32'; got '{e.tflite_int8_io}'")
    if e.input not in ("auto", "pixels", "normalized"):
        raise InputError(f"export.input: must be 'auto', 'pixels' or 'normalized'; got '{e.input}'")
    if e.pixel_dtype not in ("uint8", "float32"):
        raise InputError(f"export.pixel_dtype: must be 'uint8' or 'float32'; got '{e.pixel_dtype}'")
    if e.input == "pixels" and e.tflite_int8_io == "float32":
        raise InputError(
            "export.input: pixels and export.tflite_int8_io: float32 contradict each other (a pixels-in "
            "INT8 .tflite takes uint8 pixels); choose one"
        )
    if e.golden_count < 1:
        raise InputError(f"export.golden_count: must be >= 1, got {e.golden_count}")
    if e.golden_crops and not Path(e.golden_crops).is_dir():
        raise InputError(f"export.golden_crops: {e.golden_crops} is not a folder of aligned crops")
    if e.batch_size < 0:
        raise InputError(f"export.batch_size: must be >= 0 (0 = dynamic), got {e.batch_size}")


def input_kind(e: ExportConfig, target: str) -> str:
    """``export.input`` resolved for a target: "pixels" or "normalized"."""
    if e.input != "auto":
        return e.input
    return "pixels" if target == "android" and e.tflite_int8_io == "int8" else "normalized"
