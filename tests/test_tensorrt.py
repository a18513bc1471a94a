"""TensorRT: availability reasons, the builder's API sequence (on a fake ``tensorrt``), trtexec command
lines per major version (flag by flag, and through the generated shell script), trtexec output parsing."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy import tensorrt as trt_mod
from deploy.tensorrt import (
    TensorRTBuildError,
    TensorRTUnavailable,
    build_engine,
    onnx_precision,
    parse_trtexec_output,
    tensorrt_available,
    trtexec_benchmark_command,
    trtexec_command,
    write_trtexec_script,
)
from distill.errors import InputError


# ------------------------------------------------------------------------------------ ONNX fixtures
def tiny_onnx(path, *, dtype=np.float32, batch: int | str = 1, qdq: bool = False):
    w = numpy_helper.from_array(np.ones((2, 3), dtype=dtype), "w")
    nodes, inits = [], [w]
    x = "x"
    if qdq:
        inits += [
            numpy_helper.from_array(np.array(0.1, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["xd"]),
        ]
        x = "xd"
    nodes.append(helper.make_node("MatMul", [x, "w"], ["y"]))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", elem if not qdq else TensorProto.FLOAT, [batch, 2])],
        [helper.make_tensor_value_info("y", elem, [batch, 3])],
        initializer=inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_precision_reads_the_file(tmp_path):
    assert onnx_precision(tiny_onnx(tmp_path / "a.onnx")) == "fp32"
    assert onnx_precision(tiny_onnx(tmp_path / "b.onnx", dtype=np.float16)) == "fp16"
    assert onnx_precision(tiny_onnx(tmp_path / "c.onnx", qdq=True)) == "int8"


# ----------------------------------------------------------------------------------- availability
def test_unavailable_here_says_why_and_build_raises(tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is importable on this machine")
    except ImportError:
        pass
    ok, reason = tensorrt_available()
    assert ok is False and "not importable" in reason and "tensorrt" in reason
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(TensorRTUnavailable, match="not importable"):
        build_engine(onnx_path, tmp_path / "m.plan", workspace_mb=256, timing_cache=tmp_path / "tc.bin")
    assert not (tmp_path / "m.plan").exists() and not (tmp_path / "tc.bin").exists()


def test_installed_without_gpu_says_no_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(trt_mod, "cuda_device_count", lambda: (0, "no CUDA driver library (libcuda)"))
    ok, reason = tensorrt_available()
    assert ok is False and "10.3.0" in reason and "no usable CUDA GPU" in reason and "libcuda" in reason


def test_cuda_probe_on_this_machine_returns_a_reason_when_zero():
    count, why = trt_mod.cuda_device_count()
    assert count >= 0 and (count > 0 or why)


# ------------------------------------------------------------------------------------- fake tensorrt
STRONGLY_TYPED = 5  # not TensorRT's real value: proves the code reads the enum instead of hard-coding it


def make_fake_trt(
    version: str,
    calls: list,
    *,
    plan: bytes | None = b"PLAN-BYTES",
    parse_ok=True,
    input_shape=(1, 2),
    builder_fails=False,
):
    def log(*item):
        calls.append(item)

    class Logger:
        WARNING, VERBOSE = "W", "V"

        def __init__(self, level):
            log("Logger", level)

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            log("serialize")
            return b"CACHE:" + self.data

    class Config:
        def __init__(self):
            self._cache = None

        def set_memory_pool_limit(self, pool, size):
            log("set_memory_pool_limit", pool, size)

        def __setattr__(self, name, value):
            if name == "builder_optimization_level":
                log("builder_optimization_level", value)
            object.__setattr__(self, name, value)

        def create_timing_cache(self, data):
            log("create_timing_cache", bytes(data))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            log("set_timing_cache", cache.data, ignore_mismatch)
            self._cache = cache
            return True

        def get_timing_cache(self):
            log("get_timing_cache")
            return self._cache

        def add_optimization_profile(self, profile):
            log("add_optimization_profile", profile.shapes)

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Tensor:
        name, shape = "x", input_shape

    class Network:
        num_inputs = 1

        def get_input(self, i):
            return Tensor()

    class Builder:
        def __init__(self, logger):
            if builder_fails:
                raise TypeError("pybind11::init(): factory function returned nullptr")
            log("Builder")

        def create_network(self, flags):
            log("create_network", flags)
            return Network()

        def create_builder_config(self):
            log("create_builder_config")
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            log("build_serialized_network")
            return plan

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            log("OnnxParser")

        def parse(self, data):
            log("parse", len(data))
            return parse_ok

        def get_error(self, i):
            return "In node 0 (MatMul): unsupported"

    fake = types.ModuleType("tensorrt")
    fake.__version__ = version
    fake.Logger, fake.Builder, fake.OnnxParser = Logger, Builder, OnnxParser
    fake.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=STRONGLY_TYPED)
    fake.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    return fake


@pytest.fixture
def fake_trt(monkeypatch):
    def install(version="10.3.0", **kw):
        calls: list = []
        monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(version, calls, **kw))
        monkeypatch.setattr(trt_mod, "cuda_device_count", lambda: (1, ""))
        return calls

    return install


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0.106"])
def test_build_calls_the_api_in_order_and_writes_engine_and_cache(fake_trt, tmp_path, version):
    calls = fake_trt(version)
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    engine, cache = tmp_path / "out" / "m.plan", tmp_path / "tc.bin"
    res = build_engine(onnx_path, engine, workspace_mb=300, timing_cache=cache, builder_optimization_level=4)
    names = [c[0] for c in calls]
    assert names == [
        "Logger", "Builder", "create_network", "OnnxParser", "parse", "create_builder_config",
        "set_memory_pool_limit", "builder_optimization_level", "create_timing_cache", "set_timing_cache",
        "build_serialized_network", "get_timing_cache", "serialize",
    ]  # fmt: skip
    assert ("create_network", 1 << STRONGLY_TYPED) in calls
    assert ("parse", onnx_path.stat().st_size) in calls
    assert ("set_memory_pool_limit", "WORKSPACE", 300 * 1024 * 1024) in calls
    assert ("builder_optimization_level", 4) in calls
    assert ("create_timing_cache", b"") in calls and ("set_timing_cache", b"", False) in calls
    assert engine.read_bytes() == b"PLAN-BYTES"
    assert cache.read_bytes() == b"CACHE:"
    assert sorted(p.name for p in engine.parent.iterdir()) == ["m.plan"]  # no temp file left
    assert (res.tensorrt_version, res.precision, res.strongly_typed) == (version, "fp32", True)
    assert (res.size_bytes, res.timing_cache_reused) == (len(b"PLAN-BYTES"), False)

    calls.clear()
    res2 = build_engine(onnx_path, engine, workspace_mb=300, timing_cache=cache)
    assert ("create_timing_cache", b"CACHE:") in calls and res2.timing_cache_reused is True
    assert cache.read_bytes() == b"CACHE:CACHE:"  # the cache the build used is what gets saved


def test_failed_build_writes_nothing(fake_trt, tmp_path):
    fake_trt(plan=None)
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(TensorRTBuildError, match="failed to build"):
        build_engine(onnx_path, tmp_path / "m.plan", workspace_mb=64, timing_cache=tmp_path / "tc.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_parser_errors_are_reported(fake_trt, tmp_path):
    calls = fake_trt(parse_ok=False)
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(TensorRTBuildError, match=r"MatMul\): unsupported"):
        build_engine(onnx_path, tmp_path / "m.plan", workspace_mb=64)
    assert "build_serialized_network" not in [c[0] for c in calls]


def test_builder_without_gpu_is_unavailable(fake_trt, tmp_path):
    fake_trt(builder_fails=True)
    with pytest.raises(TensorRTUnavailable, match="nullptr"):
        build_engine(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.plan", workspace_mb=64)


def test_fp16_onnx_flag_is_checked_against_the_file(fake_trt, tmp_path):
    calls = fake_trt()
    with pytest.raises(InputError, match="no float16 tensors"):
        build_engine(tiny_onnx(tmp_path / "a.onnx"), tmp_path / "a.plan", workspace_mb=64, fp16_onnx=True)
    assert calls == []  # refused before TensorRT was touched
    res = build_engine(
        tiny_onnx(tmp_path / "b.onnx", dtype=np.float16), tmp_path / "b.plan", workspace_mb=64, fp16_onnx=True
    )
    assert res.precision == "fp16"


def test_dynamic_batch_gets_an_optimization_profile(fake_trt, tmp_path):
    calls = fake_trt(input_shape=(-1, 2))
    build_engine(tiny_onnx(tmp_path / "m.onnx", batch="N"), tmp_path / "m.plan", workspace_mb=64,
                 batch_range=(1, 4, 8))  # fmt: skip
    assert ("add_optimization_profile", {"x": ((1, 2), (4, 2), (8, 2))}) in calls


def test_builder_argument_checks(tmp_path):
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="workspace_mb"):
        build_engine(onnx_path, tmp_path / "m.plan", workspace_mb=0)
    with pytest.raises(ValueError, match="builder_optimization_level"):
        build_engine(onnx_path, tmp_path / "m.plan", builder_optimization_level=6)
    with pytest.raises(InputError, match="not found"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.plan")


# -------------------------------------------------------------------------------------- trtexec argv
def test_trt10_fp32_strongly_typed_full_command():
    argv = trtexec_command(
        "m.onnx", "m.plan", precision="fp32", trt_major=10, timing_cache="tc.bin", workspace_mb=512,
        builder_optimization_level=5, shapes={"input": (1, 3, 112, 112)}, avg_runs=100, warmup_ms=500,
        duration_s=10, percentiles=(50, 90, 99.9), export_times="t.json",
    )  # fmt: skip
    assert argv == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=m.plan", "--stronglyTyped", "--timingCacheFile=tc.bin",
        "--memPoolSize=workspace:512", "--builderOptimizationLevel=5", "--shapes=input:1x3x112x112",
        "--useCudaGraph", "--noDataTransfers", "--useSpinWait", "--avgRuns=100", "--warmUp=500",
        "--duration=10", "--percentile=50,90,99.9", "--exportTimes=t.json",
    ]  # fmt: skip


def test_trt11_drops_removed_and_default_flags():
    argv = trtexec_command("m.onnx", "m.plan", precision="int8", trt_major=11, workspace_mb=512, avg_runs=50)
    assert argv == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=m.plan", "--memPoolSize=workspace:512", "--avgRuns=50",
        "--percentile=50,90,99",
    ]  # fmt: skip
    fp16 = trtexec_command("m16.onnx", "m.plan", precision="fp16", trt_major=11, fp16_onnx=True)
    removed = {"--fp16", "--int8", "--best", "--stronglyTyped", "--useCudaGraph", "--noDataTransfers"}
    assert not removed & set(fp16)


@pytest.mark.parametrize(
    ("precision", "fp16_onnx", "strongly_typed", "expected"),
    [
        ("fp16", True, True, ["--stronglyTyped"]),
        ("int8", False, True, ["--stronglyTyped"]),
        ("fp16", False, False, ["--fp16"]),
        ("int8", False, False, ["--int8"]),
        ("fp32", False, False, []),
    ],
)
def test_trt10_precision_flags(precision, fp16_onnx, strongly_typed, expected):
    argv = trtexec_command(
        "m.onnx", "m.plan", precision=precision, trt_major=10, fp16_onnx=fp16_onnx,
        strongly_typed=strongly_typed, workspace_mb=None, benchmark=False,
    )  # fmt: skip
    assert argv == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.plan", *expected, "--skipInference"]


def test_invalid_combinations_are_refused():
    with pytest.raises(ValueError, match="fp16 ONNX"):
        trtexec_command("m.onnx", "m.plan", precision="fp16", trt_major=11)
    with pytest.raises(ValueError, match="fp16 ONNX"):
        trtexec_command("m.onnx", "m.plan", precision="fp16", trt_major=10)
    with pytest.raises(ValueError, match="weak typing"):
        trtexec_command("m.onnx", "m.plan", precision="int8", trt_major=11, strongly_typed=False)
    with pytest.raises(ValueError, match="trt_major"):
        trtexec_command("m.onnx", "m.plan", trt_major=8)
    with pytest.raises(ValueError, match="precision"):
        trtexec_command("m.onnx", "m.plan", precision="bf16")
    with pytest.raises(ValueError, match="shape"):
        trtexec_command("m.onnx", "m.plan", shapes={"input": (0, 3)})
    with pytest.raises(ValueError, match="percentiles"):
        trtexec_command("m.onnx", "m.plan", percentiles=(101,))


def test_benchmark_command_for_a_built_engine():
    assert trtexec_benchmark_command("m.plan", trt_major=11, iterations=200, percentiles=None) == [
        "trtexec", "--loadEngine=m.plan", "--iterations=200",
    ]  # fmt: skip
    assert trtexec_benchmark_command("m.plan", trt_major=10, percentiles=(99,))[2:] == [
        "--useCudaGraph", "--noDataTransfers", "--useSpinWait", "--percentile=99",
    ]  # fmt: skip


# ------------------------------------------------------------------------------------ shell script
FAKE_TRTEXEC = """#!/bin/sh
for a in "$@"; do
  if [ "$a" = "--help" ]; then echo "&&&& RUNNING TensorRT.trtexec [TensorRT v{banner}] [b30] # trtexec --help"; exit 1; fi
