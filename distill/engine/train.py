"""The one training loop: any backbone, any weighted sum of loss terms, teacher or student.

Per step: decode a batch, random horizontal flip (the cached teacher embedding of the same view is
picked), forward under autocast when on CUDA, sum the weighted terms, stop on a non-finite term naming
it, SGD step, LR schedule. Every ``checkpoint_every`` steps the whole state goes to ``last.pt``
atomically; a restarted run resumes from it and ends with the same weights as an uninterrupted one,
because all randomness of step ``k`` is drawn from a generator seeded by (seed, k).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from distill.atomic import write_json
from distill.config import TrainConfig, config_hash
from distill.data.transforms import hflip_nchw, to_model_input
from distill.engine.checkpoint import load_train_state, save_train_state
from distill.engine.device import autocast, channels_last_is_safe, resolve_amp_dtype, resolve_device
from distill.engine.sampler import ResumableBatchSampler
from distill.losses.base import LossInputs


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN/Inf; the last good checkpoint is kept on disk."""


@dataclass
class TeacherTargets:
    """Cached teacher embeddings of every training image, plain and mirrored (memory-mapped arrays)."""

    plain: np.ndarray  # (N, Dt)
    flipped: np.ndarray  # (N, Dt)

    @property
    def dim(self) -> int:
        return int(self.plain.shape[1])


@dataclass
class TrainJob:
    name: str  # "teacher" / "student": progress bars, TensorBoard tags
    model: nn.Module
    losses: nn.ModuleDict
    weights: dict[str, float]
    dataset: Any  # __len__, __getitem__(i) -> (uint8 HWC, label)
    cfg: TrainConfig
    out_dir: Path
    teacher: TeacherTargets | None = None
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    progress: bool = True
    workers: int = 0  # DataLoader worker processes
    stop_after_step: int = 0  # > 0: return after this step as if interrupted (tests)


@dataclass
class TrainSummary:
    steps: int
    seconds: float
    images_per_second: float  # forward+backward+update throughput, data loading excluded
    final_losses: dict[str, float]
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int = 0


def total_steps(cfg: TrainConfig, num_samples: int) -> int:
    per_epoch = num_samples // cfg.batch_size
    steps = max(1, math.ceil(cfg.epochs * per_epoch))
    return min(steps, cfg.max_steps) if cfg.max_steps > 0 else steps


