"""Run folder rules: skip when current, re-run on change, nothing half-written, resume after a crash."""

from __future__ import annotations

import json

import pytest

from distill.errors import InputError
from pipeline.runfolder import RunFolder, StageOutcome, fingerprint, sha256_file


def writer(calls, text="hello"):
    def fn(work):
        calls.append(work)
        (work / "out.txt").write_text(text)
        return StageOutcome(["out.txt"], {"n": len(calls)})

    return fn


def test_skip_when_key_and_outputs_unchanged(tmp_path):
    run, calls = RunFolder(tmp_path), []
    rec = run.run("s", {"a": 1}, writer(calls), log=lambda m: None)
    assert (tmp_path / "s" / "out.txt").read_text() == "hello"
    assert rec["outputs"]["out.txt"] == sha256_file(tmp_path / "s" / "out.txt")
    run.run("s", {"a": 1}, writer(calls), log=lambda m: None)
    assert len(calls) == 1  # skipped
    run.run("s", {"a": 2}, writer(calls), log=lambda m: None)
    assert len(calls) == 2  # key changed
    (tmp_path / "s" / "out.txt").write_text("tampered, longer")
    run.run("s", {"a": 2}, writer(calls), log=lambda m: None)
    assert len(calls) == 3  # output changed on disk
    run.run("s", {"a": 2}, writer(calls), force=True, log=lambda m: None)
    assert len(calls) == 4
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"]["s"]["metrics"] == {"n": 4}
    assert "torch" in manifest["stages"]["s"]["versions"]


def test_bad_input_leaves_nothing(tmp_path):
    run = RunFolder(tmp_path)

    def bad(work):
        (work / "partial.bin").write_bytes(b"x")
        raise InputError("data.bin: broken")

    with pytest.raises(InputError):
        run.run("s", {}, bad, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_crash_keeps_work_folder_and_the_rerun_resumes_in_it(tmp_path):
    run = RunFolder(tmp_path)

    def crash(work):
        (work / "checkpoint").write_text("step 5")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run.run("train", {"k": 1}, crash, log=lambda m: None)
    assert not (tmp_path / "train").exists()  # nothing that looks complete
    assert (tmp_path / ".train.work" / "checkpoint").exists()
    seen = {}

    def resume(work):
        seen["ckpt"] = (work / "checkpoint").read_text()
        (work / "model.pt").write_text("weights")
        return StageOutcome(["model.pt"])

    run.run("train", {"k": 1}, resume, log=lambda m: None)
    assert seen["ckpt"] == "step 5"
    assert (tmp_path / "train" / "model.pt").exists() and not (tmp_path / ".train.work").exists()


def test_work_folder_of_another_configuration_is_not_resumed(tmp_path):
    run = RunFolder(tmp_path)

    def crash(work):
        (work / "checkpoint").write_text("old")
        raise RuntimeError

    with pytest.raises(RuntimeError):
        run.run("train", {"k": 1}, crash, log=lambda m: None)

    def fresh(work):
        assert not (work / "checkpoint").exists()
        (work / "m").write_text("x")
        return StageOutcome(["m"])

    run.run("train", {"k": 2}, fresh, log=lambda m: None)


def test_fingerprint_is_the_sha256_for_normal_files(tmp_path):
    import hashlib

    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert fingerprint(p) == hashlib.sha256(b"abc").hexdigest()


def test_a_same_size_edit_is_seen_and_a_touch_alone_is_not(tmp_path, monkeypatch):
    import os

    import pipeline.runfolder as rf

    run, calls = RunFolder(tmp_path), []
    run.run("s", {"a": 1}, writer(calls), log=lambda m: None)
    out = tmp_path / "s" / "out.txt"
    hashed = []
    real = rf.sha256_file
    monkeypatch.setattr(rf, "sha256_file", lambda p: hashed.append(p) or real(p))
    run.run("s", {"a": 1}, writer(calls), log=lambda m: None)
    assert len(calls) == 1 and hashed == []  # untouched: not even re-read
    st = out.stat()
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched, same content
    run.run("s", {"a": 1}, writer(calls), log=lambda m: None)
    assert len(calls) == 1 and hashed == [out]  # re-hashed once, still current
    out.write_text("jello")  # same size, other content
    run.run("s", {"a": 1}, writer(calls), log=lambda m: None)
    assert len(calls) == 2 and out.read_text() == "hello"


def test_a_stage_ends_with_its_headline_figures(tmp_path):
    lines = []

    def fn(work):
        (work / "m.json").write_text("{}")
        return StageOutcome(["m.json"], {"v/accuracy": 0.8725, "ptq": {"v/accuracy": 0.5}, "steps": 3})

    RunFolder(tmp_path).run("s", {}, fn, log=lines.append)
    assert lines[-1].endswith("s: v accuracy 87.25 %, ptq v accuracy 50.00 %")
    assert lines[-1].startswith("[s] done in ")
