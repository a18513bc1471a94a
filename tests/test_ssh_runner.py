"""The ssh runner against a real OpenSSH server on 127.0.0.1 (started by tests/helpers/sshd.py).

The "device" is this machine: its probe finds no TensorRT, so the ONNX runs in the harness with
onnxruntime; a second test puts fake trtexec/tegrastats/nvpmodel/jetson_clocks on the device's PATH to
drive the Jetson path (engine build, trtexec timing, power log) through the same ssh connection.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from devices.accuracy import accuracy_fields
from devices.device_measure import measure_on_device
from devices.runners.base import DeviceError, DeviceTimeout, DeviceUnreachable, HostKeyError
from devices.runners.ssh import (
    SshClient,
    SshOptions,
    SshRunner,
    SshTarget,
    decode_trt_banner,
    parse_probe,
    parse_ssh_target,
    parse_tegrastats,
)
from distill.data.verification_bin import VerificationSet
from distill.errors import InputError
from tests.helpers.sshd import free_port, sshd_missing_reason, start_sshd

MISSING = sshd_missing_reason()
needs_sshd = pytest.mark.skipif(MISSING is not None, reason=f"no OpenSSH server: {MISSING}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if MISSING is not None:
        pytest.skip(f"no OpenSSH server: {MISSING}")
    with start_sshd(tmp_path_factory.mktemp("sshd")) as srv:
        yield srv


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """x(N,3,16,16) -> Conv 3->4 k3 + Relu -> GlobalAveragePool -> Flatten -> Gemm 4->8."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "fw"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        initializer=inits,
    )
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime releases of the last years all read
    onnx.save(model, str(path))
    return path


