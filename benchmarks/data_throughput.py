"""Benchmark: can the CPU feed the GPU? RecordIO read + JPEG decode + augmentation + collation.

Issue 14: a GPU box trains MobileFaceNet far faster than 2 CPU cores decode JPEGs. Target: at least
2,500 images/s per core for 112x112 JPEGs through the training input pipeline. On the synthetic
``train.rec`` (``--data DIR``, or generated here), measured in stages, each the median over rounds:

  (a) read      RecordIO record read + IRHeader unpack (``RecFaceDataset.read_encoded``)
  (b) decode    + JPEG decode to RGB (``RecFaceDataset[i]``: the reader's ``decode_rgb``)
  (c) augment   + to-tensor (the training loop's ``_Batches``), stack a batch, ``to_model_input``
                (-> float NCHW in [-1, 1]) and the random horizontal flip, all in one process
  (d) loader    the training loop's own path: ``DataLoader(_Batches(ds), batch_sampler, num_workers=W)``
                (collation in the workers) + normalise + flip in the main process, W in ``--workers``

Per core = images per CPU-second (this process and its DataLoader workers, ``getrusage``), so a busy
neighbour on a shared VM changes it much less than the wall-clock rate (also reported). torch and
OpenCV run on one thread so one timed loop uses one core.

The decoders are compared on the same JPEG bytes in memory (decode only): Pillow as the project calls it,
simplejpeg, OpenCV, imagecodecs, PyTurboJPEG and Pillow-SIMD (in a child process: it replaces Pillow),
each where it imports; pixels are compared with Pillow's (max abs difference, images that differ).
Stages (a)-(d) run with each decoder the reader supports (``FACEKD_JPEG_DECODER``: pil, simplejpeg).

Last, what a 16-core box would feed (per-core rate x 16: extrapolated, linear) against what the student
consumes in training on the catalogue's GPUs: the roofline estimator's forward time of MobileFaceNet at
the training batch, x3 for forward + backward + update (an estimate, labelled as such).

    python benchmarks/data_throughput.py [--data DIR] [--rounds 3] [--workers 0,1,2] [--batch 128]
        [--extra-path DIR ...] [--pillow-simd DIR] [--turbojpeg-lib FILE] [--devices-dir DIR] [--tiny]

A GPU that is not in the catalogue (``host-gpu`` ships without figures): copy
``devices/catalogue/host-gpu.yaml`` into a folder, fill in its datasheet figures, pass the folder as
``--devices-dir``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_PER_CORE = 2500.0
CORES_EXTRAPOLATED = 16
TRAIN_TO_FORWARD = 3.0  # forward + backward (~2x forward) + update, the usual rule of thumb


# ------------------------------------------------------------------------------------------- timing
def cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (DataLoader workers are joined at the end)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(n: int, fn: Callable[[], Any]) -> dict[str, float]:
    """Run ``fn`` once (it handles ``n`` images): images per CPU-second and per wall second."""
    c0, w0 = cpu_seconds(), time.perf_counter()
    fn()
    cpu, wall = cpu_seconds() - c0, time.perf_counter() - w0
    return {"per_core": n / max(cpu, 1e-9), "wall": n / max(wall, 1e-9), "cpu_s": cpu, "wall_s": wall}


def summarise(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Medians over rounds, with the per-round values."""
    return {
        "per_core_median": round(statistics.median(r["per_core"] for r in runs), 1),
        "wall_median": round(statistics.median(r["wall"] for r in runs), 1),
        "per_core_rounds": [round(r["per_core"], 1) for r in runs],
        "wall_rounds": [round(r["wall"], 1) for r in runs],
    }


# ----------------------------------------------------------------------------------------- decoders
def pil_project(data: bytes) -> Any:
    from distill.data.recordio import decode_rgb

    return decode_rgb(data, "bench", None, decoder="pil")


