"""TensorRT engines from our ONNX files: Python builder, trtexec command lines and their output.

One path that works on TensorRT 10.x (Jetson Orin on JetPack 6 stays on 10.3) and 11.x
(shared/research/deploy.md §2.1-2.4):

* the network is **strongly typed** (``1 << STRONGLY_TYPED``; always on, the flag a no-op, in 11.x), so
  precision comes from the ONNX itself: fp32 ONNX -> fp32 engine, fp16 ONNX (``deploy.onnx_fp16``)
  -> fp16 engine, Q/DQ ONNX -> INT8 by explicit quantization. 11.x removed ``BuilderFlag.FP16/INT8``,
  calibrators and ``trtexec --fp16/--int8``; 10.x still has them (weakly typed), used here only when a
  command line asks for ``strongly_typed=False`` on 10.x;
* a timing cache file is loaded and saved so rebuilding on the same device is fast and repeatable;
* workspace via ``set_memory_pool_limit`` and ``builder_optimization_level`` (0..5, TensorRT default 3).

TensorRT cannot be installed or run in CI (wheel stubs that need NVIDIA's index; a Builder needs a CUDA
driver), so the import is guarded and :func:`tensorrt_available` says plainly why it is unusable.
Engines are specific to the GPU and TensorRT version: :func:`write_trtexec_script` leaves a script beside
the ONNX that rebuilds the engine on the device.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distill.atomic import atomic_path, write_bytes
from distill.errors import InputError

SUPPORTED_MAJORS = (10, 11)
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_MB = 1024
DEFAULT_OPT_LEVEL = 3
JETSON_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"  # JetPack installs trtexec here, not on PATH


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot be used on this machine (not installed, or no CUDA GPU); the message says which."""


class TensorRTBuildError(RuntimeError):
    """TensorRT rejected the ONNX or failed to build the engine."""


# ------------------------------------------------------------------------------------- availability
def cuda_device_count() -> tuple[int, str]:
    """Number of CUDA GPUs the driver reports, and why it is 0 (straight from libcuda, no framework)."""
    names = ["libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda"), "nvcuda.dll"]
    lib = None
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return 0, "no CUDA driver library (libcuda) on this machine"
    rc = lib.cuInit(0)
    if rc != 0:
        return 0, f"the CUDA driver failed to initialise (cuInit error {rc}; 100 = no device)"
    count = ctypes.c_int(0)
    rc = lib.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0:
        return 0, f"the CUDA driver could not count devices (error {rc})"
    return count.value, "" if count.value else "the CUDA driver reports no GPU"


def tensorrt_available() -> tuple[bool, str]:
    """(usable, reason): is the ``tensorrt`` package importable and is there a CUDA GPU to build on?"""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return False, (
            f"the 'tensorrt' Python package is not importable ({exc}); build engines on the device "
            "(JetPack ships TensorRT; see the trtexec script beside the ONNX)"
        )
    except Exception as exc:  # e.g. OSError: libnvinfer.so missing behind an installed wheel
        return False, f"the 'tensorrt' package failed to load ({type(exc).__name__}: {exc})"
    version = getattr(trt, "__version__", "?")
    count, why = cuda_device_count()
    if count < 1:
        return False, f"TensorRT {version} is installed but there is no usable CUDA GPU ({why})"
    return True, f"TensorRT {version}, {count} CUDA GPU(s)"


def major_version(version: str) -> int:
    """'10.3.0.30' -> 10."""
    try:
        return int(str(version).split(".")[0])
    except ValueError as exc:
        raise ValueError(f"cannot read a TensorRT version from '{version}'") from exc


# ------------------------------------------------------------------------------------ ONNX precision
def onnx_precision(onnx_path: str | os.PathLike) -> str:
    """What a strongly typed engine from this ONNX computes in: fp32, fp16, int8 or int8+fp16.

    int8 when it has QuantizeLinear/DequantizeLinear nodes; fp16 when it holds float16 tensors.
    """
    from deploy.onnx_fp16 import has_float16, load_onnx

    model = load_onnx(onnx_path)
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    has_fp16 = has_float16(model)
    if has_qdq:
        return "int8+fp16" if has_fp16 else "int8"
    return "fp16" if has_fp16 else "fp32"


