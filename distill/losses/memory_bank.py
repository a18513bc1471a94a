"""A FIFO memory bank of past embeddings and their labels, for losses that look beyond one batch.

Everything the bank holds (embeddings, labels, write pointer, fill count) is a registered buffer, so
it is saved with the loss term's ``state_dict`` and a resumed run continues with the exact same bank.
Under DDP every rank enqueues the *global* batch in rank order, so the bank is identical on all ranks
(the same contract as MoCo / XBM queues).
"""

from __future__ import annotations

import torch
from torch import nn

from distill.losses.gather import Gather, all_gather_no_grad, distributed_world


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
        if gather is None and distributed_world() > 1:
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
