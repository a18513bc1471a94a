"""The CI gate on crafted results: every kind of regression, missing/incomparable metrics, bad files.

Expected limits are computed by hand in each test (not taken from the gate's output).
"""

from __future__ import annotations

import argparse
import copy
import json
import xml.etree.ElementTree as ET

import pytest

from distill.errors import InputError
from pipeline.ci_cli import add_ci_commands, run_ci_command
from pipeline.gate import exit_code, format_table, gate, junit_xml, load_json_file, markdown_summary


def result_row(name="student-onnx-fp32", target="host", measured_on="host-cpu", **over):
    row = {
        "name": name,
        "role": "artifact",
        "format": "onnx",
        "precision": "fp32",
        "target": target,
        "measured_on": measured_on,
        "val_set": "v",
        "accuracy": 0.90,
        "accuracy_std": 0.02,
        "tar_at_far": {"0.01": 0.60, "0.001": 0.40},
        "sets": {"v": {"tar_not_computable": []}},
        "latency_ms": {"p50": 10.0, "p90": 12.0, "p99": 15.0},
        "size_bytes": 1000,
    }
    row.update(over)
    return row


def base_row(name="student-onnx-fp32", target="host", measured_on="host-cpu"):
    """Written by hand (not by make_baseline): 7 rules."""
    return {
        "name": name,
        "target": target,
        "measured_on": measured_on,
        # allowed drop = max(0.005, 0.5 * 0.02) = 0.01  ->  accuracy >= 0.89; floor 0.85
        "accuracy": {
            "reference": 0.90,
            "reference_std": 0.02,
            "max_drop": 0.005,
            "use_std": 0.5,
            "floor": 0.85,
        },
        # TAR@0.01 >= 0.58 ; TAR@0.001 >= 0.30
        "tar_at_far": {"0.01": {"reference": 0.60, "max_drop": 0.02}, "0.001": {"floor": 0.30}},
        # p50 <= 12.5 ms, p90 <= 15 ms
        "latency": {
            "measured_on": measured_on,
            "reference_ms": {"p50": 10.0, "p90": 12.0},
            "max_increase_pct": 25,
        },
        "size": {"reference": 1000, "max_bytes": 1050},
    }


N_RULES = 7  # accuracy floor + drop, TAR 0.01 drop, TAR 0.001 floor, latency p50 + p90, size


def results(*rows, target="host"):
    return {"target": target, "rows": list(rows)}


def baseline(*rows, target="host"):
    return {"tool": "facekd", "kind": "baseline", "version": 1, "target": target, "rows": list(rows)}


def failed(report):
    return {(r.metric, r.name.rsplit(" ", 1)[-1]): r for r in report.failures}


def test_identical_results_pass_every_rule():
    report = gate(results(result_row()), baseline(base_row()))
    assert len(report.rules) == N_RULES
    assert report.passed and exit_code(report) == 0
    assert "gate passed: 7 of 7" in format_table(report)


@pytest.mark.parametrize(
    "accuracy, ok",
    [(0.8905, True), (0.8895, False), (0.95, True)],
)
def test_accuracy_drop_uses_the_fold_std(accuracy, ok):
    report = gate(results(result_row(accuracy=accuracy)), baseline(base_row()))
    assert report.passed is ok
    if not ok:
        (fail,) = report.failures
        assert fail.metric == "accuracy" and fail.kind == "regression"
        # 0.90 - 0.8895 = 1.05 pts dropped, 1.00 allowed; the message names artifact and target
        assert "1.05 pts" in fail.message and "1.00 pts" in fail.message
        assert "student-onnx-fp32 @ host" in fail.message
        assert exit_code(report) == 1


def test_accuracy_drop_without_std_is_the_plain_max_drop():
    b = base_row()
    b["accuracy"]["use_std"] = 0  # allowed drop 0.005 -> accuracy >= 0.895
    assert gate(results(result_row(accuracy=0.8955)), baseline(b)).passed
    report = gate(results(result_row(accuracy=0.8945)), baseline(b))
    assert set(failed(report)) == {("accuracy", "drop")}


