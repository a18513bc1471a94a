"""The whole run's configuration: every stage's section, the presets, loading and validation.

Each stage owns its section's dataclass (distill/config.py for data/teacher/distill, compress/config.py,
deploy/config.py, devices/config.py); only this module, at the top of the import order, knows them all.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.config import QatConfig, validate_qat
from deploy.config import ExportConfig, validate_export
from devices.config import MeasureConfig, validate_measure
from distill.config import (
    CacheConfig,
    DataConfig,
    DistillConfig,
    TeacherConfig,
    deep_merge,
    from_dict,
    read_config_file,
    to_dict,
    validate_cache,
    validate_stage_one,
)
from distill.data.synth import TINY as SYNTH_TINY
from distill.errors import InputError


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)


# Presets are plain overrides of the defaults: "default" is the CPU recipe (9.8-11.7 min on 2 cores at its
# last timings, by the hour, benchmarks/results/pipeline_default.md), "tiny" the smoke run of the tests,
# "gpu" for real data.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        # bf16 autocast where the CPU runs it natively (AMX / AVX512-BF16), fp32 elsewhere: the teacher's
        # training step 2.0x faster here (benchmarks/results/train_steps.md); its accuracy is in
        # benchmarks/results/pipeline_default.md
        "teacher": {"train": {"amp": "bf16_if_native"}},
    },
    "tiny": {
        "data": {"synth": dict(SYNTH_TINY)},
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


def validate(cfg: Config) -> None:
    """Checks that need more than types (ranges, choices); raises InputError naming the key."""
    validate_stage_one(cfg.data, cfg.teacher, cfg.distill)
    validate_cache(cfg.cache)
    validate_qat(cfg.qat)
    validate_export(cfg.export)
    validate_measure(cfg.measure)
