"""Export the student to the formats a target needs and prove each artifact matches PyTorch.

Each artifact is checked on real images (the verification set) against the PyTorch model of the same
stage, with a cosine threshold per precision; a failing artifact fails the stage unless the caller allows
it, in which case it is kept and marked failed. Every .tflite gets its app-ready ``model.json`` card;
every ONNX meant for a Jetson gets a ``trtexec`` rebuild script (engines are device-specific) and, when
TensorRT and a CUDA GPU are present here, an engine built with the Python API.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deploy.onnx_export import export_onnx
from deploy.onnx_fp16 import convert_onnx_fp16
from deploy.parity import PARITY_MIN_COSINE, check_parity
from deploy.runtimes import TorchEmbedder, load_embedder
from deploy.tflite_export import export_tflite_fp16, export_tflite_fp32


class ParityError(RuntimeError):
    """An exported artifact disagrees with the PyTorch model beyond its precision's threshold."""


@dataclass
class Artifact:
    name: str
    format: str  # onnx | tflite | tensorrt
    precision: str  # fp32 | fp16
    file: str  # path relative to the export folder
    batch_size: int | None
    parity: dict | None
    companions: list[str] = field(default_factory=list)  # model.json, rebuild script, ...
    source: str = "distill"  # the stage whose model it came from (distill = fp32, qat = INT8)
    details: dict = field(default_factory=dict)  # exporter facts (INT8: scales carried, float ops left)
    input_kind: str = "normalized"  # or "pixels": NHWC RGB pixels, normalisation inside (pixel_input.py)
    pixel_dtype: str | None = None  # uint8 | float32 for a pixels-in file

    def to_dict(self) -> dict:
        return asdict(self)


EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite"}
SUPPORTED = {("onnx", "fp32"), ("onnx", "fp16"), ("tflite", "fp32"), ("tflite", "fp16")}


def export_file(
    model: nn.Module,
    fmt: str,
    precision: str,
    path: Path,
    *,
    batch_size: int | None,
    opset: int,
    pixels: str | None = None,
) -> Path:
    """Write one artifact (atomically, by the exporters); ``pixels`` (uint8/float32): a pixels-in file."""
    from deploy.pixel_input import onnx_pixel_input

    if (fmt, precision) not in SUPPORTED:
        raise ValueError(f"cannot export {fmt} {precision} (supported: {sorted(SUPPORTED)})")
    if fmt == "onnx" and precision == "fp32":
        export_onnx(model, path, batch_size=batch_size, opset=opset)
        return onnx_pixel_input(path, pixels) if pixels else path
    if fmt == "onnx":
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", batch_size=batch_size, opset=opset)
            convert_onnx_fp16(fp32, path)
        return onnx_pixel_input(path, pixels) if pixels else path
    export = export_tflite_fp32 if precision == "fp32" else export_tflite_fp16
    return export(model, path, batch_size=batch_size or 1, pixels=pixels)


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
    pixels: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> list[Artifact]:
    """Write one file per (format, precision) into ``out_dir`` and check its parity.

    ``parity_images`` is a float32 NCHW batch already normalised for the model; a pixels-in file
    (``pixels``: its input dtype) is fed the same images as the 8-bit pixels they came from.
    """
    model = model.cpu().float().eval()
    reference = TorchEmbedder(model).embed(parity_images)
    artifacts, failures = [], []
    for fmt, precision in formats:
        file = f"{stem}_{precision}{EXTENSIONS[fmt]}"
        path = export_file(
            model, fmt, precision, out_dir / file, batch_size=batch_size, opset=opset, pixels=pixels
        )
        candidate = load_embedder(path, pixels=pixels).embed(parity_images)
        result = check_parity(reference, candidate, PARITY_MIN_COSINE[precision])
        artifacts.append(
            Artifact(
                name=f"{stem}-{fmt}-{precision}",
                format=fmt,
                precision=precision,
                file=file,
                batch_size=batch_size if fmt == "onnx" else (batch_size or 1),
                parity=asdict(result),
                input_kind="pixels" if pixels else "normalized",
                pixel_dtype=pixels,
            )
        )
        if not result.passed:
            failures.append(f"{file}: cosine min {result.cos_min:.6f} < {result.threshold}")
        log(parity_line(file, result))
    if failures and not allow_parity_failure:
        raise ParityError("parity check failed: " + "; ".join(failures))
    return artifacts


