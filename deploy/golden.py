"""Golden vectors: a few aligned face crops and the embeddings one exact model file gives for them.

The commonest failure of a shipped face embedder is not lost accuracy but a model fed or built
differently from how it was tested: channel order, normalisation, layout, a delegate that computes
something else, a stale file in the app. Like ExecuTorch's BundledProgram, every artifact gets a small
file beside it, ``<model>.golden.json``, holding N crops (PNG, base64) and the embeddings this file
produced for them on the host, with a cosine tolerance. Whoever runs the file elsewhere — ``pipeline
verify``, the device runners, an app's instrumentation test — feeds the same crops and checks every
cosine. A file written for one model refuses to check another (its sha256 is recorded).

The PNG holds the crop exactly as the model's input sees it before normalisation: 112x112 RGB, 8 bits.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.atomic import write_json
from distill.errors import InputError

SCHEMA = "facekd.golden/1"
# Minimum cosine between the recorded embedding and a re-run of the same file. Another runtime or delegate
# (XNNPACK vs GPU, onnxruntime vs TensorRT) computes in another order or precision: float files keep
# cosines above 0.999 under fp16 arithmetic; integer kernels may round differently near a boundary.
MIN_COSINE = {"fp32": 0.999, "fp16": 0.999, "int8": 0.99}
DEFAULT_CROPS = 8


def golden_path(model_path: str | os.PathLike) -> Path:
    """``student_int8.tflite`` -> ``student_int8.tflite.golden.json`` (the model's full name: a .onnx and a
    .tflite of one precision sit side by side)."""
    p = Path(model_path)
    return p.with_name(p.name + ".golden.json")


def png_bytes(crop: np.ndarray) -> bytes:
    """A uint8 HWC RGB crop as PNG bytes (lossless: decoding gives the same pixels back)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(crop, dtype=np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


@dataclass
class GoldenCheck:
    """A model file re-run on the golden crops: the cosine of each crop against the recorded embedding."""

    passed: bool
    min_cosine: float
    tolerance: float
    cosines: list[float]
    where: str  # where the check ran (host-cpu, the device's label)
    cause: str = ""  # on a mismatch: the feeding mistake that reproduces it, when one does

    def to_dict(self) -> dict[str, Any]:
        out = {
            "passed": self.passed,
            "min_cosine": round(self.min_cosine, 6),
            "tolerance": self.tolerance,
            "crops": len(self.cosines),
            "where": self.where,
        }
        return {**out, "likely_cause": self.cause} if self.cause else out

    def summary(self) -> str:
        verdict = "match" if self.passed else "DO NOT MATCH"
        text = (
            f"golden vectors {verdict} on {self.where}: lowest cosine {self.min_cosine:.6f} over "
            f"{len(self.cosines)} crops (tolerance {self.tolerance})"
        )
        return text + (f"; likely cause: {self.cause}" if self.cause else "")


def write_golden(
    model_path: str | os.PathLike,
    crops: np.ndarray,
    names: list[str],
    embeddings: np.ndarray,
    *,
    precision: str,
    sha256: str,
    source: str,
) -> Path:
    """Write ``<model>.golden.json``: the crops (uint8 NHWC RGB), the file's embeddings, the tolerance."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise ValueError(f"crops must be uint8 (N, H, W, 3), got {crops.dtype} {crops.shape}")
    if len(names) != crops.shape[0] or embeddings.shape[0] != crops.shape[0]:
        raise ValueError(f"{crops.shape[0]} crops, {len(names)} names, {embeddings.shape[0]} embeddings")
    path = golden_path(model_path)
    write_json(
        path,
        {
            "schema": SCHEMA,
            "model": Path(model_path).name,
            "model_sha256": sha256,
            "precision": precision,
            "crops_from": source,
            "input": "each PNG is the 112x112 RGB crop before normalisation; feed it as the model card says",
            "compare": "cosine(recorded, re-run) >= min_cosine for every crop",
            "min_cosine": MIN_COSINE.get(precision, 0.99),
            "crops": [
                {
                    "name": name,
                    "png_base64": base64.b64encode(png_bytes(crop)).decode("ascii"),
                    "embedding": [round(float(v), 7) for v in emb],
                }
                for name, crop, emb in zip(names, crops, np.asarray(embeddings, np.float64), strict=True)
            ],
        },
    )
    return path


def read_golden(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(crops uint8 NHWC, recorded embeddings (N, D), the file's other fields); InputError when unusable."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable golden file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not data.get("crops"):
        raise InputError(f"{path}: not a facekd golden file (schema {SCHEMA})")
    try:
        crops = np.stack([decode_png(base64.b64decode(c["png_base64"])) for c in data["crops"]])
        emb = np.asarray([c["embedding"] for c in data["crops"]], dtype=np.float64)
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise InputError(f"{path}: a crop is unreadable ({type(exc).__name__}: {exc})") from None
    return crops, emb, {k: v for k, v in data.items() if k != "crops"}


def model_input(crops: np.ndarray) -> np.ndarray:
    """The crops as the project's normalised float32 NCHW batch (what every Embedder and runner takes)."""
    import torch

    from distill.data.transforms import to_model_input

    return to_model_input(torch.from_numpy(np.ascontiguousarray(crops))).numpy()


def compare_golden(recorded: np.ndarray, got: np.ndarray, tolerance: float, where: str) -> GoldenCheck:
    """Cosine of each crop's recorded and re-run embedding; passes when every one reaches ``tolerance``."""
    a = np.asarray(recorded, dtype=np.float64)
    b = np.asarray(got, dtype=np.float64).reshape(a.shape[0], -1)
    if b.shape != a.shape:
        return GoldenCheck(False, float("nan"), tolerance, [], where)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.einsum("ij,ij->i", a, b) / np.where(norms == 0, 1.0, norms)
    lowest = float(np.min(cos)) if cos.size else float("nan")
    return GoldenCheck(bool(cos.size and np.all(cos >= tolerance)), lowest, tolerance, cos.tolist(), where)


# what a wrong feeding looks like: the golden crops as a mis-written pipeline would hand them to the model
LIKELY_CAUSES = {
    "R and B swapped (BGR fed as RGB)": lambda c: model_input(np.ascontiguousarray(c[..., ::-1])),
    "pixels scaled to 0..1 instead of (x - 127.5) / 127.5": lambda c: (
        c.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    ),
    "raw 0..255 pixels fed without normalisation": lambda c: c.transpose(0, 3, 1, 2).astype(np.float32),
    "the image mirrored left to right": lambda c: model_input(np.ascontiguousarray(c[:, :, ::-1])),
}


def likely_cause(model_path: str | os.PathLike, crops: np.ndarray, got: np.ndarray, tolerance: float) -> str:
    """Which common feeding mistake reproduces ``got`` when this host runs the file that way ("" if none)."""
    from deploy.runtimes import load_embedder

    embedder = load_embedder(model_path, num_threads=1)
    for cause, feed in LIKELY_CAUSES.items():
        try:
            wrong = embedder.embed(np.ascontiguousarray(feed(crops), dtype=np.float32))
        except Exception:  # a variant the runtime cannot take is not the answer
            continue
        if compare_golden(wrong, got, tolerance, "").passed:
            return cause
    return ""


def verify_file(
    model_path: str | os.PathLike,
    golden: str | os.PathLike | None = None,
    *,
    threads: int = 1,
    where: str = "this host",
) -> GoldenCheck:
    """Re-run ``model_path`` on this host on its golden crops (``<model>.golden.json`` unless given)."""
    from deploy.model_card import sha256_of
    from deploy.runtimes import load_embedder

    model_path = Path(model_path)
    gpath = Path(golden) if golden else golden_path(model_path)
    if not gpath.is_file():
        raise InputError(f"{gpath}: no golden file (export writes one beside every artifact)")
    crops, recorded, meta = read_golden(gpath)
    if meta.get("model_sha256") and meta["model_sha256"] != sha256_of(model_path):
        raise InputError(
            f"{gpath}: written for another file than {model_path.name} (sha256 "
            f"{str(meta['model_sha256'])[:12]} vs {sha256_of(model_path)[:12]}): changed after export"
        )
    got = load_embedder(model_path, num_threads=threads).embed(model_input(crops))
    return compare_golden(recorded, got, float(meta.get("min_cosine", 0.99)), where)
