"""The run configuration: typed dataclasses, presets, YAML/TOML loading with one-line errors.

Validation is hand-written (about 60 lines) because the config is a tree of plain dataclasses and a
user needs the exact key path of a mistake (``distill.train.lr: expected a number, got 'fast'``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import yaml

from distill.errors import InputError


@dataclass
class SynthConfig:
    """Size and difficulty of the synthetic data set the default run generates."""

    train_identities: int = 300
    images_per_identity: int = 24
    val_identities: int = 200
    val_pairs: int = 1200
    difficulty: float = 0.5
    seed: int = 0


@dataclass
class DataConfig:
    """Where the data comes from: real files, or generated when ``train`` is empty."""

    train: str = ""  # folder with train.rec/train.idx, or an image folder; "" = synthesize
    val: list[str] = field(default_factory=list)  # .bin files or pairs folders; [] = synthetic val set
    synth: SynthConfig = field(default_factory=SynthConfig)
    workers: int = 0  # DataLoader worker processes (0 = decode in the training process)


@dataclass
class TrainConfig:
    """One schedule for any model the engine trains (teacher or student)."""

    epochs: float = 1.0
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 0
    seed: int = 0
    checkpoint_every: int = 200  # steps between atomic checkpoints
    eval_every: int = 0  # steps between verification evaluations, and at the end (0 = never; measure does it)
    amp: str = "auto"  # auto | bf16 | fp16 | off (autocast only on CUDA)
    device: str = "auto"  # auto | cpu | cuda
    max_steps: int = 0  # 0 = from epochs; > 0 caps the run (smoke tests)
    # NHWC memory format: ~1.9x faster MobileFaceNet training on this CPU (oneDNN); see engine/device.py.
    channels_last: bool = True
    # batch composition: "random" (uniform), or "balanced" as EKD: a uniform part plus
    # balanced_identities x balanced_images images per batch; margin losses then see the uniform part only
    sampler: str = "random"
    balanced_identities: int = 8
    balanced_images: int = 4
    # keep BatchNorm statistics fixed (eval mode) while training: QAT fine-tuning of a trained student
    freeze_bn: bool = False


@dataclass
class LossSpec:
    """A named loss term and its weight; ``params`` go to that loss's constructor."""

    name: str = "arcface"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherInputConfig:
    """How an external teacher is fed (distill/teacher_input.py); "auto"/None/0 = read from the file.

    Layout and size are detected from an ONNX input shape, the pixel scaling from a leading Sub/Mul
    normalisation (then raw 0..255 pixels are fed); a model without one gets ``(x - 127.5) / 127.5``
    unless mean/std are declared here (raw 0..255 pixels: mean 0, std 1).
    """

    layout: str = "auto"  # auto | NCHW | NHWC
    channels: str = "RGB"  # RGB | BGR (a file cannot say which)
    mean: float | list[float] | None = None  # on 0..255 pixels, per channel in the model's order
    std: float | list[float] | None = None
    size: int = 0  # input side in pixels (the 112 crop is resized bilinearly); 0 = from the file


@dataclass
class TeacherConfig:
    """The teacher: an existing checkpoint/ONNX file, or an architecture trained on the data."""

    # facekd .pt checkpoint, or a plain state_dict (arcface_torch backbone.pth) of ``arch``
    checkpoint: str = ""
    onnx: str = ""  # external teacher as ONNX (run with onnxruntime); no classifier head available
    input: TeacherInputConfig = field(default_factory=TeacherInputConfig)
    # an external teacher at chance on the verification set (or with near-constant embeddings) stops the
    # run: it is almost always fed wrongly; true goes on anyway
    allow_chance: bool = False
    arch: str = "iresnet18"
    embedding_dim: int = 512
    # base_width 32 = half the published iResNet width: a teacher a 2-core CPU trains in about 5 minutes.
    arch_params: dict[str, Any] = field(default_factory=lambda: {"base_width": 32})
    # CosFace s=32, m=0.3 converges within one short CPU epoch (88.5% vs 81% for ArcFace s=64, m=0.5).
    losses: list[LossSpec] = field(
        default_factory=lambda: [LossSpec("cosface", 1.0, {"scale": 32.0, "margin": 0.3})]
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, warmup_steps=10))


@dataclass
class DistillConfig:
    """Stage one: the student and the weighted loss terms that train it."""

    arch: str = "mobilefacenet"
    embedding_dim: int = 128
    arch_params: dict[str, Any] = field(default_factory=dict)
    losses: list[LossSpec] = field(
        default_factory=lambda: [
            LossSpec("cosface", 1.0, {"scale": 32.0, "margin": 0.3}),
            LossSpec("feature_l2", 10.0),
        ]
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, warmup_steps=10))


