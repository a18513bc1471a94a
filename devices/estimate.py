"""Latency estimate of an ONNX graph on a catalogue device, from operations and bytes per layer.

Roofline per node: ``time = max(flops / (peak * compute_efficiency), bytes / (bandwidth *
bandwidth_efficiency)) + node_overhead``, summed over the nodes. It is a model, not a measurement:
every result is labelled ``estimated`` and lists its assumptions, and :func:`estimator_error_on_host`
compares it with a measurement on this machine so its error is visible.

Counting rules (ONNX shapes from onnx shape inference; symbolic dimensions taken as ``batch_size``):

* Conv (incl. depthwise/grouped): MACs = N * C_out * H_out * W_out * (C_in / group) * k_h * k_w;
  FLOPs = 2 * MACs, plus one add per output element with a bias.
* Gemm: MACs = M * K * N, FLOPs = 2 * MACs (+ M * N with C); MatMul: MACs = numel(Y) * K.
* Elementwise ops: FLOPs per output element from ``ELEMENTWISE_FLOPS`` (1 unless listed);
  GlobalAveragePool / Reduce*: one FLOP per input element; pools: output elements * kernel size.
* Bytes: every float tensor a node reads (weights included) and writes, at the precision's width
  (fp32 4, fp16 2, int8 1): no fusion, each node goes through memory.
* Free (no time, no overhead): shape-only ops (Reshape, Flatten, Squeeze, ...), and Q/DQ pairs, which
  TensorRT fuses into the int8 kernels.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devices.catalogue import Device, Figure
from distill.errors import InputError

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}
FREE_OPS = {
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Shape",
    "Constant",
    "ConstantOfShape",
    "Dropout",
    "QuantizeLinear",
    "DequantizeLinear",
    "Size",
}
ELEMENTWISE_FLOPS = {
    "BatchNormalization": 2,  # scale and shift
    "PRelu": 2,  # compare/select and multiply
    "Sigmoid": 4,
    "HardSigmoid": 2,
    "HardSwish": 3,
    "Softmax": 5,
    "LeakyRelu": 2,
}
ELEMENTWISE = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "Clip",
    "Tanh",
    "Exp",
    "Log",
    "Sqrt",
    "Pow",
    "Neg",
    "Abs",
    "Max",
    "Min",
    "Erf",
    "Where",
    "Cast",
    "Sum",
    "Mean",
    "Reciprocal",
    "Sign",
    *ELEMENTWISE_FLOPS,
}
REDUCE = {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2"}
MOVE_ONLY = {"Concat", "Transpose", "Pad", "Slice", "Split", "Resize", "Gather", "Expand", "Tile"}
FLOAT_TYPES = {1, 10, 16, 2, 3}  # FLOAT, FLOAT16, BFLOAT16, UINT8, INT8 (quantized activations/weights)


@dataclass
class LayerCost:
    name: str
    op: str
    macs: float
    flops: float
    bytes: float
    compute_us: float = 0.0
    memory_us: float = 0.0
    overhead_us: float = 0.0
    time_us: float = 0.0
    bound: str = ""  # compute | memory | free


@dataclass
class Estimate:
    device: str
    precision: str
    ms: float
    total_macs: float
    total_flops: float
    total_bytes: float
    layers: list[LayerCost]
    figures: dict[str, dict[str, Any]]  # the catalogue figures used, with their sources
    assumptions: list[str]
    label: str = "estimated"
    knobs: dict[str, float] = field(default_factory=dict)

    def summary(self, top: int = 10) -> dict[str, Any]:
        """JSON-friendly: totals, the ``top`` slowest layers, figures and assumptions."""
        slow = sorted(self.layers, key=lambda layer: layer.time_us, reverse=True)[:top]
        return {
            "label": self.label,
            "device": self.device,
            "precision": self.precision,
            "ms": round(self.ms, 4),
            "total_gmacs": round(self.total_macs / 1e9, 6),
            "total_gflops": round(self.total_flops / 1e9, 6),
            "total_mbytes": round(self.total_bytes / 1e6, 6),
            "layers": len(self.layers),
            "compute_bound_layers": sum(1 for layer in self.layers if layer.bound == "compute"),
            "memory_bound_layers": sum(1 for layer in self.layers if layer.bound == "memory"),
            "slowest_layers": [
                {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(layer).items()}
                for layer in slow
            ],
            "figures": self.figures,
            "knobs": self.knobs,
            "assumptions": list(self.assumptions),
        }


# ------------------------------------------------------------------------------------ graph counting
def _load(onnx_path: str | os.PathLike, batch_size: int) -> tuple[Any, list[str]]:
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise InputError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc
    notes = []
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        for i, dim in enumerate(inp.type.tensor_type.shape.dim):
            if dim.dim_param or (not dim.HasField("dim_value")):
                dim.ClearField("dim_param")
                dim.dim_value = batch_size if i == 0 else 1
                if i != 0:
                    notes.append(f"input '{inp.name}' dimension {i} is symbolic: taken as 1")
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise InputError(f"{path}: ONNX shape inference failed ({exc})") from exc
    return model, notes


def _shapes(model: Any) -> dict[str, tuple[tuple[int, ...] | None, int]]:
    """name -> (shape or None when unknown, elem_type) for every typed tensor in the graph."""
    out: dict[str, tuple[tuple[int, ...] | None, int]] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        t = vi.type.tensor_type
        dims = []
        for d in t.shape.dim:
            dims.append(int(d.dim_value) if d.HasField("dim_value") else -1)
        shape = tuple(dims) if t.HasField("shape") and all(d >= 0 for d in dims) else None
        out[vi.name] = (shape, t.elem_type)
    for init in model.graph.initializer:
        out[init.name] = (tuple(int(d) for d in init.dims), init.data_type)
    return out


def _numel(shape: tuple[int, ...] | None) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape is not None else 0


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def count_layers(
    onnx_path: str | os.PathLike, precision: str, batch_size: int = 1
) -> tuple[list[LayerCost], list[str]]:
    """MACs, FLOPs and bytes of every node (device independent), plus the notes made on the way."""
    if precision not in BYTES_PER_ELEMENT:
        raise InputError(f"precision '{precision}' is not one of {', '.join(BYTES_PER_ELEMENT)}")
    model, notes = _load(onnx_path, batch_size)
    shapes = _shapes(model)
    width = BYTES_PER_ELEMENT[precision]
    unknown_ops: set[str] = set()
    missing_shapes: set[str] = set()
    layers = []

    def shape(tensor: str) -> tuple[int, ...] | None:
        s = shapes.get(tensor, (None, 0))[0]
        if s is None and tensor:
            missing_shapes.add(tensor)
        return s

    def float_bytes(tensor: str) -> float:
        if not tensor:
            return 0.0
        elem = shapes.get(tensor, (None, 0))[1]
        if elem and elem not in FLOAT_TYPES:
            return 0.0  # shape/index tensors
        return float(_numel(shape(tensor)) * width)

    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        op = node.op_type
        if op in FREE_OPS:
            layers.append(LayerCost(name, op, 0.0, 0.0, 0.0, bound="free"))
            continue

        out_shape = shape(node.output[0]) if node.output else None
        out_n = _numel(out_shape)
        macs = 0.0
        flops = 0.0
        if op == "Conv":
            w = shape(node.input[1])
            if out_shape is not None and w is not None:
                n, c_out = out_shape[0], out_shape[1]
                spatial = _numel(out_shape[2:])
                macs = float(n * c_out * spatial * _numel(w[1:]))  # w: (C_out, C_in/group, kh, kw)
                flops = 2 * macs + (out_n if len(node.input) > 2 and node.input[2] else 0)
        elif op == "ConvTranspose":
            x, w = shape(node.input[0]), shape(node.input[1])
            if x is not None and w is not None:
                macs = float(_numel(x) * _numel(w[1:]))  # every input element hits (C_out/g)*kh*kw outputs
                flops = 2 * macs + (out_n if len(node.input) > 2 and node.input[2] else 0)
        elif op == "Gemm":
            a = shape(node.input[0])
            if a is not None and out_shape is not None:
                k = a[0] if _attr(node, "transA", 0) else a[1]
                macs = float(out_n * k)
                flops = 2 * macs + (out_n if len(node.input) > 2 and node.input[2] else 0)
        elif op == "MatMul":
            a = shape(node.input[0])
            if a is not None and out_shape is not None:
                macs = float(out_n * a[-1])
                flops = 2 * macs
        elif op in ELEMENTWISE:
            flops = float(out_n * ELEMENTWISE_FLOPS.get(op, 1))
        elif op in REDUCE:
            flops = float(_numel(shape(node.input[0])) * (2 if op == "ReduceL2" else 1))
        elif op in ("MaxPool", "AveragePool"):
            flops = float(out_n * _numel(tuple(_attr(node, "kernel_shape", []))))
        elif op in ("LpNormalization",):
            flops = float(3 * out_n)
        elif op not in MOVE_ONLY:
            unknown_ops.add(op)
        moved = sum(float_bytes(t) for t in node.input) + sum(float_bytes(t) for t in node.output)
        layers.append(LayerCost(name, op, macs, flops, moved))
    if unknown_ops:
        notes.append(f"ops counted as data movement only (no FLOP rule): {', '.join(sorted(unknown_ops))}")
    if missing_shapes:
        notes.append(f"{len(missing_shapes)} tensor(s) without an inferred shape counted as 0 bytes/FLOPs")
    return layers, notes


def onnx_precision_of(onnx_path: str | os.PathLike) -> str:
    """fp32 / fp16 / int8 from the file itself (Q/DQ nodes -> int8, float16 tensors -> fp16)."""
    from deploy.tensorrt import onnx_precision

    found = onnx_precision(onnx_path)
    return "int8" if "int8" in found else found


# ------------------------------------------------------------------------------------------- roofline
def estimate_latency(
    onnx_path: str | os.PathLike,
    device: Device,
    *,
    precision: str | None = None,
    threads: int | None = None,
    batch_size: int = 1,
) -> Estimate:
    """Roofline estimate (ms) of one inference of ``onnx_path`` on ``device``.

    ``precision`` defaults to what the file holds; ``threads`` (CPU devices) scales the CPU peak by
    ``min(threads, cores) / cores``. Devices with run-time figures (host-cpu) have them computed here.
    """
    precision = precision or onnx_precision_of(onnx_path)
    spec = device.estimate
    if precision not in device.precisions:
        raise InputError(
            f"{device.path or device.name}: device '{device.name}' does not run {precision} artifacts "
            f"(precisions: {', '.join(device.precisions)})"
        )
    if precision not in spec.peak:
        raise InputError(
            f"{device.path or device.name}: device '{device.name}' has no peak figure for {precision} "
            f"(estimate.peak has {', '.join(spec.peak)})"
        )
    if any(f.basis == "run-time" and f.value is None for f in device.figures.values()):
        device = with_host_figures(device)
    peak_name = spec.peak[precision]
    peak = device.figure_value(peak_name)
    bandwidth = device.figure_value(spec.bandwidth)
    used = [peak_name, spec.bandwidth]
    assumptions = [
        "roofline per node: max(FLOPs / peak, bytes / bandwidth) + per-node overhead, summed; no fusion, "
        "no cache reuse: every node reads its inputs and weights and writes its outputs to memory",
        f"peak {peak_name} = {peak / 1e9:g} GFLOP/s (or GOP/s) x compute_efficiency "
        f"{spec.compute_efficiency:g}; bandwidth {spec.bandwidth} = {bandwidth / 1e9:g} GB/s x "
        f"bandwidth_efficiency {spec.bandwidth_efficiency:g}; node overhead {spec.node_overhead_us:g} us",
        f"tensors counted at {BYTES_PER_ELEMENT[precision]} byte(s) per element ({precision}); "
        f"batch {batch_size}",
    ]
    if spec.unit == "cpu":
        assert spec.cores is not None
        cores = device.figure_value(spec.cores)
        use = min(float(threads), cores) if threads else cores
        peak *= use / cores
        used.append(spec.cores)
        assumptions.append(f"CPU peak scaled to {use:g} of {cores:g} cores (threads={threads or 'all'})")
    layers, notes = count_layers(onnx_path, precision, batch_size)
    assumptions += notes
    compute_rate = peak * spec.compute_efficiency
    memory_rate = bandwidth * spec.bandwidth_efficiency
    total_s = 0.0
    for layer in layers:
        if layer.bound == "free":
            continue
        layer.compute_us = layer.flops / compute_rate * 1e6
        layer.memory_us = layer.bytes / memory_rate * 1e6
        layer.overhead_us = spec.node_overhead_us
        layer.bound = "compute" if layer.compute_us >= layer.memory_us else "memory"
        layer.time_us = max(layer.compute_us, layer.memory_us) + layer.overhead_us
        total_s += layer.time_us * 1e-6
    figures = {
        name: {"value": f.value, "basis": f.basis, "source": f.source, **({"note": f.note} if f.note else {})}
        for name, f in device.figures.items()
        if name in used
    }
    return Estimate(
        device=device.name,
        precision=precision,
        ms=total_s * 1e3,
        total_macs=sum(layer.macs for layer in layers),
        total_flops=sum(layer.flops for layer in layers),
        total_bytes=sum(layer.bytes for layer in layers),
        layers=layers,
        figures=figures,
        assumptions=assumptions,
        knobs={
            "compute_efficiency": spec.compute_efficiency,
            "bandwidth_efficiency": spec.bandwidth_efficiency,
            "node_overhead_us": spec.node_overhead_us,
        },
    )


def estimator_error_on_host(
    onnx_path: str | os.PathLike,
    measured_ms: float,
    host_device: Device,
    *,
    threads: int | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Estimate vs measurement of the same file on this machine: how far off the roofline is here."""
    if not measured_ms or measured_ms <= 0:
        raise ValueError(f"measured_ms must be positive, got {measured_ms}")
    est = estimate_latency(onnx_path, host_device, precision=precision, threads=threads)
    return {
        "device": host_device.name,
        "onnx": str(onnx_path),
        "estimated_ms": round(est.ms, 4),
        "measured_ms": round(float(measured_ms), 4),
        "error_ms": round(est.ms - measured_ms, 4),
        "error_pct": round(100.0 * (est.ms - measured_ms) / measured_ms, 2),
        "ratio_estimated_to_measured": round(est.ms / measured_ms, 4),
        "label": "estimated vs measured on this machine",
        "figures": est.figures,
    }


