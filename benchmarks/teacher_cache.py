"""Benchmark: how fast the cache stage's teacher embeds, by the ways it could (issue 14: cache <= 60 s).

The cache embeds every training image and its mirror once (14,400 forward passes in the default run),
so its time is the teacher's inference speed. For the default preset's teacher (iResNet-18, half width,
512-d) at the cache's batch, this times, interleaved over ``--rounds`` rounds (median per way):

  * fp32: the module as it is, channels-last (what ``cache.precision: fp32`` runs);
  * bf16 autocast: the module as it is under ``torch.autocast`` (the cache's bf16 path until 2026-12-04);
  * bf16 folded: ``distill.teacher.bf16_embed``, the cache's bf16 path now: an inference copy with the
    BatchNorms after a convolution folded into it, weights and activations in bf16.

and reports images per second and each way's lowest cosine to fp32 (the cache's gate is 0.999). With
``--checkpoint`` it uses a trained teacher (a facekd .pt), else random weights with BatchNorm statistics
away from their defaults (speed does not depend on the values, as long as none are subnormal).
Prints a table and writes ``benchmarks/results/teacher_cache.{json,md}``.

    python benchmarks/teacher_cache.py [--checkpoint runs/demo/teacher/teacher.pt] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.eval_twin import MODELS, random_model, time_pairs, write_results  # noqa: E402
from distill.cpu_sharing import share_cores_gracefully  # noqa: E402
from distill.engine.device import native_bf16  # noqa: E402
from distill.models.checkpoint import load_model  # noqa: E402
from distill.teacher import Teacher, bf16_embed  # noqa: E402

Embed = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_TEACHER = "teacher iresnet18 w32"  # the default preset's, as eval_twin.py builds it


def ways(model: torch.nn.Module) -> dict[str, Embed]:
    model = model.eval().to(memory_format=torch.channels_last)

    def fp32(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x.contiguous(memory_format=torch.channels_last)).float()

    def autocast(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fp32(x)

    teacher = Teacher(embed=fp32, embedding_dim=0, source="checkpoint:benchmark", module=model)
    return {"fp32": fp32, "bf16 autocast": autocast, "bf16 folded": bf16_embed(teacher)}


def main() -> int:
    share_cores_gracefully()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="", help="a trained teacher (.pt); default: random weights")
    ap.add_argument("--batch", type=int, default=64, help="the cache's batch (cache.batch_size)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "teacher_cache"))
    args = ap.parse_args()
    if not native_bf16(torch.device("cpu")):
        sys.exit("this CPU has no native bf16 (amx_bf16/avx512_bf16): the cache runs fp32 here")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    if args.checkpoint:
        model, meta = load_model(args.checkpoint)
        about = f"{args.checkpoint}: {meta['arch']} {meta['arch_kwargs']}, trained"
    else:
        model, about = random_model(*MODELS[DEFAULT_TEACHER]), "iresnet18 w32, 512-d, random weights"
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 112, 112, generator=g) * 2 - 1
    embeds = ways(model)
    secs = time_pairs(embeds, x, args.rounds)
    ref = embeds["fp32"](x).double()
    rows = []
    for name, e in embeds.items():
        cos = torch.nn.functional.cosine_similarity(e(x).double(), ref, dim=1).min().item()
        rows.append(
            {
                "way": name,
                "images_per_second": args.batch / secs[name],
                "speedup_vs_autocast": secs["bf16 autocast"] / secs[name],
                "min_cosine_to_fp32": cos,
                "cache_seconds_default_run": 2 * 7200 * secs[name] / args.batch,
            }
        )
    result = {
        "benchmark": "teacher_cache",
        "date": date.today().isoformat(),
        "teacher": about,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {load_start:.2f} at start",
        "threads": args.threads,
        "batch": args.batch,
        "rounds": args.rounds,
        "rows": rows,
    }
    table = [
        "| way | img/s | vs bf16 autocast | lowest cosine to fp32 | teacher compute, default cache (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['way']} | {r['images_per_second']:.1f} | {r['speedup_vs_autocast']:.2f}x | "
            f"{r['min_cosine_to_fp32']:.6f} | {r['cache_seconds_default_run']:.0f} |"
        )
    header = (
        f"# Teacher cache ({result['date']})\n\n{result['teacher']}; {result['machine']}; {args.threads} "
        f"threads, batch {args.batch}, median of {args.rounds} interleaved rounds; the last column is "
        "7,200 images and their mirrors at that rate."
    )
    write_results(Path(args.out), result, header, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
