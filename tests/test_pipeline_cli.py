"""The one command, end to end on the tiny preset, plus the skip rules and bad-input behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.runfolder import sha256_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def host_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "host"
    assert main(["all", "--preset", "tiny", "--target", "host", "--out", str(out), "--no-progress"]) == 0
    return out


def test_all_writes_results_for_every_artifact(host_run):
    results = json.loads((host_run / "results.json").read_text())
    rows = results["rows"]
    formats = {(r["role"], r["format"]) for r in rows}
    assert {
        ("teacher", "pytorch"),
        ("student", "pytorch"),
        ("artifact", "onnx"),
        ("artifact", "tflite"),
    } <= formats
    for r in rows:
        assert r["measured_on"] == "host-cpu" and r["target"] == "host"
        assert set(r["latency_ms"]) >= {"p50", "p90", "p99"}
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
        assert 0.0 <= r["accuracy"] <= 1.0 and r["accuracy_std"] >= 0.0
        assert Path(r["path"]).stat().st_size == r["size_bytes"]
        assert sha256_file(Path(r["path"])) == r["sha256"]
    art = {r["format"]: r for r in rows if r["role"] == "artifact"}
    student = next(r for r in rows if r["role"] == "student")
    # the exported files are the student: same verification accuracy as PyTorch (parity >= 0.9999)
    assert art["onnx"]["accuracy"] == pytest.approx(student["accuracy"], abs=0.051)
    assert art["tflite"]["accuracy"] == pytest.approx(student["accuracy"], abs=0.051)
    exported = json.loads((host_run / "export" / "artifacts.json").read_text())["artifacts"]
    assert all(a["parity"]["passed"] and a["parity"]["cos_min"] >= 0.9999 for a in exported)
    report = (host_run / "report.md").read_text()
    assert "| student-tflite-fp32 | tflite | fp32 | host | host-cpu |" in report
    manifest = json.loads((host_run / "manifest.json").read_text())
    stages = ["data", "teacher", "cache", "distill", "qat", "export", "measure", "report"]
    assert list(manifest["stages"]) == stages
    assert manifest["stages"]["qat"]["metrics"] == {"enabled": False}  # the tiny preset skips stage two
    assert (host_run / "report.html").is_file()
    assert manifest["stages"]["distill"]["metrics"]["images_per_second"] > 0
    cache = manifest["stages"]["cache"]["metrics"]  # bf16 only where it runs natively and agrees with fp32
    assert cache["precision"] in ("fp32", "bf16") and cache["why"]
    assert cache["precision"] == "fp32" or cache["min_cosine_to_fp32"] >= 0.999
    assert not list(host_run.glob(".*.work"))  # nothing half-finished left behind
    for est in json.loads((host_run / "results.json").read_text())["estimator_error_on_host"]:
        assert Path(est["onnx"]).is_file(), est["onnx"]  # not a path into the removed work folder


def test_rerun_skips_current_stages_and_reruns_changed_ones(host_run, capsys, tmp_path):
    assert main(["all", "--out", str(host_run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for stage in ("data", "teacher", "cache", "distill", "export", "measure", "report"):
        assert f"[{stage}] up to date, skipped" in out
    cfg = tmp_path / "change.yaml"
    cfg.write_text("measure:\n  runs: 7\n")
    # no --preset: the run keeps its own (tiny), and the new config adds to the run's settings
    assert main(["measure", "--config", str(cfg), "--out", str(host_run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "[data] up to date, skipped" in out and "[distill] up to date, skipped" in out
    assert "[measure] running" in out
    rows = json.loads((host_run / "results.json").read_text())["rows"]
    assert rows[0]["latency_settings"]["runs"] == 7
    run = json.loads((host_run / "run.json").read_text())
    assert run["preset"] == "tiny" and run["target"] == "host" and run["layers"] == [{"measure": {"runs": 7}}]
    cfg.write_text("measure:\n  warmup: 1\n")  # a second config adds to the first
    assert main(["measure", "--config", str(cfg), "--out", str(host_run), "--no-progress"]) == 0
    run = json.loads((host_run / "run.json").read_text())
    assert run["config"]["measure"]["runs"] == 7 and run["config"]["measure"]["warmup"] == 1


def test_evaluate_command_matches_the_measured_row(host_run, capsys):
    """Every artifact row's accuracy equals the file evaluated now, on its own: also the rows that took
    the distill stage's evaluation because the file reproduces the student (the fp32 ONNX at least)."""
    results = json.loads((host_run / "results.json").read_text())
    artifacts = [r for r in results["rows"] if r["role"] == "artifact"]
    onnx_row = next(r for r in artifacts if r["format"] == "onnx")
    assert onnx_row["accuracy_via"].startswith(
        "the distill stage's evaluation of student.pt (sha256 checked), which this file reproduces on 16"
    )
    val = host_run / "data" / "synth_val.bin"
    for row in artifacts:
        assert main(["evaluate", "--model", row["path"], "--data", str(val), "--json"]) == 0
        got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert got["accuracy"] == pytest.approx(row["accuracy"]), row["name"]
        assert got["tar_at_far"] == pytest.approx(row["tar_at_far"]), row["name"]
    assert main(["data", "info", str(val), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["pairs"] == got["pairs"]


def test_reference_rows_come_from_their_stages_evaluation_of_the_same_file(host_run, capsys):
    """The teacher and student are evaluated once, where they are made; measure reuses those fields."""
    rows = json.loads((host_run / "results.json").read_text())["rows"]
    val = host_run / "data" / "synth_val.bin"
    for role, stage in (("teacher", "teacher"), ("student", "distill")):
        row = next(r for r in rows if r["role"] == role)
        assert row["accuracy_via"].startswith(f"the {stage} stage's evaluation of this file (sha256 checked)")
        assert "through an onnxruntime copy of the module, equal to it on 16 images" in row["accuracy_via"]
        saved = json.loads((host_run / stage / "evaluation.json").read_text())
        assert saved["sha256"][role] == sha256_file(Path(row["path"])) == row["sha256"]
        assert saved["models"][role]["accuracy"] == row["accuracy"]
        # the stage's own record (and its console line) carries that one evaluation's figures
        record = json.loads((host_run / stage / f"{role}.json").read_text())
        assert record[f"{saved['val_sets'][0]}/accuracy"] == row["accuracy"]
        # a second path to the same number: the evaluate command on the checkpoint, computed now
        assert main(["evaluate", "--model", row["path"], "--data", str(val), "--json"]) == 0
        got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert got["accuracy"] == pytest.approx(row["accuracy"])


def test_card_thresholds_come_from_the_distill_stages_kept_embeddings(host_run):
    """export reads the unmirrored embeddings the distill evaluation kept; they and the card's thresholds
    equal what the checkpoint computes now in PyTorch, one image per face, no mirror."""
    from deploy.model_card import threshold_table
    from distill.data.verification_bin import load_verification_bin
    from distill.evaluation import torch_embed_fn
    from distill.metrics.verification import embed_pairs
    from distill.models.checkpoint import load_model

    record = json.loads((host_run / "distill" / "evaluation.json").read_text())
    assert record["plain_embeddings"] == {"set": "synth_val", "files": {"student": "plain_student.npy"}}
    kept = np.load(host_run / "distill" / "plain_student.npy")
    val = load_verification_bin(host_run / "data" / "synth_val.bin")
    model = load_model(host_run / "distill" / "student.pt")[0].eval()
    now, _ = embed_pairs(torch_embed_fn(model), val.images, batch_size=7, flip=False)
    np.testing.assert_allclose(kept, now, rtol=0, atol=1e-5 * np.abs(now).max())  # the twin's tolerance
    expected = threshold_table(now[0::2], now[1::2], val.issame)["at_far"]
    onnx_card = next(p for p in (host_run / "export").glob("*.json") if "thresholds" in p.read_text())
    got = json.loads(onnx_card.read_text())["thresholds"]["at_far"]
    assert got.keys() == expected.keys()
    for far, entry in expected.items():
        if entry["cosine"] is None:
            assert got[far]["cosine"] is None
        else:
            assert got[far]["cosine"] == pytest.approx(entry["cosine"], rel=1e-4)
            assert got[far]["tar"] == pytest.approx(entry["tar"])


def test_saved_evaluation_is_used_only_for_the_same_file_sets_and_flip(tmp_path):
    from pipeline.config import Config
    from pipeline.runfolder import RunFolder
    from pipeline.stages import EVALUATION_FILE, Context, saved_evaluation

    ctx = Context(run=RunFolder(tmp_path), cfg=Config())
    (tmp_path / "distill").mkdir()
    model = tmp_path / "distill" / "student.pt"
    model.write_bytes(b"weights")
    vals = [type("Set", (), {"name": "lfw"})()]
    fields = {"accuracy": 0.9}
    record = {"flip": ctx.cfg.measure.flip, "val_sets": ["lfw"], "models": {"student": fields}}
    (tmp_path / "distill" / EVALUATION_FILE).write_text(
        json.dumps({**record, "sha256": {"student": sha256_file(model)}})
    )
    assert saved_evaluation(ctx, "distill", "student", model, vals) == fields
    assert saved_evaluation(ctx, "distill", "teacher", model, vals) is None  # not evaluated there
    assert saved_evaluation(ctx, "distill", "student", model, [type("Set", (), {"name": "cfp"})()]) is None
    ctx.cfg.measure.flip = not ctx.cfg.measure.flip
    assert saved_evaluation(ctx, "distill", "student", model, vals) is None
    ctx.cfg.measure.flip = not ctx.cfg.measure.flip
    model.write_bytes(b"weightz")  # same size, other content: the fields are not this file's
    assert saved_evaluation(ctx, "distill", "student", model, vals) is None


# ------------------------------------------------------------------------------------ bad input
def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


def _real_data_config(tmp_path, train: Path, val: Path) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  train: {train}\n  val: [{val}]\n")
    return cfg


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    from distill.data.synth import SynthSpec, synthesize

    d = tmp_path_factory.mktemp("synth")
    synthesize(d, SynthSpec.tiny(), progress=False)
    return d


def _bad_run(tmp_path, capsys, cfg: Path, stage: str = "teacher") -> str:
    out = tmp_path / "run"
    code = main([stage, "--preset", "tiny", "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert code == 2
    line = _one_error_line(capsys)
    if out.exists():  # only the run's settings; no stage folder, work folder or manifest
        assert sorted(p.name for p in out.iterdir()) == ["run.json"]
    return line


def test_real_data_takes_a_dev_set_to_choose_by_but_never_a_val_set(tmp_path, capsys, synth_data):
    cfg = _real_data_config(tmp_path, synth_data, synth_data / "synth_val.bin")
    cfg.write_text(cfg.read_text() + f"  dev: [{synth_data / 'synth_val.bin'}]\n")
    line = _bad_run(tmp_path, capsys, cfg)  # the data stage stops the run before the teacher
    assert "synth_val is also in data.val; choose by another set" in line
    cfg.write_text(
        cfg.read_text().replace(
            "dev: [" + str(synth_data / "synth_val.bin"), "dev: [" + str(synth_data / "synth_dev.bin")
        )
    )
    out = tmp_path / "ok"
    assert (
        main(["teacher", "--preset", "tiny", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    )
    info = json.loads((out / "data" / "data.json").read_text())
    assert info["dev"] == [str((synth_data / "synth_dev.bin").resolve())] and info["dev_pairs"] == {
        "synth_dev": 40
    }


def test_missing_rec_is_one_clear_error(tmp_path, capsys, synth_data):
    train = tmp_path / "train"
    train.mkdir()
    (train / "train.idx").write_bytes((synth_data / "train.idx").read_bytes())
    line = _bad_run(tmp_path, capsys, _real_data_config(tmp_path, train, synth_data / "synth_val.bin"))
    assert "train.rec" in line


def test_truncated_rec_is_one_clear_error(tmp_path, capsys, synth_data):
    train = tmp_path / "train"
    train.mkdir()
    (train / "train.idx").write_bytes((synth_data / "train.idx").read_bytes())
    data = (synth_data / "train.rec").read_bytes()
    (train / "train.rec").write_bytes(data[: len(data) // 2])
    line = _bad_run(tmp_path, capsys, _real_data_config(tmp_path, train, synth_data / "synth_val.bin"))
    assert "train.rec" in line


def test_bin_with_unexpected_content(tmp_path, capsys, synth_data):
    import pickle

    bad = tmp_path / "lfw.bin"
    bad.write_bytes(pickle.dumps({"not": "a verification set"}))
    line = _bad_run(tmp_path, capsys, _real_data_config(tmp_path, synth_data, bad))
    assert "lfw.bin" in line


def test_wrong_image_size(tmp_path, capsys, synth_data):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (96, 96)).save(buf, format="JPEG")
    from distill.data.verification_bin import write_verification_bin

    bad = tmp_path / "small.bin"
    write_verification_bin(bad, [buf.getvalue()] * 4, [True, False])
    line = _bad_run(tmp_path, capsys, _real_data_config(tmp_path, synth_data, bad))
    assert "small.bin" in line and "96" in line


def test_unknown_model_name_and_bad_config_value(tmp_path, capsys):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("distill:\n  arch: mobilenetv9\n")
    assert (
        main(
            ["all", "--preset", "tiny", "--config", str(cfg), "--out", str(tmp_path / "r1"), "--no-progress"]
        )
        == 2
    )
    assert "mobilenetv9" in _one_error_line(capsys)
    assert not (tmp_path / "r1" / "distill").exists()
    cfg.write_text("distill:\n  train:\n    batch_size: many\n")
    assert main(["all", "--config", str(cfg), "--out", str(tmp_path / "r2")]) == 2
    line = _one_error_line(capsys)
    assert str(cfg) in line and "distill.train.batch_size" in line
    assert not (tmp_path / "r2").exists()


def test_idx_pointing_past_the_end(tmp_path, capsys, synth_data):
    train = tmp_path / "train"
    train.mkdir()
    (train / "train.rec").write_bytes((synth_data / "train.rec").read_bytes())
    lines = (synth_data / "train.idx").read_text().splitlines()
    key = lines[1].split("\t")[0]
    lines[1] = f"{key}\t{10**9}"
    (train / "train.idx").write_text("\n".join(lines) + "\n")
    line = _bad_run(
        tmp_path, capsys, _real_data_config(tmp_path, train, synth_data / "synth_val.bin"), "distill"
    )
    assert "train" in line


def test_sh_kd_recipe_trains_the_teacher_through_the_students_frozen_head(tmp_path):
    """configs/sh-kd.yaml on the tiny preset: step 1 a student, step 2 a student-aware teacher."""
    import yaml

    from distill.models.checkpoint import load_model

    step1 = tmp_path / "step1"
    assert main(["distill", "--preset", "tiny", "--out", str(step1), "--no-progress"]) == 0
    recipe = yaml.safe_load((Path(__file__).parents[1] / "configs" / "sh-kd.yaml").read_text())
    recipe["teacher"]["losses"][0]["params"]["checkpoint"] = str(step1 / "distill" / "student.pt")
    cfg = tmp_path / "shkd.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    step2 = tmp_path / "step2"
    assert (
        main(["distill", "--preset", "tiny", "--config", str(cfg), "--out", str(step2), "--no-progress"]) == 0
    )
    _, student = load_model(step1 / "distill" / "student.pt")
    teacher_model, teacher = load_model(step2 / "teacher" / "teacher.pt")
    assert teacher["arch_kwargs"]["embedding_dim"] == 128
    # the teacher's classifier IS the step-1 student's head, unchanged by the teacher's training
    assert torch.equal(teacher["extra"]["head_weight"], student["extra"]["head_weight"])
    assert (step2 / "distill" / "student.pt").is_file()


def test_settings_that_would_delete_artifacts_need_force(tmp_path, capsys):
    """A run folder with android artifacts: another target or stage two off would replace them."""
    from distill.config import deep_merge, to_dict
    from pipeline.config import PRESETS, Config

    out = tmp_path / "android"
    (out / "export").mkdir(parents=True)
    files = ["student_fp32.tflite", "student_int8.tflite"]
    (out / "export" / "artifacts.json").write_text(json.dumps({"artifacts": [{"file": f} for f in files]}))
    config = deep_merge(to_dict(Config()), PRESETS["tiny"])
    stored = {"config": config, "target": "android", "preset": "tiny", "layers": [{"qat": {"enabled": True}}]}
    stored = json.loads(json.dumps(stored))  # as JSON holds it (tuples become lists)
    (out / "run.json").write_text(json.dumps(stored))
    assert main(["export", "--out", str(out), "--target", "jetson", "--no-progress"]) == 2
    line = _one_error_line(capsys)
    assert "artifacts are for --target android (student_fp32.tflite, student_int8.tflite)" in line
    assert "--force" in line
    off = tmp_path / "off.yaml"
    off.write_text("qat:\n  enabled: false\n")
    assert main(["export", "--out", str(out), "--config", str(off), "--no-progress"]) == 2
    assert "would delete the INT8 artifacts (student_int8.tflite)" in _one_error_line(capsys)
    assert json.loads((out / "run.json").read_text()) == stored  # refused: nothing recorded


def test_stage_help_lists_only_its_own_options(capsys):
    for stage, has_devices in (("teacher", False), ("export", False), ("measure", True), ("all", True)):
        with pytest.raises(SystemExit):
            main([stage, "--help"])
        text = capsys.readouterr().out
        assert ("--adb-serial" in text) == has_devices, stage
        assert ("LiteRT delegate on the phone" in text) == has_devices, stage