@dataclass
class QatConfig:
    """Stage two: NNCF INT8 quantization of the distilled student, then distillation with fake-quant.

    The scheme is fixed to what both targets run natively: symmetric INT8, per-channel weights,
    per-tensor activations, zero point 0 (see compress/quantize.py).
    """

    enabled: bool = True  # false: no INT8 artifacts; export uses the fp32 student only
    calibration_images: int = 256  # training images drawn (seeded) for range calibration (PTQ and QAT)
    calibration_batch: int = 32
    # activation range init: histogram (best on MobileFaceNet in shared/research/spike-qat-scales.md),
    # mean_minmax (NNCF's default) or minmax
    range_estimator: str = "histogram"
    fast_bias_correction: bool = True
    # [] = the distill.losses of stage one (their heads/projectors start from the stage-one state)
    losses: list[LossSpec] = field(default_factory=list)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=0.3, lr=0.005, weight_decay=5e-5, warmup_steps=0, freeze_bn=True, checkpoint_every=50
        )
    )


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


@dataclass
class MeasureConfig:
    """How artifacts are measured on the host."""

    threads: int = 2
    warmup: int = 10
    runs: int = 100
    flip: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)


# Presets are plain overrides of the defaults: "default" is the CPU recipe (23 min on 2 cores at its last
# timing, benchmarks/results/pipeline_default.md), "tiny" the smoke run of the tests, "gpu" for real data.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "tiny": {
        "data": {
            "synth": {"train_identities": 12, "images_per_identity": 6, "val_identities": 10, "val_pairs": 40}
        },
        "teacher": {
            "arch_params": {"base_width": 8},
            "train": {"epochs": 1, "batch_size": 16, "checkpoint_every": 4},
        },
        "distill": {"train": {"epochs": 1, "batch_size": 16, "checkpoint_every": 4}},
        "qat": {
            "enabled": False,  # stage two adds ~30 s and a 1-3 min INT8 .tflite conversion: opt in
            "calibration_images": 16,
            "calibration_batch": 8,
            "train": {"epochs": 0.25, "batch_size": 16, "checkpoint_every": 4},
        },
        "export": {"parity_images": 4},
        "measure": {"warmup": 2, "runs": 5},
    },
    "gpu": {
        "data": {"workers": 8},
        # published recipe: full-width iResNet-50 teacher, ArcFace s=64 m=0.5, 512-d student
        "teacher": {
            "arch": "iresnet50",
            "arch_params": {"base_width": 64},
            "losses": [{"name": "arcface", "weight": 1.0, "params": {}}],
            "train": {"epochs": 20, "batch_size": 128, "checkpoint_every": 2000, "eval_every": 2000},
        },
        "distill": {
            "embedding_dim": 512,
            "losses": [
                {"name": "arcface", "weight": 1.0, "params": {}},
                {"name": "feature_l2", "weight": 10.0, "params": {}},
            ],
            "train": {"epochs": 20, "batch_size": 128, "checkpoint_every": 2000, "eval_every": 2000},
        },
        "qat": {
            "calibration_images": 1024,
            "train": {
                "epochs": 2,
                "batch_size": 128,
                "lr": 0.001,
                "checkpoint_every": 2000,
                "eval_every": 2000,
            },
        },
        "measure": {"runs": 500, "warmup": 50},
    },
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; dicts merge recursively, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_layer(raw: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """``deep_merge``, except that a model's ``arch_params`` belong to its ``arch``: a layer's
    ``arch_params`` replace the earlier ones whole, and naming another ``arch`` without them clears them
    (the preset's half-width iResNet ``base_width`` must not reach a MobileFaceNet or a full-width file)."""
    merged = deep_merge(raw, layer)
    for section in ("teacher", "distill"):
        sec = layer.get(section)
        if not isinstance(sec, dict) or not isinstance(merged.get(section), dict):
            continue
        if "arch_params" in sec:
            merged[section]["arch_params"] = copy.deepcopy(sec["arch_params"])
        elif "arch" in sec and sec["arch"] != (raw.get(section) or {}).get("arch"):
            merged[section]["arch_params"] = {}
    return merged


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file into a dict, with a one-line error on failure."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: config file not found")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml", ".json"):
            data = yaml.safe_load(text) or {}
        else:
            raise InputError(f"{p}: unknown config format '{p.suffix}' (use .yaml, .yml or .toml)")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{p}: cannot parse config: {first}") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: config must be a mapping at the top level")
    return data


