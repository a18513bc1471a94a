"""The adb runner's command sequence, against a fake ``adb`` on PATH that logs its argv and acts on a
local folder standing in for the phone (shell commands run with /bin/sh; push/pull copy files).

The fake phone has a fake ``getprop`` and ``taskset``; the ``benchmark_model`` given to the runner is a
fake that logs its flags, hashes the graph it was given and prints a log in the tool's format. None of
this has run against a real phone: the README says so.
"""

# ruff: noqa: E501  (tool log lines are kept whole, as the tool prints them)

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from devices.device_measure import measure_on_device
from devices.runners.adb import AdbOptions, AdbRunner, benchmark_flags
from devices.runners.base import AccuracyUnavailable, DeviceError, DeviceTimeout, DeviceUnreachable
from distill.data.verification_bin import VerificationSet
from distill.errors import InputError

SERIAL = "R58M123ABC"

FAKE_ADB = """\
#!{python}
import json, os, shutil, subprocess, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as fh:
    fh.write(json.dumps(args) + "\\n")
if os.environ.get("FAKE_ADB_HANG"):
    time.sleep(30)
if args[:1] != ["-s"] or len(args) < 3:
    print("adb: usage: adb -s SERIAL ...", file=sys.stderr); sys.exit(1)
if args[1] != os.environ["FAKE_ADB_SERIAL"]:
    print(f"adb: device '{{args[1]}}' not found", file=sys.stderr); sys.exit(1)
cmd, rest = args[2], args[3:]
if cmd == "get-state":
    print("device")
elif cmd == "shell":
    sys.exit(subprocess.run(["/bin/sh", "-c", " ".join(rest)]).returncode)
elif cmd in ("push", "pull"):
    shutil.copyfile(rest[0], rest[1])
    print(f"{{rest[0]}}: 1 file {{cmd}}ed.")
else:
    print(f"adb: unknown command {{cmd}}", file=sys.stderr); sys.exit(1)
"""

FAKE_GETPROP = """\
#!/bin/sh
case "$1" in
  ro.product.model) echo "Pixel 8" ;;
  ro.build.version.release) echo "14" ;;
  ro.soc.model) echo "Tensor G3" ;;
  ro.soc.manufacturer) echo "Google" ;;
  ro.product.cpu.abi) echo "arm64-v8a" ;;
esac
"""

FAKE_TASKSET = """\
#!/bin/sh
echo "taskset $1" >> "$FAKE_TASKSET_LOG"
shift
exec "$@"
"""

FAKE_BENCHMARK_MODEL = """\
#!{python}
import hashlib, json, os, sys
args = sys.argv[1:]
opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--"))
with open(os.environ["FAKE_BM_LOG"], "a") as fh:
    graph = open(opts["graph"], "rb").read()
    fh.write(json.dumps({{"args": args, "graph_sha256": hashlib.sha256(graph).hexdigest()}}) + "\\n")
if os.environ.get("FAKE_BM_FAIL"):
    print("ERROR: Failed to allocate tensors!"); sys.exit(1)
print("INFO: STARTING!")
print(f"INFO: Num threads: [{{opts['num_threads']}}]")
print(f"INFO: Loaded model {{opts['graph']}}")
if opts.get("use_gpu") == "true":
    print("INFO: Created TensorFlow Lite delegate for GPU.")
    if os.environ.get("FAKE_GPU_FALLBACK"):
        print("INFO: Though GPU delegate is explicitly applied, the model graph will not be executed by the delegate.")
    else:
        print("VERBOSE: Replacing 31 out of 31 node(s) with delegate (TfLiteGpuDelegateV2) node, yielding 1 partitions for subgraph 0.")
        print("INFO: Explicitly applied GPU delegate, and the model graph will be completely executed by the delegate.")
print("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")
print("INFO: count=12 first=2.5e+03 curr=1210 min=1190 max=2500 avg=1325.5 std=361 p5=1190 median=1215 p95=2500")
print("INFO: count=200 first=1250 curr=1220 min=1180 max=1.99e+03 avg=1234.5 std=45.25 p5=1190 median=1225 p95=1330")
print("INFO: Inference timings in us: Init: 15230, First inference: 2500, Warmup (avg): 1325.5, Inference (avg): 1234.5")
print("INFO: Memory footprint delta from the start of the tool (MB): init=3.25 overall=9.5")
print("INFO: Overall peak memory footprint (MB) via periodic monitoring: 11.75")
"""


