"""Stage one's settings (data, teacher, distill, training schedules) and the config machinery every
stage's section uses: typed dataclasses, YAML/TOML reading, key-path errors, hashing.

Later stages keep their own sections (compress/config.py, deploy/config.py, devices/config.py); the whole
run's ``Config``, presets and loading live in pipeline/config.py, which alone knows every stage.
Validation is hand-written because the config is a tree of plain dataclasses and a user needs the exact
key path of a mistake (``distill.train.lr: expected a number, got 'fast'``).
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

from distill.data.synth import SynthSpec
from distill.errors import InputError

AMP_CHOICES = ("auto", "bf16", "bf16_if_native", "fp16", "off")  # TrainConfig.amp (engine/device.py)


@dataclass
class DataConfig:
    """Where the data comes from: real files, or generated when ``train`` is empty."""

    train: str = ""  # folder with train.rec/train.idx, or an image folder; "" = synthesize
    val: list[str] = field(default_factory=list)  # .bin files or pairs folders; [] = synthetic val set
    # verification sets a stage may choose by (stage two: PTQ or QAT), never reported as results, so the
    # val sets stay untouched by every choice; [] = the synthetic dev set when data is generated, else none
    dev: list[str] = field(default_factory=list)
    synth: SynthSpec = field(default_factory=SynthSpec)  # the generator's own settings
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
    # auto | bf16 | bf16_if_native | fp16 | off (CUDA: auto = bf16/fp16; a CPU: bf16 only if asked, and
    # bf16 refused where it is emulated; bf16_if_native: bf16 where native, else fp32): engine/device.py
    amp: str = "auto"
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
class CacheConfig:
    """How the teacher embeds every training image once (the cache stage)."""

    # auto: bf16 autocast where the hardware runs it natively (a CUDA GPU with bf16, a CPU with AMX or
    # AVX512-BF16: 2.5x the fp32 speed of the default teacher here) and fp32 elsewhere; PyTorch teachers
    # only (an ONNX teacher runs as its file says). Checked on the first batch against fp32, see below.
    precision: str = "auto"  # auto | fp32 | bf16
    # bf16 is used only when the first batch's embeddings agree with fp32 to this cosine (every image and
    # its mirror); below it the whole cache is computed in fp32, with one line saying so
    min_cosine: float = 0.999
    batch_size: int = 64


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


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; dicts merge recursively, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


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
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            items = (items[0],) * len(value)
        if len(items) != len(value):
            raise InputError(f"{where}: expected {len(items)} values, got {len(value)}")
        pairs = enumerate(zip(items, value, strict=True))
        return tuple(_coerce(t, v, f"{where}[{i}]") for i, (t, v) in pairs)
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


def validate_train(name: str, tc: TrainConfig) -> None:
    """Range and choice checks of one training schedule; InputError naming ``name`` (its key path)."""
    if tc.batch_size < 2:
        raise InputError(f"{name}.batch_size: must be >= 2, got {tc.batch_size}")
    if tc.lr <= 0:
        raise InputError(f"{name}.lr: must be > 0, got {tc.lr}")
    if tc.epochs <= 0 and tc.max_steps <= 0:
        raise InputError(f"{name}.epochs: must be > 0, got {tc.epochs}")
    if tc.amp not in AMP_CHOICES:
        raise InputError(f"{name}.amp: must be one of {', '.join(AMP_CHOICES)}; got '{tc.amp}'")
    if tc.sampler not in ("random", "balanced"):
        raise InputError(f"{name}.sampler: must be 'random' or 'balanced'; got '{tc.sampler}'")
    if tc.sampler == "balanced" and tc.balanced_identities * tc.balanced_images >= tc.batch_size:
        raise InputError(
            f"{name}.balanced_identities x balanced_images must be < batch_size ({tc.batch_size})"
        )
    if tc.device not in ("auto", "cpu", "cuda"):
        raise InputError(f"{name}.device: must be one of auto, cpu, cuda; got '{tc.device}'")


def validate_cache(cache: CacheConfig) -> None:
    """Checks of the cache section that need more than types."""
    if cache.precision not in ("auto", "fp32", "bf16"):
        raise InputError(f"cache.precision: expected auto, fp32 or bf16, got '{cache.precision}'")
    if not 0.0 < cache.min_cosine <= 1.0:
        raise InputError(f"cache.min_cosine: must be in (0, 1], got {cache.min_cosine}")
    if cache.batch_size < 1:
        raise InputError(f"cache.batch_size: must be >= 1, got {cache.batch_size}")


def validate_stage_one(data: DataConfig, teacher: TeacherConfig, distill: DistillConfig) -> None:
    """Checks of the data, teacher and distill sections that need more than types."""
    validate_train("teacher.train", teacher.train)
    validate_train("distill.train", distill.train)
    try:
        data.synth.validate()
    except ValueError as exc:
        raise InputError(f"data.synth.{exc}") from None  # its messages start with the field name
    if data.synth.val_pairs < 20 or data.synth.val_pairs % 2:
        raise InputError(f"data.synth.val_pairs: must be an even number >= 20, got {data.synth.val_pairs}")
    dev_pairs = data.synth.dev_pairs
    if dev_pairs and (dev_pairs < 20 or dev_pairs % 2):
        raise InputError(f"data.synth.dev_pairs: must be 0 or an even number >= 20, got {dev_pairs}")
    if data.dev and not data.train:
        raise InputError("data.dev: give it with data.train (generated data brings its own dev set)")
    if teacher.onnx and teacher.checkpoint:
        raise InputError("teacher: give teacher.onnx or teacher.checkpoint, not both")
    if not (teacher.onnx or teacher.checkpoint) and teacher.input != TeacherInputConfig():
        raise InputError(
            "teacher.input: describes how to feed a teacher file; set teacher.onnx or teacher.checkpoint "
            "(a teacher trained here takes the project's own input)"
        )