def lr_at(step: int, cfg: TrainConfig, steps: int) -> float:
    """Linear warm-up then polynomial (power 2) decay to zero, as arcface_torch's PolyScheduler."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (1.0 - progress) ** 2


class _Batches(torch.utils.data.Dataset):
    """Adapts a face dataset to a DataLoader with a batch sampler: returns uint8 HWC tensors."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.dataset[i]
        return torch.from_numpy(np.ascontiguousarray(image)), int(label), int(i)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def train(job: TrainJob) -> TrainSummary:
    cfg = job.cfg
    device = resolve_device(cfg.device)
    amp_dtype = resolve_amp_dtype(cfg.amp, device)
    ckpt_dir = job.out_dir / "checkpoints"
    ckpt_path = ckpt_dir / "last.pt"
    steps = total_steps(cfg, len(job.dataset))
    fingerprint = config_hash(
        {"train": cfg.__dict__, "n": len(job.dataset), "terms": list(job.losses.keys())}
    )

    use_nhwc = cfg.channels_last and channels_last_is_safe(job.model)
    memory_format = torch.channels_last if use_nhwc else torch.contiguous_format
    model, losses = job.model.to(device, memory_format=memory_format), job.losses.to(device)
    params = [p for p in list(model.parameters()) + list(losses.parameters()) if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_step, history, evaluations = 0, [], []
    if ckpt_path.exists():
        state = load_train_state(ckpt_path)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            losses.load_state_dict(state["losses"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            start_step = int(state["step"])
            history = json.loads(state["history"])
            evaluations = json.loads(state["evaluations"])

    def save(step: int) -> None:
        save_train_state(
            ckpt_path,
            {
                "fingerprint": fingerprint,
                "step": step,
                "model": model.state_dict(),
                "losses": losses.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "history": json.dumps(history),
                "evaluations": json.dumps(evaluations),
            },
        )

    writer = _tensorboard(job.out_dir / "tensorboard")
    sampler = ResumableBatchSampler(len(job.dataset), cfg.batch_size, cfg.seed, start_step=start_step)
    loader = torch.utils.data.DataLoader(
        _Batches(job.dataset),
        batch_sampler=sampler,
        num_workers=job.workers,
        persistent_workers=False,
    )
    compute_seconds, last = 0.0, {}
    bar = tqdm(
        total=steps,
        initial=start_step,
        desc=f"train {job.name}",
        unit="step",
        disable=not job.progress,
        dynamic_ncols=True,
    )
    model.train()
    losses.train()
    step = start_step
    batches = iter(loader)
    try:
        while step < steps:
            images, labels, indices = next(batches)
            t0 = time.perf_counter()
            gen = _step_generator(cfg.seed, step)
            flip = torch.rand(images.shape[0], generator=gen) < 0.5
            x = to_model_input(images)
            x = torch.where(flip[:, None, None, None], hflip_nchw(x), x)
            x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            labels = labels.to(device)
            teacher = None
            if job.teacher is not None:
                idx = indices.numpy()
                plain = torch.from_numpy(np.asarray(job.teacher.plain[idx], dtype=np.float32))
                mirrored = torch.from_numpy(np.asarray(job.teacher.flipped[idx], dtype=np.float32))
                teacher = torch.where(flip[:, None], mirrored, plain).to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg, steps)
            torch.manual_seed(cfg.seed * 7919 + step)  # dropout etc.: deterministic per step
            with autocast(device, amp_dtype):
                emb = model(x)
            inputs = LossInputs(
                student=emb.float(), labels=labels, teacher=teacher, indices=indices, step=step
            )
            values = {name: term(inputs) for name, term in losses.items()}
            for name, v in values.items():
                if not torch.isfinite(v):
                    raise NonFiniteLoss(
                        f"{job.name}: loss term '{name}' is {v.item()} at step {step}; "
                        f"last good checkpoint kept at {ckpt_path if ckpt_path.exists() else '(none yet)'}"
                    )
            total = sum(job.weights[name] * v for name, v in values.items())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            if device.type == "cuda":
                torch.cuda.synchronize()
            compute_seconds += time.perf_counter() - t0
            step += 1
            last = {name: float(v.detach()) for name, v in values.items()}
            last["total"] = float(total.detach())
            if step % 10 == 0 or step == steps:
                history.append({"step": step, "lr": optimizer.param_groups[0]["lr"], **last})
                for name, v in last.items():
                    writer.add_scalar(f"{job.name}/loss/{name}", v, step)
                writer.add_scalar(f"{job.name}/lr", optimizer.param_groups[0]["lr"], step)
            bar.update(1)
            bar.set_postfix(loss=f"{last['total']:.3f}")
            if job.evaluate and cfg.eval_every and step % cfg.eval_every == 0 and step < steps:
                evaluations.append(_evaluate(job, model, step, writer))
            if step % cfg.checkpoint_every == 0 or step == steps:
                save(step)
            if job.stop_after_step and step >= job.stop_after_step:
                break
    finally:
        bar.close()
    if step == steps and job.evaluate and cfg.eval_every:
        evaluations.append(_evaluate(job, model, step, writer))
        save(step)
    writer.close()
    done = step - start_step
    write_json(job.out_dir / "history.json", {"history": history, "evaluations": evaluations})
    return TrainSummary(
        steps=step,
        seconds=compute_seconds,
        images_per_second=(done * cfg.batch_size / compute_seconds) if compute_seconds else 0.0,
        final_losses=last,
        evaluations=evaluations,
        resumed_from_step=start_step,
    )


def _evaluate(job: TrainJob, model: nn.Module, step: int, writer: Any) -> dict[str, Any]:
    model.eval()
    try:
        metrics = job.evaluate(model) if job.evaluate else {}
    finally:
        model.train()
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            writer.add_scalar(f"{job.name}/eval/{key}", value, step)
    return {"step": step, **metrics}


class _NullWriter:
    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _tensorboard(log_dir: Path) -> Any:
    """TensorBoard when installed (it is a dependency); a no-op writer otherwise."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover
        return _NullWriter()
    return SummaryWriter(log_dir=str(log_dir))
