"""GPU smoke run: the ``gpu`` preset's student trains for a fixed number of steps from a cached teacher.

Written for a GPU box to run in well under 8 minutes (it has **never run on a GPU**: none was available
where it was written; on CPU a tiny version runs in tests/test_gpu_smoke.py). It takes the preset's
student (architecture, width, loss terms, batch, LR schedule, AMP choice) and its teacher architecture,
randomly initialised: a trained teacher is not the point, the engine's GPU path is. The data are generated
in memory (a fixed pattern per identity plus noise, so the loss has something to learn); the teacher
embeds every image and its mirror once, and the engine reads those as its cache, as in a real run.

Reports images/s (forward + backward + update, data loading excluded), peak GPU memory (peak resident
memory on CPU), the autocast dtype the engine picked, and whether the loss fell (the mean total loss of
the last tenth of the steps below that of the first tenth). Exits 1 when the loss did not fall or a term
went non-finite. ``--sharded`` trains the margin head class-sharded (Partial FC; also under torchrun).

    python benchmarks/gpu_smoke.py [--steps 300] [--images 2048] [--classes 256]
    torchrun --nproc_per_node=2 benchmarks/gpu_smoke.py --sharded
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from distill.data.transforms import hflip_nchw, to_model_input  # noqa: E402
from distill.engine.device import resolve_amp_dtype, resolve_device  # noqa: E402
from distill.engine.distributed import current_dist  # noqa: E402
from distill.engine.train import TeacherTargets, TrainJob, train  # noqa: E402
from distill.losses import LossDims, build_losses  # noqa: E402
from distill.models.factory import build_backbone  # noqa: E402
from pipeline.config import load_config  # noqa: E402


class PatternFaces:
    """``n`` 112x112 images of ``classes`` identities: a fixed random pattern per identity plus noise."""

    def __init__(self, n: int, classes: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.labels = np.arange(n) % classes
        base = rng.integers(0, 255, size=(classes, 112, 112, 3)).astype(np.int16)
        noise = rng.integers(-40, 41, size=(n, 112, 112, 3), dtype=np.int16)
        self.images = np.clip(base[self.labels] + noise, 0, 255).astype(np.uint8)
        self.num_classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])


@torch.no_grad()
def cache_teacher(cfg: Any, data: PatternFaces, device: torch.device, batch: int = 64) -> TeacherTargets:
    """The preset's teacher architecture (random weights) embeds every image and its mirror once."""
    t = cfg.teacher
    torch.manual_seed(1)
    model = build_backbone(t.arch, embedding_dim=t.embedding_dim, **t.arch_params).to(device).eval()
    plain, flipped = [], []
    for i in range(0, len(data), batch):
        x = to_model_input(data.images[i : i + batch]).to(device)
        plain.append(model(x).float().cpu().numpy())
        flipped.append(model(hflip_nchw(x)).float().cpu().numpy())
    return TeacherTargets(np.concatenate(plain), np.concatenate(flipped))


def smoke(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        # epochs high enough that max_steps decides the length whatever the number of images
        "distill": {
            "train": {"epochs": 10**6, "max_steps": args.steps, "checkpoint_every": 10**9, "eval_every": 0}
        }
    }
    if args.batch:
        overrides["distill"]["train"]["batch_size"] = args.batch
    cfg = load_config(preset=args.preset, overrides=overrides)
    s = cfg.distill
    specs = s.losses
    if args.sharded:
        for spec in specs:
            if spec.name in ("arcface", "cosface"):
                spec.params = {**spec.params, "sharded": True}
    device = resolve_device(s.train.device)
    data = PatternFaces(args.images, args.classes)
    t0 = time.perf_counter()
    teacher = cache_teacher(cfg, data, device)
    cache_seconds = time.perf_counter() - t0
    torch.manual_seed(s.train.seed)
    terms = build_losses(specs, LossDims(s.embedding_dim, teacher.dim, args.classes))
    model = build_backbone(s.arch, embedding_dim=s.embedding_dim, **s.arch_params)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        job = TrainJob(
            name="gpu-smoke",
            model=model,
            losses=terms,
            weights={k: spec.weight for k, spec in zip(terms.keys(), specs, strict=True)},
            dataset=data,
            cfg=s.train,
            out_dir=Path(tmp),
            teacher=teacher,
            progress=args.progress,
            workers=args.workers,
        )
        summary = train(job)
    tenth = max(1, len(summary.step_totals) // 10)
    first = statistics.mean(summary.step_totals[:tenth])
    last = statistics.mean(summary.step_totals[-tenth:])
    if device.type == "cuda":
        peak, peak_what = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    else:
        peak, peak_what = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS (CPU)"
    amp = resolve_amp_dtype(s.train.amp, device)
    return {
        "preset": args.preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "ranks": current_dist().world_size,
        "student": f"{s.arch}-{s.embedding_dim}",
        "teacher": f"{cfg.teacher.arch} (random weights)",
        "losses": [spec.name + (" (sharded)" if spec.params.get("sharded") else "") for spec in specs],
        "batch_size": s.train.batch_size,
        "steps": summary.steps,
        "images_per_second": summary.images_per_second,
        "median_step_ms": 1000 * statistics.median(summary.step_seconds),
        "peak_memory_mib": peak / 2**20,
        "peak_memory_is": peak_what,
        "amp_dtype": str(amp).replace("torch.", "") if amp else "off (fp32)",
        "teacher_cache_seconds": cache_seconds,
        "loss_first_tenth": first,
        "loss_last_tenth": last,
        "loss_fell": bool(last < first),
        "finite": all(np.isfinite(summary.step_totals)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpu")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--images", type=int, default=2048, help="generated training images (kept in memory)")
    ap.add_argument("--classes", type=int, default=256)
    ap.add_argument("--batch", type=int, default=0, help="0 = the preset's batch size")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--sharded", action="store_true", help="class-sharded margin head (Partial FC)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "gpu_smoke.json"))
    args = ap.parse_args(argv)
    report = smoke(args)
    if current_dist().is_main:
        for key, value in report.items():
            print(f"{key:>22}: {value:.1f}" if isinstance(value, float) else f"{key:>22}: {value}")
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    ok = report["loss_fell"] and report["finite"]
    print("[PASS] loss fell" if ok else "[FAIL] loss did not fall", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