def test_accuracy_floor():
    b = base_row()
    del b["accuracy"]["max_drop"], b["accuracy"]["use_std"]
    report = gate(results(result_row(accuracy=0.849)), baseline(b))
    assert set(failed(report)) == {("accuracy", "floor")}
    assert "below the floor 85.00 %" in report.failures[0].message


def test_tar_regression_and_floor():
    report = gate(results(result_row(tar_at_far={"0.01": 0.575, "0.001": 0.29})), baseline(base_row()))
    assert set(failed(report)) == {("TAR@FAR=0.01", "drop"), ("TAR@FAR=0.001", "floor")}
    assert gate(results(result_row(tar_at_far={"0.01": 0.585, "0.001": 0.31})), baseline(base_row())).passed


def test_tar_not_computable_is_a_failure_with_the_reason():
    reason = "TAR@FAR=0.001: too few negative pairs (600; need at least 1000 = 1/far)"
    row = result_row(tar_at_far={"0.01": 0.60, "0.001": None}, sets={"v": {"tar_not_computable": [reason]}})
    report = gate(results(row), baseline(base_row()))
    (fail,) = report.failures
    assert fail.metric == "TAR@FAR=0.001" and fail.kind == "not_computable"
    assert "too few negative pairs" in fail.message


def test_latency_regression_on_the_same_device():
    assert gate(results(result_row(latency_ms={"p50": 12.4, "p90": 14.9})), baseline(base_row())).passed
    report = gate(results(result_row(latency_ms={"p50": 12.6, "p90": 12.0})), baseline(base_row()))
    (fail,) = report.failures
    assert fail.metric == "latency p50" and fail.kind == "regression"
    assert "rose 26.0 %" in fail.message and "+25 %" in fail.message


def test_latency_measured_elsewhere_fails_and_says_where():
    row = result_row(measured_on="jetson-orin-nano (ssh)", latency_ms={"p50": 1.0, "p90": 1.0})
    report = gate(results(row), baseline(base_row()))
    kinds = {(r.metric, r.kind) for r in report.failures}
    assert ("latency p50", "measured_elsewhere") in kinds and ("latency p90", "measured_elsewhere") in kinds
    assert ("accuracy", "measured_elsewhere") in kinds  # accuracy on another device is not comparable either
    size = next(r for r in report.rules if r.metric == "size")
    assert size.passed  # the file's size does not depend on where it ran
    msg = next(r.message for r in report.failures if r.metric == "latency p50")
    assert "jetson-orin-nano (ssh)" in msg and "host-cpu" in msg
    assert len(report.failures) == N_RULES - 1


def test_latency_missing_or_only_estimated_fails():
    row = result_row(latency_ms=None, latency_note="not measured on device: no jetson device connected")
    report = gate(results(row), baseline(base_row()))
    assert {r.metric for r in report.failures} == {"latency p50", "latency p90"}
    assert all(r.kind == "missing" and "no jetson device" in r.message for r in report.failures)
    row = result_row(latency_ms=None, latency_estimate_ms=9.0)
    report = gate(results(row), baseline(base_row()))
    assert len(report.failures) == 2 and all("estimate" in r.message for r in report.failures)


def test_size_regression():
    assert gate(results(result_row(size_bytes=1050)), baseline(base_row())).passed
    report = gate(results(result_row(size_bytes=1051)), baseline(base_row()))
    (fail,) = report.failures
    assert fail.metric == "size" and "1051" in fail.message and "+5.1 %" in fail.message


@pytest.mark.parametrize("how", ["absent", "null", "nan"])
def test_missing_accuracy_is_a_failure(how):
    row = result_row()
    if how == "absent":
        del row["accuracy"]
    else:
        row["accuracy"] = None if how == "null" else float("nan")
    report = gate(results(row), baseline(base_row()))
    assert set(failed(report)) == {("accuracy", "floor"), ("accuracy", "drop")}
    assert all(r.kind == "missing" and r.actual == "missing" for r in report.failures)