# ------------------------------------------------------------------------------------ Python builder
@dataclass
class EngineBuild:
    engine: str
    onnx: str
    tensorrt_version: str
    precision: str  # from the ONNX (see onnx_precision): the engine is strongly typed
    strongly_typed: bool
    workspace_mb: int
    builder_optimization_level: int
    timing_cache: str | None
    timing_cache_reused: bool
    build_seconds: float
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: str | os.PathLike | None = None,
    fp16_onnx: bool = False,
    builder_optimization_level: int = DEFAULT_OPT_LEVEL,
    batch_range: tuple[int, int, int] = (1, 1, 1),
    verbose: bool = False,
) -> EngineBuild:
    """Build a strongly typed engine from ``onnx_path`` and write it atomically to ``engine_path``.

    ``fp16_onnx=True`` states that the ONNX is the fp16 conversion (the only fp16 route on TensorRT 11);
    it is checked against the file so an fp32 ONNX cannot silently give an fp32 "fp16" engine.
    ``batch_range`` (min, opt, max) is used only when the ONNX has a dynamic batch axis.
    ``timing_cache`` is read when it exists and written back after a successful build.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if workspace_mb < 1:
        raise ValueError(f"workspace_mb must be >= 1, got {workspace_mb}")
    if not 0 <= builder_optimization_level <= 5:
        raise ValueError(f"builder_optimization_level must be 0..5, got {builder_optimization_level}")
    precision = onnx_precision(onnx_path)
    if fp16_onnx and "fp16" not in precision:
        raise InputError(
            f"{onnx_path}: fp16_onnx=True but the file has no float16 tensors; "
            "convert it with deploy.onnx_fp16.convert_onnx_fp16 first"
        )
    ok, reason = tensorrt_available()
    if not ok:
        raise TensorRTUnavailable(f"cannot build {engine_path.name}: {reason}")

    import tensorrt as trt

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError as exc:  # "pybind11::init(): factory function returned nullptr" without a GPU
        raise TensorRTUnavailable(
            f"TensorRT could not create a builder (no usable CUDA GPU?): {exc}"
        ) from exc
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"{onnx_path}: TensorRT's ONNX parser rejected the model: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.builder_optimization_level = int(builder_optimization_level)
    _add_batch_profile(trt, builder, network, config, batch_range, onnx_path)

    cache_path = Path(timing_cache) if timing_cache is not None else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    reused = bool(cache_bytes)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another GPU or TensorRT version is rejected: start an empty one instead.
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        reused = False

    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise TensorRTBuildError(f"{onnx_path}: TensorRT failed to build the engine (see its log above)")
    data = bytes(memoryview(plan))
    write_bytes(engine_path, data)
    if cache_path is not None:
        write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return EngineBuild(
        engine=str(engine_path),
        onnx=str(onnx_path),
        tensorrt_version=str(getattr(trt, "__version__", "?")),
        precision=precision,
        strongly_typed=True,
        workspace_mb=int(workspace_mb),
        builder_optimization_level=int(builder_optimization_level),
        timing_cache=None if cache_path is None else str(cache_path),
        timing_cache_reused=reused,
        build_seconds=seconds,
        size_bytes=len(data),
    )


def _add_batch_profile(
    trt: Any, builder: Any, network: Any, config: Any, batch_range, onnx_path: Path
) -> None:
    """An optimization profile over the batch axis, only when an input has dynamic dimensions."""
    lo, opt, hi = (int(b) for b in batch_range)
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"batch_range must satisfy 1 <= min <= opt <= max, got {batch_range}")
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = [int(d) for d in tensor.shape]
        if all(d >= 0 for d in shape):
            continue
        if any(d < 0 for d in shape[1:]):
            raise InputError(f"{onnx_path}: input '{tensor.name}' has dynamic non-batch dimensions {shape}")
        if profile is None:
            profile = builder.create_optimization_profile()
        rest = shape[1:]
        profile.set_shape(tensor.name, (lo, *rest), (opt, *rest), (hi, *rest))
    if profile is not None:
        config.add_optimization_profile(profile)


# ---------------------------------------------------------------------------------------- trtexec
def trtexec_command(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    precision: str = "fp32",
    trt_major: int = 10,
    fp16_onnx: bool = False,
    strongly_typed: bool = True,
    timing_cache: str | os.PathLike | None = None,
    workspace_mb: int | None = DEFAULT_WORKSPACE_MB,
    builder_optimization_level: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    benchmark: bool = True,
    avg_runs: int | None = None,
    warmup_ms: int | None = None,
    duration_s: float | None = None,
    iterations: int | None = None,
    percentiles: Sequence[float] | None = (50, 90, 99),
    export_times: str | os.PathLike | None = None,
    trtexec: str = "trtexec",
) -> list[str]:
    """The trtexec argv that builds ``engine_path`` from ``onnx_path`` (and times it unless ``benchmark``
    is False) with the flags TensorRT ``trt_major`` accepts.

    Precision rules (no flag combination that one of the versions rejects is ever produced):

    * 11.x: strongly typed always, no precision flags exist; fp16 needs ``fp16_onnx``, int8 a Q/DQ ONNX.
    * 10.x, ``strongly_typed`` (default): ``--stronglyTyped`` and no precision flags, same as 11.x.
    * 10.x, ``strongly_typed=False`` (the JetPack-6 habit): fp16 -> ``--fp16``, int8 -> ``--int8``.
    """
    if trt_major not in SUPPORTED_MAJORS:
        raise ValueError(f"trt_major must be one of {SUPPORTED_MAJORS}, got {trt_major}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got '{precision}'")
    if trt_major >= 11 and not strongly_typed:
        raise ValueError("TensorRT 11 removed weak typing (--fp16/--int8); use strongly_typed=True")
    if strongly_typed and precision == "fp16" and not fp16_onnx:
        raise ValueError(
            f"fp16 with a strongly typed network (TensorRT {trt_major}) needs an fp16 ONNX "
            "(deploy.onnx_fp16.convert_onnx_fp16) and fp16_onnx=True"
        )
    argv = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if strongly_typed:
        if trt_major == 10:
            argv.append("--stronglyTyped")  # 11.x: default, the flag is a no-op
    elif precision == "fp16":
        argv.append("--fp16")
    elif precision == "int8":
        argv.append("--int8")
    if timing_cache is not None:
        argv.append(f"--timingCacheFile={timing_cache}")
    if workspace_mb is not None:
        if workspace_mb < 1:
            raise ValueError(f"workspace_mb must be >= 1, got {workspace_mb}")
        argv.append(f"--memPoolSize=workspace:{int(workspace_mb)}")  # MiB; 10.x replaced --workspace
    if builder_optimization_level is not None:
        if not 0 <= builder_optimization_level <= 5:
            raise ValueError(f"builder_optimization_level must be 0..5, got {builder_optimization_level}")
        argv.append(f"--builderOptimizationLevel={int(builder_optimization_level)}")
    if shapes:
        argv.append(f"--shapes={_shape_spec(shapes)}")
    if not benchmark:
        argv.append("--skipInference")
        return argv
    return argv + _benchmark_flags(
        trt_major, avg_runs, warmup_ms, duration_s, iterations, percentiles, export_times
    )


def trtexec_benchmark_command(
    engine_path: str | os.PathLike,
    *,
    trt_major: int = 10,
    shapes: Mapping[str, Sequence[int]] | None = None,
    avg_runs: int | None = None,
    warmup_ms: int | None = None,
    duration_s: float | None = None,
    iterations: int | None = None,
    percentiles: Sequence[float] | None = (50, 90, 99),
    export_times: str | os.PathLike | None = None,
    trtexec: str = "trtexec",
) -> list[str]:
    """The trtexec argv that times an already built engine (``--loadEngine``)."""
    if trt_major not in SUPPORTED_MAJORS:
        raise ValueError(f"trt_major must be one of {SUPPORTED_MAJORS}, got {trt_major}")
    argv = [trtexec, f"--loadEngine={engine_path}"]
    if shapes:
        argv.append(f"--shapes={_shape_spec(shapes)}")
    return argv + _benchmark_flags(
        trt_major, avg_runs, warmup_ms, duration_s, iterations, percentiles, export_times
    )


def _benchmark_flags(
    trt_major: int,
    avg_runs: int | None,
    warmup_ms: int | None,
    duration_s: float | None,
    iterations: int | None,
    percentiles: Sequence[float] | None,
    export_times: str | os.PathLike | None,
) -> list[str]:
    """Timing flags; on 10.x also the GPU-only timing switches that 11.x made the default."""
    flags = []
    if trt_major == 10:
        flags += ["--useCudaGraph", "--noDataTransfers", "--useSpinWait"]
    for name, value in (("avgRuns", avg_runs), ("warmUp", warmup_ms), ("iterations", iterations)):
        if value is not None:
            if value < 0 or (name != "warmUp" and value < 1):
                raise ValueError(f"{name} must be positive, got {value}")
            flags.append(f"--{name}={int(value)}")
    if duration_s is not None:
        if duration_s < 0:
            raise ValueError(f"duration_s must be >= 0, got {duration_s}")
        flags.append(f"--duration={_num(duration_s)}")
    if percentiles:
        if any(not 0 <= p <= 100 for p in percentiles):
            raise ValueError(f"percentiles must be in [0, 100], got {list(percentiles)}")
        flags.append("--percentile=" + ",".join(_num(p) for p in percentiles))
    if export_times is not None:
        flags.append(f"--exportTimes={export_times}")
    return flags


def _shape_spec(shapes: Mapping[str, Sequence[int]]) -> str:
    parts = []
    for name, dims in shapes.items():
        if not name or any(c in name for c in ":,'\" "):
            raise ValueError(f"input name {name!r} cannot be passed to trtexec --shapes unquoted")
        if not dims or any(int(d) < 1 for d in dims):
            raise ValueError(f"shape for '{name}' must be positive dimensions, got {list(dims)}")
        parts.append(f"{name}:" + "x".join(str(int(d)) for d in dims))
    return ",".join(parts)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_trtexec_script(
    path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    precision: str,
    fp16_onnx: bool = False,
    timing_cache: str | os.PathLike | None = None,
    workspace_mb: int | None = DEFAULT_WORKSPACE_MB,
    shapes: Mapping[str, Sequence[int]] | None = None,
    **bench: Any,
) -> Path:
    """Write an executable POSIX shell script that rebuilds (and times) the engine on the device.

    The script finds trtexec (``$TRTEXEC``, PATH, then JetPack's /usr/src/tensorrt/bin), reads the
    TensorRT major version from trtexec's banner (``[TensorRT v100300]`` -> 10; override with
    ``$TRT_MAJOR``) and runs the command line for that version; extra arguments are passed through.
    Paths are relative to the script, so the folder can be copied to the device as a whole.
    """
    script = Path(path)
    base = script.parent.resolve()

    def rel(p: str | os.PathLike | None) -> str | None:
        return None if p is None else os.path.relpath(Path(p).resolve(), base)

    branches = []
    for major in SUPPORTED_MAJORS:
        try:
            argv = trtexec_command(
                rel(onnx_path),
                rel(engine_path),
                precision=precision,
                trt_major=major,
                fp16_onnx=fp16_onnx,
                timing_cache=rel(timing_cache),
                workspace_mb=workspace_mb,
                shapes=shapes,
                **bench,
            )
        except ValueError as exc:
            branches.append(
                f"  {major}) echo {shlex.quote(f'cannot build on TensorRT {major}: {exc}')} >&2; exit 2 ;;"
            )
            continue
        args = " ".join(shlex.quote(a) for a in argv[1:])
        branches.append(f'  {major}) exec "$TRTEXEC" {args} "$@" ;;')
    lines = [
        "#!/bin/sh",
        f"# Rebuild {Path(engine_path).name} from {Path(onnx_path).name} on this device ({precision}).",
        "# Written by facekd. An engine runs only on the GPU model and TensorRT version that built it.",
        "set -eu",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-}"',
        'if [ -z "$TRTEXEC" ]; then',
        "  if command -v trtexec >/dev/null 2>&1; then TRTEXEC=trtexec",
        f"  elif [ -x {JETSON_TRTEXEC} ]; then TRTEXEC={JETSON_TRTEXEC}",
        '  else echo "trtexec not found: set TRTEXEC=/path/to/trtexec" >&2; exit 2; fi',
        "fi",
        "BANNER='s/.*\\[TensorRT v\\([0-9][0-9]*\\)\\].*/\\1/p'  # [TensorRT v100300] -> 100300",
        'if [ -z "${TRT_MAJOR:-}" ]; then',
        '  TRT_VERSION=$("$TRTEXEC" --help 2>&1 | sed -n "$BANNER" | head -n 1)',
        "  TRT_MAJOR=$(( ${TRT_VERSION:-0} / 10000 ))  # v100300 -> 10",
        "fi",
        'case "$TRT_MAJOR" in',
        *branches,
        "  *) echo \"TensorRT major version '$TRT_MAJOR' is not supported (10 or 11); set TRT_MAJOR\" >&2",
        "     exit 2 ;;",
        "esac",
        "",
    ]
    with atomic_path(script) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
        tmp.chmod(0o755)  # mkstemp made it 0600
    return script


# ------------------------------------------------------------------------------------- trtexec output
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_STAT_LINES = {
    "latency_ms": "Latency",
    "enqueue_ms": "Enqueue Time",
    "h2d_ms": "H2D Latency",
    "gpu_compute_ms": "GPU Compute Time",
    "d2h_ms": "D2H Latency",
}


def parse_trtexec_output(text: str) -> dict[str, Any]:
    """The performance summary of a trtexec log.

    Returns ``throughput_qps``; ``latency_ms``, ``gpu_compute_ms``, ``enqueue_ms``, ``h2d_ms``,
    ``d2h_ms`` as dicts with min/max/mean/median and ``p<percentile>`` keys (``percentile(99%)`` -> p99,
    ``percentile(99.9%)`` -> p99.9); ``total_host_walltime_s``, ``total_gpu_compute_s`` and
    ``tensorrt_version`` when present. With several summaries in one log, the last one wins.
    """
    result: dict[str, Any] = {}
    throughput = re.findall(rf"Throughput:\s*({_NUM})\s*qps", text)
    if not throughput:
        raise InputError("trtexec output: no 'Throughput: ... qps' line (did the run finish?)")
    result["throughput_qps"] = float(throughput[-1])
    for key, label in _STAT_LINES.items():
        # Anchored after "] " or at line start, so "Latency" does not also match "H2D Latency".
        pattern = rf"(?:^|\])[ \t]*{re.escape(label)}:[ \t]*(min[ \t]*=.*)$"
        lines = re.findall(pattern, text, flags=re.MULTILINE)
        if lines:
            result[key] = _parse_stats(lines[-1])
    for key, label in (
        ("total_host_walltime_s", "Total Host Walltime"),
        ("total_gpu_compute_s", "Total GPU Compute Time"),
    ):
        found = re.findall(rf"{re.escape(label)}:\s*({_NUM})\s*s\b", text)
        if found:
            result[key] = float(found[-1])
    banner = re.search(r"\[TensorRT v(\d+)\]", text)
    if banner:
        n = int(banner.group(1))
        result["tensorrt_version"] = f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return result


def _parse_stats(line: str) -> dict[str, float]:
    stats: dict[str, float] = {}
    for name, value in re.findall(rf"(min|max|mean|median)\s*=\s*({_NUM})\s*ms", line):
        stats[name] = float(value)
    for pct, value in re.findall(rf"percentile\(\s*({_NUM})\s*%\s*\)\s*=\s*({_NUM})\s*ms", line):
        stats[f"p{_num(float(pct))}"] = float(value)
    return stats