done
for a in "$@"; do printf '%s\\n' "$a"; done
"""  # noqa: E501


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell script")
@pytest.mark.parametrize(("banner", "major"), [("100300", 10), ("110400", 11)])
def test_script_detects_the_version_and_runs_its_command(tmp_path, banner, major):
    fake = tmp_path / "bin" / "trtexec"
    fake.parent.mkdir()
    fake.write_text(FAKE_TRTEXEC.replace("{banner}", banner))
    fake.chmod(0o755)
    art = tmp_path / "export"
    art.mkdir()
    script = write_trtexec_script(
        art / "build_student_int8.sh", art / "student_int8.onnx", art / "student_int8.plan",
        precision="int8", timing_cache=art / "timing.cache", workspace_mb=256, avg_runs=20,
    )  # fmt: skip
    assert os.access(script, os.X_OK)
    env = {**os.environ, "TRTEXEC": str(fake)}
    env.pop("TRT_MAJOR", None)
    out = subprocess.run([str(script), "--verbose"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    expected = trtexec_command(
        "student_int8.onnx", "student_int8.plan", precision="int8", trt_major=major,
        timing_cache="timing.cache", workspace_mb=256, avg_runs=20,
    )[1:]  # fmt: skip
    assert out.stdout.splitlines() == [*expected, "--verbose"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell script")
def test_script_refuses_unknown_versions_and_impossible_variants(tmp_path):
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE_TRTEXEC.replace("{banner}", "8601"))
    fake.chmod(0o755)
    # fp16 from an fp32 ONNX needs weak typing on 10.x, which the script never picks: both refuse.
    script = write_trtexec_script(
        tmp_path / "b.sh", tmp_path / "m.onnx", tmp_path / "m.plan", precision="fp16"
    )
    env = {**os.environ, "TRTEXEC": str(fake)}
    env.pop("TRT_MAJOR", None)
    out = subprocess.run([str(script)], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "not supported" in out.stderr
    out = subprocess.run([str(script)], env={**env, "TRT_MAJOR": "11"}, capture_output=True, text=True)
    assert out.returncode == 2 and "fp16 ONNX" in out.stderr


# ------------------------------------------------------------------------------------ trtexec output
SAMPLE_LOG = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v100300] [b17] # /usr/src/tensorrt/bin/trtexec --loadEngine=student.plan --percentile=50,90,99.9
[11/22/2026-07:12:01] [I] === Performance summary ===
[11/22/2026-07:12:01] [I] Throughput: 2416.73 qps
[11/22/2026-07:12:01] [I] Latency: min = 0.391602 ms, max = 0.913574 ms, mean = 0.410583 ms, median = 0.405273 ms, percentile(50%) = 0.405273 ms, percentile(90%) = 0.422852 ms, percentile(99.9%) = 0.702148 ms
[11/22/2026-07:12:01] [I] Enqueue Time: min = 0.00244141 ms, max = 0.0410156 ms, mean = 0.00375 ms, median = 0.00341797 ms, percentile(50%) = 0.00341797 ms, percentile(90%) = 0.00463867 ms, percentile(99.9%) = 0.0253906 ms
[11/22/2026-07:12:01] [I] H2D Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, percentile(50%) = 0 ms, percentile(90%) = 0 ms, percentile(99.9%) = 0 ms
[11/22/2026-07:12:01] [I] GPU Compute Time: min = 0.391602 ms, max = 0.913574 ms, mean = 0.410583 ms, median = 0.405273 ms, percentile(50%) = 0.405273 ms, percentile(90%) = 0.422852 ms, percentile(99.9%) = 6.5e-01 ms
[11/22/2026-07:12:01] [I] D2H Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, percentile(50%) = 0 ms, percentile(90%) = 0 ms, percentile(99.9%) = 0 ms
[11/22/2026-07:12:01] [I] Total Host Walltime: 10.0011 s
[11/22/2026-07:12:01] [I] Total GPU Compute Time: 9.92331 s
[11/22/2026-07:12:01] [I] Explanations of the performance metrics are printed in the verbose logs.
&&&& PASSED TensorRT.trtexec [TensorRT v100300] [b17] # /usr/src/tensorrt/bin/trtexec --loadEngine=student.plan
"""  # noqa: E501 (trtexec's own line lengths)