def decoder_table(args: argparse.Namespace) -> dict[str, tuple[Callable[[bytes], Any] | None, str, str]]:
    """name -> (decode function or None, version, why it is unavailable)."""
    import numpy as np
    import PIL

    out: dict[str, tuple[Callable[[bytes], Any] | None, str, str]] = {
        "pil": (pil_project, f"Pillow {PIL.__version__}", "")
    }
    try:
        import simplejpeg

        def sj(data: bytes) -> Any:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False)

        out["simplejpeg"] = (sj, f"simplejpeg {simplejpeg.__version__}", "")
    except ImportError as exc:
        out["simplejpeg"] = (None, "", f"not installed ({exc})")
    try:
        import cv2

        cv2.setNumThreads(1)

        def ocv(data: bytes) -> Any:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

        out["opencv"] = (ocv, f"opencv-python-headless {cv2.__version__}", "")
    except ImportError as exc:
        out["opencv"] = (None, "", f"not installed ({exc})")
    try:
        import imagecodecs

        out["imagecodecs"] = (imagecodecs.jpeg8_decode, f"imagecodecs {imagecodecs.__version__}", "")
    except ImportError as exc:
        out["imagecodecs"] = (None, "", f"not installed ({exc})")
    try:
        import turbojpeg

        try:
            tj = turbojpeg.TurboJPEG(args.turbojpeg_lib) if args.turbojpeg_lib else turbojpeg.TurboJPEG()

            def tjd(data: bytes) -> Any:
                return tj.decode(data, pixel_format=turbojpeg.TJPF_RGB)

            out["turbojpeg"] = (tjd, f"PyTurboJPEG {turbojpeg.__version__}", "")
        except Exception as exc:  # noqa: BLE001 - it raises RuntimeError/OSError for a missing library
            out["turbojpeg"] = (None, "", f"libturbojpeg not loadable: {str(exc).splitlines()[0]}")
    except ImportError as exc:
        out["turbojpeg"] = (None, "", f"not installed ({exc})")
    return out


def pixel_check(ref: list[Any], fn: Callable[[bytes], Any], blobs: list[bytes]) -> dict[str, int]:
    import numpy as np

    worst, differing = 0, 0
    for want, data in zip(ref, blobs, strict=True):
        got = np.asarray(fn(data))
        if got.shape != want.shape:
            return {"max_abs_diff": -1, "images_differing": len(ref), "checked": len(ref)}
        diff = int(np.abs(got.astype(np.int16) - want.astype(np.int16)).max())
        worst, differing = max(worst, diff), differing + (diff > 0)
    return {"max_abs_diff": worst, "images_differing": differing, "checked": len(ref)}


def pillow_simd_child(path: str, blobs_file: str, rounds: int) -> int:
    """Child mode: decode with Pillow-SIMD from ``path`` (it shadows Pillow), print JSON to stdout."""
    sys.path.insert(0, path)
    import numpy as np
    import PIL
    from PIL import Image, features

    blobs, ref = pickle.loads(Path(blobs_file).read_bytes())

    def dec(data: bytes) -> Any:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)

    runs = [timed(len(blobs), lambda: [dec(b) for b in blobs]) for _ in range(rounds)]
    check = pixel_check(ref, dec, blobs[: len(ref)])
    version = f"Pillow-SIMD {PIL.__version__} (libjpeg {features.version('jpg')}) from {PIL.__file__}"
    print(json.dumps({"runs": runs, "check": check, "version": version}))
    return 0


def compare_decoders(args: argparse.Namespace, blobs: list[bytes]) -> dict[str, Any]:
    """Decode-only rate of every decoder on the same bytes, rotating the order every round."""
    table = decoder_table(args)
    ref = [pil_project(b) for b in blobs[: args.check_images]]
    names = [n for n, (fn, _, _) in table.items() if fn is not None]
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = table[name][0]
            assert fn is not None
            runs[name].append(timed(len(blobs), lambda fn=fn: [fn(b) for b in blobs]))
    out: dict[str, Any] = {}
    for name, (fn, version, why) in table.items():
        if fn is None:
            out[name] = {"available": False, "why": why}
            continue
        out[name] = {"available": True, "version": version, **summarise(runs[name])}
        out[name]["pixels_vs_pil"] = pixel_check(ref, fn, blobs[: len(ref)])
    if args.pillow_simd:
        out["pillow-simd"] = run_pillow_simd(args, blobs, ref)
    else:
        out["pillow-simd"] = {
            "available": False,
            "why": "not measured (--pillow-simd DIR: a pip --target dir)",
        }
    base = out["pil"]["per_core_median"]
    for entry in out.values():
        if entry.get("available"):
            entry["x_pil"] = round(entry["per_core_median"] / base, 2)
    return out