def test_missing_row_fails_every_rule_and_unknown_rows_are_listed():
    other = result_row(name="student-tflite-fp32")
    report = gate(results(other), baseline(base_row()))
    assert len(report.failures) == N_RULES
    assert all(r.kind == "row_missing" for r in report.failures)
    assert report.not_gated == ["student-tflite-fp32 @ host (host-cpu)"]
    # a row with rules for a different target is another row
    report = gate(results(result_row(target="jetson")), baseline(base_row()))
    assert len(report.failures) == N_RULES


def test_row_without_rules_must_still_be_present():
    bare = {"name": "student-tflite-fp32", "target": "host", "measured_on": "host-cpu"}
    report = gate(results(result_row()), baseline(base_row(), bare))
    (fail,) = report.failures
    assert fail.kind == "row_missing" and "student-tflite-fp32" in fail.message


def test_same_artifact_two_targets_matched_separately():
    rows = [result_row(), result_row(target="jetson", accuracy=0.5)]
    b = base_row(target="jetson")
    report = gate(results(*rows), baseline(b))
    assert {r.row for r in report.failures} == {"student-onnx-fp32 @ jetson (host-cpu)"}


def test_junit_has_one_testcase_per_rule_and_failure_elements():
    row = result_row(accuracy=0.80, size_bytes=2000, latency_ms=None)
    report = gate(results(row), baseline(base_row()))
    root = ET.fromstring(junit_xml(report))
    cases = root.findall(".//testcase")
    assert len(cases) == N_RULES
    assert len({c.get("name") for c in cases}) == N_RULES  # unique test-case names
    fails = root.findall(".//testcase/failure")
    # accuracy floor + drop, latency p50 + p90 (missing), size
    assert len(fails) == 5
    suite = root.find("testsuite")
    assert suite.get("tests") == "7" and suite.get("failures") == "5"
    messages = " ".join(f.get("message") for f in fails)
    assert "accuracy dropped 10.00 pts" in messages and "latency not measured" in messages


def test_markdown_summary_lists_failures():
    report = gate(results(result_row(size_bytes=2000)), baseline(base_row()))
    md = markdown_summary(report)
    assert md.startswith("### ❌") and "1 of 7 rules failed" in md
    assert "| student-onnx-fp32 @ host (host-cpu) | size |" in md
    ok = markdown_summary(gate(results(result_row()), baseline(base_row())))
    assert ok.startswith("### ✅")


def _bad_baselines():
    b = baseline(base_row())
    cases = {}
    x = copy.deepcopy(b)
    x["rows"][0]["acuracy"] = x["rows"][0].pop("accuracy")
    cases["typo in a rule name"] = x
    x = copy.deepcopy(b)
    x["rows"][0]["accuracy"]["max-drop"] = 0.01
    cases["typo in a rule key"] = x
    x = copy.deepcopy(b)
    x["rows"][0]["accuracy"]["max_drop"] = -0.1
    cases["negative drop"] = x
    x = copy.deepcopy(b)
    x["rows"][0]["tar_at_far"]["0.01"]["max_drop"] = "2%"
    cases["string tolerance"] = x
    x = copy.deepcopy(b)
    del x["rows"][0]["tar_at_far"]["0.01"]["reference"]
    cases["drop without reference"] = x
    x = copy.deepcopy(b)
    x["rows"][0]["latency"]["reference_ms"] = {"p42": 1.0}
    cases["unknown percentile"] = x
    x = copy.deepcopy(b)
    del x["rows"][0]["latency"]["measured_on"]
    cases["latency without measured_on"] = x
    x = copy.deepcopy(b)
    x["rows"] = []
    cases["no rows"] = x
    x = copy.deepcopy(b)
    x["rows"].append(copy.deepcopy(x["rows"][0]))
    cases["duplicate row"] = x
    cases["target mismatch"] = baseline(base_row(), target="jetson")
    cases["not an object"] = [1, 2]
    return cases


