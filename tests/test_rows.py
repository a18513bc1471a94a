"""The one results-row type: JSON round trip, type checks with one-line errors, the latency summary."""

from __future__ import annotations

import json
import math

import pytest

from devices.latency import stats_from_samples
from devices.rows import RESULTS_SCHEMA, LatencySummary, ResultRow, pct, rows_from
from distill.errors import InputError

ROW = {
    "name": "student-tflite-int8",
    "format": "tflite",
    "precision": "int8",
    "target": "android",
    "stage": "qat",
    "role": "artifact",
    "path": "/run/export/student_int8.tflite",
    "size_bytes": 1234567,
    "sha256": "ab" * 32,
    "parity": {"passed": True, "cos_min": 0.995},
    "measured_on": "pixel-8 (adb)",
    "accuracy_measured_on": "host-cpu",
    "val_set": "synth_val",
    "accuracy": 0.8525,
    "accuracy_std": 0.02,
    "tar_at_far": {"0.01": 0.61, "0.001": None},
    "sets": {"synth_val": {"accuracy": 0.8525, "pairs": 1200}},
    "latency_ms": {"p50": 4.2, "p90": 4.9, "p95": 5.0, "mean": 4.4},
    "latency_settings": {"runs": 100, "tool": "benchmark_model"},
    "latency_conditions": None,
    "latency_note": None,
    "latency_estimate_ms": None,
    "latency_estimate": None,
    "notes": ["accuracy from host-cpu, same file: the phone has no Python"],
    "raw_logs": ["device_logs/benchmark.txt"],  # a runner's own facts: kept as they are
    "device": {"model": "Pixel 8", "android": "15"},
}


def test_json_round_trip_keeps_every_field_and_the_runner_facts():
    row = ResultRow.from_dict(json.loads(json.dumps(ROW)))
    assert row.latency_ms == LatencySummary(p50=4.2, p90=4.9, p95=5.0, mean=4.4)
    assert row.details == {"raw_logs": ["device_logs/benchmark.txt"], "device": ROW["device"]}
    assert row.to_dict() == ROW
    assert ResultRow.from_dict(row.to_dict()) == row
    assert row.label() == "student-tflite-int8 @ android"
    assert row.label(place=True) == "student-tflite-int8 @ android (pixel-8 (adb))"
    assert row.model == "student" and row.set_metrics()["pairs"] == 1200 and row.trustworthy_latency


def test_nan_is_kept_for_the_gate_to_judge_but_wrong_types_are_refused_in_one_line():
    assert math.isnan(ResultRow.from_dict({**ROW, "accuracy": float("nan")}).accuracy)
    for key, bad, why in (
        ("accuracy", "85 %", "rows[0].accuracy must be a number or null, got str"),
        ("tar_at_far", [0.6], "rows[0].tar_at_far must be an object or null, got list"),
        ("measured_on", 3, "rows[0].measured_on must be a string or null, got int"),
        ("latency_ms", 4.2, "rows[0].latency_ms must be an object or null, got float"),
        ("name", "", "rows[0] has no 'name' string"),
    ):
        with pytest.raises(InputError) as err:
            rows_from({"target": "android", "rows": [{**ROW, key: bad}]}, "results")
        assert str(err.value) == f"results: {why}" and "\n" not in str(err.value)
    with pytest.raises(InputError, match="latency_ms.p50 must be a number or null"):
        ResultRow.from_dict({**ROW, "latency_ms": {"p50": "fast"}})
    with pytest.raises(InputError, match="not a facekd results file"):
        rows_from({"schema": "something/1", "rows": []})
    assert rows_from({"schema": RESULTS_SCHEMA, "rows": []}) == []


def test_latency_summary_from_stats_rounds_and_drops_what_was_not_measured():
    stats = stats_from_samples([1.0, 2.0, 3.0, 4.0], threads=2)  # p50 2.5 by linear interpolation
    summary = LatencySummary.from_stats(stats)
    assert summary.p50 == 2.5 and summary.p95 is None and summary.min == 1.0 and summary.max == 4.0
    assert "p95" not in summary.to_dict() and summary.to_dict()["mean"] == 2.5


def test_pct_formats_fractions_and_refuses_non_numbers():
    assert pct(0.85254) == "85.25" and pct(0.5, " %") == "50.00 %"
    assert pct(None) == "-" and pct(float("nan")) == "-" and pct(True) == "-"


def test_artifact_stage_names_the_model_stage_two_shipped():
    from devices.rows import artifact_stage

    assert artifact_stage({"source": "distill", "source_file": "student.pt"}) == "distill"
    assert artifact_stage({"source": "qat", "source_file": "qat.pt"}) == "qat"
    assert artifact_stage({"source": "qat", "source_file": "ptq.pt"}) == "ptq"  # PTQ won on the dev set
    assert artifact_stage({"source": "qat"}) == "qat"  # an artifacts.json from before source_file
    assert artifact_stage({}) == "distill"
