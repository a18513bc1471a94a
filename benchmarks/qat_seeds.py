"""Benchmark (report-only): the QAT >= PTQ check of issue 14 when stage two runs under other seeds.

Takes a finished default run and runs the pipeline's own ``qat`` stage again in a copy of it for each seed
(``qat.train.seed``: the calibration images drawn for PTQ, the loss heads' initialisation, the batch
order), every other setting the default's. Per seed it reads what the stage wrote: PTQ and QAT on the val
set (``qat/evaluation.json``, their INT8 Q/DQ ONNX, flip fused), the pairs only one of them decided right
with the exact McNemar p, and the dev-set choice of the shipped model (``qat/qat.json``).

**Nothing is chosen by this table**: the default seed stays 0 and no setting moves because of it; it shows
whether the check's outcome is a property of stage two or of one seed. Copies already holding a current
``qat`` stage are not run again (the pipeline skips up-to-date stages).

    python benchmarks/qat_seeds.py --run runs/bench-default --work /tmp/qat-seeds --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.eval_twin import write_results  # noqa: E402
from benchmarks.pipeline_default import cpu_description  # noqa: E402
from distill.metrics.paired import paired_difference  # noqa: E402

STAGE_INPUTS = ("data", "teacher", "cache", "distill", "run.json", "manifest.json")


def seed_run(base: Path, work: Path, seed: int) -> Path:
    """The run folder holding stage two under ``seed``: the base run itself for its own seed, else a copy."""
    if seed == recorded_seed(base):
        return base
    folder = work / f"seed{seed}"
    if not folder.exists():
        folder.mkdir(parents=True)
        for name in STAGE_INPUTS:
            src = base / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, folder / name)
    config = work / f"seed{seed}.yaml"
    config.write_text(f"qat:\n  train:\n    seed: {seed}\n")
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "qat",
        "--out",
        str(folder),
        "--config",
        str(config),
        "--no-progress",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return folder


def recorded_seed(run: Path) -> int:
    """The seed stage two ran with in ``run`` (its calibration record)."""
    return int(json.loads((run / "qat" / "qat.json").read_text())["calibration"]["seed"])


def seed_row(run: Path) -> dict:
    """PTQ and QAT on the val set, pair by pair, and the dev-set choice, as stage two recorded them."""
    evaluation = json.loads((run / "qat" / "evaluation.json").read_text())
    record = json.loads((run / "qat" / "qat.json").read_text())
    models = evaluation["models"]
    val = models["qat"]["val_set"]
    ptq, qat = models["ptq"]["sets"][val], models["qat"]["sets"][val]
    paired = paired_difference(qat["wrong_pairs"], ptq["wrong_pairs"], qat["pairs"])
    dev = record["selection"].get("dev_accuracy", {})
    return {
        "seed": recorded_seed(run),
        "val_set": val,
        "ptq": ptq["accuracy"],
        "qat": qat["accuracy"],
        "qat_minus_ptq_points": round(100 * (qat["accuracy"] - ptq["accuracy"]), 4),
        "only_qat_right": paired.only_a_right,
        "only_ptq_right": paired.only_b_right,
        "p_value": paired.p_value,
        "dev_ptq": dev.get("ptq"),
        "dev_qat": dev.get("qat"),
        "shipped": record.get("shipped", "qat"),
        "run": str(run),
    }


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| seed | PTQ % (val) | QAT % (val) | QAT − PTQ (points) | pairs only QAT / only PTQ right "
        "| McNemar p | dev PTQ / QAT % | shipped |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dev = f"{100 * r['dev_ptq']:.2f} / {100 * r['dev_qat']:.2f}" if r["dev_ptq"] is not None else "-"
        lines.append(
            f"| {r['seed']} | {100 * r['ptq']:.2f} | {100 * r['qat']:.2f} | {r['qat_minus_ptq_points']:+.2f} "
            f"| {r['only_qat_right']} / {r['only_ptq_right']} | {r['p_value']:.3f} | {dev} "
            f"| {r['shipped']}.pt |"
        )
    return lines


def summary(rows: list[dict]) -> dict:
    diffs = [r["qat_minus_ptq_points"] for r in rows]
    return {
        "seeds": len(rows),
        "qat_at_least_ptq_on_val": sum(d >= 0 for d in diffs),
        "mean_qat_minus_ptq_points": round(statistics.mean(diffs), 4),
        "only_qat_right_total": sum(r["only_qat_right"] for r in rows),
        "only_ptq_right_total": sum(r["only_ptq_right"] for r in rows),
        "qat_shipped": sum(r["shipped"] == "qat" for r in rows),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--run", required=True, help="a finished default run folder (benchmarks/pipeline_default.py)"
    )
    ap.add_argument("--work", required=True, help="folder for the per-seed copies (kept; re-runs reuse them)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds besides the run's own")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "qat_seeds"))
    args = ap.parse_args()
    base, work = Path(args.run).resolve(), Path(args.work).resolve()
    seeds = [recorded_seed(base), *[s for s in args.seeds if s != recorded_seed(base)]]
    rows = [seed_row(seed_run(base, work, s)) for s in seeds]
    lines = table(rows)
    s = summary(rows)
    line = (
        f"QAT >= PTQ on the val set in {s['qat_at_least_ptq_on_val']} of {s['seeds']} seeds; mean QAT − PTQ "
        f"{s['mean_qat_minus_ptq_points']:+.2f} points; pairs only QAT right {s['only_qat_right_total']}, "
        f"only PTQ right {s['only_ptq_right_total']} (summed over seeds, which share the val pairs); "
        f"the dev-set choice shipped QAT in {s['qat_shipped']} of {s['seeds']}"
    )
    cpu = cpu_description()
    header = (
        "# Stage two under other seeds: the QAT ≥ PTQ check (report-only)\n\n"
        f"`benchmarks/qat_seeds.py`, {date.today().isoformat()}, "
        f"{cpu.get('model_name') or cpu.get('model')}; "
        f"base run `{base}`; each other seed is the pipeline's `qat` stage in a copy of it "
        "(`qat.train.seed`, with its own PTQ calibration). Nothing is chosen by this table: the default seed "
        "stays 0.\n"
    )
    result = {
        "benchmark": "qat_seeds",
        "date": date.today().isoformat(),
        "machine": cpu,
        "rows": rows,
        "summary": s,
    }
    write_results(Path(args.out), result, header, [*lines, "", line + "."])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