@pytest.mark.parametrize("case", list(_bad_baselines()))
def test_malformed_baseline_is_input_error(case):
    with pytest.raises(InputError):
        gate(results(result_row()), _bad_baselines()[case])


@pytest.mark.parametrize(
    "bad",
    [{"target": "host"}, {"target": "host", "rows": [{"target": "host"}]}, {"rows": []}, "text"],
)
def test_malformed_results_is_input_error(bad):
    with pytest.raises(InputError):
        gate(bad, baseline(base_row()))


def test_unreadable_files_are_input_errors(tmp_path):
    (tmp_path / "broken.json").write_text('{"rows": [')
    with pytest.raises(InputError, match="broken.json: not valid JSON"):
        load_json_file(tmp_path / "broken.json", "baseline")
    with pytest.raises(InputError, match="not found"):
        load_json_file(tmp_path / "absent.json", "baseline")
    with pytest.raises(InputError, match="no results.json"):
        load_json_file(tmp_path, "results")


def _cli(argv):
    parser = argparse.ArgumentParser()
    add_ci_commands(parser.add_subparsers(dest="command", required=True))
    return run_ci_command(parser.parse_args(argv))


def test_gate_command_exit_codes_and_outputs(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results(result_row())))
    (tmp_path / "b.json").write_text(json.dumps(baseline(base_row())))
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    argv = ["gate", "--results", str(run), "--baseline", str(tmp_path / "b.json")]
    argv += ["--junit", str(tmp_path / "out" / "gate.xml"), "--markdown", str(tmp_path / "out" / "gate.md")]
    assert _cli(argv) == 0
    assert "gate passed" in capsys.readouterr().out
    assert len(ET.parse(tmp_path / "out" / "gate.xml").getroot().findall(".//testcase")) == N_RULES
    assert (tmp_path / "out" / "gate.md").read_text().startswith("### ✅")
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "### ✅" in text  # appended, not replaced

    (run / "results.json").write_text(json.dumps(results(result_row(accuracy=0.5))))
    assert _cli(argv) == 1
    out = capsys.readouterr().out
    assert "FAIL student-onnx-fp32 @ host (host-cpu): accuracy dropped 40.00 pts" in out

    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(InputError):
        _cli(argv)
    assert _cli(["compare", str(run), str(run)]) == 0
    assert run_ci_command(argparse.Namespace(command="distill")) is None


def test_gate_refuses_an_artifact_changed_after_measurement(tmp_path):
    """A file swapped after measure must not be gated on the old numbers (issue: measure and gate refuse)."""
    import hashlib

    artifact = tmp_path / "student_fp32.onnx"
    artifact.write_bytes(b"the measured model")
    row = result_row()
    row.update(path=str(artifact), sha256=hashlib.sha256(b"the measured model").hexdigest())
    (tmp_path / "results.json").write_text(json.dumps(results(row)))
    (tmp_path / "b.json").write_text(json.dumps(baseline(base_row())))
    argv = ["gate", "--results", str(tmp_path / "results.json"), "--baseline", str(tmp_path / "b.json")]
    assert _cli(argv) == 0
    artifact.write_bytes(b"another model")
    with pytest.raises(InputError, match="student_fp32.onnx: sha256 does not match results.json"):
        _cli(argv)
    artifact.unlink()  # results copied to another machine: gated on the numbers alone
    assert _cli(argv) == 0


