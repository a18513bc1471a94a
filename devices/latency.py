"""Host latency of one runtime call: warm-up, then timed single calls, summarised as percentiles in ms.

Percentiles use numpy's default method ("linear": the value at fractional rank ``q/100 * (n - 1)`` of the
sorted samples, interpolated between the two neighbours), the same definition as ``np.percentile(x, q)``.
``std`` is the population standard deviation (ddof=0). The garbage collector is paused during the timed
loop so a collection does not land inside one sample.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from deploy.runtimes import Embedder


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per call, plus the settings that produced them."""

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    runs: int
    warmup: int
    threads: int | None
    batch_size: int | None


def stats_from_samples(
    samples_ms: Sequence[float] | np.ndarray,
    *,
    warmup: int = 0,
    threads: int | None = None,
    batch_size: int | None = None,
) -> LatencyStats:
    """Summarise per-call latencies (ms); see the module docstring for the percentile definition."""
    s = np.asarray(samples_ms, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence of latency samples, got shape {s.shape}")
    p50, p90, p99 = np.percentile(s, [50, 90, 99])
    return LatencyStats(
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
        mean=float(s.mean()),
        std=float(s.std()),
        min=float(s.min()),
        max=float(s.max()),
        runs=int(s.size),
        warmup=int(warmup),
        threads=threads,
        batch_size=batch_size,
    )


def time_calls(
    run_once: Callable[[], object], runs: int, clock_ns: Callable[[], int] = time.perf_counter_ns
) -> np.ndarray:
    """Duration of each of ``runs`` calls in ms (GC paused while timing)."""
    samples = np.empty(runs, dtype=np.float64)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(runs):
            start = clock_ns()
            run_once()
            samples[i] = (clock_ns() - start) / 1e6
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def measure_latency(
    run_once: Callable[[], object],
    *,
    warmup: int = 10,
    runs: int = 100,
    threads: int | None = None,
    batch_size: int | None = None,
    clock_ns: Callable[[], int] = time.perf_counter_ns,
) -> LatencyStats:
    """Call ``run_once`` ``warmup`` times untimed, then ``runs`` times timed one by one.

    ``threads``/``batch_size`` are only recorded in the result (the caller configured the runtime);
    ``clock_ns`` is injectable so tests can check the arithmetic with a fake clock.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        run_once()
    samples = time_calls(run_once, runs, clock_ns)
    return stats_from_samples(samples, warmup=warmup, threads=threads, batch_size=batch_size)


def measure_embedder_latency(
    embedder: Embedder, *, warmup: int = 10, runs: int = 100, batch_size: int | None = None, seed: int = 0
) -> LatencyStats:
    """Latency of ``embedder.run_once`` on an input already in the artifact's shape and dtype.

    Conversion to the model's layout/dtype happens once before timing, so only the runtime call is timed.
    """
    x = embedder.latency_input(batch_size, seed)
    return measure_latency(
        lambda: embedder.run_once(x),
        warmup=warmup,
        runs=runs,
        threads=embedder.num_threads,
        batch_size=int(x.shape[0]),
    )


@dataclass(frozen=True)
class InterleavedLatency:
    """One subject's latency from rounds shared with the others: pooled stats and each round's median."""

    stats: LatencyStats
    round_p50: list[float]
    rounds: int  # the rounds that ran (fewer than asked when the time budget ran out)


def interleaved_latency(
    subjects: Sequence[Embedder],
    *,
    warmup: int = 10,
    runs: int = 100,
    rounds: int = 5,
    batch_size: int | None = 1,
    budget_s: float | None = None,
    clock_ns: Callable[[], int] = time.perf_counter_ns,
) -> list[InterleavedLatency]:
    """Latency of several models measured in turns, so a change in the machine's load hits them all alike.

    Each model is warmed up ``warmup`` times, then ``rounds`` rounds run; in each round every model gets
    its share of the ``runs`` timed calls (shares differ by one at most) after one untimed call (its
    caches were just used by another model), in an order rotated by one each round so none always
    follows the same neighbour. The pooled
    samples give the percentiles; ``round_p50`` shows how far the rounds drifted. With ``budget_s`` no
    new round starts once the timed rounds have taken that long (at least one round runs): the result
    says how many rounds and runs fit.
    """
    if runs < 1 or rounds < 1:
        raise ValueError(f"runs and rounds must be >= 1, got {runs} and {rounds}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    rounds = min(rounds, runs)
    per_round = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]  # sums to runs
    inputs = [e.latency_input(batch_size, 0) for e in subjects]
    calls = [(lambda e=e, x=x: e.run_once(x)) for e, x in zip(subjects, inputs, strict=True)]
    for call in calls:
        for _ in range(warmup):
            call()
    samples: list[list[np.ndarray]] = [[] for _ in subjects]
    order = list(range(len(subjects)))
    started = clock_ns()
    for r in range(rounds):
        if r and budget_s is not None and (clock_ns() - started) / 1e9 >= budget_s:
            break
        turn = order[r % len(order) :] + order[: r % len(order)] if order else []
        for i in turn:
            calls[i]()
            samples[i].append(time_calls(calls[i], per_round[r], clock_ns))
    out = []
    for e, x, per in zip(subjects, inputs, samples, strict=True):
        stats = stats_from_samples(
            np.concatenate(per), warmup=warmup, threads=e.num_threads, batch_size=int(x.shape[0])
        )
        out.append(InterleavedLatency(stats, [float(np.median(s)) for s in per], len(per)))
    return out


SPREAD_LIMIT = 0.25  # (p90 - p50) / p50 above this: the samples disagree too much to compare runs
OTHERS_LIMIT = 0.25  # share of the CPUs other processes kept busy (load average beyond our threads)


def load_snapshot() -> float | None:
    """1-minute load average (None where the platform has none)."""
    import os

    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def latency_conditions(
    stats: LatencyStats,
    load_before: float | None,
    load_after: float | None,
    cpu_count: int | None = None,
    round_p50: Sequence[float] | None = None,
) -> dict[str, object]:
    """How far to trust a host latency: its spread and how busy the machine was while it ran.

    ``others_share`` estimates the CPUs other processes used: the 1-minute load average beyond this
    measurement's own threads, over the core count. With interleaved rounds, ``round_drift`` is the
    largest round median over the smallest, minus one. A row is ``trustworthy`` when the spread, the
    drift and that share are under their limits; ``reasons`` says why not.
    """
    import os

    cores = cpu_count or os.cpu_count() or 1
    spread = (stats.p90 - stats.p50) / stats.p50 if stats.p50 > 0 else float("inf")
    loads = [x for x in (load_before, load_after) if x is not None]
    own = float(stats.threads or 1)
    others = max(0.0, max(loads) - own) / cores if loads else None
    reasons = []
    if spread > SPREAD_LIMIT:
        reasons.append(f"p90 is {100 * spread:.0f} % above p50 (limit {100 * SPREAD_LIMIT:.0f} %)")
    drift = None
    if round_p50:
        low = min(round_p50)
        drift = max(round_p50) / low - 1.0 if low > 0 else float("inf")
        if drift > SPREAD_LIMIT:
            reasons.append(
                f"the rounds' medians differ by {100 * drift:.0f} % (limit {100 * SPREAD_LIMIT:.0f} %): "
                "the machine's speed changed while measuring"
            )
    if others is not None and others > OTHERS_LIMIT:
        reasons.append(
            f"other processes kept about {100 * min(others, 1.0):.0f} % of the {cores} cores busy "
            f"(load average {max(loads):.2f}; limit {100 * OTHERS_LIMIT:.0f} %)"
        )
    return {
        "spread_p90_over_p50": round(spread, 4),
        "round_p50_ms": None if round_p50 is None else [round(float(x), 4) for x in round_p50],
        "round_drift": None if drift is None else round(drift, 4),
        "load_average_1min": [None if x is None else round(x, 2) for x in (load_before, load_after)],
        "cpu_count": cores,
        "others_share": None if others is None else round(others, 4),
        "trustworthy": not reasons,
        "reasons": reasons,
    }
