"""Collectives for losses that need the global batch under DDP (EKD, RPSD, memory banks).

One process: every function is the identity (or a copy), so single-GPU and CPU runs need no group.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

Gather = Callable[[torch.Tensor], torch.Tensor]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def distributed_world() -> int:
    """World size of the initialised default process group, 1 when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank in rank order; only the local slice carries autograd.

    Every rank then computes the same global-batch loss ``L`` but back-propagates only into its own
    samples. DDP *averages* parameter gradients over ranks, so the local slice's gradient is scaled by
    the world size: the averaged update then equals the single-process gradient of ``L`` on the global
    batch (no collective needed in backward, because ``L`` is identical on every rank).
    Ranks may hold different batch sizes (the pieces are exchanged through :func:`all_gather_no_grad`).
    """
    world = distributed_world()
    if world == 1:
        return x
    sizes = all_gather_no_grad(torch.tensor([x.shape[0]], device=x.device)).tolist()
    parts = list(torch.split(all_gather_no_grad(x), sizes, dim=0))
    parts[dist.get_rank()] = _ScaleGrad.apply(x, float(world)) if x.requires_grad else x
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every rank along dim 0, in rank order (no gradient).

    Ranks may hold different batch sizes (a short last batch): sizes are exchanged first and every
    tensor is padded to the largest before the collective, then trimmed.
    """
    world = distributed_world()
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