@pytest.fixture
def phone(tmp_path, monkeypatch):
    """A fake adb/getprop/taskset on PATH, a phone folder, and a fake benchmark_model binary."""
    bin_dir, base = tmp_path / "bin", tmp_path / "phone"
    bin_dir.mkdir()
    base.mkdir()
    for name, text in (
        ("adb", FAKE_ADB.format(python=sys.executable)),
        ("getprop", FAKE_GETPROP),
        ("taskset", FAKE_TASKSET),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    bm = tmp_path / "benchmark_model"
    bm.write_text(FAKE_BENCHMARK_MODEL.format(python=sys.executable))
    bm.chmod(0o755)
    logs = {name: tmp_path / f"{name}.log" for name in ("adb", "bm", "taskset")}
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(logs["adb"]))
    monkeypatch.setenv("FAKE_BM_LOG", str(logs["bm"]))
    monkeypatch.setenv("FAKE_TASKSET_LOG", str(logs["taskset"]))
    monkeypatch.setenv("FAKE_ADB_SERIAL", SERIAL)
    model = tmp_path / "student.tflite"
    model.write_bytes(b"TFL3" + bytes(range(200)))  # the runner never parses it; the phone hashes it
    return {"base": base, "bm": bm, "logs": logs, "model": model, "tmp": tmp_path}


def adb_calls(phone) -> list[list[str]]:
    return [json.loads(line) for line in phone["logs"]["adb"].read_text().splitlines()]


def make_runner(phone, **kw) -> AdbRunner:
    options = AdbOptions(serial=SERIAL, benchmark_model=phone["bm"], remote_base=str(phone["base"]), **kw)
    return AdbRunner("android-arm64-generic", options, log_dir=phone["tmp"] / "logs")


def test_command_sequence_flags_and_parsed_numbers(phone):
    runner = make_runner(phone, delegate="gpu", taskset="f0")
    with runner:
        runner.prepare(phone["model"])
        wd = runner.workdir
        lat = runner.run_latency(warmup=5, runs=200, threads=4)
        info = runner.collect()
    calls = adb_calls(phone)
    assert all(c[:2] == ["-s", SERIAL] for c in calls)
    steps = [c[2] if c[2] != "shell" else "shell " + c[3].split()[0] for c in calls]
    assert steps == [
        "get-state",
        "shell echo",  # getprop model, Android version, SoC
        "shell mktemp",
        "push",
        "push",
        "shell chmod",
        "shell taskset",
        "shell rm",
    ]
    assert calls[3][3:] == [str(phone["model"]), f"{wd}/model.tflite"]
    assert calls[4][3:] == [str(phone["bm"]), f"{wd}/benchmark_model"]
    assert calls[-1][3] == f"rm -rf {wd}" and not Path(wd).exists()
    bm = json.loads(phone["logs"]["bm"].read_text())
    assert bm["graph_sha256"] == hashlib.sha256(phone["model"].read_bytes()).hexdigest()
    assert bm["args"] == [
        f"--graph={wd}/model.tflite",
        "--num_threads=4",
        "--warmup_runs=5",
        "--num_runs=200",
        "--report_peak_memory_footprint=true",
        "--use_gpu=true",
    ]
    assert phone["logs"]["taskset"].read_text().strip() == "taskset f0"
    # numbers from the fake's log, by hand: us / 1000
    assert (lat.p50, lat.mean, lat.p95, lat.min, lat.max) == pytest.approx((1.225, 1.2345, 1.33, 1.18, 1.99))
    assert lat.p90 is None and lat.p99 is None and "p5/median/p95" in lat.extra["percentiles_note"]
    assert lat.runs == 200 and lat.threads == 4 and lat.peak_memory_mb == 11.75
    assert lat.measured_on == "android-arm64-generic (adb)" and lat.tool == "benchmark_model"
    assert lat.extra["delegate"]["applied"] == "full" and not lat.extra["delegate"]["fell_back_to_cpu"]
    assert info["device"] == {
        "model": "Pixel 8",
        "android": "14",
        "soc": "Tensor G3",
        "soc_manufacturer": "Google",
        "abi": "arm64-v8a",
    }
    assert Path(lat.raw_log).read_text().count("count=") == 2


def test_silent_gpu_fallback_is_flagged(phone, monkeypatch):
    monkeypatch.setenv("FAKE_GPU_FALLBACK", "1")
    with make_runner(phone, delegate="gpu") as runner:
        runner.prepare(phone["model"])
        lat = runner.run_latency(warmup=1, runs=10, threads=2)
        info = runner.collect()
    d = lat.extra["delegate"]
    assert d["requested"] == "gpu" and d["applied"] == "none" and d["fell_back_to_cpu"]
    assert any("fallback" in n for n in info["notes"])


