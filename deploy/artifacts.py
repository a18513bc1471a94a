"""Export the student to the formats a target needs and prove each artifact matches PyTorch.

Each artifact is checked on real images (the verification set) against the PyTorch model of the same
stage; one that misses its precision's cosine threshold fails the stage loudly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deploy.onnx_export import export_onnx
from deploy.parity import PARITY_MIN_COSINE, ParityResult, check_parity
from deploy.runtimes import TorchEmbedder, load_embedder
from deploy.tflite_export import export_tflite_fp32


class ParityError(RuntimeError):
    """An exported artifact disagrees with the PyTorch model beyond its precision's threshold."""


@dataclass
class Artifact:
    name: str
    format: str  # onnx | tflite
    precision: str  # fp32 (fp16 / int8 land with the export and QAT issues)
    file: str  # path relative to the export folder
    batch_size: int | None
    parity: dict

    def to_dict(self) -> dict:
        return asdict(self)


EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite"}


def export_artifacts(
    model: nn.Module,
    formats: list[tuple[str, str]],
    out_dir: Path,
    *,
    parity_images: np.ndarray,
    batch_size: int | None = 1,
    opset: int = 17,
    stem: str = "student",
    allow_parity_failure: bool = False,
) -> list[Artifact]:
    """Write one file per (format, precision) into ``out_dir`` and check its parity.

    ``parity_images`` is a float32 NCHW batch already normalised for the model.
    """
    model = model.cpu().float().eval()
    reference = TorchEmbedder(model).embed(parity_images)
    artifacts, failures = [], []
    for fmt, precision in formats:
        if precision != "fp32":
            raise ValueError(f"precision '{precision}' is not exported yet")
        file = f"{stem}_{precision}{EXTENSIONS[fmt]}"
        path = out_dir / file
        if fmt == "onnx":
            export_onnx(model, path, batch_size=batch_size, opset=opset)
        elif fmt == "tflite":
            export_tflite_fp32(model, path, batch_size=batch_size or 1)
        else:
            raise ValueError(f"unknown format '{fmt}'")
        candidate = load_embedder(path).embed(parity_images)
        result: ParityResult = check_parity(reference, candidate, PARITY_MIN_COSINE[precision])
        artifacts.append(
            Artifact(
                name=f"{stem}-{fmt}-{precision}",
                format=fmt,
                precision=precision,
                file=file,
                batch_size=batch_size,
                parity=asdict(result),
            )
        )
        if not result.passed:
            failures.append(f"{file}: cosine min {result.cos_min:.6f} < {result.threshold}")
    if failures and not allow_parity_failure:
        raise ParityError("parity check failed: " + "; ".join(failures))
    return artifacts


def parity_batch(images_uint8: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` verification images as a normalised float32 NCHW batch."""
    from distill.data.transforms import to_model_input

    return to_model_input(torch.from_numpy(np.ascontiguousarray(images_uint8[:n]))).numpy()