def run_pillow_simd(args: argparse.Namespace, blobs: list[bytes], ref: list[Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-simd-") as tmp:
        f = Path(tmp) / "blobs.pkl"
        f.write_bytes(pickle.dumps((blobs, ref)))
        cmd = [sys.executable, __file__, "--child-pillow-simd", args.pillow_simd, "--child-input", str(f)]
        cmd += ["--rounds", str(args.rounds)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"available": False, "why": f"child failed: {proc.stderr.strip().splitlines()[-1:]}"}
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "available": True,
        "version": got["version"],
        **summarise(got["runs"]),
        "pixels_vs_pil": got["check"],
    }


# ------------------------------------------------------------------------------------------- stages
def measure_stages(args: argparse.Namespace, data_dir: Path, decoder: str) -> dict[str, Any]:
    """Stages (a)-(d) with the reader's ``decoder``, medians over rounds."""
    import numpy as np
    import torch

    from distill.data.recordio import RecFaceDataset
    from distill.data.transforms import hflip_nchw, to_model_input, train_input
    from distill.engine.train import _Batches

    saved = os.environ.get("FACEKD_JPEG_DECODER")
    os.environ["FACEKD_JPEG_DECODER"] = decoder  # forked DataLoader workers inherit it
    ds = RecFaceDataset(data_dir)
    n = min(len(ds), args.images) if args.images else len(ds)
    idx = np.random.default_rng(0).permutation(len(ds))[:n].tolist()
    batches = [idx[i : i + args.batch] for i in range(0, n - args.batch + 1, args.batch)]
    n_batched = sum(len(b) for b in batches)
    items = _Batches(ds)
    gen = torch.Generator().manual_seed(0)

    def flips(n: int) -> torch.Tensor:
        return torch.rand(n, generator=gen) < 0.5

    def float_flip(images: torch.Tensor) -> torch.Tensor:
        """The training loop before this benchmark: normalise, then mirror in float (on the CPU)."""
        x = to_model_input(images)
        return torch.where(flips(images.shape[0])[:, None, None, None], hflip_nchw(x), x)

    def stage_c(augment: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            for b in batches:
                augment(torch.stack([items[i][0] for i in b]))

        return run

    def stage_d(workers: int, augment: Callable[[torch.Tensor], Any]) -> Callable[[], None]:
        def run() -> None:
            loader = torch.utils.data.DataLoader(items, batch_sampler=batches, num_workers=workers)
            for images, _, _ in loader:
                augment(images)

        return run

    def on_cpu(images: torch.Tensor) -> torch.Tensor:
        return train_input(images, flips(images.shape[0]), "cpu")

    top = max(args.workers)
    stages: dict[str, Callable[[], None]] = {
        "a_read": lambda: [ds.read_encoded(i) for i in idx],
        "b_decode": lambda: [ds[i] for i in idx],
        "c_augment_float_flip": stage_c(float_flip),
        "c_augment": stage_c(on_cpu),
        **{f"d_loader_w{w}": stage_d(w, on_cpu) for w in args.workers},
        # a GPU box's host: the uint8 batch goes to the GPU, which mirrors and normalises (train_input)
        f"e_gpu_host_w{top}": stage_d(top, lambda images: images),
    }
    counts = {k: (n if k in ("a_read", "b_decode") else n_batched) for k in stages}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in stages}
    for r in range(args.rounds):
        for name in stages:
            runs[name].append(timed(counts[name], stages[name]))
        print(
            f"  [{decoder}] round {r + 1}/{args.rounds}: "
            + ", ".join(f"{k} {v[-1]['per_core']:.0f}/core" for k, v in runs.items()),
            flush=True,
        )
    ds.close()
    if saved is None:
        os.environ.pop("FACEKD_JPEG_DECODER")
    else:
        os.environ["FACEKD_JPEG_DECODER"] = saved
    out = {k: {"images": counts[k], **summarise(v)} for k, v in runs.items()}
    for w in args.workers:
        # processes that share the cores: the workers and the main process (which normalises and flips)
        out[f"d_loader_w{w}"]["processes"] = w + 1 if w else 1
    out[f"e_gpu_host_w{top}"]["processes"] = top + 1 if top else 1
    return out


# ------------------------------------------------------------------------------------ GPU estimates
def gpu_consumption(args: argparse.Namespace) -> dict[str, Any]:
    """Estimated training images/s of the student on every catalogue GPU (roofline forward x 3)."""
    import torch

    from deploy.onnx_export import export_onnx
    from devices.catalogue import load_catalogue
    from devices.estimate import estimate_latency
    from distill.errors import InputError
    from distill.models.factory import build_backbone

    torch.manual_seed(0)
    model = build_backbone("mobilefacenet", embedding_dim=args.student_dim)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mfn-") as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "student.onnx", batch_size=args.batch)
        for name, device in sorted(load_catalogue(args.devices_dir).items()):
            if device.estimate.unit != "gpu":
                continue
            for precision in ("fp16", "fp32"):
                try:
                    est = estimate_latency(onnx_path, device, precision=precision, batch_size=args.batch)
                except InputError as exc:
                    skipped[name] = str(exc).split(": ", 1)[-1]
                    break
                step_s = TRAIN_TO_FORWARD * est.ms / 1e3
                rows.append(
                    {
                        "device": name,
                        "precision": precision,
                        "forward_ms_per_batch": round(est.ms, 3),
                        "train_images_per_s": round(args.batch / step_s, 1),
                        "label": "estimated",
                    }
                )
    return {
        "student": f"mobilefacenet, {args.student_dim}-d embedding, 112x112",
        "batch": args.batch,
        "method": (
            f"devices.estimate roofline forward time of the exported student at batch {args.batch} "
            f"x {TRAIN_TO_FORWARD:g} (forward + backward ~2x forward + update); margin head and optimizer "
            "state not counted; fp16 = AMP on CUDA. An estimate, not a measurement."
        ),
        "rows": rows,
        "skipped": skipped,
    }


# ---------------------------------------------------------------------------------------------- main
def synth_data(out: Path, identities: int, per_identity: int) -> Path:
    from distill.data.synth import SynthSpec, synthesize

    synthesize(
        out, SynthSpec(train_identities=identities, images_per_identity=per_identity, val_pairs=0), False
    )
    return out


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}


