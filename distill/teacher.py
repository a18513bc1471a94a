"""The teacher of a run: an ONNX file, a checkpoint (facekd or a plain state_dict) or one trained here.

Whatever its source, a teacher is used through ``Teacher.embed`` (the project's normalised NCHW in, raw
embeddings out); its ``InputContract`` turns that input into what the model expects. Its margin head, when
known, rides along for the methods that reuse the teacher's classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.atomic import publish
from distill.config import TeacherConfig
from distill.data.transforms import IMAGE_SIZE
from distill.engine.device import channels_last_is_safe, resolve_device
from distill.engine.distributed import DistInfo, barrier, from_rank0
from distill.errors import InputError
from distill.teacher_input import Detected, InputContract, resolve_contract


@dataclass
class Teacher:
    embed: Callable[[torch.Tensor], torch.Tensor]  # no-grad embedding of the project's normalised NCHW batch
    embedding_dim: int
    source: str  # "onnx:<path>", "checkpoint:<path>", "state_dict:<path>"
    head_weight: torch.Tensor | None = None  # (num_classes, D) class centres of its margin head
    contract: InputContract = field(default_factory=InputContract)  # how ``embed`` feeds the model
    module: torch.nn.Module | None = None  # the PyTorch model, for checkpoint teachers

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]

    def descriptor(self, path: Path | None = None) -> dict[str, Any]:
        """What later stages need to know about this teacher (written to the teacher stage's teacher.json)."""
        out: dict[str, Any] = {
            "source": self.source,
            "kind": self.kind,
            "embedding_dim": self.embedding_dim,
            "has_head": self.head_weight is not None,
            "input": self.contract.to_dict(),
        }
        if path is not None:
            out["file"] = str(Path(path).resolve())
        return out


def load_teacher(
    cfg: TeacherConfig,
    trained_checkpoint: Path | None = None,
    contract: InputContract | None = None,
    num_threads: int | None = None,
    spin: bool = False,
) -> Teacher:
    """Open the teacher named by the config (ONNX first, then a checkpoint, then the one trained here).

    ``contract`` is the input contract the teacher stage recorded; without it the contract is detected
    from the file and ``cfg.input`` (and an ONNX teacher's batch sizes are probed). ``num_threads`` sets
    an ONNX teacher's onnxruntime threads (None: onnxruntime's default); torch's are set by the caller.
    ``spin``: keep onnxruntime's spinning threads, for a teacher whose latency is measured.
    """
    if cfg.onnx:
        from distill.models.onnx_teacher import OnnxTeacher

        onnx_teacher = OnnxTeacher(
            cfg.onnx, input_cfg=cfg.input, contract=contract, num_threads=num_threads, spin=spin
        )
        return Teacher(
            embed=onnx_teacher,
            embedding_dim=onnx_teacher.embedding_dim,
            source=f"onnx:{cfg.onnx}",
            contract=onnx_teacher.contract,
        )
    path = Path(cfg.checkpoint) if cfg.checkpoint else trained_checkpoint
    if path is None:
        raise InputError("teacher: no teacher.onnx, teacher.checkpoint or trained teacher available")
    from distill.models.checkpoint import load_weights_file

    device = resolve_device("auto")
    arch_kwargs = {"embedding_dim": cfg.embedding_dim, **cfg.arch_params}
    model, meta = load_weights_file(path, cfg.arch, arch_kwargs)
    if contract is None:
        # a PyTorch backbone of this project takes NCHW at 112 (its final Linear is sized for 7x7 maps)
        contract = resolve_contract(
            Detected(layout="NCHW", size=IMAGE_SIZE),
            layout=cfg.input.layout, channels=cfg.input.channels, mean=cfg.input.mean, std=cfg.input.std,
            size=cfg.input.size, where=f"{path}: a {meta['arch']} checkpoint",
        )  # fmt: skip
        contract = replace(
            contract, origin={**contract.origin, "layout": "PyTorch backbone", "size": "PyTorch backbone"}
        )
    fmt = torch.channels_last if channels_last_is_safe(model) else torch.contiguous_format
    module = model
    model = model.to(device, memory_format=fmt).eval()
    extra = meta.get("extra") or {}
    feed = contract.feed

    def embed(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(feed(x.to(device)).contiguous(memory_format=fmt)).float().cpu()

    dim = int(meta["arch_kwargs"]["embedding_dim"])
    kind = "checkpoint" if meta["format"] != "state_dict" else "state_dict"
    return Teacher(
        embed=embed,
        embedding_dim=dim,
        source=f"{kind}:{path}",
        head_weight=extra.get("head_weight"),
        contract=contract,
        module=module,
    )


def shard_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[range]:
    """The index ranges one rank embeds: batches dealt round-robin, so shards differ by one batch at most."""
    step = batch_size * world_size
    return [range(s, min(n, s + batch_size)) for s in range(rank * batch_size, n, step)]


def bf16_embed(teacher: Teacher) -> Callable[[torch.Tensor], torch.Tensor]:
    """The teacher's embedding in bf16 on its device (a PyTorch teacher), through an inference copy:
    BatchNorm folded into the convolutions before it (``fold_batchnorm``), then weights and activations
    in bf16. On this 2-core CPU (AMX) the default run's trained teacher embeds a batch of 64 in 0.19 s
    against 0.26 s under bf16 autocast of the module as it is, at the same cosine to fp32
    (benchmarks/results/teacher_cache.md). The module itself is untouched (it stays fp32)."""
    from distill.models.inference import fold_batchnorm

    assert teacher.module is not None
    device = next(teacher.module.parameters()).device
    fmt = torch.channels_last if channels_last_is_safe(teacher.module) else torch.contiguous_format
    model = fold_batchnorm(teacher.module).to(device=device, dtype=torch.bfloat16, memory_format=fmt)
    feed = teacher.contract.feed

    def embed(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = feed(x.to(device)).to(torch.bfloat16).contiguous(memory_format=fmt)
            return model(x).float().cpu()

    return embed


def cache_embed_fn(
    teacher: Teacher, precision: str, first_batch: torch.Tensor, min_cosine: float
) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """The embedding function the cache uses, and what was chosen and why.

    bf16 (``precision`` "bf16", or "auto" on hardware that runs it natively; ``bf16_embed``) is taken only for
    a PyTorch teacher and only when, on ``first_batch`` and its mirror, every embedding keeps a cosine of
    at least ``min_cosine`` to fp32: distillation targets a hair off fp32 teach the same, wrong ones not.
    """
    from distill.data.transforms import hflip_nchw
    from distill.engine.device import native_bf16

    if precision == "fp32" or teacher.module is None:
        why = "as asked" if precision == "fp32" else "the teacher is not a PyTorch model"
        return teacher.embed, {"precision": "fp32", "why": why}
    device = next(teacher.module.parameters()).device
    if precision == "auto" and not native_bf16(device):
        return teacher.embed, {"precision": "fp32", "why": f"no native bf16 on {device.type}"}

    embed_bf16 = bf16_embed(teacher)
    x = torch.cat([first_batch, hflip_nchw(first_batch)])
    cos = torch.nn.functional.cosine_similarity(embed_bf16(x).double(), teacher.embed(x).double(), dim=1)
    worst = float(cos.min())
    checked = {"min_cosine_to_fp32": round(worst, 6), "checked_images": int(x.shape[0])}
    if worst < min_cosine:
        why = f"bf16 embeddings of the first batch reach cosine {worst:.5f} to fp32, below {min_cosine}"
        return teacher.embed, {"precision": "fp32", "why": why, **checked}
    why = f"a bf16 inference copy on {device.type}"
    return embed_bf16, {"precision": "bf16", "why": why, **checked}


def cache_teacher_embeddings(
    teacher: Teacher,
    dataset: Any,
    out_dir: Path,
    batch_size: int = 64,
    progress: bool = True,
    dist_info: DistInfo | None = None,
    precision: str = "fp32",
    min_cosine: float = 0.999,
) -> dict[str, Any]:
    """Embed every training image and its mirror once; write ``plain.npy``/``flipped.npy`` atomically.

    The arrays are read back memory-mapped by the training loop, so a teacher costs one forward pass
    per image per run instead of one per step. Under torchrun every rank embeds its share of the batches
    (``shard_batches``) straight into the one shared memory-mapped file; rank 0 creates it before and
    publishes it (fsync + rename) after, so a crash never leaves a cache that looks complete. Returns
    the precision chosen (:func:`cache_embed_fn`, decided on the first batch) with its reason.
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
    embed, chosen = teacher.embed, {"precision": "fp32", "why": "no images"}
    if n:  # every rank decides the same, on the same first batch
        first = to_model_input(np.stack([dataset[i][0] for i in range(min(n, batch_size))]))
        embed, chosen = cache_embed_fn(teacher, precision, first, min_cosine)
    if info.enabled:  # rank 0 decides for all: thread counts could tip a rank near the threshold
        chosen = from_rank0(chosen, info)
        embed = bf16_embed(teacher) if chosen["precision"] == "bf16" else teacher.embed
    for idx in tqdm(shard, desc="teacher embeddings", unit="batch", disable=not (progress and info.is_main)):
        images = np.stack([dataset[i][0] for i in idx])
        x = to_model_input(images)
        plain[idx.start : idx.stop] = embed(x).numpy()
        flipped[idx.start : idx.stop] = embed(hflip_nchw(x)).numpy()
    plain.flush()
    flipped.flush()
    del plain, flipped
    barrier(info)  # every rank's rows are on disk
    if info.is_main:
        for tmp, final in zip(partial, paths, strict=True):
            publish(tmp, final)
    barrier(info)
    return chosen


def open_teacher_cache(out_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return (np.load(out_dir / "plain.npy", mmap_mode="r"), np.load(out_dir / "flipped.npy", mmap_mode="r"))


def fed_wrongly(results: dict[str, Any], contract: InputContract) -> str | None:
    """Why a teacher's verification results say it does not see faces, or None when they look sane.

    A teacher fed wrongly (scaling, channel order, layout, alignment) usually loads and runs fine and
    then outputs near-constant embeddings or scores at chance; distilling from it teaches nothing.
    """
    from distill.evaluation import blind_to_faces

    what = blind_to_faces(results)
    if what is None:
        return None
    return (
        f"{what}: the teacher is most likely fed wrongly. Check teacher.input: pixel scaling (mean/std; "
        f"raw 0..255 is mean 0, std 1), channel order (RGB/BGR), layout and size, and that the faces are "
        f"aligned like its training data. It was fed as {contract.summary()}. "
        "Set teacher.allow_chance: true to go on anyway"
    )