def parity_line(file: str, result: Any) -> str:
    """The console line of one written artifact."""
    verdict = "ok" if result.passed else "FAILED"
    return f"[export] {file}: parity cosine min {result.cos_min:.6f} (>= {result.threshold}: {verdict})"


CARD_FORMATS = ("tflite", "onnx", "tensorrt")


def add_model_cards(artifacts: list[Artifact], out_dir: Path, *, thresholds: dict, version: str) -> None:
    """A card for every artifact: sidecar JSON, and inside the file where the format has a field for it.

    Embedding changes a .tflite/.onnx file, so hash after. An engine's card is its ONNX's (same stem),
    so pass the engines together with the ONNX they were built from.
    """
    from deploy.model_card import write_engine_card, write_model_card

    cards: dict[str, dict] = {}
    for art in sorted(artifacts, key=lambda a: a.format == "tensorrt"):  # ONNX cards before engines
        card = Path(art.file).with_suffix(".json").name
        if art.format in ("tflite", "onnx"):
            cards[Path(art.file).stem] = write_model_card(
                out_dir / card,
                out_dir / art.file,
                version=version,
                thresholds=thresholds,
                precision=art.precision,
                input_kind=art.input_kind,
            )
        elif art.format == "tensorrt" and Path(art.file).stem in cards:
            card = Path(art.file).stem + ".engine.json"  # the ONNX's sidecar has the plain stem
            write_engine_card(out_dir / card, out_dir / art.file, cards[Path(art.file).stem])
        else:
            continue
        art.companions.append(card)


def add_golden_files(
    artifacts: list[Artifact], out_dir: Path, crops: np.ndarray, names: list[str], *, source: str
) -> None:
    """``<file>.golden.json`` beside every file this host can run (after cards: it records the final hash)."""
    from deploy.golden import golden_path, model_input, write_golden
    from deploy.model_card import sha256_of
    from deploy.runtimes import load_embedder

    x = model_input(crops)
    for art in artifacts:
        if art.format not in ("onnx", "tflite"):
            continue  # an engine is built for its GPU: its ONNX's golden file is what a device checks
        path = out_dir / art.file
        emb = load_embedder(path, num_threads=1, pixels=art.pixel_dtype).embed(x)
        write_golden(path, crops, names, emb, precision=art.precision, sha256=sha256_of(path), source=source)
        art.companions.append(golden_path(path).name)


def add_tensorrt(artifacts: list[Artifact], out_dir: Path, *, log=print) -> list[Artifact]:
    """trtexec rebuild script beside every ONNX; a TensorRT engine when TensorRT and a GPU are here."""
    from deploy.tensorrt import build_engine, tensorrt_available, write_trtexec_script

    ok, reason = tensorrt_available()
    engines = []
    for art in [a for a in artifacts if a.format == "onnx"]:
        onnx_path = out_dir / art.file
        engine = Path(art.file).with_suffix(".engine").name
        script = f"build_{Path(art.file).stem}_engine.sh"
        write_trtexec_script(
            out_dir / script,
            onnx_path,
            out_dir / engine,
            precision=art.precision,
            fp16_onnx=art.precision == "fp16",
        )
        art.companions.append(script)
        if ok:
            build_engine(onnx_path, out_dir / engine, fp16_onnx=art.precision == "fp16")
            engines.append(
                Artifact(
                    name=art.name.replace("-onnx-", "-tensorrt-"),
                    format="tensorrt",
                    precision=art.precision,
                    file=engine,
                    batch_size=art.batch_size,
                    parity=None,
                    source=art.source,  # an engine from the INT8 ONNX carries QAT's thresholds
                )
            )
    if not ok:
        log(
            f"[export] no TensorRT engine built here: {reason}; the ONNX files and their trtexec scripts "
            "are the Jetson artifacts (build the engine on the device)"
        )
    return engines


def parity_batch(images_uint8: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` verification images as a normalised float32 NCHW batch."""
    from distill.data.transforms import to_model_input

    return to_model_input(torch.from_numpy(np.ascontiguousarray(images_uint8[:n]))).numpy()
