"""Benchmark: one onnxruntime session with N threads against N single-thread sessions side by side.

Issue 14: stage two evaluates its PTQ and QAT models through their INT8 Q/DQ ONNX (the graph that ships),
about 2.5 of the stage's 5 minutes on 2 cores, at about half the images per second of the fp32 graph: a
Q/DQ graph is many small element-wise ops (QuantizeLinear, DequantizeLinear, an unfolded BatchNorm) that
two threads barely share. ``OnnxEmbedder(lanes=N)`` splits each batch's rows over N sessions instead;
every evaluation copy (fp32 twins too) uses it.

For the default student (MobileFaceNet, random weights: speed does not depend on the values) as INT8 Q/DQ
ONNX (NNCF, calibrated on random batches) and as fp32 ONNX, the default teacher as fp32 ONNX, and the two
real ONNX teachers of ``../shared/real`` (what ``OnnxTeacher`` runs in lanes in the cache stage), this
times one ``EVAL_BATCH`` batch per call both ways, interleaved over ``--rounds`` rounds (median per way),
and checks the outputs are the same bits. Prints a table and writes
``benchmarks/results/eval_lanes.{json,md}``.

    python benchmarks/eval_lanes.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.eval_twin import MODELS, random_model, time_pairs, write_results  # noqa: E402
from deploy.onnx_export import export_onnx  # noqa: E402
from deploy.runtimes import OnnxEmbedder  # noqa: E402
from distill.cpu_sharing import share_cores_gracefully  # noqa: E402
from distill.evaluation import EVAL_BATCH  # noqa: E402

REAL = ROOT.parent / "shared" / "real"
REAL_TEACHERS = ("teacher_mobileface_nhwc.onnx", "teacher_faceres_nhwc.onnx")


def graphs(tmp: Path) -> dict[str, Path]:
    """The default run's evaluated graphs: INT8 Q/DQ student, fp32 student, fp32 teacher (dynamic batch)."""
    from compress.quantize import quantize_model
    from deploy.onnx_qdq import export_qdq_onnx

    student = random_model(*MODELS["student mobilefacenet"])
    g = torch.Generator().manual_seed(1)
    qmodel = quantize_model(student, [torch.rand(16, 3, 112, 112, generator=g) * 2 - 1 for _ in range(2)])
    int8 = export_qdq_onnx(qmodel.eval(), tmp / "int8.onnx", batch_size=None)
    out = {
        "student mobilefacenet, INT8 Q/DQ ONNX": int8,
        "student mobilefacenet, fp32 ONNX": export_onnx(student, tmp / "student.onnx", batch_size=None),
        "teacher iresnet18 w32, fp32 ONNX": export_onnx(
            random_model(*MODELS["teacher iresnet18 w32"]), tmp / "teacher.onnx", batch_size=None
        ),
    }
    for name in REAL_TEACHERS:  # real teachers nobody here exported, when ../shared/real is beside the repo
        if (REAL / name).is_file():
            out[f"real teacher {name} (../shared/real)"] = REAL / name
    return out


def main() -> int:
    share_cores_gracefully()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_lanes"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in graphs(Path(tmp)).items():
            one = OnnxEmbedder(path, args.threads, spin=False)
            lanes = OnnxEmbedder(path, args.threads, spin=False, lanes=args.threads)
            x = np.random.default_rng(0).uniform(-1, 1, (EVAL_BATCH, *one.input_chw)).astype(np.float32)
            secs = time_pairs({"one": one.embed, "lanes": lanes.embed}, x, args.rounds)
            rows.append(
                {
                    "model": label,
                    "one_session_img_s": EVAL_BATCH / secs["one"],
                    "lanes": lanes.lanes,
                    "lanes_img_s": EVAL_BATCH / secs["lanes"],
                    "speedup": secs["one"] / secs["lanes"],
                    "same_bits": bool(np.array_equal(one.embed(x), lanes.embed(x))),
                }
            )
    load_end = os.getloadavg()[0]
    result = {
        "benchmark": "eval_lanes",
        "date": date.today().isoformat(),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, load average {load_start:.2f} at start, "
            f"{load_end:.2f} at the end"
        ),
        "threads": args.threads,
        "batch": EVAL_BATCH,
        "rounds": args.rounds,
        "rows": rows,
    }
    table = [
        f"| graph | one session, {args.threads} threads (img/s) | single-thread sessions (img/s) | "
        "speed-up | same bits |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['one_session_img_s']:.1f} | {r['lanes_img_s']:.1f} ({r['lanes']}) | "
            f"{r['speedup']:.2f}x | {'yes' if r['same_bits'] else 'NO'} |"
        )
    header = (
        f"# Evaluation lanes ({result['date']})\n\n{result['machine']}; batch {EVAL_BATCH} per call, "
        f"median of {args.rounds} interleaved rounds; random weights. Every evaluation copy (the fp32 "
        "twins, stage two's INT8 copies) runs with lanes (`OnnxEmbedder(lanes=...)`); latency: one session."
    )
    write_results(Path(args.out), result, header, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
