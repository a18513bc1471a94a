"""Benchmark: two processes on the same cores, the libraries' default thread spinning against ours.

Why: a run beside another job (a test suite, a second run) slowed far more than sharing the cores
explains; ``distill/cpu_sharing.py`` sets ``GOMP_SPINCOUNT`` before torch loads and stops onnxruntime's
spinning in sessions that only evaluate. This measures, in fresh processes with 2 threads each: a
MobileFaceNet training step (batch 64), the default teacher's inference (iResNet-18 width 32, batch 32),
MobileFaceNet's batch-1 latency, and MobileFaceNet as an onnxruntime evaluation session (batch 32), each
alone and two at once (and beside a process left at the defaults), under the defaults (libgomp: 300,000
spins; onnxruntime: spinning) and under facekd's. Rounds alternate the settings; medians over rounds.
"Fair" sharing of 2 cores by 2 processes is 2x the solo time. Writes a table and JSON.

    python benchmarks/cpu_sharing.py [--rounds 3] [--json benchmarks/results/cpu_sharing.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.cpu_sharing import GOMP_SPINCOUNT  # noqa: E402

WORKLOADS = ("train_step", "teacher_batch", "latency_b1", "onnx_eval_batch")
SETTINGS = {"library defaults": None, "facekd": GOMP_SPINCOUNT}


def work(kind: str, reps: int, facekd: bool) -> float:
    """Median seconds of ``reps`` timed repetitions of ``kind`` (after one warm-up), in this process."""
    import torch

    from distill.models.factory import build_backbone

    torch.set_num_threads(2)
    torch.manual_seed(0)
    if kind == "onnx_eval_batch":
        import tempfile

        import numpy as np
        import onnxruntime as ort

        from deploy.onnx_export import export_onnx
        from distill.cpu_sharing import stop_spinning

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(
                build_backbone("mobilefacenet", 128).eval(), Path(tmp) / "m.onnx", batch_size=None
            )
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
            session = ort.InferenceSession(
                str(path), stop_spinning(opts) if facekd else opts, providers=["CPUExecutionProvider"]
            )
        feed = {session.get_inputs()[0].name: np.zeros((32, 3, 112, 112), np.float32)}

        def once() -> None:
            session.run(None, feed)
    elif kind == "train_step":
        model = build_backbone("mobilefacenet", 128).train().to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(64, 3, 112, 112).to(memory_format=torch.channels_last)

        def once() -> None:
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        teacher = kind == "teacher_batch"
        arch = ("iresnet18", 512, {"base_width": 32}) if teacher else ("mobilefacenet", 128, {})
        model = build_backbone(arch[0], arch[1], **arch[2]).eval()
        x = torch.randn(32 if teacher else 1, 3, 112, 112)
        reps = reps if teacher else reps * 25

        def once() -> None:
            with torch.inference_mode():
                model(x)

    once()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def launch(kind: str, reps: int, spincount: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    cmd = [sys.executable, __file__, "--worker", kind, "--reps", str(reps)]
    if spincount is not None:  # facekd's settings
        env["GOMP_SPINCOUNT"] = spincount
        cmd.append("--facekd")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def measure(
    kind: str, reps: int, spincount: str | None, together: int, beside_default: bool = False
) -> float:
    """Median step seconds of each of ``together`` simultaneous processes, averaged; with
    ``beside_default``, of one process next to one left at the libraries' defaults (a foreign job)."""
    procs = [launch(kind, reps, spincount) for _ in range(together)]
    neighbour = launch(kind, reps, None) if beside_default else None
    outs = [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if neighbour is not None:
        neighbour.communicate()
    if any(p.returncode for p in procs):
        raise SystemExit(f"a {kind} worker failed")
    return statistics.fmean(outs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=4, help="timed repetitions per process (x25 for latency)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "cpu_sharing.json"))
    ap.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)
    ap.add_argument("--facekd", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(work(args.worker, args.reps, args.facekd), flush=True)
        return 0
    t0, load_start = time.time(), os.getloadavg()[0]
    raw: dict[str, dict[str, dict[str, list[float]]]] = {
        k: {s: {"alone": [], "two": [], "beside": []} for s in SETTINGS} for k in WORKLOADS
    }
    for r in range(args.rounds):
        order = list(SETTINGS.items()) if r % 2 == 0 else list(SETTINGS.items())[::-1]
        for kind in WORKLOADS:
            for name, spin in order:
                raw[kind][name]["alone"].append(measure(kind, args.reps, spin, 1))
                if kind != "latency_b1":
                    raw[kind][name]["two"].append(measure(kind, args.reps, spin, 2))
                    if spin is not None:  # two defaults = the "two at once" case
                        raw[kind][name]["beside"].append(
                            measure(kind, args.reps, spin, 1, beside_default=True)
                        )
        print(f"round {r + 1}/{args.rounds} done ({time.time() - t0:.0f} s)", flush=True)
    rows = []
    for kind in WORKLOADS:
        for name in SETTINGS:
            alone = statistics.median(raw[kind][name]["alone"])
            two = statistics.median(raw[kind][name]["two"]) if raw[kind][name]["two"] else None
            beside = statistics.median(raw[kind][name]["beside"]) if raw[kind][name]["beside"] else two
            rows.append(
                {
                    "workload": kind,
                    "setting": name,
                    "alone_ms": round(1000 * alone, 2),
                    "two_at_once_ms": None if two is None else round(1000 * two, 2),
                    "slowdown_two_at_once": None if two is None else round(two / alone, 2),
                    "beside_a_default_job_ms": None if beside is None else round(1000 * beside, 2),
                }
            )
    report: dict[str, Any] = {
        "benchmark": "cpu_sharing",
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_start_end": [load_start, os.getloadavg()[0]],
        "rounds": args.rounds,
        "facekd_spincount": GOMP_SPINCOUNT,
        "rows": rows,
        "raw_seconds": raw,
        "note": "fair sharing of 2 cores by 2 two-thread processes = 2x the solo time; facekd = "
        f"GOMP_SPINCOUNT={GOMP_SPINCOUNT} and, for onnx_eval_batch, onnxruntime's spinning off",
    }
    report["wall_seconds"] = round(time.time() - t0, 1)
    lines = [
        f"# Two processes on the same cores: {report['machine']} ({report['date']})",
        "",
        "| workload | setting | alone ms | each, two at once ms | slowdown (fair = 2.0) | "
        "beside a job at the defaults ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        two = "-" if row["two_at_once_ms"] is None else f"{row['two_at_once_ms']:.1f}"
        slow = "-" if row["slowdown_two_at_once"] is None else f"{row['slowdown_two_at_once']:.2f}x"
        bes = "-" if row["beside_a_default_job_ms"] is None else f"{row['beside_a_default_job_ms']:.1f}"
        lines.append(
            f"| {row['workload']} | {row['setting']} | {row['alone_ms']:.1f} | {two} | {slow} | {bes} |"
        )
    start, end = report["load_average_at_start_end"]
    lines += [
        "",
        f"Medians of {args.rounds} rounds in fresh processes, 2 threads each, random weights; load average "
        f"{start:.2f} at the start, {end:.2f} at the end (its own workers included); "
        f"wall {report['wall_seconds']:.0f} s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
