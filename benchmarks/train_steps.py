"""Benchmark: two training-step choices of the default run, each against what it replaced (issue 14).

* **teacher step, fp32 vs bf16 autocast**: the default preset's teacher (iResNet-18, half width, 512-d)
  with its CosFace head, batch 64, channels-last, SGD: what ``teacher.train.amp: bf16_if_native`` buys
  on a CPU with native bf16 (AMX / AVX512-BF16).
* **QAT step, NNCF's C++ fake-quant kernels vs facekd's PyTorch port** (``compress/fake_quant.py``): a
  quantized MobileFaceNet (NNCF, calibrated on random batches), BatchNorm frozen as in QAT, batch 64.

Each pair takes turns over ``--rounds`` rounds (median per way; ``benchmarks/eval_twin.py: time_pairs``).
NNCF's kernels are built first if this install has none (not timed). Prints a table and writes
``benchmarks/results/train_steps.{json,md}``.

    python benchmarks/train_steps.py [--rounds 5]
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

Step = Callable[[torch.Tensor], object]


def teacher_steps(batch: int) -> dict[str, Step]:
    """fp32 and bf16-autocast steps of the default teacher with a CosFace head (the engine's loss)."""
    from distill.config import LossSpec
    from distill.losses import LossDims, build_losses
    from distill.losses.base import LossInputs

    model = random_model(*MODELS["teacher iresnet18 w32"]).train().to(memory_format=torch.channels_last)
    spec = LossSpec(name="cosface", weight=1.0, params={"scale": 32.0, "margin": 0.3})
    head = build_losses([spec], LossDims(student_dim=512, teacher_dim=None, num_classes=300), where="b")
    labels = torch.arange(batch) % 300
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=1e-3, momentum=0.9)

    def step(x: torch.Tensor, bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            emb = model(x)
        head["cosface"](LossInputs(student=emb.float(), labels=labels)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"teacher fp32": lambda x: step(x, False), "teacher bf16 autocast": lambda x: step(x, True)}


def qat_steps() -> dict[str, Step]:
    """QAT steps of one quantized MobileFaceNet through NNCF's C++ kernels and through facekd's port."""
    from compress.fake_quant import nncf_quantize_functions, use_torch_kernels
    from compress.nncf_extension import ensure_nncf_kernels
    from compress.quantize import quantize_model

    module = nncf_quantize_functions()
    shipped = (module.QuantizeSymmetric, module.QuantizeAsymmetric)
    ensure_nncf_kernels(log=print)
    fp32 = random_model(*MODELS["student mobilefacenet"])
    g = torch.Generator().manual_seed(1)
    qmodel = quantize_model(fp32, [torch.rand(16, 3, 112, 112, generator=g) * 2 - 1 for _ in range(2)])
    qmodel = qmodel.to(memory_format=torch.channels_last).train()
    for m in qmodel.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()  # qat.train.freeze_bn
    opt = torch.optim.SGD(qmodel.parameters(), lr=1e-5)
    ours = (module.QuantizeSymmetric, module.QuantizeAsymmetric) if use_torch_kernels() else shipped

    def step(x: torch.Tensor, classes: tuple) -> None:
        module.QuantizeSymmetric, module.QuantizeAsymmetric = classes
        qmodel(x).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"QAT, NNCF C++ kernels": lambda x: step(x, shipped), "QAT, facekd port": lambda x: step(x, ours)}


def main() -> int:
    share_cores_gracefully()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_steps"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    x = (torch.rand(args.batch, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1).contiguous(
        memory_format=torch.channels_last
    )
    pairs = [qat_steps()]
    if native_bf16(torch.device("cpu")):
        pairs.insert(0, teacher_steps(args.batch))
    else:
        print("this CPU has no native bf16 (amx_bf16/avx512_bf16): the teacher pair is skipped")
    rows = []
    for pair in pairs:
        secs = time_pairs(pair, x, args.rounds)
        base = next(iter(secs))  # the way the other replaced
        rows += [
            {"way": k, "seconds_per_step": s, "images_per_second": args.batch / s, "speedup": secs[base] / s}
            for k, s in secs.items()
        ]
    result = {
        "benchmark": "train_steps",
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {load_start:.2f} at start",
        "threads": args.threads,
        "batch": args.batch,
        "rounds": args.rounds,
        "rows": rows,
    }
    table = ["| step | s/step | img/s | vs the first of its pair |", "|---|---:|---:|---:|"]
    table += [
        f"| {r['way']} | {r['seconds_per_step']:.3f} | {r['images_per_second']:.1f} | {r['speedup']:.2f}x |"
        for r in rows
    ]
    header = (
        f"# Training steps ({result['date']})\n\n{result['machine']}; {args.threads} threads, batch "
        f"{args.batch}, median of {args.rounds} interleaved rounds; random weights (speed does not depend "
        "on the values)."
    )
    write_results(Path(args.out), result, header, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
