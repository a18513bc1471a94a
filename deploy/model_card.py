"""The model card: everything an app or a Jetson service needs to feed a shipped model and use its output.

Every artifact gets one (``.tflite``, ``.onnx``, and a TensorRT ``.engine`` built here). An app developer
gets ``student_fp16.tflite`` plus ``student_fp16.json`` (the sidecar) and should not
have to read this repository to use them: input tensor name/shape/dtype/layout, how pixels are
normalised, colour order, the 5-point alignment template the crops were made with, embedding size,
whether the output is already L2-normalised, and the cosine thresholds that give a known false-accept
rate, measured on a verification set with the artifact's own embeddings (thresholds move with
quantization, so each artifact gets its own).

The same JSON (minus ``sha256``, which a file cannot contain of itself) is embedded in the file under the
name :data:`METADATA_NAME` (the flatbuffer's ``metadata`` vector of a .tflite; ``metadata_props`` of an
ONNX; an engine carries none, TensorRT has no such field), so a model file that travels alone still says
how to use it. This is a plain named buffer, not tflite-support's ``TFLITE_METADATA`` schema: that
package is stale (0.4.4, 2023) and has no face-embedding writer (shared/research/deploy.md §3.6).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill.atomic import atomic_path, json_default, write_json
from distill.data.transforms import IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD
from distill.errors import InputError
from distill.metrics.verification import false_accepts_allowed, min_negatives

SCHEMA = "facekd.model_card/1"
METADATA_NAME = "facekd_model_card"
DEFAULT_FARS = (1e-2, 1e-3, 1e-4)  # every FAR a set may support; the ones it cannot resolve say why

# insightface ``arcface_dst`` for a 112x112 crop (shared/research/data.md §3.1), pixel coordinates with
# x to the right and y down, in this order:
ARCFACE_TEMPLATE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
LANDMARK_ORDER = (
    "eye on the image's left",
    "eye on the image's right",
    "nose tip",
    "mouth corner on the image's left",
    "mouth corner on the image's right",
)


# ----------------------------------------------------------------------------------------- thresholds
def fused_pairs(emb: np.ndarray, emb_flip: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Protocol layout (rows 2i, 2i+1 = pair i) -> flip-fused, L2-normalised ``(emb_a, emb_b)``.

    Fusion is the verification protocol's (sum raw embeddings of image and mirror, then normalise), so
    thresholds match the accuracy numbers reported for the same set.
    """
    from distill.metrics.verification import fuse_embeddings

    fused = fuse_embeddings(np.asarray(emb), None if emb_flip is None else np.asarray(emb_flip))
    if fused.ndim != 2 or fused.shape[0] % 2:
        raise ValueError(f"embeddings must be (2N, D), got {fused.shape}")
    return fused[0::2], fused[1::2]