def local_embeddings(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def options(server, **kw) -> SshOptions:
    base = dict(
        key=server.client_key,
        known_hosts=server.known_hosts,
        remote_python=sys.executable,
        connect_timeout=5,
        retries=1,
        retry_backoff_s=0.2,
        command_timeout=60,
    )
    base.update(kw)
    return SshOptions(**base)


# ------------------------------------------------------------------------------------- unit pieces
def test_parse_target_and_the_ssh_options():
    assert parse_ssh_target("nvidia@orin.local:2222") == SshTarget("orin.local", "nvidia", 2222)
    assert parse_ssh_target("orin") == SshTarget("orin", None, 22)
    assert parse_ssh_target("me@[fe80::1]:22").scp_destination == "me@[fe80::1]"
    for bad in ("nvidia@", "@host", "u@host:99999", "u@host:abc", "-oProxyCommand=x"):
        with pytest.raises(InputError):
            parse_ssh_target(bad)
    kh = Path(__file__)  # any existing file stands in for known_hosts/key here
    client = SshClient(SshTarget("h", "u", 2200), SshOptions(known_hosts=kh, key=kh, connect_timeout=7))
    argv = client.ssh_argv("true")
    opts = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    for required in (
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        f"UserKnownHostsFile={kh.resolve()}",
        f"IdentityFile={kh.resolve()}",
        "ConnectTimeout=7",
        "ServerAliveInterval=5",
    ):
        assert required in opts
    assert argv[0] == "ssh" and argv[-5:] == ["-p", "2200", "u@h", "--", "true"]
    assert client.scp_argv(["a"], "u@h:/tmp/x")[-2:] == ["a", "u@h:/tmp/x"]
    with pytest.raises(InputError, match="known-hosts"):
        SshClient(SshTarget("h"), SshOptions(known_hosts=Path("/nonexistent/known_hosts")))


def test_parse_tegrastats_orin_and_xavier_lines():
    orin = (
        "RAM 2034/7620MB (lfb 1x4MB) SWAP 0/3810MB (cached 0MB) CPU [5%@1510,3%@1510] GR3D_FREQ 0% "
        "VDD_IN 5000mW/5000mW VDD_CPU_GPU_CV 1000mW/1000mW VDD_SOC 1500mW/1500mW\n"
        "RAM 2034/7620MB (lfb 1x4MB) SWAP 0/3810MB (cached 0MB) CPU [90%@1510,80%@1510] GR3D_FREQ 99% "
        "VDD_IN 7000mW/6000mW VDD_CPU_GPU_CV 3000mW/2000mW VDD_SOC 1700mW/1600mW\n"
    )
    p = parse_tegrastats(orin)
    assert p["total_rail"] == "VDD_IN" and p["total_mean_mw"] == 6000.0
    assert p["rails"]["VDD_CPU_GPU_CV"] == {"mean_mw": 2000.0, "max_mw": 3000, "samples": 2}
    assert "RAM" not in p["rails"] and "SWAP" not in p["rails"]
    xavier = "RAM 3000/7772MB CPU [1%@1190] VDD_IN 4551/4551 VDD_CPU_GPU_CV 1026/1026 VDD_SOC 1430/1430\n"
    assert parse_tegrastats(xavier)["rails"]["VDD_IN"]["mean_mw"] == 4551.0
    assert parse_tegrastats("RAM 1/2MB")["total_rail"] is None


def test_parse_probe():
    caps = parse_probe(
        "machine=aarch64\ncpu_count=6\ntrtexec=/usr/src/tensorrt/bin/trtexec\ntegrastats=/usr/bin/tegrastats\n"
        "nvpmodel=\njetson_clocks=\ntrt_banner=100300\npython=/usr/bin/python3\n"
        'harness={"onnxruntime": null, "tensorrt": "10.3.0.30", "litert": null}\n'
    )
    assert (caps.machine, caps.cpu_count, caps.tensorrt_version, caps.trt_major) == (
        "aarch64",
        6,
        "10.3.0",
        10,
    )
    assert caps.nvpmodel is None and caps.trtexec_usable()[0]
    assert caps.can_embed(".engine") and not caps.can_embed(".onnx")
    assert decode_trt_banner(100300) == "10.3.0" and decode_trt_banner(110401) == "11.4.1"
    old = parse_probe("trtexec=/usr/bin/trtexec\ntrt_banner=8502\n")
    ok, why = old.trtexec_usable()
    assert not ok and "8.5.2" in why


# --------------------------------------------------------------------------------- against sshd
@needs_sshd
def test_files_go_over_numbers_come_back_and_the_folder_is_removed(server, model_path, tmp_path):
    runner = SshRunner("test-device", server.target, options(server), log_dir=tmp_path / "logs")
    caps = runner.probe()
    assert caps.trtexec is None and caps.harness["onnxruntime"] == ort.__version__
    with runner:
        runner.prepare(model_path)
        workdir = runner.workdir
        assert workdir is not None and workdir.startswith("/tmp/facekd.")
        # the device is this machine: the copy is byte-identical
        assert (Path(workdir) / "model.onnx").read_bytes() == model_path.read_bytes()
        assert (Path(workdir) / "harness.py").is_file()
        lat = runner.run_latency(warmup=2, runs=7, threads=1)
        assert lat.runs == 7 and lat.warmup == 2 and lat.threads == 1 and lat.batch_size == 1
        assert 0 < lat.min <= lat.p50 <= lat.p90 <= lat.p99 <= lat.max
        assert lat.measured_on == "test-device (ssh)" and lat.tool.startswith("harness onnxruntime")
        samples = json.loads(Path(lat.raw_log).read_text())["samples_ms"]
        assert len(samples) == 7 and lat.p50 == pytest.approx(float(np.percentile(samples, 50)))
        x = np.random.default_rng(3).uniform(-1, 1, size=(37, 3, 16, 16)).astype(np.float32)
        acc = runner.run_accuracy(x)
        np.testing.assert_allclose(acc.embeddings, local_embeddings(model_path, x), atol=1e-5, rtol=0)
        assert acc.measured_on == "test-device (ssh)"
        info = runner.collect()
    assert not Path(workdir).exists()
    assert info["logs"] and all(Path(p).is_file() for p in info["logs"])


@needs_sshd
def test_measure_on_device_row_matches_host_accuracy(server, model_path, tmp_path):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8)
    sets = [VerificationSet("synth", images, rng.integers(0, 2, size=20).astype(bool))]
    runner = SshRunner("test-device", server.target, options(server), log_dir=tmp_path)
    artifact = {"name": "tiny-onnx-fp32", "format": "onnx", "precision": "fp32", "sha256": "x"}
    # golden vectors beside the file, as export leaves them: the device re-runs them first, over ssh
    import shutil

    from deploy.golden import model_input, write_golden
    from deploy.model_card import sha256_of
    from deploy.runtimes import load_embedder

    shipped = tmp_path / "shipped" / model_path.name
    shipped.parent.mkdir()
    shutil.copy(model_path, shipped)
    crops = images[:4]
    emb = load_embedder(shipped, num_threads=1).embed(model_input(crops))
    write_golden(shipped, crops, list("abcd"), emb, precision="fp32", sha256=sha256_of(shipped), source="t")
    row = measure_on_device(runner, artifact, shipped, sets, {"warmup": 1, "runs": 5, "threads": 1})
    assert row.details["golden"]["passed"] and row.details["golden"]["where"] == "test-device (ssh)"
    row = row.to_dict()  # as results.json holds it
    assert row["measured_on"] == row["accuracy_measured_on"] == "test-device (ssh)"
    assert set(row["latency_ms"]) >= {"p50", "p90", "p99", "mean"}
    assert row["latency_settings"]["runs"] == 5 and row["raw_logs"]
    host = accuracy_fields(load_embedder(model_path, num_threads=1), sets, True)
    assert row["accuracy"] == pytest.approx(host["accuracy"], abs=1e-9)
    assert row["sets"]["synth"]["roc_auc"] == pytest.approx(host["sets"]["synth"]["roc_auc"], abs=1e-6)
    assert runner.workdir is None