def fmt(x: float) -> str:
    return f"{x:,.0f}"


def report(res: dict[str, Any]) -> str:
    """The markdown report (also printed)."""
    lines = [
        "# Data throughput: RecordIO read + JPEG decode + augmentation + collation",
        "",
        f"Measured {res['date']} on {res['machine']['cores']} cores ({res['machine']['cpu']}). "
        f"{res['note']} Load average before/after: {res['load_before']} / {res['load_after']}. "
        f"Data: {res['data']['images']} synthetic 112x112 JPEGs "
        f"({res['data']['mean_jpeg_bytes']:.0f} B mean), "
        f"{res['rounds']} rounds, medians; batch {res['batch']}. Per core = images per CPU-second of all "
        "processes (main + DataLoader workers). "
        "Script: [`benchmarks/data_throughput.py`](../data_throughput.py) · [← README](../../README.md)",
        "",
        "## Decoders (decode only, same JPEG bytes)",
        "",
        "| decoder | version | img/s per core | x Pillow | max abs diff vs Pillow | images differing |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in res["decoders"].items():
        if not d.get("available"):
            lines.append(f"| {name} | not measured: {d['why']} | | | | |")
            continue
        px = d["pixels_vs_pil"]
        lines.append(
            f"| {name} | {d['version']} | {fmt(d['per_core_median'])} | {d['x_pil']:.2f} | "
            f"{px['max_abs_diff']} | {px['images_differing']} / {px['checked']} |"
        )
    lines += [
        "",
        "## Stages (the project's reader, per decoder)",
        "",
        "| stage | " + " | ".join(f"{d} img/s per core | {d} img/s wall" for d in res["stages"]) + " |",
        "|---|" + "---|---|" * len(res["stages"]),
    ]
    names = list(next(iter(res["stages"].values())))
    for stage in names:
        cells = []
        for d in res["stages"].values():
            cells += [fmt(d[stage]["per_core_median"]), fmt(d[stage]["wall_median"])]
        lines.append(f"| {stage_label(stage)} | " + " | ".join(cells) + " |")
    t = res["target"]
    lines += ["", f"Target: >= {fmt(t['per_core'])} img/s per core through stage {t['stage']}:"]
    for dec, v in t["by_decoder"].items():
        lines.append(f"* {dec}: {fmt(v['per_core'])} img/s per core: **{'met' if v['met'] else 'not met'}**")
    feed = res["feed_16_core"]
    g = res["gpu_estimates"]
    lines += [
        "",
        f"## What a {CORES_EXTRAPOLATED}-core box would feed vs what the student consumes",
        "",
        f"Feed: stage {t['stage']} per-core rate x {CORES_EXTRAPOLATED} (**extrapolated**, linear, all cores "
        f"decoding, no contention). Consumption: **estimated** ({g['method']}) Student: {g['student']}.",
        "",
        "| GPU (catalogue) | precision | est. training img/s | "
        + " | ".join(f"{d} 16-core feed / need (cores)" for d in feed)
        + " |",
        "|---|---|---|" + "---|" * len(feed),
    ]
    for row in g["rows"]:
        cells = []
        for f in feed.values():
            ratio = f["images_per_s"] / row["train_images_per_s"]
            need = row["train_images_per_s"] / f["per_core"]
            cells.append(f"{fmt(f['images_per_s'])} ({ratio:.2f}x) / {need:.1f}")
        lines.append(
            f"| {row['device']} | {row['precision']} | {fmt(row['train_images_per_s'])} | "
            + " | ".join(cells)
            + " |"
        )
    for name, why in g["skipped"].items():
        lines.append(f"| {name} | — | no estimate: {why} | " + " | ".join("" for _ in feed) + " |")
    lines += ["", "## Choice", "", res["choice"], ""]
    return "\n".join(lines)


STAGE_LABELS = {
    "a_read": "(a) record read + unpack",
    "b_decode": "(b) + JPEG decode",
    "c_augment_float_flip": "(c, before) + to-tensor, stack, normalise, mirror in float",
    "c_augment": "(c) + to-tensor, stack, `train_input` on the CPU (mirror uint8, normalise)",
}


def stage_label(stage: str) -> str:
    if stage in STAGE_LABELS:
        return STAGE_LABELS[stage]
    workers = stage.rsplit("w", 1)[1]
    if stage.startswith("d_"):
        return f"(d) DataLoader, {workers} workers + main process: collate, `train_input` on the CPU"
    return f"(e) GPU box host: DataLoader, {workers} workers, uint8 batch handed on (GPU mirrors, normalises)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="folder with train.rec/.idx (default: generate --identities x 24 here)")
    ap.add_argument("--identities", type=int, default=100, help="identities to generate without --data")
    ap.add_argument("--images", type=int, default=0, help="use at most this many images (0: all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="0,1,2", help="DataLoader worker counts for stage (d)")
    ap.add_argument("--batch", type=int, default=128, help="training batch (the gpu preset's 128)")
    ap.add_argument("--student-dim", type=int, default=512, help="student embedding (the gpu preset's 512)")
    ap.add_argument("--check-images", type=int, default=1000, help="images whose pixels are compared")
    ap.add_argument("--extra-path", action="append", default=[], help="prepend to sys.path (decoders)")
    ap.add_argument("--pillow-simd", help="a pip --target folder holding Pillow-SIMD (run in a child)")
    ap.add_argument(
        "--devices-dir",
        action="append",
        default=[],
        help="extra device catalogue folder (e.g. a filled host-gpu)",
    )
    ap.add_argument("--turbojpeg-lib", help="path of libturbojpeg.so for PyTurboJPEG")
    ap.add_argument("--tiny", action="store_true", help="smoke mode: few images, 1 round, workers 0,1")
    ap.add_argument("--note", default="", help="machine note for the report (e.g. shared with other jobs)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "data_throughput.json"))
    ap.add_argument("--md", default=str(ROOT / "benchmarks" / "results" / "data_throughput.md"))
    ap.add_argument("--child-pillow-simd", help=argparse.SUPPRESS)
    ap.add_argument("--child-input", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_pillow_simd:
        return pillow_simd_child(args.child_pillow_simd, args.child_input, args.rounds)
    for p in reversed(args.extra_path):
        sys.path.insert(0, p)
    sys.path.insert(0, str(ROOT))
    args.workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    if args.tiny:
        args.rounds, args.batch, args.check_images = 1, 8, 16
        args.workers = [w for w in args.workers if w <= 1] or [0]

    import torch

    torch.set_num_threads(1)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        if args.data:
            data_dir = Path(args.data)
        else:
            ids, per = (4, 8) if args.tiny else (args.identities, 24)
            print(f"generating {ids} x {per} synthetic images ...", flush=True)
            data_dir = synth_data(Path(tmp) / "synth", ids, per)
        from distill.data.recordio import RecFaceDataset, _simplejpeg

        ds = RecFaceDataset(data_dir)
        n = min(len(ds), args.images) if args.images else len(ds)
        blobs = [ds.read_encoded(i) for i in range(n)]
        ds.close()
        print(f"{n} images from {data_dir}; decoders (decode only) ...", flush=True)
        decoders = compare_decoders(args, blobs)
        reader_decoders = ["pil"] + (["simplejpeg"] if _simplejpeg() is not None else [])
        stages = {}
        for dec in reader_decoders:
            print(f"stages with FACEKD_JPEG_DECODER={dec} ...", flush=True)
            stages[dec] = measure_stages(args, data_dir, dec)
    print("GPU consumption estimates ...", flush=True)
    gpu = gpu_consumption(args)
    load_after = [round(x, 2) for x in os.getloadavg()]

    target_stage = f"e_gpu_host_w{max(args.workers)}"
    by_decoder = {
        d: {
            "per_core": s[target_stage]["per_core_median"],
            "met": s[target_stage]["per_core_median"] >= TARGET_PER_CORE,
        }
        for d, s in stages.items()
    }
    feed = {
        d: {
            "per_core": v["per_core"],
            "images_per_s": round(v["per_core"] * CORES_EXTRAPOLATED, 1),
            "label": f"extrapolated: stage {target_stage} per-core rate x {CORES_EXTRAPOLATED}",
        }
        for d, v in by_decoder.items()
    }
    best = max(by_decoder, key=lambda d: by_decoder[d]["per_core"])
    if best == "pil":
        choice = "Pillow stays: no alternative the reader supports is installed here, or none was faster."
    else:
        gain = by_decoder[best]["per_core"] / by_decoder["pil"]["per_core"]
        choice = (
            f"The reader decodes with **{best}** when it is installed (`pip install facekd[jpeg]`), Pillow "
            f"otherwise: {gain:.2f}x the images per core through the whole input pipeline, identical pixels "
            f"(max abs diff {decoders[best]['pixels_vs_pil']['max_abs_diff']} on "
            f"{decoders[best]['pixels_vs_pil']['checked']} images; the tests compare both paths). "
            "`FACEKD_JPEG_DECODER=pil` forces Pillow. NVIDIA DALI (GPU JPEG decode, `nvidia-dali-cuda12x`) "
            "is the documented option for a GPU box whose cores cannot keep up; not measured here (no GPU)."
        )
    res = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "note": args.note or "",
        "load_before": load_before,
        "load_after": load_after,
        "data": {
            "path": str(args.data or "generated"),
            "images": n,
            "mean_jpeg_bytes": sum(len(b) for b in blobs) / max(1, n),
        },
        "rounds": args.rounds,
        "batch": args.batch,
        "workers": args.workers,
        "decoders": decoders,
        "stages": stages,
        "target": {"per_core": TARGET_PER_CORE, "stage": target_stage, "by_decoder": by_decoder},
        "feed_16_core": feed,
        "gpu_estimates": gpu,
        "choice": choice,
    }
    md = report(res)
    print(md)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    Path(args.md).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