def pair_cosines(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Cosine of each row pair; rows are normalised here, so raw or normalised input gives the same."""
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two (N, D) arrays of the same shape, got {a.shape}, {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a, b) / np.where(norms == 0, 1.0, norms)


def cosine_threshold_at_far(
    emb_a: np.ndarray, emb_b: np.ndarray, issame: np.ndarray, far: float
) -> float | None:
    """Smallest cosine threshold ``t`` with FAR <= ``far`` when a pair is accepted iff ``cosine > t``.

    With ``n`` negative pairs at most ``k = floor(far * n)`` may be accepted, so ``t`` is the (k+1)-th
    highest negative cosine (ties are then all rejected: never above the target). None when there are
    fewer than ``1/far`` negatives, since the FAR cannot be resolved then. Pass flip-fused embeddings
    (:func:`fused_pairs`); rows are L2-normalised here either way.
    """
    cos = pair_cosines(emb_a, emb_b)
    same = np.asarray(issame).astype(bool).reshape(-1)
    if same.shape[0] != cos.shape[0]:
        raise ValueError(f"{same.shape[0]} labels for {cos.shape[0]} pairs")
    negatives = np.sort(cos[~same])[::-1]
    if negatives.size < min_negatives(far):
        return None
    allowed = false_accepts_allowed(far, negatives.size)
    return float(negatives[allowed])


def threshold_table(
    emb_a: np.ndarray,
    emb_b: np.ndarray,
    issame: np.ndarray,
    *,
    fars: Sequence[float] = DEFAULT_FARS,
    measured_on: str = "",
    flip_fused: bool = False,
) -> dict[str, Any]:
    """The card's ``thresholds`` block: threshold, reached FAR and TAR per target FAR, plus the counts."""
    cos = pair_cosines(emb_a, emb_b)
    same = np.asarray(issame).astype(bool).reshape(-1)
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    at_far: dict[str, Any] = {}
    for far in fars:
        t = cosine_threshold_at_far(emb_a, emb_b, same, far)
        if t is None:
            at_far[_far_key(far)] = {
                "cosine": None,
                "reason": f"too few negative pairs ({n_neg}; need at least {min_negatives(far)})",
            }
            continue
        accept = cos > t
        at_far[_far_key(far)] = {
            "cosine": t,
            "far_measured": float(np.sum(accept & ~same) / n_neg),
            "tar": float(np.sum(accept & same) / n_pos) if n_pos else None,
        }
    return {
        "metric": "cosine of the two embeddings (L2-normalise each, then dot product)",
        "rule": "same person when cosine > threshold",
        "measured_on": measured_on,
        "flip_fused": flip_fused,
        "compared_as": (
            "flip-fused embeddings (image + mirror summed)"
            if flip_fused
            else "one embedding per face, no mirror: what an app computes"
        ),
        "num_pairs": int(same.size),
        "num_positive_pairs": n_pos,
        "num_negative_pairs": n_neg,
        "at_far": at_far,
    }


def _far_key(far: float) -> str:
    return f"{far:.0e}".replace("e-0", "e-")  # 0.001 -> "1e-3"


# ------------------------------------------------------------------------------------------ the card
def tflite_io(path: str | os.PathLike) -> dict[str, Any]:
    """Input/output tensors of a .tflite as an app sees them (name, shape, dtype, layout, quantization)."""
    from ai_edge_litert.interpreter import Interpreter

    path = Path(path)
    try:
        interp = Interpreter(model_path=str(path), num_threads=1)
    except Exception as exc:  # LiteRT raises ValueError/RuntimeError with multi-line text
        raise InputError(f"{path}: not a loadable TFLite model ({type(exc).__name__})") from exc
    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise InputError(f"{path}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
    inp, out = _tensor_info(inputs[0]), _tensor_info(outputs[0])
    shape = inp["shape"]
    if len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise InputError(f"{path}: expected a 4-D RGB image input, got shape {shape}")
    inp["layout"] = "NCHW" if shape[1] == 3 else "NHWC"
    return {"input": inp, "output": out}


def onnx_io(path: str | os.PathLike) -> dict[str, Any]:
    """Input/output tensors of an ONNX file in the card's form (a symbolic batch axis keeps its name)."""
    import onnx

    path = Path(path)
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf's DecodeError is not a ValueError
        raise InputError(f"{path}: not a loadable ONNX model ({type(exc).__name__})") from exc
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise InputError(
            f"{path}: expected one input and one output, got {len(inputs)} and {len(graph.output)}"
        )

    def info(value: Any) -> dict[str, Any]:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        return {
            "name": value.name,
            "shape": dims,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
        }

    inp = info(inputs[0])
    shape = inp["shape"]
    if len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise InputError(f"{path}: expected a 4-D RGB image input, got shape {shape}")
    inp["layout"] = "NCHW" if shape[1] == 3 else "NHWC"
    return {"input": inp, "output": info(graph.output[0])}


def model_io(path: str | os.PathLike) -> dict[str, Any]:
    """The card's input/output block of a .tflite or an ONNX file."""
    suffix = Path(path).suffix
    if suffix == ".tflite":
        return tflite_io(path)
    if suffix == ".onnx":
        return onnx_io(path)
    raise InputError(f"{path}: model cards are read from .tflite or .onnx files, not '{suffix}'")


def _tensor_info(detail: dict) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": str(detail["name"]),
        "shape": [int(d) for d in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
    }
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if scale:
        info["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return info


def build_model_card(
    model_path: str | os.PathLike,
    *,
    version: str,
    thresholds: dict[str, Any] | None,
    precision: str,
    embedding_l2_normalized: bool = False,
    extra: dict[str, Any] | None = None,
    input_kind: str = "normalized",
) -> dict[str, Any]:
    """The card for one .tflite or .onnx (without ``sha256``; :func:`write_model_card` adds it last)."""
    io = model_io(model_path)
    inp = io["input"]
    size = inp["shape"][2] if inp["layout"] == "NCHW" else inp["shape"][1]
    scale = size / IMAGE_SIZE
    if input_kind == "pixels":
        feed = (
            "the aligned crop's RGB pixels as they are: row-major, HWC, one byte per channel (0..255), "
            "no normalisation, no quantisation by the app (the input's scale/zero point are the model's "
            "own, applied inside)"
            if inp["dtype"] == "uint8"
            else "the aligned crop's RGB pixels as float32 values 0..255, row-major HWC, not normalised"
        )
        preprocessing: dict[str, Any] = {
            "input_kind": "pixels",
            "feed": feed,
            "colour_order": "RGB",
            "value_range_in": [0, 255],
            "normalisation": f"inside the model: (x - {PIXEL_MEAN}) / {PIXEL_STD}",
        }
    else:
        preprocessing = {
            "input_kind": "normalized",
            "feed": f"(x - {PIXEL_MEAN}) / {PIXEL_STD} of each RGB value, in the input's layout",
            "colour_order": "RGB",
            "value_range_in": [0, 255],
            "normalisation": f"(x - {PIXEL_MEAN}) / {PIXEL_STD}",
            "equivalent": "(x / 255 - 0.5) / 0.5",
            "mean": [PIXEL_MEAN] * 3,
            "std": [PIXEL_STD] * 3,
            "value_range_model": [-1.0, 1.0],
        }
    card: dict[str, Any] = {
        "schema": SCHEMA,
        "file": Path(model_path).name,
        "version": version,
        "precision": precision,
        "input": inp,
        "output": io["output"],
        "preprocessing": preprocessing,
        "alignment": {
            "method": "5-point similarity transform (Umeyama, no reflection) onto the template, "
            "bilinear warp, zero border",
            "crop_size": [size, size],
            "template": "arcface_112",
            "landmarks_xy": [[round(x * scale, 4), round(y * scale, 4)] for x, y in ARCFACE_TEMPLATE_112],
            "landmark_order": list(LANDMARK_ORDER),
        },
        "embedding": {
            "size": int(io["output"]["shape"][-1]),
            "l2_normalized": bool(embedding_l2_normalized),
            "compare_with": "cosine similarity",
        },
        "thresholds": thresholds,
    }
    if extra:
        card.update(extra)
    return card


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_model_card(
    path: str | os.PathLike,
    model_path: str | os.PathLike,
    *,
    version: str,
    thresholds: dict[str, Any] | None,
    precision: str,
    embedding_l2_normalized: bool = False,
    embed: bool = True,
    extra: dict[str, Any] | None = None,
    input_kind: str = "normalized",
) -> dict[str, Any]:
    """Write the sidecar JSON at ``path`` (atomic) and return the card.

    With ``embed`` the card is first stored inside the model file (which changes the file), then the
    sidecar records the sha256 of the final file; hash the artifact only after this call.
    """
    card = build_model_card(
        model_path,
        version=version,
        thresholds=thresholds,
        precision=precision,
        embedding_l2_normalized=embedding_l2_normalized,
        extra=extra,
        input_kind=input_kind,
    )
    card["metadata_embedded"] = METADATA_NAME if embed else None
    if embed:
        embed_metadata(model_path, card)
    card["sha256"] = sha256_of(model_path)
    write_json(path, card)
    return card


def write_engine_card(
    path: str | os.PathLike, engine_path: str | os.PathLike, onnx_card: dict[str, Any]
) -> dict[str, Any]:
    """The card of a TensorRT engine: its ONNX's card (same I/O, same thresholds) naming the engine file."""
    card = {k: v for k, v in onnx_card.items() if k not in ("sha256", "metadata_embedded")}
    card.update(
        file=Path(engine_path).name,
        built_from=onnx_card["file"],
        metadata_embedded=None,  # an engine has no metadata field: the sidecar is the only card
        thresholds_note="measured on the ONNX it was built from; an engine built on another GPU or "
        "TensorRT version can differ slightly: check with devices/measure before relying on 1e-3 and below",
    )
    card["sha256"] = sha256_of(engine_path)
    write_json(path, card)
    return card


# ------------------------------------------------------------------------------ flatbuffer metadata
def embed_metadata(model_path: str | os.PathLike, card: dict[str, Any], *, name: str = METADATA_NAME) -> Path:
    """Store ``card`` as JSON inside the model file under ``name`` (.tflite or .onnx; replaces an old one)."""
    if Path(model_path).suffix == ".onnx":
        return _embed_onnx_metadata(Path(model_path), card, name)
    return _embed_tflite_metadata(model_path, card, name)


def read_metadata(model_path: str | os.PathLike, *, name: str = METADATA_NAME) -> dict[str, Any] | None:
    """The JSON stored under ``name`` in a .tflite or .onnx, or None when there is none."""
    if Path(model_path).suffix == ".onnx":
        return _read_onnx_metadata(Path(model_path), name)
    return _read_tflite_metadata(model_path, name)


def _card_json(card: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in card.items() if k != "sha256"}, sort_keys=True, default=json_default)


def _embed_onnx_metadata(path: Path, card: dict[str, Any], name: str) -> Path:
    """ONNX ``metadata_props`` entry ``name`` = the card's JSON; onnxruntime must load the result."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != name]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=name, value=_card_json(card))
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        import onnxruntime as ort

        ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    return path


def _onnx_metadata_props(path: Path) -> dict[str, str]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError is not a ValueError
        raise InputError(f"{path}: not a loadable ONNX model ({type(exc).__name__})") from exc
    return {p.key: p.value for p in model.metadata_props}


def _read_onnx_metadata(path: Path, name: str) -> dict[str, Any] | None:
    try:
        props = _onnx_metadata_props(path)
        return json.loads(props[name]) if name in props else None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: unreadable metadata '{name}' ({type(exc).__name__})") from exc


def _embed_tflite_metadata(tflite_path: str | os.PathLike, card: dict[str, Any], name: str) -> Path:
    """Store ``card`` as JSON in the .tflite's ``metadata`` vector under ``name`` (replacing an old one).

    Rewritten through LiteRT's own flatbuffer bindings (``ai_edge_litert.tools.flatbuffer_utils``) and
    loaded into the interpreter before the atomic rename; the graph and weights are untouched.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    path = Path(tflite_path)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    payload = _card_json(card).encode("utf-8")
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(payload, dtype=np.uint8)
    existing = [m for m in (model.metadata or []) if _metadata_name(m) == name]
    if existing:  # overwrite our own buffer instead of leaving the old one orphaned in the file
        model.buffers[existing[0].buffer] = buffer
    else:
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    # identical vectors stay shared (LiteRT's own writer would duplicate what compact() merged)
    from deploy.tflite_int8 import pack_model

    data = pack_model(model)
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(data))
        _check_loads(tmp)
    return path


def _read_tflite_metadata(tflite_path: str | os.PathLike, name: str) -> dict[str, Any] | None:
    from ai_edge_litert import schema_py_generated as schema

    path = Path(tflite_path)
    data = path.read_bytes()
    try:
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if _metadata_name(entry) == name:
                raw = model.Buffers(entry.Buffer()).DataAsNumpy()
                return json.loads(bytes(raw).decode("utf-8"))
    except (ValueError, IndexError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable metadata '{name}' ({type(exc).__name__})") from exc
    return None


def _metadata_name(entry: Any) -> str:
    raw = entry.Name() if hasattr(entry, "Name") else entry.name
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _check_loads(path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    Interpreter(model_path=str(path), num_threads=1).allocate_tensors()
