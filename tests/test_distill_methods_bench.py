"""benchmarks/distill_methods.py without training: per-run records merged across partial runs, stale
records ignored, n/a cells for a teacher without class centres, the long preset's arithmetic."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "distill_methods_bench", ROOT / "benchmarks" / "distill_methods.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SETTING = {"data": {"synth": {"train_identities": 3}}, "distill": {"arch": "mobilefacenet"}}
PARTS = {
    "own": (SETTING, {"arch": "iresnet18", "train": {"epochs": 3}}),
    "real": (SETTING, {"file": "teacher_faceres_nhwc.onnx", "input": {"mean": 0.0, "std": 1.0}}),
}


def _record(acc: float, seed: int, lfw: float | None = 0.7) -> dict[str, Any]:
    return {
        "seed": seed,
        "accuracy": acc,
        "accuracy_std": 0.01,
        "tar_at_far": {"0.01": acc / 2, "0.001": None},
        "lfw100_accuracy_report_only": lfw,
        "images_per_second": 40.0,
    }


def _write(
    bench: ModuleType, store: Path, teacher: str, method: str, seed: int, acc: float, key: str = ""
) -> None:
    setting, tpart = PARTS[teacher]
    rec = {**_record(acc, seed), "key": key or bench.run_key(setting, tpart, method, False)}
    bench.write_record(bench.record_path(store, "long", teacher, method, seed), rec)


def _teacher(bench: ModuleType, store: Path, teacher: str, has_head: bool) -> None:
    setting, tpart = PARTS[teacher]
    rec = {
        "teacher": teacher,
        "has_head": has_head,
        "accuracy": 0.9,
        "tar_at_far": {"0.01": 0.5, "0.001": None},
        "lfw100_accuracy_report_only": None,
        "key": bench.teacher_key(setting, tpart, False),
    }
    bench.write_record(store / "long" / teacher / "teacher.json", rec)


def test_partial_runs_merge_and_na(bench: ModuleType, tmp_path: Path) -> None:
    store = tmp_path / "runs"
    _teacher(bench, store, "own", has_head=True)
    _teacher(bench, store, "real", has_head=False)
    # "invocation 1": no_kd seeds 0, 1 (teacher-free, so stored once); "invocation 2": unified under both
    for seed, acc in ((0, 0.70), (1, 0.72)):
        _write(bench, store, "own", "no_kd", seed, acc)
    for seed, acc in ((0, 0.80), (1, 0.82), (2, 0.81)):
        _write(bench, store, "own", "unified", seed, acc)
        _write(bench, store, "real", "unified", seed, acc - 0.05)
    _write(bench, store, "own", "gkd", 0, 0.75)
    _write(bench, store, "own", "feature_l2", 0, 0.99, key="other-settings")  # stale: ignored
    assert (
        bench.record_path(store, "long", "real", "no_kd", 0)
        == store / "long" / "teacher-free" / "no_kd" / "seed0.json"
    )

    exp = bench.collect(store, "long", PARTS, False)
    own, real = exp["own"]["methods"], exp["real"]["methods"]
    assert own["no_kd"]["seeds"] == [0, 1] and real["no_kd"] == own["no_kd"]  # shared across teachers
    assert own["unified"]["seeds"] == [0, 1, 2]
    assert own["unified"]["accuracy_mean"] == pytest.approx(0.81)
    assert own["unified"]["vs_no_kd"]["beyond_seed_spread"]
    assert own["unified"]["lfw100_accuracy_report_only_mean"] == pytest.approx(0.7)
    assert own["unified"]["tar_at_far_1e-3_mean"] is None
    assert "feature_l2" not in own and "gkd" in own
    for method in ("teacher_head", "margin_distillation", "gkd"):
        assert real[method] == {"n/a": bench.NO_HEAD}
    assert "adadistill" not in real  # it builds centres from teacher embeddings: runs under any teacher
    text = bench.render(
        {"experiments": exp, "preset": "long", "flip": False, "wall_seconds": 1.0, "commands": "x"}
    )
    assert "| gkd | n/a (teacher has no class centres) |" in text
    assert "lfw100 % (report-only)" in text and "beyond (above)" in text
    json.dumps(exp)  # the report is JSON


def test_keys_separate_teachers_and_methods(bench: ModuleType) -> None:
    setting, own = PARTS["own"]
    _, real = PARTS["real"]
    assert bench.run_key(setting, own, "no_kd", False) == bench.run_key(setting, real, "no_kd", False)
    assert bench.run_key(setting, own, "unified", False) != bench.run_key(setting, real, "unified", False)
    assert bench.run_key(setting, own, "unified", False) != bench.run_key(setting, own, "unified", True)
    assert bench.run_key(setting, own, "unified", False) != bench.run_key(setting, own, "feature_l2", False)
    assert {m for m in bench.METHODS if bench.needs_teacher_head(m)} == {
        "teacher_head",
        "margin_distillation",
        "gkd",
    }
    assert [m for m in bench.METHODS if bench.teacher_free(m)] == ["no_kd"]


def test_versus_both_directions(bench: ModuleType) -> None:
    a = {"accuracy_mean": 0.70, "accuracy_std": 0.01, "seeds": [0, 1, 2]}
    b = {"accuracy_mean": 0.75, "accuracy_std": 0.01, "seeds": [0, 1, 2]}
    assert bench.versus(a, b)["beyond_seed_spread"] and bench.versus(a, b)["gain"] < 0
    assert bench.versus({**a, "accuracy_std": 0.05}, b)["beyond_seed_spread"] is False
    assert bench.versus({**a, "seeds": [0]}, b)["beyond_seed_spread"] is None  # one seed: no verdict


def test_long_preset_arithmetic(bench: ModuleType) -> None:
    e = bench.estimate("long")
    assert e["train_images"] == 7200 and e["pairs"] == 6000 and e["negatives"] == 3000
    assert e["steps"] == math.ceil(7200 * 2 / 64)
    assert e["binomial_sd_at_80"] == pytest.approx(math.sqrt(0.16 / 6000))
    assert e["binomial_sd_at_80"] < bench.estimate("cpu-bench")["binomial_sd_at_80"]
    assert e["smallest_far"] == pytest.approx(1e-3)
    # the estimate lies within the committed long runs that had the machine to themselves (2026-12-03):
    # training seconds + scoring seconds of each record, read here from the records themselves
    store = Path(bench.RUNS_STORE) / "long"
    quiet = ["teacher-free/no_kd", "real/ekd", "real/coupleface", "real/adadistill"]
    measured = [json.loads((store / m / "seed0.json").read_text()) for m in quiet]
    totals = [r["seconds"] + r["eval_seconds"] for r in measured]
    assert min(totals) <= e["seconds_per_run"] <= max(totals), (e["seconds_per_run"], totals)


def test_needs_teacher_head_matches_the_losses() -> None:
    """The flag says exactly which teacher terms fail to build without the teacher's class centres."""
    from distill.losses import LOSSES
    from distill.losses.base import LossDims

    dims = LossDims(student_dim=8, teacher_dim=8, num_classes=4, teacher_head=None)
    for name, cls in LOSSES.items():
        if not cls.needs_teacher:
            continue
        try:
            cls(dims)
            built = True
        except ValueError as e:
            assert "head" in str(e), (name, e)
            built = False
        assert built != cls.needs_teacher_head, name