# -------------------------------------------------------------------------------- host run-time figures
def cpu_flops_per_cycle(flags: set[str], machine: str, vendor: str = "") -> int:
    """Nominal FP32 FLOP/cycle/core: two FMA pipes x SIMD lanes x 2 (a datasheet-style peak)."""
    if machine in ("aarch64", "arm64"):
        return 16  # two 128-bit NEON FMA pipes
    if "avx512f" in flags:
        return 32 if vendor == "AuthenticAMD" else 64  # AMD Zen 4 splits 512-bit ops into 2 x 256
    if "avx2" in flags and "fma" in flags:
        return 32
    if "avx" in flags:
        return 16
    return 8


def _cpuinfo() -> tuple[set[str], str, float | None]:
    flags: set[str] = set()
    vendor = ""
    mhz: list[float] = []
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "cpu MHz":
            try:
                mhz.append(float(value))
            except ValueError:
                pass
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        ghz = int(max_freq.read_text().strip()) / 1e6  # kHz
    except (OSError, ValueError):
        ghz = max(mhz) / 1e3 if mhz else None
    return flags, vendor, ghz


def measure_copy_bandwidth(mib: int = 256, repeats: int = 3) -> float:
    """Bytes/s of a large numpy copy (read + write), best of ``repeats``."""
    src = np.ones(mib * (1 << 20) // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def with_host_figures(device: Device) -> Device:
    """Fill this machine's run-time figures: cores, nominal FP32 peak, measured copy bandwidth."""
    flags, vendor, ghz = _cpuinfo()
    cores = os.cpu_count() or 1
    machine = platform.machine().lower()
    if ghz is None:
        raise InputError(
            f"{device.path or device.name}: cannot read this CPU's clock (/proc/cpuinfo, cpufreq); "
            "give cpu_fp32_gflops in a device file instead"
        )
    per_cycle = cpu_flops_per_cycle(flags, machine, vendor)
    values = {
        "cpu_cores": Figure(float(cores), "run-time", f"os.cpu_count() = {cores}"),
        "cpu_fp32_gflops": Figure(
            round(cores * ghz * per_cycle, 3),
            "run-time",
            f"{cores} cores x {ghz:.3f} GHz x {per_cycle} FP32 FLOP/cycle ({machine}, "
            f"{'avx512f' if 'avx512f' in flags else 'avx2+fma' if 'avx2' in flags else 'simd'})",
        ),
        "memory_bandwidth_gbs": Figure(
            round(measure_copy_bandwidth() / 1e9, 3),
            "run-time",
            "measured: numpy copy of 256 MiB, (read + write) bytes / best of 3",
        ),
    }
    return device.with_figures({k: v for k, v in values.items() if k in device.figures})