def test_wrong_serial_hang_and_tool_failure(phone, monkeypatch):
    options = AdbOptions(serial="NOPE", benchmark_model=phone["bm"], remote_base=str(phone["base"]))
    with pytest.raises(DeviceUnreachable, match="NOPE.*not found"):
        AdbRunner("phone", options).prepare(phone["model"])
    monkeypatch.setenv("FAKE_BM_FAIL", "1")
    runner = make_runner(phone)
    with pytest.raises(DeviceError, match="Failed to allocate tensors"):
        with runner:
            runner.prepare(phone["model"])
            wd = runner.workdir
            runner.run_latency(warmup=1, runs=5, threads=1)
    assert not Path(wd).exists()  # removed on the way out of the error
    monkeypatch.setenv("FAKE_ADB_HANG", "1")
    slow = make_runner(phone, command_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(DeviceTimeout, match="within 1 s"):
        slow.device_properties()
    assert time.monotonic() - start < 5


def test_bad_options_and_flags(phone):
    with pytest.raises(InputError, match="benchmark-model"):
        AdbRunner("p", AdbOptions(serial=SERIAL, benchmark_model=phone["tmp"] / "missing"))
    with pytest.raises(InputError, match="delegate"):
        make_runner(phone, delegate="hexagon")
    with pytest.raises(InputError, match="taskset"):
        make_runner(phone, taskset="f0; rm -rf /")
    with pytest.raises(InputError, match=".tflite"):
        make_runner(phone).prepare(phone["bm"])
    opts = AdbOptions(serial=SERIAL, benchmark_model=phone["bm"], require_full_delegation=True)
    assert benchmark_flags("cpu", opts) == ["--use_xnnpack=false"]
    assert benchmark_flags("xnnpack", opts) == ["--use_xnnpack=true"]
    assert benchmark_flags("nnapi", opts) == ["--use_nnapi=true", "--require_full_delegation=true"]
    opts.gpu_precision_loss_allowed = False
    assert benchmark_flags("gpu", opts) == [
        "--use_gpu=true",
        "--gpu_precision_loss_allowed=false",
        "--require_full_delegation=true",
    ]


def test_no_python_on_the_phone_keeps_host_accuracy_labelled(phone, monkeypatch):
    runner = make_runner(phone)
    runner.prepare(phone["model"])
    with pytest.raises(AccuracyUnavailable, match="host's run of the same .tflite"):
        runner.run_accuracy(np.zeros((1, 3, 112, 112), np.float32))
    runner.close()

    # measure_on_device: latency from the phone, accuracy from the host run of the same file
    calls = []

    class FakeEmbedder:
        def embed(self, x):
            calls.append(x.shape)
            return x.reshape(x.shape[0], -1)[:, :4]

    monkeypatch.setattr("deploy.runtimes.load_embedder", lambda path, num_threads=None: FakeEmbedder())
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 4, 4, 3), dtype=np.uint8)
    sets = [VerificationSet("s", images, np.arange(12) % 2 == 0)]
    artifact = {"name": "student-tflite-fp32", "format": "tflite", "precision": "fp32", "sha256": "abc"}
    row = measure_on_device(make_runner(phone), artifact, phone["model"], sets, {"warmup": 1, "runs": 20})
    row = row.to_dict()  # as results.json holds it
    assert row["measured_on"] == "android-arm64-generic (adb)" and row["accuracy_measured_on"] == "host-cpu"
    assert "host-cpu" in row["accuracy_note"] and row["latency_ms"]["p50"] == pytest.approx(1.225)
    assert "p90" not in row["latency_ms"] and row["latency_settings"]["tool"] == "benchmark_model"
    assert calls and row["accuracy"] is not None
    assert not any(p.name.startswith("facekd.") for p in phone["base"].iterdir())


@pytest.mark.slow
def test_on_phone_accuracy_through_a_python_on_the_phone(phone, tmp_path):
    """With ``remote_python`` (a Python on the phone, here this machine's), the harness embeds there."""
    import torch
    from torch import nn

    from deploy.runtimes import load_embedder
    from deploy.tflite_export import export_tflite_fp32

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()
    model = export_tflite_fp32(net, tmp_path / "tiny.tflite", batch_size=1)
    runner = make_runner(phone, remote_python=sys.executable)
    x = np.random.default_rng(2).uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
    with runner:
        runner.prepare(model)
        acc = runner.run_accuracy(x)
    np.testing.assert_allclose(acc.embeddings, load_embedder(model, num_threads=1).embed(x), atol=1e-5)
    pushed = [c[4] for c in adb_calls(phone) if c[2] == "push"]
    assert any(p.endswith("/harness.py") for p in pushed) and any(p.endswith("/images.npy") for p in pushed)
    assert any(c[2] == "pull" and c[3].endswith("/embeddings.npy") for c in adb_calls(phone))
