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
import statistics
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
from distill.data.transforms import train_input
from distill.engine.balanced_sampler import BalancedBatchSampler
from distill.engine.checkpoint import load_train_state, save_train_state
from distill.engine.device import autocast, channels_last_is_safe, resolve_amp_dtype, resolve_device
from distill.engine.distributed import DistInfo, barrier, mean_over_ranks, setup_distributed
from distill.engine.sampler import ResumableBatchSampler
from distill.engine.sharded_heads import (
    ddp_ignore,
    head_keys,
    prune_shards,
    restore_shards,
    save_shards,
    shard_heads,
    strip_head_state,
    unshard_heads,
)
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
    # parameters whose name contains one of these get no weight decay (QAT quantizer scales: decay
    # would shrink the ranges towards clipping everything)
    no_decay: tuple[str, ...] = ()
    # False when the caller evaluates the finished model itself (the pipeline's stages record that one
    # evaluation for measure): ``cfg.eval_every`` then evaluates only along the way, not twice at the end
    evaluate_at_end: bool = True
    # a frozen model whose embedding of each step's view reaches the loss terms as ``LossInputs.reference``
    # (stage two: the fp32 student, for ``fp32_anchor``); run in fp32, no grad, never trained or saved
    reference: nn.Module | None = None


@dataclass
class TrainSummary:
    steps: int
    seconds: float
    # forward+backward+update throughput (data loading excluded) at the median step: a mean over the steps
    # would count every stall of a paused or shared machine (a SIGSTOPped run read 4x slower than it was)
    images_per_second: float
    final_losses: dict[str, float]
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int = 0
    step_seconds: list[float] = field(default_factory=list)  # compute time of each step this call ran
    step_totals: list[float] = field(default_factory=list)  # weighted total loss of each of those steps
    precision: str = "fp32"  # what the forward passes computed in: fp32, or the autocast dtype (bf16, fp16)


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
        return torch.from_numpy(np.array(image, dtype=np.uint8)), int(label), int(i)  # writable copy


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class _Trainable(nn.Module):
    """Backbone + loss terms as one module, so DDP syncs the gradients of heads and projectors too."""

    def __init__(self, model: nn.Module, losses: nn.ModuleDict, amp: tuple[torch.device, torch.dtype | None]):
        super().__init__()
        self.model, self.losses = model, losses
        self._amp = amp

    def forward(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        teacher: torch.Tensor | None,
        indices: torch.Tensor,
        step: int,
        general: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        with autocast(*self._amp):
            emb = self.model(x)
        inputs = LossInputs(
            student=emb.float(),
            labels=labels,
            teacher=teacher,
            indices=indices,
            step=step,
            general=general,
            reference=reference,
        )
        return {name: term(inputs) for name, term in self.losses.items()}


def make_sampler(
    dataset: Any, cfg: TrainConfig, local_batch: int, start_step: int, dist_info: DistInfo
) -> tuple[Any, torch.Tensor | None]:
    """The batch sampler of the config, and the uniform-part mask when batches are balanced (EKD)."""
    if cfg.sampler == "balanced":
        pk = cfg.balanced_identities * cfg.balanced_images
        sampler = BalancedBatchSampler(
            np.asarray(dataset.labels),
            local_batch - pk,
            cfg.balanced_identities,
            cfg.balanced_images,
            cfg.seed,
            start_step=start_step,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
        )
        return sampler, sampler.general_mask()
    sampler = ResumableBatchSampler(
        len(dataset),
        local_batch,
        cfg.seed,
        start_step=start_step,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
    )
    return sampler, None


def train(job: TrainJob) -> TrainSummary:
    """Run (or resume) ``job`` to its last step; under torchrun each rank runs this same function."""
    cfg = job.cfg
    device = resolve_device(cfg.device)
    dist_info = setup_distributed(device.type)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    if cfg.batch_size % dist_info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {dist_info.world_size} processes")
    local_batch = cfg.batch_size // dist_info.world_size
    amp_dtype = resolve_amp_dtype(cfg.amp, device)
    ckpt_path = job.out_dir / "checkpoints" / "last.pt"
    steps = total_steps(cfg, len(job.dataset))

    use_nhwc = cfg.channels_last and channels_last_is_safe(job.model)
    memory_format = torch.channels_last if use_nhwc else torch.contiguous_format
    model, losses = job.model.to(device, memory_format=memory_format), job.losses.to(device)
    reference = None
    if job.reference is not None:
        reference = job.reference.to(device, memory_format=memory_format).eval().requires_grad_(False)
    # sharded margin heads (Partial FC): this rank's rows, in a param group of their own
    heads = shard_heads(losses)
    # a checkpoint of the other layout (sharded or not) cannot be loaded into this one: start afresh
    layout = {"sharded": sorted(heads)} if heads else {}
    fingerprint = config_hash(
        {"train": cfg.__dict__, "n": len(job.dataset), "terms": list(job.losses.keys()), **layout}
    )
    trainable: nn.Module = _Trainable(model, losses, (device, amp_dtype))
    head_params = {id(h.weight) for h in heads.values()}
    groups = _param_groups(trainable, job.no_decay, skip=head_params)
    trained_heads = [h.weight for h in heads.values() if h.weight.requires_grad]  # frozen teacher heads: no
    head_group = len(groups) if trained_heads else None
    if trained_heads:
        groups.append({"params": trained_heads})
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_step, history, evaluations = 0, [], []
    if ckpt_path.exists():
        state = load_train_state(ckpt_path)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            own = {k: v for k, v in losses.state_dict().items() if k in head_keys(heads)}
            losses.load_state_dict({**state["losses"], **own})  # the shards come from their own files
            optimizer.load_state_dict(state["optimizer"])
            if heads:  # re-sharded on the fly when the world size changed since
                saved_world = int(state["head_world"])
                restore_shards(ckpt_path.parent, int(state["step"]), saved_world, heads, optimizer)
            scaler.load_state_dict(state["scaler"])
            start_step = int(state["step"])
            history = json.loads(state["history"])
            evaluations = json.loads(state["evaluations"])
    if dist_info.enabled:
        if heads:
            ddp_ignore(trainable, heads)
        trainable = nn.parallel.DistributedDataParallel(
            trainable, device_ids=[device.index] if device.type == "cuda" else None
        )

    def save(step: int) -> None:
        if heads:  # each rank its own rows, before last.pt names this step as the one to resume
            save_shards(ckpt_path.parent, step, heads, optimizer)
            barrier(dist_info)
        if dist_info.is_main:  # every rank holds the same replicated state; one writer
            sharded = head_keys(heads)
            save_train_state(
                ckpt_path,
                {
                    "fingerprint": fingerprint,
                    "step": step,
                    "model": model.state_dict(),
                    "losses": {k: v for k, v in losses.state_dict().items() if k not in sharded},
                    "optimizer": strip_head_state(optimizer.state_dict(), head_group),
                    "scaler": scaler.state_dict(),
                    "history": json.dumps(history),
                    "evaluations": json.dumps(evaluations),
                    "head_world": dist_info.world_size,
                },
            )
            if heads:
                prune_shards(ckpt_path.parent, step, dist_info.world_size)
        barrier(dist_info)

    writer = _tensorboard(job.out_dir / "tensorboard") if dist_info.is_main else _NullWriter()
    sampler, general = make_sampler(job.dataset, cfg, local_batch, start_step, dist_info)
    loader = torch.utils.data.DataLoader(
        _Batches(job.dataset), batch_sampler=sampler, num_workers=job.workers
    )
    step_seconds: list[float] = []
    step_totals: list[float] = []
    last: dict[str, float] = {}
    bar = tqdm(
        total=steps,
        initial=start_step,
        desc=f"train {job.name}",
        unit="step",
        disable=not (job.progress and dist_info.is_main),
        dynamic_ncols=True,
    )
    _train_mode(trainable, cfg.freeze_bn)
    step = start_step
    batches = iter(loader)
    rank_slice = slice(dist_info.rank * local_batch, (dist_info.rank + 1) * local_batch)
    try:
        while step < steps:
            images, labels, indices = next(batches)
            t0 = time.perf_counter()
            # flips are drawn for the whole global batch, so N ranks flip exactly what 1 process would
            flip = (torch.rand(cfg.batch_size, generator=_step_generator(cfg.seed, step)) < 0.5)[rank_slice]
            x = train_input(images, flip, device).contiguous(memory_format=memory_format)
            labels = labels.to(device)
            teacher = None
            if job.teacher is not None:
                idx = indices.numpy()
                plain = torch.from_numpy(np.asarray(job.teacher.plain[idx], dtype=np.float32))
                mirrored = torch.from_numpy(np.asarray(job.teacher.flipped[idx], dtype=np.float32))
                teacher = torch.where(flip[:, None], mirrored, plain).to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg, steps)
            ref = None
            if reference is not None:
                with torch.no_grad():
                    ref = reference(x).float()
            torch.manual_seed(cfg.seed * 7919 + step)  # dropout etc.: deterministic per step
            values = trainable(
                x, labels, teacher, indices, step, None if general is None else general.to(device), ref
            )
            total = sum(job.weights[name] * v for name, v in values.items())
            logged = mean_over_ranks(torch.stack([v.detach().float() for v in values.values()]), dist_info)
            for name, v in zip(values, logged, strict=True):
                if not torch.isfinite(v):
                    raise NonFiniteLoss(
                        f"{job.name}: loss term '{name}' is {v.item()} at step {step}; "
                        f"last good checkpoint kept at {ckpt_path if ckpt_path.exists() else '(none yet)'}"
                    )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            if device.type == "cuda":
                torch.cuda.synchronize()
            step_seconds.append(time.perf_counter() - t0)
            step += 1
            last = {name: float(v) for name, v in zip(values, logged, strict=True)}
            last["total"] = sum(job.weights[name] * last[name] for name in values)
            step_totals.append(last["total"])
            if step % 10 == 0 or step == steps:
                history.append({"step": step, "lr": optimizer.param_groups[0]["lr"], **last})
                for name, v in last.items():
                    writer.add_scalar(f"{job.name}/loss/{name}", v, step)
                writer.add_scalar(f"{job.name}/lr", optimizer.param_groups[0]["lr"], step)
            bar.update(1)
            bar.set_postfix(loss=f"{last['total']:.3f}")
            if job.evaluate and cfg.eval_every and step % cfg.eval_every == 0 and step < steps:
                evaluations.append(_evaluate(job, model, step, writer, dist_info))
            if step % cfg.checkpoint_every == 0 or step == steps:
                save(step)
            if job.stop_after_step and step >= job.stop_after_step:
                break
    finally:
        bar.close()
    if step == steps and job.evaluate and cfg.eval_every and job.evaluate_at_end:
        evaluations.append(_evaluate(job, model, step, writer, dist_info))
        save(step)
    unshard_heads(losses)  # full heads again: the saved model's head_weight, stage two
    writer.close()
    compute_seconds = sum(step_seconds)
    if dist_info.is_main:
        write_json(job.out_dir / "history.json", {"history": history, "evaluations": evaluations})
    return TrainSummary(
        steps=step,
        seconds=compute_seconds,
        images_per_second=cfg.batch_size / statistics.median(step_seconds) if step_seconds else 0.0,
        final_losses=last,
        evaluations=evaluations,
        resumed_from_step=start_step,
        step_seconds=step_seconds,
        step_totals=step_totals,
        precision={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32"),
    )


def _param_groups(
    module: nn.Module, no_decay: tuple[str, ...], skip: set[int] | None = None
) -> list[dict[str, Any]]:
    """One group normally; a second, decay-free group for parameters named in ``no_decay``.

    Parameters whose ``id`` is in ``skip`` (sharded heads) are left for a group of their own.
    """
    decay, free = [], []
    for name, p in module.named_parameters():
        if p.requires_grad and id(p) not in (skip or set()):
            (free if any(s in name for s in no_decay) else decay).append(p)
    groups = [{"params": decay}]
    if free:
        groups.append({"params": free, "weight_decay": 0.0})
    return groups


def _train_mode(module: nn.Module, freeze_bn: bool) -> None:
    """train(), with BatchNorm layers kept in eval mode (fixed running statistics) when asked."""
    module.train()
    if freeze_bn:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _evaluate(job: TrainJob, model: nn.Module, step: int, writer: Any, dist_info: DistInfo) -> dict[str, Any]:
    """Verification metrics on rank 0 (the others wait), as arcface_torch's callback does."""
    metrics: dict[str, Any] = {}
    if dist_info.is_main:
        model.eval()
        try:
            metrics = job.evaluate(model) if job.evaluate else {}
        finally:
            _train_mode(model, job.cfg.freeze_bn)
    barrier(dist_info)
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
