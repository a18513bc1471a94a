"""ILED: Instance-Level Embedding Distillation with dynamic hard mining (after Mishra & Uikey, 2025).

RECONSTRUCTED, NOT FROM THE PAPER. Only the abstract of arXiv 2508.11376 could be read: ILED "aligns
individual feature embeddings by leveraging a dynamic hard mining strategy". The distance, the mining
rule, the ratio, its schedule and the temperature below are our reading (shared/research/losses.md
§1.3), each exposed as a knob so it can be matched to the paper once its body is read:

* per-sample distance ``d_i = 1 - cos(P s_i, t_i)`` (= ½‖ŝ_i − t̂_i‖²), ``P`` a learned linear projector
  when the student and teacher widths differ (identity otherwise);
* ``mining="topk"`` (default): keep the ``ceil(rho * B)`` largest ``d_i`` and average them. ``rho`` is
  annealed linearly from ``rho_start`` to ``rho_end`` over ``anneal_steps`` optimiser steps, so training
  starts as the plain cosine feature-consistency loss (all samples) and focuses on the hardest half as the
  student catches up — "dynamic" in the sense that both the hard set and its size change;
* ``mining="soft"``: every sample kept with weight ``w_i = B * softmax(stopgrad(d) / tau)_i``;
* ``mining="none"``: the plain mean (the FC baseline with a cosine distance), for ablations.

The loss is ``sum_i w_i d_i / sum_i w_i``; the weights never carry gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill.errors import InputError
from distill.losses.base import LossDims, LossInputs, LossTerm, Projector

MINING_MODES = ("topk", "soft", "none")


def rho_at(step: int, rho_start: float, rho_end: float, anneal_steps: int) -> float:
    """Hard-sample ratio at ``step``: linear from ``rho_start`` to ``rho_end``, then constant."""
    if anneal_steps <= 0:
        return rho_end
    progress = min(1.0, max(0.0, step / anneal_steps))
    return rho_start + (rho_end - rho_start) * progress


def hard_count(rho: float, batch: int) -> int:
    """``ceil(rho * batch)`` clamped to [1, batch]; the epsilon stops 0.3*10 = 3.0000000000000004 -> 4."""
    return max(1, min(batch, math.ceil(rho * batch - 1e-9)))


def mining_weights(d: torch.Tensor, mining: str, rho: float = 1.0, tau: float = 0.1) -> torch.Tensor:
    """Per-sample weights (no gradient) for the distances ``d`` (B,)."""
    d = d.detach()
    if mining == "none":
        return torch.ones_like(d)
    if mining == "topk":
        k = hard_count(rho, d.shape[0])
        w = torch.zeros_like(d)
        w[torch.topk(d, k, largest=True, sorted=False).indices] = 1.0
        return w
    if mining == "soft":
        return torch.softmax(d / tau, dim=0) * d.shape[0]
    raise ValueError(f"unknown mining mode {mining!r}")


class ILEDLoss(LossTerm):
    """Instance-level cosine alignment to the teacher, averaged over mined hard samples (see module doc).

    Knobs: ``mining`` ("topk" | "soft" | "none"), ``rho_start``, ``rho_end``, ``anneal_steps`` (topk ratio
    schedule; ``anneal_steps=0`` means ``rho_end`` from the first step), ``tau`` (soft-weight temperature).
    """

    needs_teacher = True

    def __init__(
        self,
        dims: LossDims,
        mining: str = "topk",
        rho_start: float = 1.0,
        rho_end: float = 0.5,
        anneal_steps: int = 10_000,
        tau: float = 0.1,
    ) -> None:
        super().__init__()
        if dims.teacher_dim is None:
            raise ValueError("iled needs a teacher")
        if mining not in MINING_MODES:
            raise InputError(f"iled.mining: must be one of {', '.join(MINING_MODES)}; got {mining!r}")
        for name, value in (("rho_start", rho_start), ("rho_end", rho_end)):
            if not 0.0 < value <= 1.0:
                raise InputError(f"iled.{name}: must be in (0, 1]; got {value}")
        if anneal_steps < 0:
            raise InputError(f"iled.anneal_steps: must be >= 0; got {anneal_steps}")
        if tau <= 0:
            raise InputError(f"iled.tau: must be > 0; got {tau}")
        self.mining = mining
        self.rho_start = float(rho_start)
        self.rho_end = float(rho_end)
        self.anneal_steps = int(anneal_steps)
        self.tau = float(tau)
        self.projector = Projector(dims.student_dim, dims.teacher_dim)

    def distances(self, inputs: LossInputs) -> torch.Tensor:
        """``d_i = 1 - cos(P s_i, t_i)`` for every sample of the batch (B,)."""
        assert inputs.teacher is not None
        s = F.normalize(self.projector(inputs.student), dim=1)
        t = F.normalize(inputs.teacher.to(s.dtype), dim=1)
        return 1.0 - (s * t).sum(dim=1)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        d = self.distances(inputs)
        rho = rho_at(inputs.step, self.rho_start, self.rho_end, self.anneal_steps)
        w = mining_weights(d, self.mining, rho=rho, tau=self.tau)
        return (w * d).sum() / w.sum()
