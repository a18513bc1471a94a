"""Benchmark: the margin head replicated (DDP-style) vs class-sharded (Partial FC), 1 and 2 processes.

For 10K, 100K and 1M identities it times one training step of the head alone (ArcFace forward, backward,
SGD with momentum and weight decay) on a global batch of random embeddings, and records each rank's head
state (centres + gradient + momentum, from the tensor sizes) and the process's peak resident memory:

* ``replicated``: every rank holds all centres, computes its local batch's logits and all-reduces the
  full head's gradient (what DistributedDataParallel does to a replicated head);
* ``sharded``: ``ShardedMarginSoftmax`` (distill/losses/partial_fc.py): each rank holds 1/world of the
  centres, the embeddings are all-gathered, the cross-entropy is completed with all-reduces.

Two processes run under gloo on this CPU with one thread each; one process gets both cores. The backbone
is left out on purpose: it is the same in both modes. A step's time is the median of its timed steps in
one run; runs repeat in rounds (every configuration once per round) and the median over rounds is
reported, because this shared 2-core VM drifts by 10-20 % between minutes. Writes
``benchmarks/results/partial_fc.{md,json}``.

    python benchmarks/partial_fc.py [--classes 10000 100000 1000000] [--batch 128] [--dim 128]

One round takes about 15 minutes on this 2-core machine, almost all of it the 1 M runs (about 6 GiB of
memory at most); ``--classes 10000 100000`` takes about two.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from distill.losses.partial_fc import ShardedMarginSoftmax  # noqa: E402
from distill.models.heads import ArcFaceHead  # noqa: E402

MODES = ("replicated", "sharded")


def _head_step(head: torch.nn.Module, mode: str, emb: torch.Tensor, labels: torch.Tensor, world: int) -> None:
    """Forward, backward and (for replicated) the gradient all-reduce DDP would do."""
    if mode == "sharded":
        loss = head(emb, labels)
    else:
        loss = F.cross_entropy(head(emb, labels), labels)
    loss.backward()
    if mode == "replicated" and world > 1:
        dist.all_reduce(head.weight.grad)
        head.weight.grad /= world


def _worker(rank: int, world: int, port: int, cfg: dict[str, Any], out: str) -> None:
    torch.set_num_threads(max(1, 2 // world))
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    classes, dim, batch, mode = cfg["classes"], cfg["dim"], cfg["batch"], cfg["mode"]
    torch.manual_seed(0)
    if mode == "sharded":
        head: torch.nn.Module = ShardedMarginSoftmax(dim, classes, kind="arcface")
    else:
        head = ArcFaceHead(dim, classes)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    local = batch // world
    g = torch.Generator().manual_seed(1)
    times = []
    for step in range(cfg["warmup"] + cfg["steps"]):
        emb = torch.randn(batch, dim, generator=g)[rank * local : (rank + 1) * local].requires_grad_(True)
        labels = torch.randint(0, classes, (batch,), generator=g)[rank * local : (rank + 1) * local]
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _head_step(head, mode, emb, labels, world)
        opt.step()
        if world > 1:
            dist.barrier()  # a step ends when the slowest rank is done
        if step >= cfg["warmup"]:
            times.append(time.perf_counter() - t0)
    rows = head.weight.shape[0]
    state_bytes = 3 * rows * dim * 4  # fp32 centres + gradient + momentum
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump({"seconds": statistics.median(times), "head_state_bytes": state_bytes, "peak_rss": rss}, fh)
    if world > 1:
        dist.destroy_process_group()


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """One configuration in fresh processes; per-rank numbers (the step time is the slowest rank's)."""
    world = cfg["world"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(r, world, port, cfg, tmp)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"{cfg}: worker exited with {p.exitcode}")
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    return {
        "seconds": max(r["seconds"] for r in ranks),
        "head_state_bytes": max(r["head_state_bytes"] for r in ranks),
        "peak_rss": max(r["peak_rss"] for r in ranks),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--batch", type=int, default=128, help="global batch")
    ap.add_argument("--dim", type=int, default=128, help="embedding width (MobileFaceNet student: 128)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "partial_fc"))
    args = ap.parse_args()
    configs = [
        {"classes": c, "world": w, "mode": m, "dim": args.dim, "batch": args.batch}
        for c in args.classes
        for w in (1, 2)
        for m in MODES
    ]
    runs: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(configs))}
    for r in range(args.rounds):
        order = list(range(len(configs)))
        order = order[r % len(order) :] + order[: r % len(order)]  # a different configuration first
        for i in order:
            runs[i].append(run_config({**configs[i], "steps": args.steps, "warmup": args.warmup}))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    rows = []
    for i, cfg in enumerate(configs):
        seconds = [x["seconds"] for x in runs[i]]
        rows.append(
            {
                **cfg,
                "ms_per_step": 1000 * statistics.median(seconds),
                "ms_per_step_rounds": [1000 * s for s in seconds],
                "head_state_mib_per_rank": runs[i][0]["head_state_bytes"] / 2**20,
                "peak_rss_mib_per_rank": max(x["peak_rss"] for x in runs[i]) / 2**20,
            }
        )
    header = (
        "| identities | processes | head | ms/step (median) | rounds | head state MiB/rank "
        "| peak RSS MiB/rank |"
    )
    lines = [header, "|---:|---:|---|---:|---|---:|---:|"]
    for row in rows:
        rounds = ", ".join(f"{x:.0f}" for x in row["ms_per_step_rounds"])
        lines.append(
            f"| {row['classes']:,} | {row['world']} | {row['mode']} | {row['ms_per_step']:.0f} | {rounds} "
            f"| {row['head_state_mib_per_rank']:.0f} | {row['peak_rss_mib_per_rank']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    when = time.strftime("%Y-%m-%d")
    text = (
        "# Partial FC: replicated vs class-sharded margin head (CPU, gloo)\n\n"
        f"Measured {when} by `benchmarks/partial_fc.py` on this project's 2-core x86-64 CPU machine "
        "(no GPU, shared with other jobs): "
        f"ArcFace head step alone (forward, backward, SGD), global batch {args.batch}, {args.dim}-d "
        f"embeddings, median of {args.steps} timed steps per run, median over {args.rounds} rounds. "
        "Two processes use gloo with one thread each; one process has both threads. Head state = fp32 "
        "centres + gradient + momentum held by one rank (computed from the tensor sizes); peak RSS is "
        "measured (it includes PyTorch itself, about 0.3 GiB). Data: [partial_fc.json](partial_fc.json) · "
        "[← README](../../README.md)\n\n" + table + "\n"
    )
    Path(args.results + ".md").write_text(text)
    report = {"date": when, "args": vars(args), "rows": rows}
    Path(args.results + ".json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
