"""LiteRT benchmark_model log parser, on logs written in the tool's documented format.

The samples follow the lines the tool's source prints (tensorflow/lite/tools/benchmark/benchmark_model.cc
``OnBenchmarkEnd`` and ``Run``, benchmark_tflite_model.cc delegate messages) and logs published by
users; the expected numbers are read off the sample text by hand (microseconds / 1000 = ms).
"""

# ruff: noqa: E501  (tool log lines are kept whole, as the tool prints them)

from __future__ import annotations

import pytest

from devices.benchmark_model import check_delegate, parse_benchmark_model
from distill.errors import InputError

GPU_FULL = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [4]
INFO: Graph: [/data/local/tmp/facekd.Ab12Cd34/model.tflite]
INFO: #threads used for CPU inference: [4]
INFO: Use gpu: [1]
INFO: Loaded model /data/local/tmp/facekd.Ab12Cd34/model.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite delegate for GPU.
INFO: GPU delegate created.
VERBOSE: Replacing 66 out of 66 node(s) with delegate (TfLiteGpuDelegateV2) node, yielding 1 partitions for subgraph 0.
INFO: Initialized OpenCL-based API.
INFO: Created 1 GPU delegate kernels.
INFO: Explicitly applied GPU delegate, and the model graph will be completely executed by the delegate.
INFO: The input model file size (MB): 4.10872
INFO: Initialized session in 812.5ms.
INFO: Running benchmark for at least 10 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=143 first=9876 curr=3210 min=3100 max=9876 avg=3456.7 std=512 p5=3120 median=3300 p95=3900

INFO: Running benchmark for at least 200 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=312 first=3300 curr=3190 min=3050 max=5100 avg=3.2105e+03 std=150 p5=3080 median=3180 p95=3500