FAKE_TRTEXEC = """\
#!{python}
import json, os, sys
args = sys.argv[1:]
with open({log!r}, "a") as fh:
    fh.write(json.dumps(args) + "\\n")
print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec " + " ".join(args))
opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
if "saveEngine" in opts:
    open(opts["saveEngine"], "wb").write(b"fake engine")
if "loadEngine" in opts:
    print("[I] Throughput: 2000.5 qps")
    print("[I] Latency: min = 0.40 ms, max = 0.90 ms, mean = 0.45 ms, median = 0.44 ms, "
          "percentile(50%) = 0.44 ms, percentile(90%) = 0.50 ms, percentile(99%) = 0.80 ms")
    print("[I] GPU Compute Time: min = 0.38 ms, max = 0.88 ms, mean = 0.43 ms, median = 0.42 ms, "
          "percentile(50%) = 0.42 ms, percentile(90%) = 0.48 ms, percentile(99%) = 0.78 ms")
    if "exportTimes" in opts:
        open(opts["exportTimes"], "w").write("[]")
"""

FAKE_TEGRASTATS = """\
#!/bin/sh
echo $$ > {pidfile}
while true; do
  echo "RAM 2034/7620MB CPU [5%@1510] VDD_IN 5200mW/5200mW VDD_CPU_GPU_CV 1400mW/1400mW VDD_SOC 1500mW/1500mW"
  sleep 0.05
done
"""


@needs_sshd
def test_jetson_path_with_fake_trtexec_and_tegrastats(server, model_path, tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    trt_log, pidfile = tmp_path / "trtexec-argv.jsonl", tmp_path / "tegrastats.pid"
    scripts = {
        "trtexec": FAKE_TRTEXEC.format(python=sys.executable, log=str(trt_log)),
        "tegrastats": FAKE_TEGRASTATS.format(pidfile=pidfile),
        "nvpmodel": "#!/bin/sh\necho 'NV Power Mode: MAXN'\necho 0\n",
        "jetson_clocks": "#!/bin/sh\necho 'SOC family:tegra234'\necho 'GPU MaxFreq=624750000'\n",
    }
    for name, text in scripts.items():
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    opts = options(server, extra_path=(str(tools),), power_interval_ms=50)
    runner = SshRunner("jetson-orin-nano", server.target, opts, log_dir=tmp_path / "logs")
    caps = runner.probe()
    assert caps.trtexec == str(tools / "trtexec") and caps.tensorrt_version == "10.3.0"
    assert runner.plan()[0].startswith("latency: engine built on the device")
    with runner:
        runner.prepare(model_path)
        workdir = runner.workdir
        assert runner.engine == f"{workdir}/model.engine" and Path(runner.engine).is_file()
        lat = runner.run_latency(warmup=3, runs=50)
        acc = runner.run_accuracy(np.zeros((2, 3, 16, 16), np.float32))
        info = runner.collect()
    calls = [json.loads(line) for line in trt_log.read_text().splitlines()]
    build = next(c for c in calls if "--onnx=model.onnx" in c)
    assert {"--saveEngine=model.engine", "--stronglyTyped", "--skipInference"} <= set(build)
    bench = next(c for c in calls if "--loadEngine=model.engine" in c)
    assert {"--iterations=50", "--warmUp=500", "--percentile=50,90,99", "--useCudaGraph"} <= set(bench)
    assert (lat.p50, lat.p90, lat.p99, lat.mean) == (0.44, 0.50, 0.80, 0.45)
    assert lat.tool == "trtexec (TensorRT 10.3.0)" and lat.warmup == "500 ms"
    assert lat.extra["gpu_compute_ms"]["p99"] == 0.78 and lat.extra["throughput_qps"] == 2000.5
    assert lat.extra["power_mode"] == "MAXN"
    power = lat.extra["power"]
    assert power["total_rail"] == "VDD_IN" and power["total_mean_mw"] == 5200.0
    assert power["rails"]["VDD_IN"]["samples"] >= 1
    # no TensorRT Python on this "device": accuracy falls back to onnxruntime on the same ONNX, noted
    np.testing.assert_allclose(
        acc.embeddings, local_embeddings(model_path, np.zeros((2, 3, 16, 16), np.float32))
    )
    assert any("onnxruntime" in n for n in info["notes"])
    assert not Path(workdir).exists()
    pid = int(pidfile.read_text())
    for _ in range(50):  # tegrastats was stopped after the run
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)  # our own fake, started by this test
        pytest.fail("tegrastats was left running on the device")