def test_img_per_second_counts_only_median_step_records(bench: ModuleType, tmp_path: Path) -> None:
    """A record whose rate divided by wall time (pauses included) stays out of the img/s column."""
    store = tmp_path / "runs"
    _teacher(bench, store, "own", has_head=True)
    setting, tpart = PARTS["own"]
    key = bench.run_key(setting, tpart, "unified", False)
    rates = {0: (7.0, None), 1: (30.0, bench.MEDIAN_STEP), 2: (34.0, bench.MEDIAN_STEP)}
    for seed, (rate, basis) in rates.items():
        rec = {**_record(0.8, seed), "images_per_second": rate, "key": key}
        if basis:
            rec["images_per_second_basis"] = basis
        bench.write_record(bench.record_path(store, "long", "own", "unified", seed), rec)
    _write(bench, store, "own", "gkd", 0, 0.75)  # an old record only
    rows = bench.collect(store, "long", PARTS, False)["own"]["methods"]
    assert rows["unified"]["images_per_second"] == pytest.approx(32.0)  # (30 + 34) / 2, the 7 left out
    assert rows["gkd"]["images_per_second"] is None
    assert bench._rate(rows["unified"]) == "32.0 (2 of 3 seeds)" and bench._rate(rows["gkd"]) == "-"


