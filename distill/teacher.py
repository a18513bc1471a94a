"""The teacher of a run: an external ONNX file, an existing facekd checkpoint, or one trained here.

Whatever its source, a teacher is used through ``Teacher.embed`` (normalised NCHW in, raw embeddings
out); its margin head, when known, rides along for the methods that reuse the teacher's classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.atomic import publish
from distill.config import TeacherConfig
from distill.engine.device import channels_last_is_safe, resolve_device
from distill.engine.distributed import DistInfo, barrier
from distill.errors import InputError


@dataclass
class Teacher:
    embed: Callable[[torch.Tensor], torch.Tensor]  # no-grad embedding of a normalised NCHW batch
    embedding_dim: int
    source: str  # "onnx:<path>", "checkpoint:<path>"
    head_weight: torch.Tensor | None = None  # (num_classes, D) class centres of its margin head


def load_teacher(cfg: TeacherConfig, trained_checkpoint: Path | None = None) -> Teacher:
    """Open the teacher named by the config (ONNX first, then a checkpoint, then the one trained here)."""
    if cfg.onnx:
        from distill.models.onnx_teacher import OnnxTeacher

        onnx_teacher = OnnxTeacher(cfg.onnx)
        return Teacher(
            embed=onnx_teacher, embedding_dim=onnx_teacher.embedding_dim, source=f"onnx:{cfg.onnx}"
        )
    path = Path(cfg.checkpoint) if cfg.checkpoint else trained_checkpoint
    if path is None:
        raise InputError("teacher: no teacher.onnx, teacher.checkpoint or trained teacher available")
    from distill.models.checkpoint import load_model

    device = resolve_device("auto")
    model, meta = load_model(path)
    fmt = torch.channels_last if channels_last_is_safe(model) else torch.contiguous_format
    model = model.to(device, memory_format=fmt).eval()
    extra = meta.get("extra") or {}

    def embed(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x.to(device).contiguous(memory_format=fmt)).float().cpu()

    dim = int(meta["arch_kwargs"]["embedding_dim"])
    return Teacher(
        embed=embed, embedding_dim=dim, source=f"checkpoint:{path}", head_weight=extra.get("head_weight")
    )


def shard_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[range]:
    """The index ranges one rank embeds: batches dealt round-robin, so shards differ by one batch at most."""
    step = batch_size * world_size
    return [range(s, min(n, s + batch_size)) for s in range(rank * batch_size, n, step)]


def cache_teacher_embeddings(
    teacher: Teacher,
    dataset: Any,
    out_dir: Path,
    batch_size: int = 64,
    progress: bool = True,
    dist_info: DistInfo | None = None,
) -> tuple[Path, Path]:
    """Embed every training image and its mirror once; write ``plain.npy``/``flipped.npy`` atomically.

    The arrays are read back memory-mapped by the training loop, so a teacher costs one forward pass
    per image per run instead of one per step. Under torchrun every rank embeds its share of the batches
    (``shard_batches``) straight into the one shared memory-mapped file; rank 0 creates it before and
    publishes it (fsync + rename) after, so a crash never leaves a cache that looks complete.
    """
    from tqdm import tqdm

    from distill.data.transforms import hflip_nchw, to_model_input

    info = dist_info or DistInfo()
    n = len(dataset)
    paths = (out_dir / "plain.npy", out_dir / "flipped.npy")
    partial = tuple(p.with_name(p.name + ".partial") for p in paths)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for p in partial:  # header and size written once; every rank fills its rows in place
            np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(n, teacher.embedding_dim))
    barrier(info)
    plain, flipped = (np.load(p, mmap_mode="r+") for p in partial)
    shard = shard_batches(n, batch_size, info.rank, info.world_size)
    for idx in tqdm(shard, desc="teacher embeddings", unit="batch", disable=not (progress and info.is_main)):
        images = np.stack([dataset[i][0] for i in idx])
        x = to_model_input(images)
        plain[idx.start : idx.stop] = teacher.embed(x).numpy()
        flipped[idx.start : idx.stop] = teacher.embed(hflip_nchw(x)).numpy()
    plain.flush()
    flipped.flush()
    del plain, flipped
    barrier(info)  # every rank's rows are on disk
    if info.is_main:
        for tmp, final in zip(partial, paths, strict=True):
            publish(tmp, final)
    barrier(info)
    return paths


def open_teacher_cache(out_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return (np.load(out_dir / "plain.npy", mmap_mode="r"), np.load(out_dir / "flipped.npy", mmap_mode="r"))