@needs_sshd
def test_wrong_or_unknown_host_key_is_refused(server, tmp_path):
    for known in (server.wrong_known_hosts, tmp_path / "empty_known_hosts"):
        Path(known).touch()
        runner = SshRunner("d", server.target, options(server, known_hosts=known, retries=2))
        start = time.monotonic()
        with pytest.raises(HostKeyError, match="host key verification failed") as info:
            runner.probe()
        assert time.monotonic() - start < 5  # refused at once, never retried
        assert str(known) in str(info.value) and "ssh-keyscan" in str(info.value)
    stranger = server.known_hosts.parent / "other_host_ed25519"  # a key not in authorized_keys
    runner = SshRunner("d", server.target, options(server, key=stranger, retries=2))
    start = time.monotonic()
    with pytest.raises(DeviceError, match="key authentication refused"):
        runner.probe()
    assert time.monotonic() - start < 5


@needs_sshd
def test_broken_connection_fails_within_the_timeout(server):
    port = free_port()  # nothing listens here
    runner = SshRunner("d", f"{server.user}@127.0.0.1:{port}", options(server, retries=1))
    start = time.monotonic()
    with pytest.raises(DeviceUnreachable, match="cannot connect after 2 attempt"):
        runner.probe()
    assert time.monotonic() - start < 2 * 5 + 1


@needs_sshd
def test_hanging_command_is_killed_at_its_time_limit(server):
    client = SshClient(parse_ssh_target(server.target), options(server))
    assert client.run("echo ok", timeout=20).stdout.strip() == "ok"
    start = time.monotonic()
    with pytest.raises(DeviceTimeout, match="did not finish within 2 s"):
        client.run("sleep 10", timeout=2)
    assert time.monotonic() - start < 5


@needs_sshd
def test_devices_check_over_ssh(server, capsys):
    import argparse

    from pipeline.devices_cli import add_devices_commands, run_devices_command

    parser = argparse.ArgumentParser()
    add_devices_commands(parser.add_subparsers(dest="command"))
    parse = parser.parse_args
    argv = ["devices", "check", "--target", "jetson-orin-nano", "--ssh", server.target]
    argv += ["--key", str(server.client_key), "--known-hosts", str(server.known_hosts)]
    argv += ["--remote-python", sys.executable, "--json"]
    assert run_devices_command(parse(argv)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reachable"] is True and report["versions"]["tensorrt (trtexec)"] is None
    assert any("onnxruntime" in line for line in report["plan"])
    argv[argv.index("--known-hosts") + 1] = str(server.wrong_known_hosts)
    assert run_devices_command(parse(argv)) == 1
    assert "host key verification failed" in capsys.readouterr().err


def test_local_runner_matches_onnxruntime_and_host_accuracy(model_path, tmp_path):
    from devices.runners.local import LocalRunner

    x = np.random.default_rng(4).uniform(-1, 1, size=(5, 3, 16, 16)).astype(np.float32)
    with LocalRunner("host-cpu", threads=1) as runner:
        runner.prepare(model_path)
        lat = runner.run_latency(warmup=1, runs=6)
        acc = runner.run_accuracy(x)
    assert lat.runs == 6 and lat.threads == 1 and lat.measured_on == "host-cpu" and lat.p50 > 0
    np.testing.assert_allclose(acc.embeddings, local_embeddings(model_path, x), atol=1e-5, rtol=0)


def test_host_gpu_gets_the_local_runner_and_says_why_it_cannot_build_here(model_path, tmp_path):
    """--device host-gpu is measured through the local runner (a TensorRT engine built here)."""
    from deploy.tensorrt import tensorrt_available
    from devices.catalogue import load_catalogue
    from devices.connect import DeviceConnection, device_reachable, open_runner
    from devices.runners.base import DeviceError
    from devices.runners.local import LocalRunner

    catalogue = load_catalogue(())
    conn = DeviceConnection(device="host-gpu")
    assert device_reachable(catalogue["host-gpu"], conn)
    assert not device_reachable(catalogue["host-cpu"], DeviceConnection())  # host rows need no runner
    runner = open_runner(catalogue["host-gpu"], conn, tmp_path)
    assert isinstance(runner, LocalRunner) and runner.use_tensorrt and runner.label == "host-gpu"
    ok, why = tensorrt_available()
    if ok:
        pytest.skip("TensorRT and a GPU are here: the engine path is checked by the GPU script")
    with pytest.raises(DeviceError, match="TensorRT requested but unusable") as err:
        runner.prepare(model_path)
    assert why in str(err.value)
