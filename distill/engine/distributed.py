"""Process-group setup for ``torchrun``: the same training loop runs on 1 process or N.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR/PORT); with WORLD_SIZE > 1 the engine
joins the group (NCCL on CUDA, gloo on CPU), shards every global batch across ranks and wraps the
model and loss terms in DistributedDataParallel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (idempotent); a plain run gets rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        # generous timeout: ranks wait at a barrier while rank 0 runs a single-process stage (data, cache)
        dist.init_process_group(
            backend=backend, rank=info.rank, world_size=info.world_size, timeout=timedelta(hours=6)
        )
    return info


def current_dist() -> DistInfo:
    """Rank and world of the running process group (rank 0 of 1 when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def mean_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a small tensor of numbers over ranks (for logging and the NaN check on every rank)."""
    if not info.enabled:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def from_rank0(obj: object, info: DistInfo) -> object:
    """Rank 0's ``obj`` on every rank (a decision all ranks must share, e.g. the cache's precision)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
