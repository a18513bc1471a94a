"""Benchmark: cost of a distillation step with cached teacher embeddings vs a plain margin-loss step.

Target (stage-one issue): the distillation step costs <= 1.15x the plain ArcFace student step at the same
batch. Both run through the one engine on the same in-memory batch stream; the time is the engine's
forward + backward + update time (data decoding excluded), after warm-up steps.

A shared 2-core VM drifts by 10-20 % between minutes, as much as the effect measured, so a method's step
time is the median of its single timed steps, and the methods are timed in rounds: every round times each
method once (starting from a different method each round), the ratio to plain is taken within the round,
and the median ratio over rounds is reported with its range.

    python benchmarks/distill_step_cost.py [--batch 64] [--steps 10] [--rounds 3] [--student-dim 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.config import LossSpec, TrainConfig  # noqa: E402
from distill.engine.train import TeacherTargets, TrainJob, train  # noqa: E402
from distill.losses import LossDims, build_losses  # noqa: E402
from distill.models.factory import build_backbone  # noqa: E402

ARC = LossSpec("arcface", 1.0)
METHODS = {
    "arcface (plain student)": [ARC],
    "feature_l2": [ARC, LossSpec("feature_l2", 10.0)],
    "unified (iled + rpsd)": [ARC, LossSpec("iled", 10.0), LossSpec("rpsd", 10.0)],
    "ekd": [ARC, LossSpec("ekd", 1.0)],
    "coupleface": [ARC, LossSpec("coupleface", 10.0)],
    "teacher_head": [ARC, LossSpec("teacher_head", 1.0)],
}


class Images:
    def __init__(self, n: int, classes: int) -> None:
        rng = np.random.default_rng(0)
        self.labels = np.arange(n) % classes
        self.images = rng.integers(0, 255, size=(n, 112, 112, 3), dtype=np.uint8)
        self.num_classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def step_seconds(
    specs: list[LossSpec], args: argparse.Namespace, data: Images, teacher: TeacherTargets
) -> float:
    """Median compute time of one step after ``args.warmup`` warm-up steps, in one run of the engine
    (the median of single steps shrugs off the odd step a noisy neighbour slowed down)."""
    import torch

    torch.manual_seed(0)
    head = torch.randn(data.num_classes, args.teacher_dim)
    terms = build_losses(
        specs, LossDims(args.student_dim, args.teacher_dim, data.num_classes, teacher_head=head)
    )
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            epochs=100, batch_size=args.batch, max_steps=args.warmup + args.steps, checkpoint_every=10**9
        )
        job = TrainJob(
            name="bench",
            model=build_backbone("mobilefacenet", embedding_dim=args.student_dim),
            losses=terms,
            weights={k: s.weight for k, s in zip(terms.keys(), specs, strict=True)},
            dataset=data,
            cfg=cfg,
            out_dir=Path(tmp),
            teacher=teacher,
            progress=False,
        )
        return statistics.median(train(job).step_seconds[args.warmup :])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per method per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the median ratio over rounds is reported")
    ap.add_argument("--student-dim", type=int, default=128)
    ap.add_argument("--teacher-dim", type=int, default=512)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "distill_step_cost.json"))
    args = ap.parse_args()
    n = args.batch * (args.warmup + args.steps + 1)
    data = Images(n, classes=100)
    rng = np.random.default_rng(1)
    teacher = TeacherTargets(
        rng.normal(size=(n, args.teacher_dim)).astype(np.float32),
        rng.normal(size=(n, args.teacher_dim)).astype(np.float32),
    )
    names = list(METHODS)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # a different method goes first
        this_round = {name: step_seconds(METHODS[name], args, data, teacher) for name in order}
        for name in names:
            seconds[name].append(this_round[name])
            ratios[name].append(this_round[name] / this_round[names[0]])
        unified = ratios["unified (iled + rpsd)"][-1]
        print(f"round {r + 1}/{args.rounds}: unified {unified:.3f}x plain", flush=True)
    print(f"{'method':<26}{'ms/step':>10}{'x plain':>9}{'range':>15}", end="")
    print(f"   (batch {args.batch}, MFN-{args.student_dim})")
    median_ratio = {name: statistics.median(v) for name, v in ratios.items()}
    for name in names:
        lo, hi = min(ratios[name]), max(ratios[name])
        ms = 1000 * statistics.median(seconds[name])
        print(f"{name:<26}{ms:>10.1f}{median_ratio[name]:>9.3f}{f'{lo:.2f}-{hi:.2f}':>15}")
    ratio = median_ratio["unified (iled + rpsd)"]
    ok = ratio <= 1.15
    verdict = "PASS" if ok else "FAIL"
    print(f"[{verdict}] unified step <= 1.15x plain (median of {args.rounds} rounds): {ratio:.3f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "batch": args.batch,
                "steps_per_round": args.steps,
                "rounds": args.rounds,
                "seconds_per_step_median": {k: statistics.median(v) for k, v in seconds.items()},
                "ratio_to_plain_median": median_ratio,
                "ratio_to_plain_per_round": ratios,
                "target_met": ok,
            },
            indent=2,
        )
        + "\n"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
