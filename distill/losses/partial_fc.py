"""A class-sharded margin softmax (Partial FC): each rank holds 1/world of the class centres.

For the datasets this field trains on, the margin head is most of the model (Glint360K: 360K x 512 =
184M parameters; WebFace42M: 2M classes). Replicating it on every rank and all-reducing its gradient every
step stops scaling long before the backbone does. As in arcface_torch's Partial FC (An et al., 2022):

* rank r holds the centres of classes ``[start_r, end_r)`` (:func:`shard_range`);
* the embeddings and labels of the whole global batch are all-gathered; each rank computes the logits of
  the global batch against its own centres only (with the margin on the target where it owns the class);
* the softmax cross-entropy over all classes is completed with two all-reduces (the row maximum, the sum
  of exponentials) and one for the target logit: the loss is exactly that of the full head;
* backward is written out (:class:`_ShardedCrossEntropy`): each rank's logit gradient is
  ``softmax - onehot`` on its own columns, so nothing is counted twice; the embeddings' gradient is summed
  over ranks and each rank keeps its own rows (times the world size, because DDP averages the backbone's
  gradients over ranks: the same convention as ``distill.losses.gather.all_gather_with_grad``);
* ``sample_rate`` < 1 keeps every positive centre of the global batch and a random share of the
  negatives per step (Partial FC's sampling), cutting the logit matrix and the head's update.

Arithmetic runs in float32 whatever the autocast dtype (the logits of 100K+ classes overflow fp16).
One process (no group) is the plain full head: same code, world of one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distill.losses.gather import all_gather_no_grad, distributed_world
from distill.models.heads import margin_target


def shard_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """Classes ``[start, end)`` of ``rank``: contiguous blocks, sizes differing by one at most."""
    if not 0 <= rank < world or num_classes < world:
        raise ValueError(f"cannot shard {num_classes} classes over {world} ranks (rank {rank})")
    base, extra = divmod(num_classes, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _rank() -> int:
    return dist.get_rank() if distributed_world() > 1 else 0


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    if distributed_world() > 1:
        dist.all_reduce(t, op=op)
    return t


class _GatherSumGrad(torch.autograd.Function):
    """All-gather in forward; backward sums the gradient over ranks and keeps this rank's rows, x world."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = distributed_world()
        if world == 1:
            ctx.rows = (0, x.shape[0])
            ctx.world = 1
            return x.clone()
        sizes = all_gather_no_grad(torch.tensor([x.shape[0]], device=x.device)).tolist()
        start = sum(sizes[: dist.get_rank()])
        ctx.rows = (start, start + x.shape[0])
        ctx.world = world
        return all_gather_no_grad(x.contiguous())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = _all_reduce(grad.contiguous().clone(), dist.ReduceOp.SUM)
        start, end = ctx.rows
        return grad[start:end] * ctx.world


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over classes spread across ranks; ``target`` = -1 where another rank
    owns the sample's class."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        logits = logits.float()
        row_max = _all_reduce(logits.max(dim=1).values.detach().clone(), dist.ReduceOp.MAX)
        exp = torch.exp(logits - row_max[:, None])
        denom = _all_reduce(exp.sum(dim=1), dist.ReduceOp.SUM)
        owned = target >= 0
        picked = torch.zeros_like(row_max)
        picked[owned] = logits[owned, target[owned]]
        picked = _all_reduce(picked, dist.ReduceOp.SUM)
        loss = (torch.log(denom) + row_max - picked).mean()
        ctx.save_for_backward(exp / denom[:, None], target)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        prob, target = ctx.saved_tensors
        g = prob.clone()
        owned = target >= 0
        g[owned, target[owned]] -= 1.0
        return g * (grad / prob.shape[0]), None


