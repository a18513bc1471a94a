"""Benchmark: a real teacher nobody here trained, distilled on generated faces, measured on real faces.

Three runs of ``python -m pipeline`` (default preset unless ``--preset``), each up to the export stage:
  * faceres-labelled:   the FaceRes teacher of ../shared/real/ (NHWC 224, raw pixels, declared in the config)
                        -> the default labelled recipe (CosFace + feature L2) -> QAT -> INT8 .tflite (android)
  * faceres-label-free: the same teacher, teacher terms only (configs/label-free.yaml: ILED + RPSD mined by
                        teacher similarity + feature L2; no labels, no margin head), same run folder reused
                        from the cache on
  * own:                the README's main command (own iResNet teacher trained on the generated faces,
                        ``--target jetson``): the INT8 artifact is the Q/DQ ONNX
For each: teacher, student (PyTorch) and INT8 artifact on the synthetic verification set and on lfw100
(200 real LFW pairs, REPORT-ONLY: nothing is chosen by it), raw pixels by cosine as the floor of each set,
and the run's time (the sum of its stages' recorded times, so a resumed benchmark still counts the stages it
skipped; the label-free run shares data, teacher and cache with the labelled one). Prints a table, writes
``benchmarks/results/real_teacher.json``.

    python benchmarks/real_teacher.py [--out runs/bench-real] [--preset default] [--skip-own]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"
FACERES = {"onnx": str(REAL / "teacher_faceres_nhwc.onnx"), "input": {"mean": 0, "std": 1}}


def _run(out: Path, tag: str, preset: str, target: str, config: dict[str, Any]) -> float:
    """``python -m pipeline export`` in ``out``; returns the wall seconds (exits on failure)."""
    cmd = [sys.executable, "-m", "pipeline", "export", "--preset", preset, "--target", target]
    cmd += ["--out", str(out), "--no-progress"]
    cfg = out.parent / f"{tag}.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(yaml.safe_dump(config))
    cmd += ["--config", str(cfg)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        sys.exit(f"pipeline failed ({proc.returncode}): {' '.join(cmd)}")
    return time.time() - t0


def _stage_seconds(out: Path) -> dict[str, float]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {k: float(v.get("seconds") or 0.0) for k, v in manifest["stages"].items()}


def _accuracy(embedder: Any, sets: list[Any]) -> dict[str, Any]:
    from devices.accuracy import accuracy_fields

    per_set = accuracy_fields(embedder, sets, flip=True)["sets"]
    return {
        name: {"accuracy": s["accuracy"], "accuracy_std": s["accuracy_std"], "roc_auc": s["roc_auc"]}
        for name, s in per_set.items()
    }


def _evaluate_run(out: Path, teacher_cfg: dict[str, Any] | None, int8_file: str) -> dict[str, Any]:
    from deploy.runtimes import FedEmbedder, load_embedder
    from distill.config import TeacherInputConfig
    from distill.data.faces import open_verification
    from distill.models.onnx_teacher import OnnxTeacher

    sets = [open_verification(out / "data" / "synth_val.bin"), open_verification(REAL / "lfw100")]
    if teacher_cfg is None:
        teacher = load_embedder(out / "teacher" / "teacher.pt", num_threads=2)
    else:
        onnx = OnnxTeacher(teacher_cfg["onnx"], input_cfg=TeacherInputConfig(**teacher_cfg["input"]))
        teacher = FedEmbedder(onnx, "onnx", "teacher", 2)
    rows = {
        "teacher": _accuracy(teacher, sets),
        "student (PyTorch fp32)": _accuracy(
            load_embedder(out / "distill" / "student.pt", num_threads=2), sets
        ),
        f"student INT8 {int8_file}": _accuracy(
            load_embedder(out / "export" / int8_file, num_threads=2), sets
        ),
    }
    return rows


def _floors(out: Path) -> dict[str, Any]:
    from distill.data.faces import open_verification
    from distill.evaluation import pixel_floor

    return pixel_floor(
        [open_verification(out / "data" / "synth_val.bin"), open_verification(REAL / "lfw100")]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-real", help="folder for the run folders")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--skip-own", action="store_true", help="leave out the default run's own teacher")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "real_teacher.json"))
    args = ap.parse_args()
    if not Path(FACERES["onnx"]).is_file():
        sys.exit(f"{FACERES['onnx']}: not found (../shared/real/ beside the repository)")
    base = Path(args.out)
    label_free = yaml.safe_load((ROOT / "configs" / "label-free.yaml").read_text())

    partial = Path(args.json).with_suffix(".partial.json")  # finished runs survive an interrupted benchmark
    done = {r["run"]: r for r in json.loads(partial.read_text())["runs"]} if partial.is_file() else {}
    runs: list[dict[str, Any]] = []

    def keep(record: dict[str, Any]) -> None:
        runs.append(record)
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"runs": runs}, indent=2) + "\n")

    faceres_dir = base / "faceres"
    for name, distill in (("faceres-labelled", None), ("faceres-label-free", label_free["distill"])):
        if name in done:
            keep(done[name])
            continue
        config: dict[str, Any] = {"teacher": FACERES, "qat": {"enabled": True}}  # tiny turns QAT off
        if distill is not None:
            config["distill"] = distill
        wall = _run(faceres_dir, name, args.preset, "android", config)  # label-free reuses data/teacher/cache
        keep(
            {
                "run": name,
                "teacher": "FaceRes (../shared/real, real faces)",
                "wall_s": round(wall, 1),
                "stage_seconds": _stage_seconds(faceres_dir),
                "models": _evaluate_run(faceres_dir, FACERES, "student_int8.tflite"),
            }
        )
    floors = _floors(faceres_dir)
    if not args.skip_own and "own (README main command)" in done:
        keep(done["own (README main command)"])
    elif not args.skip_own:
        own_dir = base / "own"
        wall = _run(own_dir, "own", args.preset, "jetson", {"qat": {"enabled": True}})
        keep(
            {
                "run": "own (README main command)",
                "teacher": "iResNet-18/2 trained here on generated faces",
                "wall_s": round(wall, 1),
                "stage_seconds": _stage_seconds(own_dir),
                "models": _evaluate_run(own_dir, None, "student_int8.onnx"),
            }
        )

    head = "| run | model | synth_val % | lfw100 % (report-only) | lfw100 AUC | run stage time min |"
    lines = [head, "|---|---|---|---|---|---|"]
    for name, f in floors.items():
        lines.append(
            f"| floor | raw pixels by cosine ({name}) | "
            + (f"{100 * f['accuracy']:.2f} |" if name == "synth_val" else "- |")
            + (
                f" {100 * f['accuracy']:.2f} | {f['roc_auc']:.3f} | - |"
                if name == "lfw100"
                else " - | - | - |"
            )
        )
    for r in runs:
        for model, sets in r["models"].items():
            s, lfw = sets["synth_val"], sets["lfw100"]
            lines.append(
                f"| {r['run']} | {model} | {100 * s['accuracy']:.2f} ± {100 * s['accuracy_std']:.2f} | "
                f"{100 * lfw['accuracy']:.2f} ± {100 * lfw['accuracy_std']:.2f} | {lfw['roc_auc']:.3f} | "
                f"{sum(r['stage_seconds'].values()) / 60:.1f} |"
            )
    table = "\n".join(lines)
    print(table)
    result = {
        "benchmark": "real_teacher",
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "preset": args.preset,
        "floors": floors,
        "runs": runs,
        "table": table,
        "note": "lfw100 is report-only: 200 pairs (about +-3 points of binomial noise), never used to choose",
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