INFO: Inference timings in us: Init: 812500, First inference: 9876, Warmup (avg): 3456.7, Inference (avg): 3210.5
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the \
actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=12.3047 overall=45.6172
INFO: Overall peak memory footprint (MB) via periodic monitoring: 52.125
"""

# An older build: "Timings (microseconds):" prefix, no p5/median/p95, "Peak memory footprint", big numbers
# in scientific notation, NNAPI requested and silently not used.
OLD_NNAPI_FALLBACK = """\
STARTING!
Num threads: [2]
Use NNAPI: [1]
NNAPI accelerators available: [nnapi-reference]
Loaded model /data/local/tmp/facekd.Zz99/model.tflite
Created TensorFlow Lite delegate for NNAPI.
Though NNAPI delegate is explicitly applied, the model graph will not be executed by the delegate.
Created TensorFlow Lite XNNPACK delegate for CPU.
Initialized session in 3.33ms.
Timings (microseconds): count=5 first=1.18829e+06 curr=1.05453e+06 min=1.02652e+06 max=1.18829e+06 \
avg=1.07354e+06 std=58190
Timings (microseconds): count=50 first=1.02919e+06 curr=1.02428e+06 min=1.01417e+06 max=1.09982e+06 \
avg=1.24027e+06 std=2565
Inference timings in us: Init: 3330, First inference: 1.18829e+06, Warmup (avg): 1.07354e+06, \
Inference (avg): 1.24027e+06
Peak memory footprint (MB): init=2.5 overall=7.25
"""

GPU_PARTIAL = """\
INFO: Created TensorFlow Lite delegate for GPU.
VERBOSE: Replacing 54 out of 559 node(s) with delegate (TfLiteGpuDelegateV2) node, yielding 3 partitions.
INFO: Explicitly applied GPU delegate, and the model graph will be partially executed by the delegate w/ 3 \
delegate kernels.
INFO: count=50 first=307215 curr=309783 min=305938 max=333030 avg=309350 std=4411 p5=306372 median=307968 p95=315711
"""


def test_modern_log_timings_memory_and_delegate():
    p = parse_benchmark_model(GPU_FULL)
    assert p.warmup is not None and p.warmup.count == 143
    assert p.warmup.values_us["median"] == 3300
    assert p.inference.count == 312
    lat = p.latency_ms()
    assert lat == pytest.approx(
        {"p50": 3.18, "p5": 3.08, "p95": 3.5, "mean": 3.2105, "std": 0.15, "min": 3.05, "max": 5.1}
    )
    assert (p.init_us, p.first_inference_us, p.warmup_avg_us, p.inference_avg_us) == (
        812500,
        9876,
        3456.7,
        3210.5,
    )
    assert (p.memory_init_mb, p.memory_overall_mb, p.peak_memory_mb) == (12.3047, 45.6172, 52.125)
    assert p.num_threads == 4
    assert p.replaced == [{"nodes": 66, "of": 66, "kernel": "TfLiteGpuDelegateV2"}]
    check = check_delegate(p, "gpu")
    assert (check.applied, check.fell_back_to_cpu) == ("full", False)
    assert "66/66" in check.detail


def test_old_format_scientific_notation_and_silent_nnapi_fallback():
    p = parse_benchmark_model(OLD_NNAPI_FALLBACK)
    assert p.warmup is not None and p.warmup.values_us["avg"] == pytest.approx(1073540.0)
    assert p.inference.count == 50
    lat = p.latency_ms()
    assert "p50" not in lat  # this build prints no median
    assert lat["mean"] == pytest.approx(1240.27)
    assert lat["min"] == pytest.approx(1014.17) and lat["max"] == pytest.approx(1099.82)
    assert lat["std"] == pytest.approx(2.565)
    assert p.inference_avg_us == pytest.approx(1.24027e06)
    assert p.first_inference_us == pytest.approx(1188290.0)
    assert (p.memory_init_mb, p.memory_overall_mb, p.peak_memory_mb) == (2.5, 7.25, None)
    assert p.num_threads == 2
    check = check_delegate(p, "nnapi")
    assert check.fell_back_to_cpu and check.applied == "none"
    assert "CPU" in check.detail


def test_partial_gpu_delegation_is_a_fallback():
    p = parse_benchmark_model(GPU_PARTIAL)
    check = check_delegate(p, "gpu")
    assert (check.applied, check.fell_back_to_cpu) == ("partial", True)
    assert p.delegates[0].kernels == 3
    assert "54/559" in check.detail
    assert p.latency_ms()["p50"] == pytest.approx(307.968)


def test_gpu_requested_but_never_created_is_a_fallback():
    log = (
        "INFO: Use gpu: [1]\nERROR: GPU acceleration is unsupported on this platform.\n"
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
        "INFO: count=10 first=5000 curr=4000 min=3900 max=5000 avg=4100 std=300 p5=3900 median=4050 p95=5000\n"
    )
    check = check_delegate(parse_benchmark_model(log), "gpu")
    assert check.applied == "not created" and check.fell_back_to_cpu


def test_failed_delegate_and_xnnpack_default():
    failed = "ERROR: Failed to apply GPU delegate.\nINFO: count=1 first=1 curr=1 min=1 max=1 avg=1 std=0\n"
    check = check_delegate(parse_benchmark_model(failed), "gpu")
    assert check.applied == "failed" and check.fell_back_to_cpu
    default = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nINFO: count=3 first=2 curr=2 min=2 max=2 avg=2 std=0\n"
    check = check_delegate(parse_benchmark_model(default), "xnnpack")
    assert check.applied == "full" and not check.fell_back_to_cpu
    plain = check_delegate(parse_benchmark_model("count=3 first=2 curr=2 min=2 max=2 avg=2 std=0\n"), "cpu")
    assert not plain.fell_back_to_cpu and plain.detail == "plain CPU kernels (no delegate)"


def test_no_stat_line_is_an_input_error():
    with pytest.raises(InputError, match="count="):
        parse_benchmark_model("INFO: Loaded model x.tflite\nERROR: Failed to allocate tensors!\n")
    with pytest.raises(InputError, match="delegate"):
        check_delegate(parse_benchmark_model(GPU_FULL), "hexagon")
