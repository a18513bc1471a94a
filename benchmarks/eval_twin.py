"""Benchmark: how fast each model of the default run is evaluated, as it is and through its twin.

Issue 14: evaluations were most of the default run's time on 2 cores (teacher, student, the fp16 and
INT8 files: 4,800 forward passes each with the mirror). Two copies that compute the same embeddings faster
are used when they reproduce the original on a sample (``deploy/runtimes.py``):

  * a float PyTorch checkpoint through onnxruntime (``module_evaluation_twin``): BatchNorm folded
    into the convolutions, which eager PyTorch runs op by op;
  * a float16 ONNX with its PRelu in float32 between casts (``evaluation_twin``): onnxruntime's CPU has
    no float16 PRelu kernel and runs the op's function body instead; the rewrite is exact.

For the default preset's teacher (iResNet-18, half width, 512-d) and student (MobileFaceNet, 128-d), with
random weights and BatchNorm statistics (speed does not depend on the values), this times one
``EVAL_BATCH`` batch per call, interleaved over ``--rounds`` rounds, median per model, and reports images
per second, the speed-up and the largest difference from the original (relative to its largest value).
Prints a table and writes ``benchmarks/results/eval_twin.{json,md}``.

    python benchmarks/eval_twin.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.onnx_export import export_onnx  # noqa: E402
from deploy.onnx_fp16 import convert_onnx_fp16  # noqa: E402
from deploy.runtimes import OnnxEmbedder, TorchEmbedder, evaluation_twin, module_evaluation_twin  # noqa: E402
from distill.evaluation import EVAL_BATCH  # noqa: E402
from distill.models.factory import build_backbone  # noqa: E402

MODELS = {  # the default preset's (pipeline/config.py, distill/config.py)
    "teacher iresnet18 w32": ("iresnet18", 512, {"base_width": 32}),
    "student mobilefacenet": ("mobilefacenet", 128, {}),
}


def random_model(arch: str, dim: int, params: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_backbone(arch, dim, **params)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def time_pairs(calls: dict[str, Callable[[Any], object]], x: Any, rounds: int) -> dict[str, float]:
    """Median seconds of one ``call(x)`` per name, the calls taking turns in every round (so a change in
    the machine's load hits them all alike); benchmarks/teacher_cache.py times its ways with it too."""
    for call in calls.values():
        call(x)  # warm-up
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, call in calls.items():
            start = time.perf_counter()
            call(x)
            samples[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / (np.abs(a).max() or 1.0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_twin"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = np.random.default_rng(0).uniform(-1, 1, (EVAL_BATCH, 3, 112, 112)).astype(np.float32)
    sample = x[:16]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, (arch, dim, params) in MODELS.items():
            model = random_model(arch, dim, params)
            own = TorchEmbedder(model, num_threads=args.threads, name=label)
            twin, how = module_evaluation_twin(model, sample, args.threads, arch)
            rows.append(compare(f"{label}: PyTorch checkpoint", own, twin, how, x, args.rounds))
            if arch == "mobilefacenet":
                fp32 = export_onnx(model, Path(tmp) / "student.onnx", batch_size=None)
                fp16 = OnnxEmbedder(convert_onnx_fp16(fp32, Path(tmp) / "fp16.onnx"), args.threads)
                twin16, how16 = evaluation_twin(fp16, sample)
                rows.append(compare(f"{label}: float16 ONNX", fp16, twin16, how16, x, args.rounds))
    load = os.getloadavg()
    result = {
        "benchmark": "eval_twin",
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.2f} at the end",
        "threads": args.threads,
        "batch": EVAL_BATCH,
        "rounds": args.rounds,
        "rows": rows,
    }
    table = [
        "| model | as it is (img/s) | twin (img/s) | speed-up | max rel. diff | twin |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['original_img_s']:.1f} | {r['twin_img_s']:.1f} | {r['speedup']:.2f}x | "
            f"{r['max_rel_diff']:.1e} | {r['twin'].replace('|', chr(92) + '|')} |"
        )
    header = (
        f"# Evaluation twins ({result['date']})\n\n{result['machine']}; {args.threads} threads, batch "
        f"{EVAL_BATCH}, median of {args.rounds} interleaved rounds; random weights."
    )
    write_results(Path(args.out), result, header, table)
    return 0


# In a results .md, this line and everything after it are a person's notes: a re-run keeps them.
NOTES_MARKER = "<!-- notes: kept when the benchmark rewrites this file -->"


def write_results(out: Path, result: dict, header: str, table: list[str]) -> None:
    """Print the table; write ``out``.json (``result``) and ``out``.md (``header``, then the table, then
    the notes the previous .md kept below ``NOTES_MARKER``)."""
    text = "\n".join(table)
    print(text)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = out.with_suffix(".md")
    old = md.read_text() if md.is_file() else ""
    notes = "\n" + old[old.index(NOTES_MARKER) :].rstrip("\n") + "\n" if NOTES_MARKER in old else ""
    md.write_text(header + "\n\n" + text + "\n" + notes)


def compare(label: str, original, twin, how: str, x: np.ndarray, rounds: int) -> dict:
    secs = time_pairs({"original": original.embed, "twin": twin.embed}, x, rounds)
    return {
        "model": label,
        "original_img_s": len(x) / secs["original"],
        "twin_img_s": len(x) / secs["twin"],
        "speedup": secs["original"] / secs["twin"],
        "max_rel_diff": rel_diff(original.embed(x), twin.embed(x)),
        "twin": how,
    }


if __name__ == "__main__":
    raise SystemExit(main())
