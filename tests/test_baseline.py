"""Baselines written from a run gate that same run green and a worse copy red."""

from __future__ import annotations

import argparse
import copy
import json

import pytest

from distill.atomic import write_json
from distill.errors import InputError
from pipeline.baseline import Tolerances, make_baseline
from pipeline.ci_cli import add_ci_commands, run_ci_command
from pipeline.gate import gate, load_json_file


def _row(name, target="host", **over):
    row = {
        "name": name,
        "role": "artifact",
        "format": "tflite",
        "precision": "fp32",
        "target": target,
        "measured_on": "host-cpu",
        "accuracy": 0.9,
        "accuracy_std": 0.03,
        "tar_at_far": {"0.01": 0.7, "0.001": None},
        "latency_ms": {"p50": 4.0, "p90": 5.0, "p99": 8.0},
        "size_bytes": 4_000_000,
    }
    row.update(over)
    return row


def run_results():
    return {
        "target": "android",
        "rows": [
            _row("student-pytorch-fp32", format="pytorch"),
            _row("student-tflite-fp32"),
            _row(
                "student-tflite-fp32",
                target="android",
                latency_ms=None,
                latency_note="not measured on device: no android device connected",
            ),
            _row(
                "student-tflite-int8",
                target="android",
                precision="int8",
                latency_ms=None,
                latency_estimate_ms=2.0,
            ),
        ],
    }


def _n_rules(res):
    """Independent count: drop rule per accuracy, per computable TAR, p50 where measured, size."""
    n = 0
    for r in res["rows"]:
        n += 1 + sum(v is not None for v in r["tar_at_far"].values()) + 1
        n += 1 if r.get("latency_ms") else 0
    return n


def test_baseline_from_a_run_gates_that_run_green(tmp_path):
    res = run_results()
    path = tmp_path / "baselines" / "android.json"
    write_json(path, make_baseline(res))
    base = load_json_file(path, "baseline")
    report = gate(res, base)
    assert report.passed, [r.message for r in report.failures]
    assert len(report.rules) == _n_rules(res) == 14
    assert not report.not_gated


def test_defaults_and_notes_for_what_is_not_gated():
    base = make_baseline(run_results())
    host = base["rows"][1]
    # accuracy: max(0.005, 0.5 x 0.03) allowed; latency +25 % on p50; size +5 %
    assert host["accuracy"] == {"reference": 0.9, "reference_std": 0.03, "use_std": 0.5, "max_drop": 0.005}
    assert host["latency"] == {
        "measured_on": "host-cpu",
        "reference_ms": {"p50": 4.0},
        "max_increase_pct": 25.0,
    }
    assert host["size"] == {"reference": 4_000_000, "max_bytes": 4_200_000}
    assert list(host["tar_at_far"]) == ["0.01"]
    assert any("TAR@FAR=0.001" in n for n in host["notes"])
    device = base["rows"][2]
    assert "latency" not in device and any("no android device" in n for n in device["notes"])
    estimated = base["rows"][3]
    assert "latency" not in estimated and any("estimates are not gated" in n for n in estimated["notes"])


@pytest.mark.parametrize(
    "change, metric, fails",
    [
        # allowed accuracy drop = max(0.005, 0.5 * 0.03) = 0.015
        (lambda r: r.update(accuracy=0.9 - 0.014), "accuracy", False),
        (lambda r: r.update(accuracy=0.9 - 0.016), "accuracy", True),
        (lambda r: r["tar_at_far"].update({"0.01": 0.7 - 0.019}), "TAR@FAR=0.01", False),
        (lambda r: r["tar_at_far"].update({"0.01": 0.7 - 0.021}), "TAR@FAR=0.01", True),
        (lambda r: r["latency_ms"].update(p50=4.0 * 1.24), "latency p50", False),
        (lambda r: r["latency_ms"].update(p50=4.0 * 1.26), "latency p50", True),
        (lambda r: r.update(size_bytes=4_199_999), "size", False),
        (lambda r: r.update(size_bytes=4_200_001), "size", True),
        (lambda r: r["tar_at_far"].update({"0.01": None}), "TAR@FAR=0.01", True),
        (lambda r: r.update(measured_on="pixel-8 (adb)"), "latency p50", True),
    ],
)
def test_perturbed_copy_is_red_only_beyond_the_tolerance(change, metric, fails):
    res = run_results()
    base = make_baseline(res)
    worse = copy.deepcopy(res)
    change(worse["rows"][1])
    report = gate(worse, base)
    assert report.passed is not fails
    if fails:
        assert metric in {r.metric for r in report.failures}
        assert {r.row for r in report.failures} == {"student-tflite-fp32 @ host (host-cpu)"}


