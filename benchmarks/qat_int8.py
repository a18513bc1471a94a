"""Benchmark: stage two (NNCF QAT) against the fp32 student, on the exact INT8 artifacts that ship.

In one run folder (default preset unless told otherwise; stages already current are reused):
  1. ``all --target android``: fp32, fp16 and INT8 .tflite (INT8 scales carried from NNCF), measured
     side by side on this host's LiteRT interpreter (same threads);
  2. the INT8 .tflite again with ``export.tflite_int8_scales: calibrate`` (LiteRT's own calibration of
     the QAT weights), to choose the better default;
  3. ``measure --target jetson``: fp32, fp16 and the INT8 Q/DQ ONNX, run with onnxruntime here.
Checks the issue's targets: INT8 .tflite and INT8 Q/DQ ONNX within 0.3 points of fp32; QAT >= PTQ (the
fake-quant models); INT8 .tflite size <= 30 % and host LiteRT latency <= 0.7x of the fp32 .tflite.
Prints a table and writes ``benchmarks/results/qat_int8.json``.

    python benchmarks/qat_int8.py [--out runs/bench-qat] [--preset default] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> float:
    t0 = time.time()
    cmd = [sys.executable, "-m", "pipeline", *args, "--no-progress"]
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed with exit code {proc.returncode}")
    return time.time() - t0


def rows(out: Path) -> dict[tuple[str, str], dict]:
    data = json.loads((out / "results.json").read_text())
    return {(r["name"], r["target"]): r for r in data["rows"]}


def int8_details(out: Path) -> dict:
    arts = json.loads((out / "export" / "artifacts.json").read_text())["artifacts"]
    art = next(a for a in arts if a["name"] == "student-tflite-int8")
    return {"details": art.get("details"), "parity": art.get("parity")}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-qat")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--fresh", action="store_true", help="delete the run folder first")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "qat_int8.json"))
    args = ap.parse_args()
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    base = ["--preset", args.preset, "--out", str(out)]
    seconds = {"android_carry": run(["all", "--target", "android", *base])}
    android = {"carry": rows(out)}
    details = {"carry": int8_details(out)}
    manifest = json.loads((out / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "calibrate.yaml"
        cfg.write_text("export:\n  tflite_int8_scales: calibrate\n")
        seconds["android_calibrate"] = run(["measure", "--target", "android", "--config", str(cfg), *base])
    android["calibrate"] = rows(out)
    details["calibrate"] = int8_details(out)
    seconds["jetson"] = run(["measure", "--target", "jetson", *base])
    jetson = rows(out)

    host = android["carry"]
    fp32_tfl = host[("student-tflite-fp32", "host")]
    fp32_onnx = jetson[("student-onnx-fp32", "host")]
    ptq = host[("student-ptq-pytorch-int8", "host")]
    qat = host[("student-qat-pytorch-int8", "host")]
    int8 = {mode: android[mode][("student-tflite-int8", "host")] for mode in ("carry", "calibrate")}
    best = max(int8, key=lambda m: (int8[m]["accuracy"], -int8[m]["latency_ms"]["p50"]))
    qdq = jetson[("student-onnx-int8", "host")]

    table = [
        ("student fp32 (PyTorch)", host[("student-pytorch-fp32", "host")]),
        ("PTQ fake-quant (PyTorch)", ptq),
        ("QAT fake-quant (PyTorch)", qat),
        ("fp32 .tflite", fp32_tfl),
        ("fp16 .tflite", host[("student-tflite-fp16", "host")]),
        ("INT8 .tflite, NNCF scales carried", int8["carry"]),
        ("INT8 .tflite, LiteRT calibration", int8["calibrate"]),
        ("fp32 ONNX", fp32_onnx),
        ("INT8 Q/DQ ONNX (onnxruntime)", qdq),
    ]
    print()
    head = f"{'row':<36}{'acc %':>8}{'± std':>8}{'TAR@1e-2':>10}{'p50 ms':>9}{'MB':>7}"
    print(head)
    for label, r in table:
        lat = (r.get("latency_ms") or {}).get("p50")
        tar = (r.get("tar_at_far") or {}).get("0.01")
        print(
            f"{label:<36}{pct(r['accuracy']):>8}{pct(r['accuracy_std']):>8}{pct(tar):>10}"
            f"{'-' if lat is None else f'{lat:.2f}':>9}{r['size_bytes'] / 1e6:>7.2f}"
        )
    drop = {
        "tflite_int8_vs_fp32_pts": 100 * (fp32_tfl["accuracy"] - int8[best]["accuracy"]),
        "onnx_int8_vs_fp32_pts": 100 * (fp32_onnx["accuracy"] - qdq["accuracy"]),
    }
    size_ratio = int8[best]["size_bytes"] / fp32_tfl["size_bytes"]
    latency_ratio = int8[best]["latency_ms"]["p50"] / fp32_tfl["latency_ms"]["p50"]
    checks = {
        "INT8 .tflite within 0.3 pts of fp32": drop["tflite_int8_vs_fp32_pts"] <= 0.3,
        "INT8 Q/DQ ONNX within 0.3 pts of fp32": drop["onnx_int8_vs_fp32_pts"] <= 0.3,
        "QAT >= PTQ (fake-quant)": qat["accuracy"] >= ptq["accuracy"],
        "INT8 .tflite size <= 30% of fp32": size_ratio <= 0.30,
        "INT8 .tflite p50 <= 0.7x fp32 (host LiteRT)": latency_ratio <= 0.7,
    }
    print()
    print(f"better INT8 .tflite path: {best}; size ratio {size_ratio:.3f}; latency ratio {latency_ratio:.3f}")
    print(f"accuracy drop vs fp32 (points): {json.dumps({k: round(v, 2) for k, v in drop.items()})}")
    for name, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
    keep = (
        "name",
        "target",
        "measured_on",
        "accuracy",
        "accuracy_std",
        "tar_at_far",
        "latency_ms",
        "size_bytes",
    )
    record = {
        "benchmark": "qat_int8",
        "preset": args.preset,
        "seconds": seconds,
        "stage_seconds": {k: v["seconds"] for k, v in manifest["stages"].items()},
        "qat_metrics": manifest["stages"]["qat"]["metrics"],
        "rows": {label: {k: r.get(k) for k in keep} for label, r in table},
        "int8_tflite_details": details,
        "better_int8_tflite_path": best,
        "accuracy_drop_pts": drop,
        "size_ratio_int8_tflite": size_ratio,
        "latency_ratio_int8_tflite": latency_ratio,
        "checks": checks,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
