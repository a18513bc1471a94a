"""Latency statistics: percentiles against hand computation, a fake clock for the timing loop."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest

from devices.latency import LatencyStats, measure_embedder_latency, measure_latency, stats_from_samples


def test_percentiles_of_1_to_10_by_hand():
    # Linear interpolation at rank q/100 * (n - 1) of the sorted samples (0-based):
    # p50 -> rank 4.5 -> 5 + 0.5 * (6 - 5) = 5.5 ; p90 -> rank 8.1 -> 9.1 ; p99 -> rank 8.91 -> 9.91
    samples = [7.0, 1.0, 10.0, 3.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0]  # unsorted on purpose
    s = stats_from_samples(samples, warmup=3, threads=2, batch_size=1)
    assert s.p50 == pytest.approx(5.5)
    assert s.p90 == pytest.approx(9.1)
    assert s.p99 == pytest.approx(9.91)
    assert s.mean == pytest.approx(5.5)
    assert s.std == pytest.approx(math.sqrt(8.25))  # population std: mean of squared deviations = 8.25
    assert (s.min, s.max, s.runs, s.warmup, s.threads, s.batch_size) == (1.0, 10.0, 10, 3, 2, 1)


def test_percentiles_with_an_outlier_by_hand():
    # sorted: 2, 2, 3, 4, 100 (n = 5): p50 rank 2 -> 3 ; p90 rank 3.6 -> 4 + 0.6 * 96 = 61.6 ;
    # p99 rank 3.96 -> 4 + 0.96 * 96 = 96.16
    s = stats_from_samples(np.array([3.0, 100.0, 2.0, 4.0, 2.0]))
    assert (s.p50, s.p90, s.p99) == (pytest.approx(3.0), pytest.approx(61.6), pytest.approx(96.16))
    assert s.mean == pytest.approx(22.2)


def test_single_sample_and_empty():
    s = stats_from_samples([4.2])
    assert s.p50 == s.p99 == s.min == s.max == s.mean == pytest.approx(4.2) and s.std == 0.0
    with pytest.raises(ValueError):
        stats_from_samples([])


class FakeClock:
    """A nanosecond clock that only moves when the fake workload says so."""

    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def test_measure_latency_times_each_call_after_warmup():
    clock = FakeClock()
    durations_ms = [50.0] * 4 + [1.0, 3.0, 2.0, 4.0, 5.0]  # the 4 warm-up calls are slow and must not count
    calls = []

    def run_once():
        calls.append(gc.isenabled())
        clock.now += int(durations_ms[len(calls) - 1] * 1e6)

    s = measure_latency(run_once, warmup=4, runs=5, threads=3, batch_size=1, clock_ns=clock)
    assert isinstance(s, LatencyStats)
    assert len(calls) == 9
    assert calls[:4] == [True] * 4 and calls[4:] == [False] * 5  # GC paused only while timing
    assert gc.isenabled()
    assert (s.min, s.max, s.p50, s.mean) == (1.0, 5.0, 3.0, 3.0)
    assert (s.runs, s.warmup, s.threads, s.batch_size) == (5, 4, 3, 1)


def test_measure_latency_with_the_real_clock_sees_real_work():
    def busy():
        sum(range(20000))

    s = measure_latency(busy, warmup=1, runs=20)
    assert s.runs == 20 and 0 < s.min <= s.p50 <= s.p90 <= s.p99 <= s.max
    with pytest.raises(ValueError):
        measure_latency(busy, runs=0)
    with pytest.raises(ValueError):
        measure_latency(busy, warmup=-1)


class FakeEmbedder:
    name, format, batch_size, num_threads, input_chw = "fake", "onnx", 4, 2, (3, 8, 8)

    def __init__(self) -> None:
        self.inputs = []

    def latency_input(self, batch_size=None, seed=0):
        return np.zeros((self.batch_size, *self.input_chw), np.float32)

    def run_once(self, x):
        self.inputs.append(x)
        return x.sum()


def test_measure_embedder_latency_records_threads_and_batch():
    emb = FakeEmbedder()
    s = measure_embedder_latency(emb, warmup=2, runs=7)
    assert (s.threads, s.batch_size, s.runs, s.warmup) == (2, 4, 7, 2)
    assert len(emb.inputs) == 9 and all(x is emb.inputs[0] for x in emb.inputs)  # one input, built once


def test_latency_conditions_flag_spread_and_a_busy_machine():
    from devices.latency import latency_conditions, stats_from_samples

    steady = stats_from_samples([10.0] * 50 + [11.0] * 50, threads=2)  # p50 10.5, p90 11: spread 4.8 %
    calm = latency_conditions(steady, 0.4, 1.9, cpu_count=2)  # load 1.9 with our 2 threads: nobody else
    assert calm["trustworthy"] and calm["others_share"] == 0.0 and calm["reasons"] == []
    busy = latency_conditions(steady, 3.0, 4.2, cpu_count=2)  # (4.2 - 2) / 2 = 110 % of the cores
    assert not busy["trustworthy"] and busy["others_share"] == pytest.approx(1.1)
    assert "other processes kept about 100 % of the 2 cores busy (load average 4.20" in busy["reasons"][0]
    jumpy = stats_from_samples([10.0] * 80 + [20.0] * 20, threads=1)  # p90 = 20: 100 % above p50
    flagged = latency_conditions(jumpy, None, None, cpu_count=2)
    assert flagged["others_share"] is None and flagged["reasons"] == ["p90 is 100 % above p50 (limit 25 %)"]


def test_noisy_latency_is_marked_in_the_report_and_not_made_a_reference():
    from devices.rows import ResultRow
    from pipeline.baseline import make_baseline
    from pipeline.report import latency_text, notes

    why = ["p90 is 200 % above p50 (limit 25 %)"]
    row = {"name": "s", "target": "host", "measured_on": "host-cpu", "accuracy": 0.9,
           "latency_ms": {"p50": 10.0, "p90": 30.0, "p99": 40.0},
           "latency_conditions": {"trustworthy": False, "reasons": why}}  # fmt: skip
    typed = ResultRow.from_dict(row)
    assert latency_text(typed).endswith("(noisy)")
    assert any("latency noisy, do not compare it: p90 is 200 %" in n for n in notes([typed]))
    base = make_baseline({"target": "host", "rows": [row]})["rows"][0]
    assert "latency" not in base and any("too noisy when measured" in n for n in base["notes"])


class VirtualMachine:
    """A fake clock whose speed drops 3x for a stretch of calls: the load burst of a shared machine."""

    def __init__(self, busy_calls: range) -> None:
        self.now_ns, self.calls, self.trace, self.busy_calls = 0, 0, [], busy_calls

    def clock(self) -> int:
        return self.now_ns

    def model(self, name: str, cost_ms: float) -> FakeEmbedder:
        vm = self

        class Timed(FakeEmbedder):
            def run_once(self, x):
                vm.trace.append(name)
                vm.calls += 1
                vm.now_ns += int(cost_ms * 1e6 * (3 if vm.calls in vm.busy_calls else 1))

        return Timed()


def test_interleaved_rounds_order_and_counts():
    from devices.latency import interleaved_latency

    vm = VirtualMachine(busy_calls=range(0))
    out = interleaved_latency(
        [vm.model("a", 1), vm.model("b", 2)], warmup=2, runs=6, rounds=3, clock_ns=vm.clock
    )
    # warm-up 2 each, then per round: one untimed call + 6 / 3 = 2 timed, order rotated each round
    assert "".join(vm.trace) == "aabb" + "aaa" + "bbb" + "bbb" + "aaa" + "aaa" + "bbb"
    assert [o.stats.runs for o in out] == [6, 6] and [o.rounds for o in out] == [3, 3]
    assert out[0].round_p50 == [1.0, 1.0, 1.0] and out[1].stats.p50 == pytest.approx(2.0)


def test_a_load_burst_hits_every_interleaved_model_alike():
    """Sequential timing puts a burst in one model's row; interleaved rounds share it and keep the ratio."""
    from devices.latency import interleaved_latency, latency_conditions

    # 2 x 10 warm-up calls, then 5 rounds of 2 models x (1 + 20) calls (calls 21..230); the machine is
    # slow for calls 115..199: about half of each model's samples
    vm = VirtualMachine(busy_calls=range(115, 200))
    a, b = interleaved_latency(
        [vm.model("a", 1.0), vm.model("b", 2.0)], warmup=10, runs=100, rounds=5, clock_ns=vm.clock
    )
    assert b.stats.p50 / a.stats.p50 == pytest.approx(2.0)  # the true ratio
    assert max(a.round_p50) == 3.0 and max(b.round_p50) == 6.0  # the burst shows in the rounds...
    cond = latency_conditions(a.stats, None, None, cpu_count=2, round_p50=a.round_p50)
    assert not cond["trustworthy"] and cond["round_drift"] == pytest.approx(2.0)  # ...and is flagged
    assert "the rounds' medians differ by 200 %" in cond["reasons"][-1]

    vm = VirtualMachine(busy_calls=range(115, 200))  # the same burst, models timed one after the other
    seq_a = measure_latency(lambda: vm.model("a", 1.0).run_once(None), warmup=10, runs=100, clock_ns=vm.clock)
    seq_b = measure_latency(lambda: vm.model("b", 2.0).run_once(None), warmup=10, runs=100, clock_ns=vm.clock)
    assert seq_b.p50 / seq_a.p50 == pytest.approx(6.0)  # b's row ate the burst: 2x slower looks like 6x