def test_tolerances_are_applied():
    tol = Tolerances(
        accuracy_std_k=0, accuracy_floor=0.8, latency_percentiles=("p50", "p99"), size_max_increase_pct=0
    )
    row = make_baseline(run_results(), tol)["rows"][0]
    assert row["accuracy"] == {"reference": 0.9, "max_drop": 0.005, "floor": 0.8}
    assert row["latency"]["reference_ms"] == {"p50": 4.0, "p99": 8.0}
    assert row["size"]["max_bytes"] == 4_000_000
    no_lat = make_baseline(run_results(), Tolerances(latency=False))
    assert all("latency" not in r for r in no_lat["rows"])
    with pytest.raises(InputError):
        make_baseline(run_results(), Tolerances(latency_percentiles=("p42",)))
    with pytest.raises(InputError):
        make_baseline(run_results(), Tolerances(accuracy_floor=1.5))


def test_baseline_command_writes_a_reviewable_file(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(run_results()))
    out = tmp_path / "b" / "android.json"
    parser = argparse.ArgumentParser()
    add_ci_commands(parser.add_subparsers(dest="command", required=True))
    argv = ["baseline", "--results", str(tmp_path), "--out", str(out), "--latency-percentiles", "p50,p90"]
    argv += ["--accuracy-max-drop", "0.01", "--size-max-increase-pct", "10"]
    assert run_ci_command(parser.parse_args(argv)) == 0
    base = json.loads(out.read_text())
    assert base["target"] == "android" and len(base["rows"]) == 4
    assert base["rows"][0]["accuracy"]["max_drop"] == 0.01
    assert base["rows"][0]["size"]["max_bytes"] == 4_400_000
    assert base["rows"][0]["latency"]["reference_ms"] == {"p50": 4.0, "p90": 5.0}
    assert "review and commit" in capsys.readouterr().out
    assert gate(run_results(), base).passed


def test_pixel_floor_rule_only_for_rows_above_the_floor():
    from pipeline.baseline import make_baseline

    rows = [
        {"name": "good", "target": "host", "measured_on": "host-cpu", "val_set": "v", "accuracy": 0.9},
        {"name": "flat", "target": "host", "measured_on": "host-cpu", "val_set": "v", "accuracy": 0.6},
    ]
    b = make_baseline({"target": "host", "rows": rows, "floors": {"v": {"pixels": {"accuracy": 0.7}}}})
    good, flat = b["rows"]
    assert good["accuracy"]["above_pixel_floor"] is True
    assert "above_pixel_floor" not in flat["accuracy"]
    assert any("not above raw pixels (70.00 %)" in n for n in flat["notes"])


def test_baseline_records_its_verification_sets_and_binomial_allowance():
    from pipeline.baseline import make_baseline

    row = {"name": "s", "target": "host", "measured_on": "host-cpu", "val_set": "v", "accuracy": 0.8,
           "sets": {"v": {"pairs": 1200}}}  # fmt: skip
    ids = {"v": {"pairs": 1200, "sha256": "c" * 64}, "unused": {"pairs": 10, "sha256": "d" * 64}}
    b = make_baseline({"target": "host", "rows": [row], "val_sets": ids})
    assert b["val_sets"] == {"v": ids["v"]}
    assert b["rows"][0]["accuracy"]["pairs"] == 1200 and b["rows"][0]["accuracy"]["binomial_k"] == 2.0
