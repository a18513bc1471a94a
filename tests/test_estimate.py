"""Roofline latency estimate: hand-counted FLOPs/bytes on tiny graphs built with onnx.helper, the
roofline sum against hand arithmetic, CPU thread scaling, host figures, and the estimated row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from devices import estimate as est_mod
from devices.catalogue import load_catalogue, parse_device
from devices.device_measure import estimate_row
from devices.estimate import (
    count_layers,
    cpu_flops_per_cycle,
    estimate_latency,
    estimator_error_on_host,
    with_host_figures,
)
from distill.errors import InputError


def save(graph, path: Path) -> Path:
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def tiny_net(path: Path, batch: int | str = 1) -> Path:
    """x(N,3,8,8) -Conv 3->4 k3 pad1 +bias- Relu - GlobalAveragePool - Flatten - Gemm 4->2 (transB, bias)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(2, 4)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.normal(size=2).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])],
        initializer=inits,
    )
    return save(graph, path)


def make_device(tmp_path: Path, *, unit: str = "gpu", cores: float | None = None, overhead: float = 1.0):
    """A device from a plain dict: fp32 1 GFLOP/s, fp16 2 GFLOP/s, 1 GB/s (round numbers)."""
    figures = {
        "x_fp32_gflops": {"value": 1, "basis": "nominal", "source": "test"},
        "x_fp16_gflops": {"value": 2, "basis": "nominal", "source": "test"},
        "memory_bandwidth_gbs": {"value": 1, "basis": "nominal", "source": "test"},
    }
    estimate = {
        "unit": unit,
        "peak": {"fp32": "x_fp32_gflops", "fp16": "x_fp16_gflops"},
        "bandwidth": "memory_bandwidth_gbs",
        "node_overhead_us": overhead,
    }
    if cores is not None:
        figures["cpu_cores"] = {"value": cores, "basis": "nominal", "source": "test"}
        estimate["cores"] = "cpu_cores"
    data = {
        "name": "testdev",
        "description": "test device",
        "target": "host",
        "connection": "local",
        "formats": ["onnx"],
        "precisions": ["fp32", "fp16"],
        "figures": figures,
        "estimate": estimate,
    }
    return parse_device(data, tmp_path / "testdev.yaml")


# Hand counts for tiny_net at batch 1 (fp32, 4 bytes/element):
#   conv: MACs = 4 out ch * 8*8 positions * (3 in ch * 3*3) = 6912; FLOPs = 2*6912 + 4*64 bias adds = 14080
#         bytes = (x 192 + w 108 + b 4 + out 256) * 4 = 2240
#   relu: FLOPs 256; bytes (256 + 256) * 4 = 2048
#   gap:  FLOPs 256 (one per input element); bytes (256 + 4) * 4 = 1040
#   flatten: free
#   fc:   MACs = 2 outputs * 4 inputs = 8; FLOPs = 16 + 2 bias = 18; bytes (4 + 8 + 2 + 2) * 4 = 64
def test_counts_match_hand_arithmetic(tmp_path):
    layers, _ = count_layers(tiny_net(tmp_path / "t.onnx"), "fp32")
    got = {layer.name: (layer.macs, layer.flops, layer.bytes, layer.bound) for layer in layers}
    assert got == {
        "conv": (6912, 14080, 2240, ""),
        "relu": (0, 256, 2048, ""),
        "gap": (0, 256, 1040, ""),
        "flatten": (0, 0, 0, "free"),
        "fc": (8, 18, 64, ""),
    }
    fp16 = {layer.name: layer.bytes for layer in count_layers(tmp_path / "t.onnx", "fp16")[0]}
    assert fp16 == {"conv": 1120, "relu": 1024, "gap": 520, "flatten": 0, "fc": 32}


def test_roofline_sum_matches_hand_arithmetic(tmp_path):
    device = make_device(tmp_path)
    est = estimate_latency(tiny_net(tmp_path / "t.onnx"), device, precision="fp32")
    # 1 GFLOP/s -> 1 FLOP per ns; 1 GB/s -> 1 byte per ns; + 1 us per costed node (4 of them)
    # conv max(14.080, 2.240) + relu max(0.256, 2.048) + gap max(0.256, 1.040) + fc max(0.018, 0.064) + 4
    expected_us = 14.080 + 2.048 + 1.040 + 0.064 + 4 * 1.0
    assert est.ms == pytest.approx(expected_us / 1000, rel=1e-9)
    assert est.label == "estimated" and est.precision == "fp32"
    bounds = {layer.name: layer.bound for layer in est.layers}
    assert bounds == {"conv": "compute", "relu": "memory", "gap": "memory", "flatten": "free", "fc": "memory"}
    assert est.total_macs == 6912 + 8 and est.total_bytes == 2240 + 2048 + 1040 + 64
    summary = est.summary(top=2)
    assert [layer["name"] for layer in summary["slowest_layers"]] == ["conv", "relu"]
    assert set(summary["figures"]) == {"x_fp32_gflops", "memory_bandwidth_gbs"}
    # fp16: peak 2 GFLOP/s, half the bytes
    est16 = estimate_latency(tmp_path / "t.onnx", device, precision="fp16")
    assert est16.ms == pytest.approx((7.040 + 1.024 + 0.520 + 0.032 + 4.0) / 1000, rel=1e-9)


