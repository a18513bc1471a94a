"""The one command per device target, tiny preset with stage two: Jetson (ONNX) and Android (TFLite).

The quick run of CI is the Jetson test's: the same preset and config (``.ci/quick.yaml``), gated against the
committed baseline (``baselines/ci-quick-jetson.json``); a regression in our own code fails it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from distill.errors import InputError
from pipeline.cli import main
from pipeline.runfolder import sha256_file
from tests.helpers.threads import torch_threads

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
QUICK_CONFIG = REPO / ".ci" / "quick.yaml"  # the tiny preset with QAT switched on
QUICK_BASELINE = REPO / "baselines" / "ci-quick-jetson.json"


@pytest.fixture(scope="module")
def qat_stages(tmp_path_factory) -> tuple[Path, Path]:
    """Stages one and two of the tiny preset with QAT, run once: the Jetson and Android tests copy them.

    Nothing before export depends on the target, so each target's run starts from the same run folder and
    must find data, teacher, cache, distill and qat current (asserted there).
    """
    out = tmp_path_factory.mktemp("qat-stages") / "run"
    args = ["qat", "--preset", "tiny", "--config", str(QUICK_CONFIG), "--out", str(out), "--no-progress"]
    with torch_threads():  # trained as CI's baseline was (the INT8 parity margin depends on it)
        assert main(args) == 0
    return QUICK_CONFIG, out


def _ship_from_copy(qat_stages: tuple[Path, Path], out: Path, target: str, capsys) -> None:
    """Copy the shared stage-two run folder to ``out`` and run the whole pipeline for ``target`` there."""
    cfg, base = qat_stages
    shutil.copytree(base, out)
    capsys.readouterr()
    args = ["all", "--preset", "tiny", "--config", str(cfg), "--target", target, "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    log = capsys.readouterr().out
    for stage in ("data", "teacher", "cache", "distill", "qat"):  # target-independent: reused as they are
        assert f"[{stage}] up to date, skipped" in log, stage


def test_jetson_target_with_qat_labels_device_rows_not_measured(qat_stages, tmp_path, capsys):
    from deploy.model_card import read_metadata

    out = tmp_path / "jetson"
    _ship_from_copy(qat_stages, out, "jetson", capsys)
    # CI's quick run: gated against the committed baseline before anything below edits the run folder
    gate_dir = Path(os.environ.get("FACEKD_GATE_OUT") or tmp_path / "gate")
    gate = ["gate", "--results", str(out / "results.json"), "--baseline", str(QUICK_BASELINE)]
    gate += ["--junit", str(gate_dir / "gate.xml"), "--markdown", str(gate_dir / "gate.md")]
    code = main([*gate, "--no-step-summary"])
    assert code == 0, capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())["rows"]
    device = [r for r in rows if r["target"] == "jetson"]
    assert device and all(r["format"] == "onnx" for r in device)
    for r in device:  # no Jetson connected: host accuracy, no latency, a labelled roofline estimate
        assert r["latency_ms"] is None and r["measured_on"] == "host-cpu"
        assert r["latency_note"].startswith("not measured: no jetson-orin-nano connected")
        assert r["latency_estimate_ms"] > 0 and "estimated" in r["latency_note"]
    assert not any(r["format"] == "tflite" for r in rows)
    assert {r["precision"] for r in device} == {"fp32", "fp16", "int8"}
    estimates = {r["precision"]: r["latency_estimate_ms"] for r in device}
    assert estimates["int8"] < estimates["fp16"] < estimates["fp32"]  # Orin's INT8 > FP16 > FP32 peaks
    errors = json.loads((out / "results.json").read_text())["estimator_error_on_host"]
    assert {e["model"] for e in errors} == {"teacher", "student"}
    assert all(e["measured_ms"] > 0 and e["estimated_ms"] > 0 for e in errors)
    # stage two: the PTQ baseline and the QAT model are measured (accuracy only) beside the artifacts
    fake_quant = {r["stage"]: r for r in rows if r["format"] == "pytorch" and r["precision"] == "int8"}
    assert set(fake_quant) == {"ptq", "qat"}
    assert all(r["accuracy"] is not None and r["latency_ms"] is None for r in fake_quant.values())
    # computed once, by the QAT stage, for these very files (it leaves the fp32 student to distill's)
    saved = json.loads((out / "qat" / "evaluation.json").read_text())
    assert set(saved["models"]) == {"ptq", "qat"}
    for stage, r in fake_quant.items():
        assert r["accuracy"] == saved["models"][stage]["accuracy"]
        assert saved["sha256"][stage] == sha256_file(out / "qat" / f"{stage}.pt")
        assert r["accuracy_via"].startswith("the qat stage's evaluation of this file (sha256 checked)")
        assert "through its INT8 Q/DQ ONNX on onnxruntime" in r["accuracy_via"]  # on a CPU
    # stage two chose what ships on the dev set (never the val set), and said so in the report
    record = json.loads((out / "qat" / "qat.json").read_text())
    shipped, selection = record["shipped"], record["selection"]
    assert selection["sets"] == ["synth_dev"] and set(selection["dev_accuracy"]) == {"ptq", "qat"}
    dev = selection["dev_accuracy"]
    assert shipped == ("qat" if dev["qat"] >= dev["ptq"] else "ptq")
    assert f"INT8 artifacts exported from {shipped}.pt" in (out / "report.md").read_text()
    # the shipped INT8 ONNX computes exactly what stage two evaluated: its accuracy is taken, not recomputed
    int8 = [r for r in rows if r["format"] == "onnx" and r["precision"] == "int8"]
    assert len(int8) == 2 and all(r["accuracy"] == fake_quant[shipped]["accuracy"] for r in int8)
    assert all(r["stage"] == shipped for r in int8)  # the model the file holds, whichever won
    # QAT against PTQ pair by pair, from the wrong pairs stage two's evaluations kept
    assert all(len(r["sets"]["synth_val"]["wrong_pairs"]) > 0 for r in fake_quant.values())
    assert "QAT − PTQ: " in (out / "report.md").read_text()
    assert all(r["accuracy_via"].startswith(f"the qat stage's evaluation of {shipped}.pt") for r in int8)
    export = out / "export"
    artifacts = json.loads((export / "artifacts.json").read_text())["artifacts"]
    for a in artifacts:  # every Jetson ONNX comes with the script that builds its engine on the device
        script = export / a["companions"][0]
        assert script.suffix == ".sh" and "trtexec" in script.read_text()
        assert a["parity"]["passed"] and a["sha256"] == sha256_file(export / a["file"])
        assert a["versions"]["torch"].startswith("2.13")
        card = json.loads((export / a["companions"][1]).read_text())  # and its card, inside the file too
        assert (
            card["file"] == a["file"]
            and card["sha256"] == a["sha256"]
            and card["precision"] == a["precision"]
        )
        assert read_metadata(export / a["file"]) == {k: v for k, v in card.items() if k != "sha256"}
        assert card["thresholds"]["at_far"] and card["input"]["shape"][1:] == [3, 112, 112]
        assert a["companions"][2] == a["file"] + ".golden.json"  # and its golden vectors, which it matches
        assert main(["verify", "--model", str(export / a["file"])]) == 0
    int8 = next(a for a in artifacts if a["precision"] == "int8")
    assert int8["source"] == "qat" and int8["details"]["qdq_lint"] == "passed"
    assert all(r["contract"]["passed"] for r in rows if r["format"] == "onnx")  # the Q/DQ file included
    assert "fake-quant" in int8["parity"]["reference"]
    assert int8["source_checkpoint"] == sha256_file(out / "qat" / f"{shipped}.pt")
    assert int8["source_file"] == f"{shipped}.pt"
    assert "student_int8.onnx" in (export / int8["companions"][0]).read_text()
    # a same-size edit of a shipped file is seen (outputs are checked by content), so the export stage runs
    # again and ships what it builds; measure itself also refuses a file that does not match artifacts.json
    onnx = export / "student_fp32.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["measure", "--out", str(out), "--force", "--no-progress"]) == 0
    assert "[export] running" in capsys.readouterr().out
    listed = json.loads((export / "artifacts.json").read_text())["artifacts"]
    assert next(a["sha256"] for a in listed if a["file"] == onnx.name) == sha256_file(onnx)
    from pipeline.stages import _verify_artifact_hashes

    onnx.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 0x0F]))
    with pytest.raises(InputError, match="student_fp32.onnx: sha256 does not match artifacts.json"):
        _verify_artifact_hashes(export, listed)


def test_when_ptq_wins_on_the_dev_set_export_ships_ptq_pt(qat_stages, tmp_path, capsys, monkeypatch):
    """The other branch of stage two's choice (the tiny run's dev set decides one way): export then turns
    ptq.pt, not qat.pt, into the INT8 ONNX, checks it against ptq.pt and records ptq.pt's hash."""
    import compress.qat

    cfg, base = qat_stages
    out = tmp_path / "ptq-wins"
    shutil.copytree(base, out)
    monkeypatch.setattr(
        compress.qat, "choose_on_dev", lambda *a, **k: ("ptq", {"rule": "best_on_dev", "why": "test"})
    )
    common = ["--preset", "tiny", "--config", str(cfg), "--out", str(out), "--no-progress"]
    assert main(["qat", "--force", *common]) == 0
    assert "[qat] INT8 model for export: ptq.pt (test)" in capsys.readouterr().out
    assert main(["export", "--target", "jetson", *common]) == 0
    artifacts = json.loads((out / "export" / "artifacts.json").read_text())["artifacts"]
    int8 = next(a for a in artifacts if a["precision"] == "int8")
    assert (
        int8["source_checkpoint"]
        == sha256_file(out / "qat" / "ptq.pt")
        != sha256_file(out / "qat" / "qat.pt")
    )
    assert int8["parity"]["passed"] and "fake-quant" in int8["parity"]["reference"]
    assert int8["source_file"] == "ptq.pt" and all(
        a["source_file"] == "student.pt" for a in artifacts if a["precision"] != "int8"
    )


