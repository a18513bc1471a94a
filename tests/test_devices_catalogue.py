"""Device catalogue: the built-in files load and are internally consistent, users add devices by
adding a file, bad files name the file and field; the ``devices list/check`` commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from devices.catalogue import BUILTIN_DIR, ENV_VAR, get_device, load_catalogue, load_device_file
from distill.errors import InputError
from pipeline.devices_cli import add_devices_commands, run_devices_command

REQUIRED = (
    "jetson-orin-nano",
    "jetson-orin-nx",
    "jetson-agx-orin",
    "jetson-xavier-nx",
    "android-arm64-generic",
    "host-cpu",
    "host-gpu",
)


def test_builtin_catalogue_has_the_devices_with_sourced_figures():
    cat = load_catalogue()
    assert set(REQUIRED) <= set(cat)
    for name, d in cat.items():
        assert d.path is not None and d.path.parent == BUILTIN_DIR and d.path.stem == name
        for fname, f in d.figures.items():
            assert f.source.strip(), f"{name}.{fname} has no source"
            if f.basis in ("datasheet", "derived", "nominal"):
                assert f.value is not None and f.value > 0
            if f.basis == "derived":
                assert f.note, f"{name}.{fname} is derived but says not how"
    jetsons = [d for d in cat.values() if d.target == "jetson"]
    assert {d.connection for d in jetsons} == {"ssh"}
    assert cat["android-arm64-generic"].connection == "adb"
    assert cat["android-arm64-generic"].formats == ("tflite",)
    # generic phone figures must not pass for datasheet numbers
    assert {f.basis for f in cat["android-arm64-generic"].figures.values()} == {"nominal"}
    assert {f.basis for f in cat["host-cpu"].figures.values()} == {"run-time"}
    for name in ("jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin"):
        assert "tensorrt" in cat[name].formats and "10" in cat[name].runtime["tensorrt"]


@pytest.mark.parametrize(
    "name", ["jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx"]
)
def test_jetson_figures_agree_with_cores_and_clocks(name):
    """The compute figures follow from the datasheet core counts and clocks (FMA = 2 FLOP)."""
    d = load_catalogue()[name]
    v = {k: f.value for k, f in d.figures.items()}
    assert v["gpu_fp32_tflops"] == pytest.approx(v["gpu_cuda_cores"] * 2 * v["gpu_max_mhz"] / 1e6, rel=0.01)
    assert v["cpu_fp32_gflops"] == pytest.approx(v["cpu_cores"] * v["cpu_max_mhz"] / 1e3 * 16, rel=0.01)
    assert v["gpu_int8_tops_dense"] <= v.get("int8_tops_dense", v["gpu_int8_tops_dense"])
    if "int8_tops_sparse" in v and name != "jetson-xavier-nx":
        assert v["int8_tops_sparse"] == pytest.approx(2 * v["int8_tops_dense"])


def write_device(folder: Path, name: str, **changes) -> Path:
    data = yaml.safe_load((BUILTIN_DIR / "jetson-orin-nano.yaml").read_text())
    data["name"] = name
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_user_folders_add_and_override(tmp_path, monkeypatch):
    env_dir, cli_dir = tmp_path / "env", tmp_path / "cli"
    write_device(env_dir, "my-orin", description="from env")
    write_device(cli_dir, "my-orin", description="from --devices-dir")
    write_device(cli_dir, "jetson-orin-nano", description="my corrected nano")
    monkeypatch.setenv(ENV_VAR, str(env_dir))
    assert load_catalogue()["my-orin"].description == "from env"
    cat = load_catalogue([cli_dir])
    assert cat["my-orin"].description == "from --devices-dir"  # later folders win
    assert cat["jetson-orin-nano"].path == cli_dir / "jetson-orin-nano.yaml"
    assert get_device("my-orin", [cli_dir]).name == "my-orin"
    with pytest.raises(InputError, match="unknown device 'nope'"):
        get_device("nope")
    with pytest.raises(InputError, match="not found"):
        load_catalogue([tmp_path / "missing"])


def figures_with(name: str, **spec) -> dict:
    figures = yaml.safe_load((BUILTIN_DIR / "jetson-orin-nano.yaml").read_text())["figures"]
    figures[name] = spec
    return figures


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"formats": ["onnx", "coreml"]}, "formats"),
        ({"precisions": []}, "precisions"),
        ({"target": "raspberry"}, "target"),
        ({"colour": "green"}, "colour"),
        ({"description": None}, "description"),
        (
            {"figures": figures_with("gpu_fp32_tflops", value=1.0, basis="datasheet")},
            "figures.gpu_fp32_tflops.source",
        ),
        ({"figures": figures_with("speed", value=1.0, basis="datasheet", source="x")}, "speed"),
        (
            {"figures": figures_with("x_gbs", value=None, basis="datasheet", source="x")},
            "figures.x_gbs.value",
        ),
        (
            {"figures": figures_with("x_gbs", value="fast", basis="datasheet", source="x")},
            "figures.x_gbs.value",
        ),
        ({"figures": figures_with("x_gbs", value=3, basis="rumour", source="x")}, "figures.x_gbs.basis"),
        (
            {
                "estimate": {
                    "unit": "gpu",
                    "peak": {"fp32": "nope_tflops"},
                    "bandwidth": "memory_bandwidth_gbs",
                }
            },
            "estimate.peak.fp32",
        ),
        (
            {
                "estimate": {
                    "unit": "cpu",
                    "peak": {"fp32": "cpu_fp32_gflops", "fp16": "cpu_fp32_gflops", "int8": "cpu_fp32_gflops"},
                    "bandwidth": "memory_bandwidth_gbs",
                }
            },
            "estimate.cores",
        ),
    ],
)
def test_bad_files_name_the_file_and_field(tmp_path, changes, field):
    path = write_device(tmp_path, "bad-device", **changes)
    with pytest.raises(InputError) as info:
        load_device_file(path)
    message = str(info.value)
    assert str(path) in message and field in message and "\n" not in message


def test_name_must_match_file_and_yaml_errors(tmp_path):
    path = write_device(tmp_path, "one")
    renamed = path.rename(tmp_path / "two.yaml")
    with pytest.raises(InputError, match="two.yaml.*named"):
        load_device_file(renamed)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(InputError, match="broken.yaml: not valid YAML"):
        load_device_file(broken)


# ---------------------------------------------------------------------------------------------- CLI
def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("other")
    add_devices_commands(sub)
    return parser.parse_args(argv)


def test_devices_list_table_and_json(capsys, tmp_path):
    write_device(tmp_path, "my-orin")
    assert run_devices_command(parse(["devices", "list", "--devices-dir", str(tmp_path)])) == 0
    out = capsys.readouterr().out
    for name in (*REQUIRED, "my-orin"):
        assert name in out
    nano = next(line for line in out.splitlines() if line.startswith("jetson-orin-nano "))
    assert "onnx,tensorrt" in nano and " 20 " in nano and "68" in nano and "1.28*" in nano
    assert "datasheet" in out  # the legend
    assert run_devices_command(parse(["devices", "list", "--json"])) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["jetson-agx-orin"]["figures"]["memory_bandwidth_gbs"]["value"] == 204.8
    assert run_devices_command(parse(["other"])) is None


def test_devices_check_without_a_connection(capsys):
    assert run_devices_command(parse(["devices", "check", "--target", "jetson-orin-nano"])) == 0
    out = capsys.readouterr().out
    assert "no device given" in out and "estimated" in out and "Orin Nano Series Data Sheet" in out
    assert run_devices_command(parse(["devices", "check", "--device", "host-cpu", "--json"])) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reachable"] is True and report["versions"]["onnxruntime"]
    with pytest.raises(InputError, match="unknown device"):
        run_devices_command(parse(["devices", "check", "--target", "no-such-device"]))
    with pytest.raises(InputError, match="--benchmark-model"):
        run_devices_command(
            parse(["devices", "check", "--target", "android-arm64-generic", "--adb-serial", "X1"])
        )
