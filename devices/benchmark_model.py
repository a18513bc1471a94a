"""Parser of the LiteRT / TFLite ``benchmark_model`` tool's log.

The tool (tensorflow/lite/tools/benchmark, LiteRT's litert/tools) logs, one ``INFO:``-prefixed line each:

* per run phase, the Stat line of ``run_stats.OutputToStream``:
  ``count=50 first=… curr=… min=… max=… avg=… std=… p5=… median=… p95=…`` in microseconds (older
  builds stop at ``std``); the first such line is the warm-up phase, the last one the timed runs;
* ``Inference timings in us: Init: …, First inference: …, Warmup (avg): …, Inference (avg): …``;
* ``Memory footprint delta from the start of the tool (MB): init=… overall=…`` (older builds:
  ``Peak memory footprint (MB): init=… overall=…``) and, with ``--report_peak_memory_footprint``,
  ``Overall peak memory footprint (MB) via periodic monitoring: …``;
* for each delegate given by a flag: ``Explicitly applied <X> delegate, and the model graph will be
  completely executed by the delegate.`` / ``... partially executed by the delegate w/ N delegate kernels.``
  / ``Though <X> delegate is explicitly applied, the model graph will not be executed by the delegate.``,
  and ``Replacing N out of M node(s) with delegate (<Kernel>) node`` from the interpreter.

Numbers are C++ stream output, so large ones come in scientific notation (``avg=1.24027e+06``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from distill.errors import InputError

NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
DELEGATE_NAMES = {"gpu": "GPU", "nnapi": "NNAPI", "xnnpack": "XNNPACK", "cpu": None}

_STAT_LINE = re.compile(rf"\bcount=({NUM})((?:\s+[a-z0-9]+=\s*{NUM})+)")
_STAT_PAIR = re.compile(rf"([a-z0-9]+)=\s*({NUM})")
_TIMINGS = re.compile(
    rf"Inference timings in us:\s*Init:\s*({NUM}),\s*First inference:\s*({NUM}),\s*"
    rf"Warmup \(avg\):\s*({NUM}),\s*Inference \(avg\):\s*({NUM})"
)
_MEMORY = re.compile(
    rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\):\s*"
    rf"init=({NUM})\s+overall=({NUM})"
)
_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring:\s*({NUM})")
_APPLIED = re.compile(
    r"Explicitly applied (\S+) delegate, and the model graph will be (completely|partially)"
)
_PARTIAL_KERNELS = re.compile(r"partially executed by the delegate w/ (\d+) delegate kernels")
_NOT_APPLIED = re.compile(
    r"Though (\S+) delegate is explicitly applied, the model graph will not be executed"
)
_FAILED = re.compile(r"Failed to apply (\S+) delegate")
_REPLACING = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \(([^)]+)\)")
_THREADS = re.compile(r"(?:Num threads|#threads used for CPU inference):\s*\[(\d+)\]")
_XNNPACK_CREATED = "Created TensorFlow Lite XNNPACK delegate for CPU"


@dataclass
class RunStats:
    """One Stat line, microseconds (``count`` is a number of runs)."""

    count: int
    values_us: dict[str, float]  # first, curr, min, max, avg, std, p5, median, p95 as printed

    def ms(self, key: str) -> float | None:
        v = self.values_us.get(key)
        return None if v is None else v / 1000.0


@dataclass
class DelegateReport:
    """What the tool said about one delegate."""

    name: str  # as printed: GPU, NNAPI, XNNPACK
    status: str  # full | partial | none | failed
    kernels: int | None = None


@dataclass
class BenchmarkModelOutput:
    warmup: RunStats | None
    inference: RunStats
    init_us: float | None = None
    first_inference_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None
    memory_init_mb: float | None = None
    memory_overall_mb: float | None = None
    peak_memory_mb: float | None = None
    num_threads: int | None = None
    delegates: list[DelegateReport] = field(default_factory=list)
    replaced: list[dict[str, Any]] = field(default_factory=list)  # {nodes, of, kernel}
    xnnpack_default_created: bool = False

    def latency_ms(self) -> dict[str, float]:
        """The timed runs in ms: p50 (median), p5, p95, mean (avg), std, min, max where printed."""
        names = {"median": "p50", "p5": "p5", "p95": "p95", "avg": "mean", "std": "std", "min": "min"}
        names["max"] = "max"
        return {out: self.inference.ms(k) for k, out in names.items() if k in self.inference.values_us}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_benchmark_model(text: str) -> BenchmarkModelOutput:
    """Parse a benchmark_model log; InputError if it has no Stat line for the timed runs."""
    stats = []
    for m in _STAT_LINE.finditer(text):
        values = {k: float(v) for k, v in _STAT_PAIR.findall(m.group(2))}
        stats.append(RunStats(count=int(float(m.group(1))), values_us=values))
    if not stats:
        raise InputError("benchmark_model output: no 'count=... avg=...' line (did the run finish?)")
    out = BenchmarkModelOutput(warmup=stats[0] if len(stats) > 1 else None, inference=stats[-1])
    timings = _TIMINGS.findall(text)
    if timings:
        out.init_us, out.first_inference_us, out.warmup_avg_us, out.inference_avg_us = map(float, timings[-1])
    memory = _MEMORY.findall(text)
    if memory:
        out.memory_init_mb, out.memory_overall_mb = map(float, memory[-1])
    peak = _PEAK.findall(text)
    if peak:
        out.peak_memory_mb = float(peak[-1])
    threads = _THREADS.findall(text)
    if threads:
        out.num_threads = int(threads[-1])
    for line in text.splitlines():
        applied = _APPLIED.search(line)
        if applied:
            kernels = _PARTIAL_KERNELS.search(line)
            status = "full" if applied.group(2) == "completely" else "partial"
            out.delegates.append(
                DelegateReport(applied.group(1), status, int(kernels.group(1)) if kernels else None)
            )
            continue
        not_applied = _NOT_APPLIED.search(line) or _FAILED.search(line)
        if not_applied:
            status = "none" if not_applied.re is _NOT_APPLIED else "failed"
            out.delegates.append(DelegateReport(not_applied.group(1), status, 0))
            continue
        replacing = _REPLACING.search(line)
        if replacing:
            n, m, kernel = replacing.groups()
            out.replaced.append({"nodes": int(n), "of": int(m), "kernel": kernel})
    out.xnnpack_default_created = _XNNPACK_CREATED in text
    return out


@dataclass
class DelegateCheck:
    """Did the delegate asked for run the graph, or did the run silently fall back to the CPU?"""

    requested: str  # cpu | xnnpack | gpu | nnapi
    applied: str  # full | partial | none | failed | not created | n/a
    fell_back_to_cpu: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_delegate(parsed: BenchmarkModelOutput, requested: str) -> DelegateCheck:
    """Compare the requested delegate with what the tool reported.

    A GPU/NNAPI run whose delegate took no node (``Though ... will not be executed``), failed, or was
    never created (no line at all) ran on the CPU: its latency is a CPU number, flagged here. A partial
    delegation runs the rest on the CPU and is flagged as a partial fallback.
    """
    if requested not in DELEGATE_NAMES:
        raise InputError(f"--delegate: '{requested}' is not one of {', '.join(DELEGATE_NAMES)}")
    name = DELEGATE_NAMES[requested]
    if name is None:
        used = [d.name for d in parsed.delegates if d.status in ("full", "partial")]
        if used or parsed.xnnpack_default_created:
            return DelegateCheck(
                requested, "n/a", False, f"plain CPU requested but {', '.join(used) or 'XNNPACK'} was applied"
            )
        return DelegateCheck(requested, "n/a", False, "plain CPU kernels (no delegate)")
    reports = [d for d in parsed.delegates if d.name.upper() == name]
    if not reports:
        if requested == "xnnpack" and parsed.xnnpack_default_created:
            return DelegateCheck(requested, "full", False, "XNNPACK applied by default")
        return DelegateCheck(
            requested,
            "not created",
            True,
            f"no '{name}' delegate line in the log: the delegate was not created, the graph ran on the CPU",
        )
    report = reports[-1]
    replaced = "; ".join(f"{r['nodes']}/{r['of']} nodes -> {r['kernel']}" for r in parsed.replaced)
    if report.status == "full":
        return DelegateCheck(
            requested, "full", False, f"{name} runs the whole graph ({replaced or 'all nodes'})"
        )
    if report.status == "partial":
        return DelegateCheck(
            requested,
            "partial",
            True,
            f"{name} runs {report.kernels} partition(s), the rest falls back to the CPU ({replaced})",
        )
    what = "failed to apply" if report.status == "failed" else "took no node"
    return DelegateCheck(requested, report.status, True, f"{name} delegate {what}: the graph ran on the CPU")