def test_pixel_floor_rule_fails_a_model_no_better_than_raw_pixels():
    base = base_row()
    base["accuracy"]["above_pixel_floor"] = True
    res = results(result_row(accuracy=0.895))
    res["floors"] = {"v": {"pixels": {"accuracy": 0.80}, "teacher": 0.95}}
    ok = gate(res, baseline(base))
    assert ok.passed and len(ok.rules) == N_RULES + 1
    rule = next(r for r in ok.rules if r.name.endswith("pixel_floor"))
    assert rule.expected == "> 80.00 %" and rule.actual == "89.50 %"
    res["floors"]["v"]["pixels"]["accuracy"] = 0.895  # level with the pixels is not above them
    bad = failed(gate(res, baseline(base)))
    assert set(bad) == {("accuracy", "pixel_floor")}
    msg = bad[("accuracy", "pixel_floor")].message
    assert "not above raw pixels compared by cosine (89.50 % on v)" in msg
    del res["floors"]  # results without floors cannot pass a floor rule silently
    assert "no pixel floor" in failed(gate(res, baseline(base)))[("accuracy", "pixel_floor")].message


def test_a_run_on_another_verification_set_is_not_comparable():
    base = baseline(base_row())
    base["val_sets"] = {"v": {"pairs": 40, "sha256": "a" * 64}}
    res = results(result_row())
    res["val_sets"] = {"v": {"pairs": 1200, "sha256": "b" * 64}}
    with pytest.raises(InputError, match=r"baseline was made on 'v' with 40 pairs .* with 1200 pairs"):
        gate(res, base)
    res["val_sets"] = {"lfw": {"pairs": 40, "sha256": "a" * 64}}
    with pytest.raises(InputError, match="which the results do not have \\(they have: lfw\\)"):
        gate(res, base)
    res["val_sets"] = {"v": {"pairs": 40, "sha256": "a" * 64}}
    report = gate(res, base)
    assert report.passed and not report.notes
    old = gate(res, baseline(base_row()))  # a baseline without val_sets still gates, with a warning
    assert old.passed and "does not record its verification sets" in old.notes[0]
    assert "note: the baseline does not record" in format_table(old)


def test_binomial_allowance_follows_the_pair_count():
    base = base_row()
    base["accuracy"].update(pairs=40, binomial_k=2.0)  # 2 x sqrt(0.9 x 0.1 / 40) = 9.49 pts
    report = gate(results(result_row(accuracy=0.806)), baseline(base))
    drop = next(r for r in report.rules if r.metric == "accuracy" and r.name.endswith("drop"))
    assert drop.passed and drop.rule.startswith("drop <= 9.49 pts from 90.00 %")
    assert "2 x binomial sd 4.74 on 40 pairs" in drop.rule
    assert not gate(results(result_row(accuracy=0.80)), baseline(base)).passed
    base["accuracy"]["pairs"] = 0
    with pytest.raises(InputError, match="'binomial_k' needs 'reference' and 'pairs'"):
        gate(results(result_row()), baseline(base))


def test_an_artifact_that_breaks_its_contract_fails_the_gate():
    """measure stores `pipeline check`'s findings in the row; a violation is a gate failure of its own."""
    ok = {"passed": True, "target": "host", "runtime": "onnxruntime", "findings": [
        {"check": "batch", "severity": "ok", "message": "dynamic: batch 1 and 2 agree"}]}  # fmt: skip
    report = gate(results(result_row(contract=ok)), baseline(base_row()))
    assert report.passed and len(report.rules) == N_RULES + 1
    broken = copy.deepcopy(ok)
    broken["passed"] = False
    broken["findings"].append(
        {"check": "precision", "severity": "violation", "message": "fp16 weights in a file promised fp32"}
    )
    report = gate(results(result_row(contract=broken)), baseline(base_row()))
    (fail,) = report.failures
    assert fail.metric == "contract" and fail.kind == "contract" and exit_code(report) == 1
    assert "precision: fp16 weights in a file promised fp32" in fail.message
    assert "student-onnx-fp32 @ host" in fail.message
    # a row without a contract (PyTorch rows, results from before) gets no contract rule
    assert len(gate(results(result_row()), baseline(base_row())).rules) == N_RULES
