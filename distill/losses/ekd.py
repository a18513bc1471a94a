"""EKD: evaluation-oriented knowledge distillation (Huang et al., CVPR 2022), as TFace's official code.

Face models are judged by TPR at fixed FPRs, so EKD distils *where each pair sits relative to the
FPR thresholds* rather than raw similarities (losses.md §2.2; Tencent/TFace
``recognition/tasks/ekd/distillation/ekd.py``):

1. ``S = ŝŝᵀ`` (student) and ``t̂t̂ᵀ`` (teacher) over the strict upper triangle; same-label pairs are
   positives, the rest negatives.
2. Thresholds ("anchors") at FPR ``1/a`` for ``a`` in ``anchors``: sort a model's negatives descending and
   take index ``⌊|Q| / a⌋``; each model has its own, smoothed by an EMA buffer (init 0, momentum 0.01).
3. Soft rank ``r(x) = Σ_k σ((x − τ_k)/T)``, ``T = 0.01``, the sigmoid exponent clamped to ``[−50, 50]``.
4. ``L = 0.02·mse(r_s, r_t) over all positives + 0.01·mse(r_s, r_t) over the top-K (2000) negatives by
   student similarity``.

The loss needs the *global* batch: under DDP the embeddings and labels are all-gathered first (the local
slice keeps its gradient). Thresholds are updated only in ``train()`` mode, like BatchNorm statistics, so
an evaluation pass or a gradient check does not move them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from distill.losses.base import LossDims, LossInputs, LossTerm
from distill.losses.gather import all_gather_with_grad, distributed_world

DEFAULT_ANCHORS = (10, 100, 1000, 10000, 100000, 1000000)  # FPR 1e-1 ... 1e-6


def upper_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-major strict-upper-triangle pairs ``(rows, cols)`` and whether each is a same-label pair."""
    n = labels.shape[0]
    rows, cols = torch.triu_indices(n, n, offset=1, device=labels.device)
    return rows, cols, labels[rows] == labels[cols]


def negative_thresholds(negatives: torch.Tensor, anchors: Sequence[int]) -> torch.Tensor:
    """Similarity at FPR ``1/a`` for each anchor: entry ``⌊len/a⌋`` of the descending-sorted negatives."""
    ordered = torch.sort(negatives.detach(), descending=True).values
    index = torch.tensor([len(ordered) // a for a in anchors], device=ordered.device)
    return ordered[index]


def soft_rank(sim: torch.Tensor, thresholds: torch.Tensor, temperature: float, clamp: float) -> torch.Tensor:
    """Soft count of thresholds each similarity exceeds: ``Σ_k σ((x − τ_k)/T)`` with a clamped exponent."""
    exponent = -(sim.unsqueeze(1) - thresholds.to(sim.dtype).unsqueeze(0)) / temperature
    return (1.0 / (1.0 + torch.exp(exponent.clamp(-clamp, clamp)))).sum(dim=1)


def select_negatives(neg_student_sim: torch.Tensor, top_k: int) -> torch.Tensor:
    """Indices (into the negatives) of the ``top_k`` largest student similarities, largest first."""
    order = torch.sort(neg_student_sim.detach(), descending=True).indices
    return order[:top_k]


class EKDLoss(LossTerm):
    """Rank-based pair distillation around EMA FPR thresholds (knobs default to TFace's values).

    ``gather`` (not a config knob; the engine may set it) maps a local (B, ...) tensor to the global
    batch; by default ``all_gather_with_grad`` is used whenever a process group with more than one rank
    is initialised and ``distributed`` is true.
    """

    needs_teacher = True

    def __init__(
        self,
        dims: LossDims,
        top_k: int = 2000,
        temperature: float = 0.01,
        anchors: Sequence[int] = DEFAULT_ANCHORS,
        momentum: float = 0.01,
        pos_weight: float = 0.02,
        neg_weight: float = 0.01,
        clamp: float = 50.0,
        distributed: bool = True,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if dims.teacher_dim is None:
            raise ValueError("ekd needs a teacher")
        anchors = tuple(anchors)
        if not anchors or any(int(a) != a or a < 1 for a in anchors):
            raise ValueError(f"ekd.anchors: must be positive integers (1/FPR), got {list(anchors)}")
        if int(top_k) != top_k or top_k < 0:
            raise ValueError(f"ekd.top_k: must be a non-negative integer, got {top_k}")
        if temperature <= 0:
            raise ValueError(f"ekd.temperature: must be > 0, got {temperature}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"ekd.momentum: must be in [0, 1], got {momentum}")
        if clamp <= 0:
            raise ValueError(f"ekd.clamp: must be > 0, got {clamp}")
        self.top_k = int(top_k)
        self.temperature = float(temperature)
        self.anchors = tuple(int(a) for a in anchors)
        self.momentum = float(momentum)
        self.pos_weight = float(pos_weight)
        self.neg_weight = float(neg_weight)
        self.clamp = float(clamp)
        self.distributed = bool(distributed)
        self.gather = gather
        self.register_buffer("s_anchor", torch.zeros(len(self.anchors)))
        self.register_buffer("t_anchor", torch.zeros(len(self.anchors)))

    def _gather(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if self.gather is not None:
            return self.gather
        if self.distributed and distributed_world() > 1:
            return all_gather_with_grad
        return None

    def _pair_loss(self, s_sim: torch.Tensor, t_sim: torch.Tensor) -> torch.Tensor:
        if s_sim.numel() == 0:
            return s_sim.sum() * 0.0  # keeps dtype, device and graph
        r_s = soft_rank(s_sim, self.s_anchor, self.temperature, self.clamp)
        r_t = soft_rank(t_sim, self.t_anchor, self.temperature, self.clamp)
        return F.mse_loss(r_s, r_t)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        if inputs.teacher is None:
            raise ValueError("ekd needs the teacher embeddings of the batch (LossInputs.teacher)")
        student, teacher, labels = inputs.student, inputs.teacher.to(inputs.student.dtype), inputs.labels
        gather = self._gather()
        if gather is not None:
            student, teacher, labels = gather(student), gather(teacher), gather(labels)
        s = F.normalize(student, dim=1)
        rows, cols, is_pos = upper_pairs(labels)
        s_sim = (s @ s.t())[rows, cols]
        with torch.no_grad():
            t = F.normalize(teacher.detach(), dim=1)
            t_sim = (t @ t.t())[rows, cols]
        neg_s, neg_t = s_sim[~is_pos], t_sim[~is_pos]
        if self.training and neg_s.numel() > 0:
            with torch.no_grad():
                for buf, negs in ((self.s_anchor, neg_s), (self.t_anchor, neg_t)):
                    batch = negative_thresholds(negs, self.anchors).to(buf.dtype)
                    buf.mul_(1.0 - self.momentum).add_(self.momentum * batch)
        pos_loss = self._pair_loss(s_sim[is_pos], t_sim[is_pos])
        picked = select_negatives(neg_s, self.top_k)
        neg_loss = self._pair_loss(neg_s[picked], neg_t[picked])
        return self.pos_weight * pos_loss + self.neg_weight * neg_loss
