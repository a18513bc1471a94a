"""The INT8 artifacts of a quantized (QAT or PTQ) student: Q/DQ ONNX for TensorRT, full-integer .tflite.

Parity is judged against the fake-quant PyTorch model the artifacts come from (cosine >= 0.99 per
sample), because that model, not the fp32 student, is what the INT8 files are meant to reproduce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from torch import nn

from deploy.artifacts import Artifact, ParityError, parity_line
from deploy.onnx_qdq import export_qdq_onnx
from deploy.parity import PARITY_MIN_COSINE, check_parity
from deploy.runtimes import TorchEmbedder, load_embedder


def export_int8_artifacts(
    qmodel: nn.Module,
    float_model: nn.Module,
    formats: list[str],
    out_dir: Path,
    *,
    parity_images: np.ndarray,
    calibration: list[np.ndarray],
    batch_size: int | None = 1,
    opset: int = 17,
    tflite_scales: str = "carry",
    tflite_io: str = "int8",
    stem: str = "student",
    source: str = "qat",
    allow_parity_failure: bool = False,
    pixels: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> list[Artifact]:
    """Write ``<stem>_int8.onnx`` and/or ``<stem>_int8.tflite`` (``formats``: "onnx", "tflite").

    ``pixels`` makes them pixels-in files (deploy/pixel_input.py): the ONNX in that dtype, the .tflite
    always uint8 (its input quantisation does the normalisation).
    """
    from deploy.pixel_input import onnx_pixel_input, tflite_int8_pixel_input
    from deploy.tflite_int8 import export_tflite_int8
    from distill.atomic import atomic_path

    reference = TorchEmbedder(qmodel).embed(parity_images)
    artifacts, failures = [], []
    for fmt in formats:
        details: dict = {}
        if fmt == "onnx":
            file = f"{stem}_int8.onnx"
            export_qdq_onnx(qmodel, out_dir / file, batch_size=batch_size, opset=opset)
            details["qdq_lint"] = "passed"
            art_batch = batch_size
            file_pixels = pixels
            if pixels:
                onnx_pixel_input(out_dir / file, pixels)
        elif fmt == "tflite":
            file = f"{stem}_int8.tflite"
            report = export_tflite_int8(
                qmodel, float_model, calibration, out_dir / file, scales=tflite_scales, io_dtype=tflite_io
            )
            details = report.to_json()
            details.pop("path", None)
            if report.float_ops:  # an INT8 graph with float islands is slow on phones: say so loudly
                details["warning"] = f"float operators left in the INT8 graph: {report.float_ops}"
            art_batch = 1
            file_pixels = "uint8" if pixels else None
            if pixels:
                content = tflite_int8_pixel_input((out_dir / file).read_bytes())
                with atomic_path(out_dir / file) as tmp:
                    tmp.write_bytes(content)
                details["input"] = "uint8 NHWC pixels, one integer QUANTIZE in front (no TRANSPOSE)"
        else:
            raise ValueError(f"no INT8 exporter for format '{fmt}'")
        candidate = load_embedder(out_dir / file, pixels=file_pixels).embed(parity_images)
        result = check_parity(reference, candidate, PARITY_MIN_COSINE["int8"])
        artifacts.append(
            Artifact(
                name=f"{stem}-{fmt}-int8",
                format=fmt,
                precision="int8",
                file=file,
                batch_size=art_batch,
                parity={**asdict(result), "reference": f"{source} fake-quant PyTorch model"},
                source=source,
                details=details,
                input_kind="pixels" if file_pixels else "normalized",
                pixel_dtype=file_pixels,
            )
        )
        if not result.passed:
            failures.append(f"{file}: cosine min {result.cos_min:.6f} < {result.threshold}")
        log(parity_line(file, result))
    if failures and not allow_parity_failure:
        raise ParityError("parity check failed: " + "; ".join(failures))
    return artifacts