class _LinearTeacher:
    """A stand-in teacher: a fixed linear map of the normalised NCHW pixels."""

    def __init__(self, seed: int) -> None:
        import numpy as np
        import torch

        self.w = np.random.default_rng(seed).standard_normal((6, 3 * 4 * 4))
        self._torch = torch

    def embed(self, x: Any) -> Any:
        return self._torch.from_numpy(x.reshape(x.shape[0], -1).double().numpy() @ self.w.T)


def _serve_teacher(bench: ModuleType, monkeypatch: pytest.MonkeyPatch, teacher: Any, images: Any) -> None:
    from types import SimpleNamespace

    import pipeline.stages as stages

    vs = SimpleNamespace(images=images)  # a verification set as check_same_teacher reads it
    monkeypatch.setattr(stages, "load_data", lambda ctx: (None, [vs]))
    monkeypatch.setattr(stages, "open_teacher", lambda ctx: teacher)


def test_teacher_probe_is_the_cosines_among_the_first_images(bench: ModuleType) -> None:
    import numpy as np

    images = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    teacher = _LinearTeacher(1)
    probe = bench.teacher_probe(teacher, images)
    # independently: (pixel - 127.5) / 127.5 in NCHW order, times W; cosine of every pair i < j, in order
    x = ((images[: bench.PROBE_IMAGES].astype(np.float64) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    e = x.reshape(len(x), -1) @ teacher.w.T
    n = bench.PROBE_IMAGES
    expected = [
        e[i] @ e[j] / (np.linalg.norm(e[i]) * np.linalg.norm(e[j])) for i in range(n) for j in range(i + 1, n)
    ]
    assert len(probe) == n * (n - 1) // 2 == 28
    np.testing.assert_allclose(probe, expected, atol=1e-6)
    assert bench.probe_difference(probe, probe) == 0.0
    assert bench.probe_difference(probe, probe[:-1]) == float("inf")
    other = bench.teacher_probe(_LinearTeacher(2), images)
    assert bench.probe_difference(probe, other) > 100 * bench.PROBE_MAX_DIFF  # another teacher is far off


def test_a_rebuilt_teacher_must_be_the_recorded_one(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import numpy as np

    images = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    ctx = type("Ctx", (), {"run": type("Run", (), {"root": tmp_path})()})()
    recorded = {"accuracy": 0.9, "pairs": 6000, "probe": bench.teacher_probe(_LinearTeacher(1), images)}

    _serve_teacher(bench, monkeypatch, _LinearTeacher(1), images)
    assert bench.check_same_teacher(ctx, recorded, False, []) == recorded  # same teacher: passes as it is
    _serve_teacher(bench, monkeypatch, _LinearTeacher(2), images)
    with pytest.raises(SystemExit, match="not the recorded one"):
        bench.check_same_teacher(ctx, recorded, False, [])

    # an old record without a probe: the teacher is scored again and must give the recorded accuracy
    old = {"accuracy": 0.9, "pairs": 6000}
    for acc, ok in ((0.9, True), (0.9 + 1 / 6000, True), (0.9 + 2 / 6000, False)):
        rescored = {"accuracy": acc, "pairs": 6000, "probe": [1.0]}
        monkeypatch.setattr(bench, "teacher_record", lambda *a, r=rescored: r)
        if ok:
            assert bench.check_same_teacher(ctx, old, False, [])["probe"] == [1.0]
        else:
            with pytest.raises(SystemExit, match="scores 90.03 % where its record says 90.00 %"):
                bench.check_same_teacher(ctx, old, False, [])