def test_qat_keep_ptq_trains_nothing_and_the_run_ships_ptq_pt(qat_stages, tmp_path, capsys):
    """``qat.keep: ptq``: stage two calibrates and evaluates the PTQ model, trains no QAT model, and every
    later stage (export, measure, report) works from ptq.pt alone."""
    _, base = qat_stages
    out = tmp_path / "ptq-only"
    shutil.copytree(base, out)
    cfg = tmp_path / "ptq-only.yaml"
    cfg.write_text(QUICK_CONFIG.read_text() + "  keep: ptq\n")
    capsys.readouterr()
    args = ["all", "--preset", "tiny", "--config", str(cfg), "--target", "jetson", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    log = capsys.readouterr().out
    assert (
        "[distill] up to date, skipped" in log and "[qat] INT8 model for export: ptq.pt (qat.keep: ptq" in log
    )
    qat = out / "qat"
    assert (
        (qat / "ptq.pt").is_file() and not (qat / "qat.pt").exists() and not (qat / "history.json").exists()
    )
    record = json.loads((qat / "qat.json").read_text())
    assert record["shipped"] == "ptq" and record["steps"] == 0 and "qat" not in record
    assert set(json.loads((qat / "evaluation.json").read_text())["models"]) == {"ptq"}
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["role"] for r in rows if r["format"] == "pytorch" and r["precision"] == "int8"] == [
        "student-ptq"
    ]
    ptq_row = next(r for r in rows if r["role"] == "student-ptq")
    int8 = [r for r in rows if r["format"] == "onnx" and r["precision"] == "int8"]
    assert int8 and all(r["stage"] == "ptq" and r["accuracy"] == ptq_row["accuracy"] for r in int8)
    artifacts = json.loads((out / "export" / "artifacts.json").read_text())["artifacts"]
    onnx8 = next(a for a in artifacts if a["precision"] == "int8")
    assert onnx8["source_file"] == "ptq.pt" and onnx8["source_checkpoint"] == sha256_file(qat / "ptq.pt")
    report = (out / "report.md").read_text()
    assert "INT8 artifacts exported from ptq.pt: qat.keep: ptq" in report and "QAT − PTQ: " not in report


