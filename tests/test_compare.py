"""compare: metric deltas per row, rows added/removed, config/stage/version differences."""

from __future__ import annotations

import json

import pytest

from distill.errors import InputError
from pipeline.compare import changes_json, compare_runs, format_compare


def _row(name, target="host", **over):
    row = {
        "name": name,
        "target": target,
        "measured_on": "host-cpu",
        "accuracy": 0.90,
        "accuracy_std": 0.02,
        "tar_at_far": {"0.01": 0.5},
        "latency_ms": {"p50": 10.0, "p90": 12.0, "p99": 20.0},
        "size_bytes": 1000,
        "sha256": "aa" * 32,
    }
    row.update(over)
    return row


def _run(root, rows, lr, key, torch_version, val_sets=None):
    root.mkdir()
    results = {"target": "host", "rows": rows, **({"val_sets": val_sets} if val_sets else {})}
    (root / "results.json").write_text(json.dumps(results))
    (root / "run.json").write_text(json.dumps({"config": {"distill": {"train": {"lr": lr, "seed": 0}}}}))
    stages = {"data": {"key": "d0", "versions": {"torch": torch_version}}, "distill": {"key": key}}
    (root / "manifest.json").write_text(json.dumps({"tool": "facekd", "stages": stages}))
    return root


@pytest.fixture
def runs(tmp_path):
    a = _run(tmp_path / "a", [_row("student-onnx-fp32"), _row("student-tflite-fp32")], 0.1, "k1", "2.13.0")
    b_rows = [
        _row(
            "student-onnx-fp32",
            accuracy=0.885,
            latency_ms={"p50": 11.0, "p90": 12.0, "p99": 20.0},
            size_bytes=1100,
        ),
        _row("student-tflite-int8", precision="int8"),
    ]
    b = _run(tmp_path / "b", b_rows, 0.05, "k2", "2.14.0")
    return a, b


def test_metric_by_metric(runs):
    changes = compare_runs(*runs)
    by = {(c.section, c.item, c.metric): c for c in changes}
    acc = by[("row", "student-onnx-fp32 @ host", "accuracy")]
    assert acc.status == "changed" and acc.delta == pytest.approx(-0.015)
    p50 = by[("row", "student-onnx-fp32 @ host", "latency p50")]
    assert p50.delta == pytest.approx(1.0) and p50.relative == pytest.approx(0.1)
    assert by[("row", "student-onnx-fp32 @ host", "latency p90")].status == "same"
    size = by[("row", "student-onnx-fp32 @ host", "size")]
    assert size.delta == 100 and size.relative == pytest.approx(0.1)
    assert by[("row", "student-onnx-fp32 @ host", "TAR@FAR=0.01")].status == "same"
    assert by[("row", "student-tflite-fp32 @ host", "row")].status == "removed"
    assert by[("row", "student-tflite-int8 @ host", "row")].status == "added"
    lr = by[("config", "distill.train.lr", "value")]
    assert (lr.a, lr.b, lr.status) == (0.1, 0.05, "changed")
    assert ("config", "distill.train.seed", "value") not in by  # equal settings are not listed
    assert by[("stage", "distill", "key")].status == "changed"
    assert ("stage", "data", "key") not in by
    assert (by[("version", "torch", "version")].a, by[("version", "torch", "version")].b) == (
        "2.13.0",
        "2.14.0",
    )


def test_format_and_json(runs):
    changes = compare_runs(*runs)
    text = format_compare(changes, "a", "b")
    line = next(ln for ln in text.splitlines() if "student-onnx-fp32 @ host" in ln and "accuracy " in ln)
    assert "90.00 %" in line and "88.50 %" in line and "-1.50 pts" in line
    assert "+1.000 ms (+10.0 %)" in text
    assert "row removed in B: student-tflite-fp32 @ host" in text
    assert "row added in B: student-tflite-int8 @ host" in text
    assert "distill.train.lr" in text
    data = json.loads(changes_json(changes))
    assert len(data) == len(changes) and {"section", "item", "metric", "a", "b", "status"} <= set(data[0])


def test_same_run_has_no_changes(runs):
    changes = compare_runs(runs[0], runs[0])
    assert all(c.status == "same" for c in changes)
    assert "0 of " in format_compare(changes)


def test_missing_results_is_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        compare_runs(tmp_path / "empty", tmp_path / "empty")


def test_rows_compared_pair_by_pair(tmp_path):
    """The same row in two runs: the pairs only one run decided right, and whether that is noise."""

    def row(wrong, accuracy):
        sets = {"v": {"pairs": 40, "wrong_pairs": wrong}}
        return _row("student-onnx-int8", val_set="v", sets=sets, accuracy=accuracy)

    # A wrong on 0-3; B wrong on 0, 10-17: A alone right on 10-17 (8), B alone right on 1-3 (3)
    val_sets = {"v": {"pairs": 40, "sha256": "ab" * 32}}
    a = _run(tmp_path / "a", [row([0, 1, 2, 3], 0.9)], 0.1, "k", "2.13.0", val_sets)
    b = _run(tmp_path / "b", [row([0, *range(10, 18)], 0.775)], 0.1, "k", "2.13.0", val_sets)
    by = {(c.item, c.metric): c for c in compare_runs(a, b)}
    paired = by[("student-onnx-int8 @ host", "pairs right in one run only")]
    assert (paired.a, paired.b, paired.status) == (8, 3, "changed")
    line = next(ln for ln in format_compare(list(by.values())).splitlines() if "one run only" in ln)
    assert "McNemar p = 0.23" in line  # 2 x P(Bin(11, 1/2) <= 3) = 2 x 232 / 2048 = 0.2266
    same = {(c.item, c.metric): c for c in compare_runs(a, a)}
    assert same[("student-onnx-int8 @ host", "pairs right in one run only")].status == "same"
    old = _run(tmp_path / "old", [_row("student-onnx-int8", val_set="v")], 0.1, "k", "2.13.0", val_sets)
    assert not any(c.metric == "pairs right in one run only" for c in compare_runs(a, old))
    other = {"v": {"pairs": 40, "sha256": "cd" * 32}}  # a regenerated set: same name and size, other pairs
    regenerated = _run(tmp_path / "c", [row([0, *range(10, 18)], 0.775)], 0.1, "k", "2.13.0", other)
    assert not any(c.metric == "pairs right in one run only" for c in compare_runs(a, regenerated))
