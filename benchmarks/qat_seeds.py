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

``--held-out FILE`` also scores every seed's PTQ and QAT models on a third verification set (e.g.
``synth_test.bin`` of identities no other split uses, ``benchmarks/synth_test_set.py``), as stage two scores
the val set (their INT8 Q/DQ ONNX, flip fused): a larger reading of the same question, still report-only.
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


def held_out_scores(run: Path, held_out: Path, work: Path) -> dict:
    """PTQ and QAT of ``run`` on the ``held_out`` set, pair by pair (cached under ``work``)."""
    from benchmarks.qat_lr import score_quantized  # imports torch and NNCF: only when a set is scored
    from distill.data.faces import open_verification

    cache = work / "held_out" / f"seed{recorded_seed(run)}_{held_out.stem}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    vs = open_verification(held_out)
    scores: dict = {"set": vs.name, "pairs": int(len(vs.issame))}
    for name in ("ptq", "qat"):
        result, how = score_quantized(run / "qat" / f"{name}.pt", vs, name)
        scores[name] = {"accuracy": result.accuracy, "wrong_pairs": list(result.wrong_pairs), "via": how}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(scores) + "\n")
    return scores


def held_out_fields(scores: dict) -> dict:
    """A seed row's held-out columns: both accuracies and the pair-by-pair comparison."""
    paired = paired_difference(scores["qat"]["wrong_pairs"], scores["ptq"]["wrong_pairs"], scores["pairs"])
    return {
        "held_out_set": scores["set"],
        "held_out_pairs": scores["pairs"],
        "held_out_ptq": scores["ptq"]["accuracy"],
        "held_out_qat": scores["qat"]["accuracy"],
        "held_out_only_qat_right": paired.only_a_right,
        "held_out_only_ptq_right": paired.only_b_right,
        "held_out_p_value": paired.p_value,
    }


def held_out_table(rows: list[dict]) -> list[str]:
    name, pairs = rows[0]["held_out_set"], rows[0]["held_out_pairs"]
    lines = [
        f"| seed | PTQ % ({name}) | QAT % ({name}) | QAT − PTQ (points) | pairs only QAT / only PTQ right "
        "| McNemar p |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = 100 * (r["held_out_qat"] - r["held_out_ptq"])
        lines.append(
            f"| {r['seed']} | {100 * r['held_out_ptq']:.2f} | {100 * r['held_out_qat']:.2f} | {diff:+.2f} "
            f"| {r['held_out_only_qat_right']} / {r['held_out_only_ptq_right']} "
            f"| {r['held_out_p_value']:.3f} |"
        )
    wins = sum(r["held_out_qat"] >= r["held_out_ptq"] for r in rows)
    mean = statistics.mean(100 * (r["held_out_qat"] - r["held_out_ptq"]) for r in rows)
    lines += [
        "",
        f"On `{name}` ({pairs} pairs): QAT >= PTQ in {wins} of {len(rows)} seeds, mean {mean:+.2f} points.",
    ]
    return lines


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
    ap.add_argument("--held-out", help="a third verification .bin to score every seed's PTQ and QAT on")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "qat_seeds"))
    args = ap.parse_args()
    base, work = Path(args.run).resolve(), Path(args.work).resolve()
    seeds = [recorded_seed(base), *[s for s in args.seeds if s != recorded_seed(base)]]
    runs = [seed_run(base, work, s) for s in seeds]
    rows = [seed_row(run) for run in runs]
    if args.held_out:
        for row, run in zip(rows, runs, strict=True):
            row.update(held_out_fields(held_out_scores(run, Path(args.held_out).resolve(), work)))
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
    extra = ["", *held_out_table(rows)] if args.held_out else []
    write_results(Path(args.out), result, header, [*lines, "", line + ".", *extra])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