def test_android_target_ships_fp32_fp16_and_int8_tflite_with_model_cards(qat_stages, tmp_path, capsys):
    out = tmp_path / "android"
    _ship_from_copy(qat_stages, out, "android", capsys)
    export = out / "export"
    from deploy.model_card import read_metadata

    for precision in ("fp32", "fp16", "int8"):
        tflite = export / f"student_{precision}.tflite"
        card = json.loads((export / f"student_{precision}.json").read_text())
        assert card["precision"] == precision and card["sha256"] == sha256_file(tflite)
        assert card["embedding"]["size"] == 128 and card["preprocessing"]["colour_order"] == "RGB"
        assert read_metadata(tflite)["precision"] == precision  # the same card, inside the flatbuffer
        assert main(["verify", "--model", str(tflite)]) == 0  # its golden vectors, int8 I/O included
    fp32, fp16 = (
        (export / "student_fp32.tflite").stat().st_size,
        (export / "student_fp16.tflite").stat().st_size,
    )
    assert fp16 < 0.65 * fp32
    # android default: pixels in (uint8 NHWC RGB, normalisation inside), stated in every card
    for precision in ("fp32", "fp16", "int8"):
        card = json.loads((export / f"student_{precision}.json").read_text())
        assert card["input"]["shape"] == [1, 112, 112, 3] and card["input"]["dtype"] == "uint8"
        assert card["input"]["layout"] == "NHWC" and card["preprocessing"]["input_kind"] == "pixels"
    # the full-integer file: its uint8 input quantisation does the normalisation (1/127.5, zero point
    # 128), one integer QUANTIZE and no TRANSPOSE or float op anywhere, a third of the fp32 size
    from deploy.tflite_int8 import count_float_ops

    int8 = export / "student_int8.tflite"
    card = json.loads((export / "student_int8.json").read_text())
    assert card["input"]["quantization"]["zero_point"] == 128
    assert card["input"]["quantization"]["scale"] == pytest.approx(1 / 127.5)
    ops = count_float_ops(int8)
    assert (
        ops["n_float_ops"] == 0 and "TRANSPOSE" not in ops["op_counts"] and ops["op_counts"]["QUANTIZE"] == 1
    )
    assert int8.stat().st_size < 0.30 * fp32
    art = next(
        a for a in json.loads((export / "artifacts.json").read_text())["artifacts"] if a["file"] == int8.name
    )
    assert art["source"] == "qat" and art["details"]["float_ops"] == []
    assert art["details"]["scales"] == "calibrated"  # the default (benchmarks/qat_int8.py)
    rows = json.loads((out / "results.json").read_text())["rows"]
    android = [r for r in rows if r["target"] == "android"]
    assert {r["precision"] for r in android} == {"fp32", "fp16", "int8"} and all(
        r["latency_ms"] is None for r in android
    )
    # batch-1 files are evaluated through a batched copy only where it reproduces the file exactly
    # every shipped file meets its contract (pixels-in uint8 input, batch, weights of its precision, ops)
    shipped = [r for r in rows if r["format"] == "tflite"]
    assert shipped and all(r["contract"]["passed"] for r in shipped), [r.get("contract") for r in shipped]
    # or, a file that reproduces its checkpoint on 16 images, through that checkpoint's evaluation: the
    # same accuracy as the file evaluated now
    host = {r["precision"]: r for r in rows if r["target"] == "host" and r["format"] == "tflite"}
    ways = ("equal to it on 16 images", "one image per call", "which this file reproduces on 16 images")
    assert all(any(w in r["accuracy_via"] for w in ways) for r in host.values()), host
    val = out / "data" / "synth_val.bin"
    for r in host.values():
        if "reproduces" in r["accuracy_via"]:
            assert main(["evaluate", "--model", r["path"], "--data", str(val), "--json"]) == 0
            got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            assert got["accuracy"] == pytest.approx(r["accuracy"]), r["name"]