class ShardedMarginSoftmax(nn.Module):
    """ArcFace or CosFace cross-entropy with the class centres sharded over the ranks of the default group.

    ``forward(embeddings, labels)`` takes this rank's batch and returns the loss of the *global* batch
    (identical on every rank). ``weight`` holds this rank's centres, rows ``[start, end)`` of the full
    head; it must stay out of DistributedDataParallel (its gradient is complete on its own rank).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        kind: str = "arcface",
        scale: float = 64.0,
        margin: float = 0.5,
        sample_rate: float = 1.0,
    ) -> None:
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ValueError(f"kind must be 'arcface' or 'cosface', got {kind!r}")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.kind, self.scale, self.margin, self.sample_rate = kind, float(scale), float(margin), sample_rate
        self.num_classes, self.embedding_dim = num_classes, embedding_dim
        self.world, self.rank = distributed_world(), _rank()
        self.start, self.end = shard_range(num_classes, self.rank, self.world)
        self.weight = nn.Parameter(torch.empty(self.end - self.start, embedding_dim).normal_(0.0, 0.01))
        self.last_sampled: torch.Tensor | None = None  # the global class ids used by the last step

    def _columns(self, labels: torch.Tensor) -> torch.Tensor:
        """This rank's centre rows to use: all, or the batch's positives plus sampled negatives."""
        n = self.end - self.start
        if self.sample_rate >= 1.0:
            return torch.arange(n, device=labels.device)
        local = labels[(labels >= self.start) & (labels < self.end)] - self.start
        positives = torch.unique(local)
        keep = max(int(math.ceil(self.sample_rate * n)), positives.numel())
        mask = torch.ones(n, dtype=torch.bool, device=labels.device)
        mask[positives] = False
        negatives = torch.nonzero(mask).flatten()
        chosen = negatives[
            torch.randperm(negatives.numel(), device=labels.device)[: keep - positives.numel()]
        ]
        return torch.sort(torch.cat([positives, chosen])).values

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        target_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``target_fn(cos_target, rows)``, when given, replaces the head's own margin: the target logits
        (before scaling) of the global-batch ``rows`` whose class this rank owns (MarginDistillation's
        per-sample margin)."""
        emb = _GatherSumGrad.apply(embeddings.float())
        labels = all_gather_no_grad(labels.long()) if self.world > 1 else labels.long()
        cols = self._columns(labels)
        self.last_sampled = cols + self.start
        weight = self.weight.float() if cols.numel() == self.weight.shape[0] else self.weight.float()[cols]
        cos = (F.normalize(emb, dim=1) @ F.normalize(weight, dim=1).t()).clamp(-1.0, 1.0)
        # where this rank owns a sample's class: its column among the used ones, else -1
        owned = (labels >= self.start) & (labels < self.end)
        target = torch.full_like(labels, -1)
        target[owned] = torch.searchsorted(cols, labels[owned] - self.start)
        rows = torch.nonzero(owned).flatten()
        if rows.numel():
            cos_t = cos[rows, target[rows]]
            new = target_fn(cos_t, rows) if target_fn else margin_target(self.kind, cos_t, self.margin)
            cos = cos.index_put((rows, target[rows]), new)
        return _ShardedCrossEntropy.apply(cos * self.scale, target)


def shard_of(full: nn.Module, kind: str, sample_rate: float = 1.0) -> ShardedMarginSoftmax:
    """This rank's rows of a full ArcFace/CosFace head (``weight`` C x D, ``scale``, ``margin``) as a
    sharded head; a frozen head stays frozen. Call once the process group is up."""
    part = ShardedMarginSoftmax(
        full.embedding_dim,
        full.num_classes,
        kind=kind,
        scale=full.scale,
        margin=full.margin,
        sample_rate=sample_rate,
    ).to(full.weight.device)
    with torch.no_grad():
        part.weight.copy_(full.weight[part.start : part.end])
    part.weight.requires_grad_(full.weight.requires_grad)
    return part


def gather_full_weight(part: ShardedMarginSoftmax) -> torch.Tensor:
    """Every rank's rows concatenated into the full C x D centres (a collective: every rank calls it)."""
    return all_gather_no_grad(part.weight.detach())
