"""Benchmark: stage two's learning rate, length and fp32 anchor, chosen on the dev set only (issue 14).

Takes a finished default run (its distilled student, teacher cache and ``ptq.pt``) and trains QAT again at
each number of epochs, learning rate, ``qat.fp32_anchor`` weight and seed with every other setting of the
default ``qat`` section, then
scores the PTQ model and each QAT model on the **dev set** (``synth_dev.bin``: identities in neither
training nor ``synth_val.bin``), through the INT8 Q/DQ ONNX copy stage two evaluates with. It never
evaluates the val set: the default learning rate and length are picked here, so the reported numbers
stay unbiased.

One JSON record per (epochs, lr, seed) under ``--records`` (a re-run skips the cells it has), then a table
(mean and spread over seeds, against PTQ) in ``benchmarks/results/qat_lr.{md,json}``.

    python benchmarks/qat_lr.py --run runs/bench-default --lrs 0.005 0.001 0.0005 0.0002 --seeds 0 1 2
    python benchmarks/qat_lr.py --run runs/bench-default --epochs 0.6 --lrs 0.001 0.0005 --seeds 0 1 2
    python benchmarks/qat_lr.py --run runs/bench-default --lrs 0.0005 --anchors 0 10 100 \
        --records benchmarks/results/qat_anchor_runs --out benchmarks/results/qat_anchor
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.eval_twin import write_results  # noqa: E402
from benchmarks.pipeline_default import cpu_description  # noqa: E402
from compress.checkpoint import load_quantized  # noqa: E402
from compress.config import QatConfig  # noqa: E402
from compress.fake_quant import use_torch_kernels  # noqa: E402
from compress.qat import quantization_aware_distill  # noqa: E402
from distill.data.faces import open_train_set, open_verification  # noqa: E402
from distill.engine.train import TeacherTargets  # noqa: E402
from distill.evaluation import evaluate_sets  # noqa: E402
from distill.teacher import open_teacher_cache  # noqa: E402
from pipeline.stages import checkpoint_embed_fn  # noqa: E402

RECORDS = ROOT / "benchmarks" / "results" / "qat_lr_runs"


def score_quantized(path: Path, pairs, name: str) -> tuple[Any, str]:
    """A quantized checkpoint on one verification set as stage two scores its val set (its INT8 Q/DQ ONNX
    on a CPU, flip fused, 10 folds): (the set's VerificationResult, how it was computed)."""
    model, _ = load_quantized(path)
    embed, how = checkpoint_embed_fn(model, pairs.images, name, quantized=True)
    return evaluate_sets(embed, [pairs], flip=True)[pairs.name], how


def dev_accuracy(path: Path, dev, name: str) -> dict[str, float]:
    """Accuracy of a quantized checkpoint on the dev set, as stage two scores it."""
    result, how = score_quantized(path, dev, name)
    return {"accuracy": result.accuracy, "accuracy_std": result.accuracy_std, "via": how}


def run_cell(
    run: Path, dev, lr: float, seed: int, train, teacher, epochs: float | None = None, anchor: float = 0.0
) -> dict:
    cfg = QatConfig(fp32_anchor=anchor)
    cfg.train.lr, cfg.train.seed = lr, seed
    if epochs is not None:
        cfg.train.epochs = epochs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copy2(run / "qat" / "ptq.pt", work / "ptq.pt")  # the run's own PTQ model (same calibration)
        t0 = time.time()
        outcome = quantization_aware_distill(
            student_path=run / "distill" / "student.pt",
            cfg=cfg,
            dataset=train,
            val_sets=[],  # never the val set
            out_dir=work,
            teacher=teacher,
            progress=False,
        )
        seconds = time.time() - t0
        scored = dev_accuracy(outcome.qat_path, dev, "qat")
    return {
        "lr": lr,
        "epochs": cfg.train.epochs,
        "fp32_anchor": anchor,
        "seed": seed,
        "steps": outcome.metrics["steps"],
        "train_seconds": round(seconds, 1),
        **scored,
    }


def epochs_of(record: dict) -> float:
    """A record's ``qat.train.epochs`` (records written before the epochs axis ran the default, 0.3)."""
    return float(record.get("epochs", QatConfig().train.epochs))


def anchor_of(record: dict) -> float:
    """A record's ``qat.fp32_anchor`` (records written before that axis ran without it, 0)."""
    return float(record.get("fp32_anchor", 0.0))


def cell_name(lr: float, seed: int, epochs: float, anchor: float = 0.0) -> str:
    """Record file stem: the default's epochs and no anchor keep the names of the records written before
    those axes."""
    base = f"lr{lr:g}_seed{seed}" if not anchor else f"anchor{anchor:g}_lr{lr:g}_seed{seed}"
    return base if epochs == QatConfig().train.epochs else f"ep{epochs:g}_{base}"


def table(records: list[dict], ptq: dict) -> list[str]:
    lines = [
        "| qat.train.epochs | steps | qat.train.lr | qat.fp32_anchor | seeds | dev accuracy % (mean ± sd) "
        "| per seed | QAT − PTQ (points) | seeds ≥ PTQ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    settings = {(epochs_of(r), r["lr"], anchor_of(r)) for r in records}
    for epochs, lr, anchor in sorted(settings, key=lambda k: (k[0], -k[1], k[2])):
        cells = [r for r in records if (epochs_of(r), r["lr"], anchor_of(r)) == (epochs, lr, anchor)]
        cells.sort(key=lambda r: r["seed"])
        accs = [100 * r["accuracy"] for r in cells]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        per = ", ".join(f"s{r['seed']} {100 * r['accuracy']:.2f}" for r in cells)
        gain = statistics.mean(accs) - 100 * ptq["accuracy"]
        wins = sum(r["accuracy"] >= ptq["accuracy"] for r in cells)
        lines.append(
            f"| {epochs:g} | {cells[0]['steps']} | {lr:g} | {anchor:g} | {len(cells)} "
            f"| {statistics.mean(accs):.2f} ± {sd:.2f} | {per} | {gain:+.2f} | "
            f"{wins} of {len(cells)} |"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished default run folder (distill, cache, qat/ptq.pt)")
    ap.add_argument("--dev", help="dev set [default: <run>/data/synth_dev.bin]")
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.005, 0.001, 0.0005, 0.0002])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--epochs", type=float, nargs="+", default=[QatConfig().train.epochs], help="qat.train.epochs values"
    )
    ap.add_argument(
        "--anchors", type=float, nargs="+", default=[QatConfig().fp32_anchor], help="qat.fp32_anchor weights"
    )
    ap.add_argument("--records", default=str(RECORDS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "qat_lr"))
    args = ap.parse_args()
    run, records_dir = Path(args.run), Path(args.records)
    records_dir.mkdir(parents=True, exist_ok=True)
    dev = open_verification(args.dev or run / "data" / "synth_dev.bin")
    use_torch_kernels()
    baseline_file = records_dir / "ptq.json"
    if not baseline_file.is_file():
        baseline_file.write_text(
            json.dumps(dev_accuracy(run / "qat" / "ptq.pt", dev, "ptq"), indent=2) + "\n"
        )
    ptq = json.loads(baseline_file.read_text())
    train = open_train_set(run / "data")
    teacher = TeacherTargets(*open_teacher_cache(run / "cache"))
    cells = [(e, lr, a, s) for e in args.epochs for lr in args.lrs for a in args.anchors for s in args.seeds]
    for epochs, lr, anchor, seed in cells:
        path = records_dir / f"{cell_name(lr, seed, epochs, anchor)}.json"
        if path.is_file():
            continue
        record = run_cell(run, dev, lr, seed, train, teacher, epochs=epochs, anchor=anchor)
        record["date"] = date.today().isoformat()
        path.write_text(json.dumps(record, indent=2) + "\n")
        acc, base = 100 * record["accuracy"], 100 * ptq["accuracy"]
        print(f"epochs {epochs:g} lr {lr:g} anchor {anchor:g} seed {seed}: dev {acc:.2f} % (PTQ {base:.2f})")
    records = [json.loads(p.read_text()) for p in sorted(records_dir.glob("*lr*_seed*.json"))]
    header = (
        "# Stage two's settings on the dev set\n\n"
        "`benchmarks/qat_lr.py`: QAT of the default run's student at each setting and seed, scored on "
        f"`{dev.name}` ({len(dev.issame)} pairs of identities in neither training nor the val set; flip "
        "fused, as stage two scores). The val set is never evaluated here."
        f" PTQ (the run's `ptq.pt`): **{100 * ptq['accuracy']:.2f} %**."
    )
    result = {
        "benchmark": "qat_lr",
        "dev_set": dev.name,
        "dev_pairs": int(len(dev.issame)),
        "ptq": ptq,
        "records": records,
        "machine": {"cpu": cpu_description()},
    }
    write_results(Path(args.out), result, header, table(records, ptq))
    return 0


if __name__ == "__main__":
    sys.exit(main())