def test_dynamic_batch_and_cpu_thread_scaling(tmp_path):
    path = tiny_net(tmp_path / "dyn.onnx", batch="N")
    conv = next(layer for layer in count_layers(path, "fp32", batch_size=4)[0] if layer.name == "conv")
    assert conv.macs == 4 * 6912
    cpu = make_device(tmp_path, unit="cpu", cores=4, overhead=0.0)
    all_cores = estimate_latency(path, cpu, precision="fp32", threads=4)
    one_core = estimate_latency(path, cpu, precision="fp32", threads=1)
    # one of four cores: 0.25 GFLOP/s, compute times x4: conv 56.32 us; relu max(1.024, 2.048);
    # gap max(1.024, 1.040); fc max(0.072, 0.064) turns compute-bound
    assert one_core.ms == pytest.approx((4 * 14.080 + 2.048 + 1.040 + 0.072) / 1000, rel=1e-9)
    assert all_cores.ms == pytest.approx((14.080 + 2.048 + 1.040 + 0.064) / 1000, rel=1e-9)


def test_depthwise_conv_and_batched_matmul(tmp_path):
    w = numpy_helper.from_array(np.ones((8, 1, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.ones((4, 5), np.float32), "m")
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "w"],
            ["d"],
            name="dw",
            group=8,
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            kernel_shape=[3, 3],
        ),
        helper.make_node("MatMul", ["a", "m"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10]),
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 4]),
        ],
        [
            helper.make_tensor_value_info("d", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
        ],
        initializer=[w, b],
    )
    layers = {layer.name: layer for layer in count_layers(save(graph, tmp_path / "g.onnx"), "fp32")[0]}
    # depthwise: 8 channels x 5*5 outputs (stride 2) x 1 input channel x 3*3 = 1800 MACs, no bias
    assert layers["dw"].macs == 1800 and layers["dw"].flops == 3600
    # (2,3,4) @ (4,5): 2*3*5 outputs x 4 = 120 MACs
    assert layers["mm"].macs == 120 and layers["mm"].flops == 240


def test_estimator_error_on_host_is_relative_to_the_measurement(tmp_path):
    device = make_device(tmp_path)
    path = tiny_net(tmp_path / "t.onnx")
    expected_ms = (14.080 + 2.048 + 1.040 + 0.064 + 4.0) / 1000
    report = estimator_error_on_host(path, 2 * expected_ms, device)
    assert report["estimated_ms"] == pytest.approx(round(expected_ms, 4))
    assert report["error_pct"] == pytest.approx(-50.0, abs=0.01)
    assert report["ratio_estimated_to_measured"] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError):
        estimator_error_on_host(path, 0.0, device)


def test_estimate_row_has_no_latency_and_a_labelled_estimate(tmp_path):
    device = make_device(tmp_path)
    path = tiny_net(tmp_path / "t.onnx")
    from devices.rows import ResultRow

    host_row = ResultRow.from_dict(
        {
            "name": "student-onnx-fp32",
            "target": "host",
            "precision": "fp32",
            "accuracy": 0.9,
            "latency_ms": {"p50": 1.0},
            "latency_settings": {"runs": 5},
            "measured_on": "host-cpu",
            "host": "x86_64",
        }
    )
    row = estimate_row(host_row, device, path).to_dict()
    assert row["latency_ms"] is None and row["latency_settings"] is None
    assert row["latency_estimate_ms"] == pytest.approx(round((14.080 + 2.048 + 1.040 + 0.064 + 4) / 1000, 4))
    assert row["latency_estimate"]["label"] == "estimated"
    assert row["measured_on"] == "host-cpu" and row["target"] == "testdev" and row["accuracy"] == 0.9
    assert "estimate" in row["latency_note"] and host_row.latency_ms.p50 == 1.0  # the host row is untouched
    assert row["host"] == "x86_64"  # what only some producers carry travels along


def test_catalogue_devices_estimate_and_host_figures(tmp_path, monkeypatch):
    path = tiny_net(tmp_path / "t.onnx")
    cat = load_catalogue()
    nano = estimate_latency(path, cat["jetson-orin-nano"], precision="fp16")
    agx = estimate_latency(path, cat["jetson-agx-orin"], precision="fp16")
    assert 0 < agx.ms < nano.ms  # more bandwidth and compute, same overhead
    assert nano.figures["gpu_fp16_tflops"]["basis"] == "derived"
    with pytest.raises(InputError, match="no value"):
        estimate_latency(path, cat["host-gpu"], precision="fp32")
    with pytest.raises(InputError, match="int8"):
        estimate_latency(path, cat["jetson-xavier-nx"], precision="int8")
    monkeypatch.setattr(est_mod, "measure_copy_bandwidth", lambda: 8e9)  # skip the 256 MiB copy here
    host = with_host_figures(cat["host-cpu"])
    assert host.figures["memory_bandwidth_gbs"].value == 8.0
    assert host.figures["cpu_cores"].value >= 1 and host.figures["cpu_fp32_gflops"].value > 0
    assert estimate_latency(path, cat["host-cpu"], threads=1).ms > 0


def test_flops_per_cycle_table():
    assert cpu_flops_per_cycle({"avx512f", "avx2", "fma"}, "x86_64", "GenuineIntel") == 64
    assert cpu_flops_per_cycle({"avx512f", "avx2", "fma"}, "x86_64", "AuthenticAMD") == 32
    assert cpu_flops_per_cycle({"avx2", "fma"}, "x86_64") == 32
    assert cpu_flops_per_cycle({"sse2"}, "x86_64") == 8
    assert cpu_flops_per_cycle(set(), "aarch64") == 16


def test_bad_inputs_name_the_file(tmp_path):
    device = make_device(tmp_path)
    with pytest.raises(InputError, match="not found"):
        estimate_latency(tmp_path / "missing.onnx", device, precision="fp32")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(InputError, match="junk.onnx"):
        estimate_latency(tmp_path / "junk.onnx", device, precision="fp32")