def test_interleaved_rounds_time_exactly_the_runs_asked_for():
    from devices.latency import interleaved_latency

    vm = VirtualMachine(busy_calls=range(0))
    (one,) = interleaved_latency([vm.model("a", 1)], warmup=0, runs=7, rounds=5, clock_ns=vm.clock)
    assert one.stats.runs == 7 and len(vm.trace) == 7 + 5  # 2+2+1+1+1 timed, one untimed call per round


def test_a_time_budget_stops_new_rounds_and_says_how_many_fit():
    from devices.latency import interleaved_latency

    vm = VirtualMachine(busy_calls=range(0))  # each round: 2 models x (1 + 20) calls of 1 and 2 ms = 63 ms
    a, b = interleaved_latency(
        [vm.model("a", 1.0), vm.model("b", 2.0)],
        warmup=0,
        runs=100,
        rounds=5,
        budget_s=0.1,
        clock_ns=vm.clock,
    )
    assert a.rounds == b.rounds == 2 and a.stats.runs == 40  # round 3 would start after 126 ms > 100 ms
    (one,) = interleaved_latency([vm.model("a", 1.0)], runs=10, rounds=5, budget_s=0.0, clock_ns=vm.clock)
    assert one.rounds == 1 and one.stats.runs == 2  # at least one round, whatever the budget
