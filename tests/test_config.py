"""Config loading: presets, YAML/TOML files, and one-line errors that name the key."""

from __future__ import annotations

import re

import pytest

from distill.config import to_dict
from distill.errors import InputError
from pipeline.config import PRESETS, Config, load_config, validate


def test_defaults_then_preset_then_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("distill:\n  train:\n    lr: 0.05\n  losses:\n    - {name: arcface, weight: 1}\n")
    cfg = load_config(f, preset="tiny")
    assert cfg.distill.train.lr == 0.05  # file wins over preset
    assert cfg.distill.train.batch_size == PRESETS["tiny"]["distill"]["train"]["batch_size"]  # preset kept
    assert [s.name for s in cfg.distill.losses] == ["arcface"]  # lists replace, not merge
    assert cfg.teacher.arch == Config().teacher.arch  # untouched default
    validate(cfg)


def test_toml_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[teacher]\narch = "iresnet50"\n[data.synth]\ndifficulty = 0.25\n')
    cfg = load_config(f)
    assert cfg.teacher.arch == "iresnet50"
    assert cfg.data.synth.difficulty == 0.25


@pytest.mark.parametrize(
    "text, expected",
    [
        ("distill:\n  train:\n    lr: fast\n", "distill.train.lr: expected a number, got 'fast'"),
        ("distil:\n  x: 1\n", "unknown key 'distil'"),
        (
            "distill:\n  losses:\n    - {name: arcface, wieght: 1}\n",
            "distill.losses[0]: unknown key 'wieght'",
        ),
        ("measure:\n  flip: 3\n", "measure.flip: expected true/false"),
        ("data:\n  val: lfw.bin\n", "data.val: expected a list"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("a: [1,\n", "cannot parse config"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(InputError) as err:
        load_config(f)
    assert expected in str(err.value)
    assert str(err.value).startswith(f"{f}: ")  # names the file first
    assert "\n" not in str(err.value)


def test_range_checks():
    cfg = load_config(overrides={"data": {"synth": {"difficulty": 1.5}}})
    with pytest.raises(InputError, match="data.synth.difficulty"):
        validate(cfg)
    cfg = load_config(overrides={"teacher": {"train": {"amp": "fp8"}}})
    with pytest.raises(InputError, match="teacher.train.amp"):
        validate(cfg)
    bad = {
        "data.synth.dev_pairs: must be 0 or an even number >= 20, got 21": {
            "data": {"synth": {"dev_pairs": 21}}
        },
        "data.dev: give it with data.train": {"data": {"dev": ["lfw.bin"]}},
        "qat.keep: must be one of best_on_dev, qat, ptq; got 'last'": {"qat": {"keep": "last"}},
    }
    for message, overrides in bad.items():
        with pytest.raises(InputError, match=re.escape(message)):
            validate(load_config(overrides=overrides))
    validate(load_config(overrides={"data": {"synth": {"dev_pairs": 0}}}))  # no dev set: allowed


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="unknown preset 'huge'"):
        load_config(preset="huge")
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_every_preset_is_valid():
    for name in PRESETS:
        cfg = load_config(preset=name)
        validate(cfg)
        assert to_dict(cfg)["distill"]["arch"] == "mobilefacenet"


def test_only_the_cpu_recipe_trains_its_teacher_in_native_bf16():
    """The default preset's teacher: bf16 where the CPU runs it natively; the students, the smoke preset
    and the GPU recipe keep the engine's ``auto``; a typo names the choices."""
    default = load_config(preset="default")
    assert default.teacher.train.amp == "bf16_if_native"
    assert default.distill.train.amp == default.qat.train.amp == "auto"
    assert load_config(preset="tiny").teacher.train.amp == "auto"
    assert load_config(preset="gpu").teacher.train.amp == "auto"
    default.teacher.train.amp = "bf16-native"
    with pytest.raises(InputError, match="teacher.train.amp: must be one of auto, bf16, bf16_if_native"):
        validate(default)


def test_arch_params_belong_to_their_arch(tmp_path):
    from pipeline.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher:\n  arch: mobilefacenet\n  checkpoint: x.pth\n")
    assert load_config(cfg).teacher.arch_params == {}  # the default's iResNet base_width is not carried
    cfg.write_text("teacher:\n  arch: iresnet50\n  arch_params: {dropout: 0.1}\n")
    assert load_config(cfg, preset="tiny").teacher.arch_params == {"dropout": 0.1}  # replaced, not merged
    assert load_config(None, preset="tiny").teacher.arch_params == {"base_width": 8}


def test_teacher_input_needs_a_teacher_file(tmp_path):
    from pipeline.config import load_config, validate

    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher:\n  input: {mean: 0, std: 1}\n")
    with pytest.raises(InputError, match="teacher.input: describes how to feed a teacher file"):
        validate(load_config(cfg))
    cfg.write_text("teacher:\n  onnx: a.onnx\n  checkpoint: b.pth\n")
    with pytest.raises(InputError, match="not both"):
        validate(load_config(cfg))
    cfg.write_text("teacher:\n  onnx: a.onnx\n  input: {layout: NHWC, mean: [0, 0, 0], std: 1, size: 224}\n")
    validate(load_config(cfg))  # a full contract is valid config
