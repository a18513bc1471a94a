"""A FIFO memory bank of past embeddings and their labels, for losses that look beyond one batch.

Everything the bank holds (embeddings, labels, write pointer, fill count) is a registered buffer, so
it is saved with the loss term's ``state_dict`` and a resumed run continues with the exact same bank.
Under DDP every rank enqueues the *global* batch in rank order, so the bank is identical on all ranks
(the same contract as MoCo / XBM queues).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

Gather = Callable[[torch.Tensor], torch.Tensor]


def _distributed_world() -> int:
    """World size when a process group is running, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


@torch.no_grad()
def all_gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every rank along dim 0, in rank order (no gradient).

    Ranks may hold different batch sizes (a short last batch): sizes are exchanged first and every
    tensor is padded to the largest before the collective, then trimmed.
    """
    world = _distributed_world()
    if world == 1:
        return t.detach().clone()
    t = t.detach().contiguous()
    size = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    if t.shape[0] < longest:
        pad = t.new_zeros((longest - t.shape[0], *t.shape[1:]))
        t = torch.cat([t, pad], dim=0)
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t)
    return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)], dim=0)


class MemoryBank(nn.Module):
    """FIFO queue of ``size`` embeddings of width ``dim`` with integer labels (-1 = empty slot)."""

    emb: torch.Tensor
    labels: torch.Tensor
    ptr: torch.Tensor
    count: torch.Tensor

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"memory bank size and dim must be >= 1, got size={size}, dim={dim}")
        self.size = int(size)
        self.dim = int(dim)
        self.register_buffer("emb", torch.zeros(self.size, self.dim, dtype=dtype))
        self.register_buffer("labels", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next slot to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # filled slots, <= size

    def __len__(self) -> int:
        return int(self.count.item())

    @torch.no_grad()
    def enqueue(self, emb: torch.Tensor, labels: torch.Tensor, gather: Gather | None = None) -> None:
        """Write a batch over the oldest entries (detached). A batch longer than the bank keeps its tail.

        ``gather`` maps a local tensor to the global one (rank order). When it is None and a process
        group with more than one rank is running, :func:`all_gather_no_grad` is used, so every rank
        writes the same global batch.
        """
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"memory bank expects (n, {self.dim}) embeddings, got {tuple(emb.shape)}")
        if labels.shape != (emb.shape[0],):
            raise ValueError(f"memory bank labels must be ({emb.shape[0]},), got {tuple(labels.shape)}")
        if gather is None and _distributed_world() > 1:
            gather = all_gather_no_grad
        emb, labels = emb.detach(), labels.detach()
        if gather is not None:
            emb, labels = gather(emb), gather(labels)
        n = emb.shape[0]
        if n == 0:
            return
        start = int(self.ptr.item())
        # Only the newest `size` rows can survive; writing them alone avoids duplicate indices.
        keep = min(n, self.size)
        slots = (start + torch.arange(n - keep, n, device=self.emb.device)) % self.size
        self.emb[slots] = emb[n - keep :].to(device=self.emb.device, dtype=self.emb.dtype)
        self.labels[slots] = labels[n - keep :].to(device=self.labels.device, dtype=torch.long)
        self.ptr.fill_((start + n) % self.size)
        self.count.fill_(min(int(self.count.item()) + n, self.size))

    def valid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings, labels) of the filled slots, as copies.

        Copies, because the caller usually builds a graph on them and then enqueues: an in-place write to
        a tensor saved for backward would break the backward pass.
        """
        n = int(self.count.item())
        # Slots fill from 0 upwards and are never emptied, so the filled ones are always [0, n).
        return self.emb[:n].clone(), self.labels[:n].clone()