def test_parse_documented_summary():
    r = parse_trtexec_output(SAMPLE_LOG)
    assert r["throughput_qps"] == 2416.73
    assert r["latency_ms"] == {
        "min": 0.391602, "max": 0.913574, "mean": 0.410583, "median": 0.405273,
        "p50": 0.405273, "p90": 0.422852, "p99.9": 0.702148,
    }  # fmt: skip
    assert r["gpu_compute_ms"]["p99.9"] == 0.65 and r["gpu_compute_ms"]["mean"] == 0.410583
    assert r["enqueue_ms"]["max"] == 0.0410156
    assert r["h2d_ms"]["p90"] == 0.0 and r["d2h_ms"]["median"] == 0.0
    assert r["total_host_walltime_s"] == 10.0011 and r["total_gpu_compute_s"] == 9.92331
    assert r["tensorrt_version"] == "10.3.0"


def test_parse_without_timestamps_and_with_two_summaries_takes_the_last():
    text = (
        "Throughput: 100 qps\nLatency: min = 1 ms, max = 2 ms, mean = 1.5 ms, median = 1.4 ms, "
        "percentile(99%) = 1.9 ms\n"
        "Throughput: 1.5e+03 qps\nLatency: min = 0.5 ms, max = 0.9 ms, mean = 0.6 ms, median = 0.55 ms, "
        "percentile(99%) = 0.8 ms\n"
    )
    r = parse_trtexec_output(text)
    assert r["throughput_qps"] == 1500.0
    assert r["latency_ms"] == {"min": 0.5, "max": 0.9, "mean": 0.6, "median": 0.55, "p99": 0.8}
    assert "gpu_compute_ms" not in r and "tensorrt_version" not in r


def test_parse_a_log_without_summary_is_an_input_error():
    with pytest.raises(InputError, match="Throughput"):
        parse_trtexec_output("&&&& FAILED TensorRT.trtexec [TensorRT v110400]\n[E] Error[4]: ...\n")