def load_config(
    path: str | Path | None = None, preset: str = "default", overrides: dict[str, Any] | None = None
) -> Config:
    """Defaults <- preset <- config file <- overrides, validated into a ``Config``."""
    if preset not in PRESETS:
        raise InputError(f"--preset: unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    raw = _merge_layer(to_dict(Config()), PRESETS[preset])
    if path:
        raw = _merge_layer(raw, read_config_file(path))
    if overrides:
        raw = _merge_layer(raw, overrides)
    try:
        return from_dict(Config, raw, "config")
    except InputError as exc:
        raise InputError(f"{path}: {exc}" if path else str(exc)) from None


def config_from_layers(preset: str, layers: list[dict[str, Any]]) -> Config:
    """Defaults <- preset <- each config layer in order: how a run folder rebuilds its settings."""
    if preset not in PRESETS:
        raise InputError(f"--preset: unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    raw = _merge_layer(to_dict(Config()), PRESETS[preset])
    for layer in layers:
        raw = _merge_layer(raw, layer)
    return from_dict(Config, raw, "config")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_hash(section: Any) -> str:
    """Stable hash of a config section (a dataclass or plain data), for the stage skip logic."""
    import hashlib

    data = to_dict(section) if dataclasses.is_dataclass(section) else section
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, checking keys and types, naming the key path on error."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where != "config" else k) for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list,):
        if not isinstance(value, list):
            raise InputError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict,):
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(arg, value, where)
            except InputError:
                continue
        raise InputError(f"{where}: value {value!r} has the wrong type")
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a string, got {value!r}")
        return value
    if value is None and tp is type(None):
        return None
    raise InputError(f"{where}: unsupported value {value!r}")


def validate(cfg: Config) -> None:
    """Checks that need more than types (ranges, choices); raises InputError naming the key."""
    for name, tc in (
        ("teacher.train", cfg.teacher.train),
        ("distill.train", cfg.distill.train),
        ("qat.train", cfg.qat.train),
    ):
        if tc.batch_size < 2:
            raise InputError(f"{name}.batch_size: must be >= 2, got {tc.batch_size}")
        if tc.lr <= 0:
            raise InputError(f"{name}.lr: must be > 0, got {tc.lr}")
        if tc.epochs <= 0 and tc.max_steps <= 0:
            raise InputError(f"{name}.epochs: must be > 0, got {tc.epochs}")
        if tc.amp not in ("auto", "bf16", "fp16", "off"):
            raise InputError(f"{name}.amp: must be one of auto, bf16, fp16, off; got '{tc.amp}'")
        if tc.sampler not in ("random", "balanced"):
            raise InputError(f"{name}.sampler: must be 'random' or 'balanced'; got '{tc.sampler}'")
        if tc.sampler == "balanced" and tc.balanced_identities * tc.balanced_images >= tc.batch_size:
            raise InputError(
                f"{name}.balanced_identities x balanced_images must be < batch_size ({tc.batch_size})"
            )
        if tc.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"{name}.device: must be one of auto, cpu, cuda; got '{tc.device}'")
    if not 0.0 <= cfg.data.synth.difficulty <= 1.0:
        raise InputError(f"data.synth.difficulty: must be in [0, 1], got {cfg.data.synth.difficulty}")
    if cfg.data.synth.val_pairs < 20 or cfg.data.synth.val_pairs % 2:
        raise InputError(
            f"data.synth.val_pairs: must be an even number >= 20, got {cfg.data.synth.val_pairs}"
        )
    t = cfg.teacher
    if t.onnx and t.checkpoint:
        raise InputError("teacher: give teacher.onnx or teacher.checkpoint, not both")
    if not (t.onnx or t.checkpoint) and t.input != TeacherInputConfig():
        raise InputError(
            "teacher.input: describes how to feed a teacher file; set teacher.onnx or teacher.checkpoint "
            "(a teacher trained here takes the project's own input)"
        )
    q = cfg.qat
    if q.range_estimator not in ("histogram", "mean_minmax", "minmax"):
        raise InputError(
            f"qat.range_estimator: must be histogram, mean_minmax or minmax; got '{q.range_estimator}'"
        )
    if q.calibration_images < 1 or q.calibration_batch < 1:
        raise InputError("qat.calibration_images and qat.calibration_batch: must be >= 1")
    e = cfg.export
    if e.tflite_int8_scales not in ("carry", "calibrate"):
        raise InputError(
            f"export.tflite_int8_scales: must be 'carry' or 'calibrate'; got '{e.tflite_int8_scales}'"
        )
    if e.tflite_int8_io not in ("int8", "float32"):
        raise InputError(f"export.tflite_int8_io: must be 'int8' or 'float32'; got '{e.tflite_int8_io}'")
    if cfg.export.batch_size < 0:
        raise InputError(f"export.batch_size: must be >= 0 (0 = dynamic), got {cfg.export.batch_size}")
    if cfg.measure.runs < 1:
        raise InputError(f"measure.runs: must be >= 1, got {cfg.measure.runs}")
