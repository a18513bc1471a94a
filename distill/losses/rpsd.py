"""RPSD: Relation-based Pairwise Similarity Distillation with a memory bank (after Mishra & Uikey, 2025).

RECONSTRUCTED, NOT FROM THE PAPER. Only the abstract of arXiv 2508.11376 could be read: RPSD "captures
relational information through pairwise similarity relationships, employing a memory bank mechanism and
a sample mining strategy". Everything below is our reading (shared/research/losses.md §1.3); every
choice is a knob so it can be matched to the paper once its body is read.

Per step, with ``ŝ = normalize(P s)`` (``P`` a learned projector when widths differ) and ``t̂ = normalize(t)``:

* in-batch relations (all pairs ``i != j``): ``R^s_ij = ŝ_i·ŝ_j`` vs ``R^t_ij = t̂_i·t̂_j`` — these work from
  the first step, before the bank holds anything (``in_batch=False`` drops them);
* bank relations against a FIFO bank ``M_t`` of past *teacher* embeddings (normalised, with labels):
  ``R^t_ij = t̂_i·M_t,j`` and, by default, the cross-model ``R^s_ij = ŝ_i·M_t,j`` (the teacher embeddings are
  cached constants, so this bank is never stale); with ``student_bank=True`` a second bank ``M_s`` of past
  detached student embeddings (same slots) gives ``R^s_ij = ŝ_i·M_s,j`` instead (XBM-style, slightly stale);
* mining per anchor over the bank: every entry with the anchor's label (positives) plus the ``k_neg``
  different-label entries the *teacher* finds most similar (hard negatives);
* ``loss="mse"`` (default): mean of ``(R^s − R^t)²`` over all selected pairs; ``"smooth_l1"`` the same with
  a smooth-L1 of width ``smooth_l1_beta``; ``"kl"``: per anchor, KL(softmax(R^t/tau_r) ‖ softmax(R^s/tau_r))
  over its selected entries (in-batch and bank together), averaged over anchors;
* after the loss is computed the batch's teacher (and student) embeddings are enqueued — only in training
  mode, so evaluation and gradient checks leave the bank alone. Under DDP the global batch is enqueued on
  every rank (see ``MemoryBank.enqueue``); the relations themselves use the local batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.errors import InputError
from distill.losses.base import LossDims, LossInputs, LossTerm, Projector
from distill.losses.gather import Gather, all_gather_no_grad, all_gather_with_grad, distributed_world
from distill.losses.memory_bank import MemoryBank


def _already_global(t: torch.Tensor) -> torch.Tensor:
    return t


LOSS_MODES = ("mse", "smooth_l1", "kl")


def mine_bank(
    teacher_sim: torch.Tensor,
    anchor_labels: torch.Tensor | None,
    bank_labels: torch.Tensor | None,
    k_neg: int,
) -> torch.Tensor:
    """(B, n) selection mask: all same-label bank entries + the ``k_neg`` most teacher-similar others.

    A row with fewer than ``k_neg`` different-label entries keeps all of them. Without labels (None:
    label-free distillation) it is the ``k_neg`` entries the teacher finds most similar, whoever they are.
    """
    if anchor_labels is None or bank_labels is None:
        pos = torch.zeros_like(teacher_sim, dtype=torch.bool)
    else:
        pos = anchor_labels[:, None] == bank_labels[None, :]
    k = min(k_neg, teacher_sim.shape[1])
    if k <= 0:
        return pos
    scores = teacher_sim.detach().masked_fill(pos, float("-inf"))
    neg = torch.zeros_like(pos)
    neg.scatter_(1, torch.topk(scores, k, dim=1).indices, True)
    return pos | (neg & ~pos)


def relation_loss(
    rs: torch.Tensor, rt: torch.Tensor, mask: torch.Tensor, mode: str, tau_r: float, beta: float
) -> torch.Tensor:
    """Mismatch between student and teacher relations over the selected entries of ``mask``."""
    if mode == "kl":
        rows = mask.any(dim=1)
        rs, rt, mask = rs[rows], rt[rows], mask[rows]
        log_ps = torch.log_softmax((rs / tau_r).masked_fill(~mask, float("-inf")), dim=1)
        log_pt = torch.log_softmax((rt / tau_r).masked_fill(~mask, float("-inf")), dim=1)
        # Unselected entries are -inf on both sides; zero them before the product so no NaN appears.
        log_ps = torch.where(mask, log_ps, torch.zeros_like(log_ps))
        log_pt = torch.where(mask, log_pt, torch.zeros_like(log_pt))
        return (log_pt.exp() * mask * (log_pt - log_ps)).sum(dim=1).mean()
    if mode == "mse":
        per_pair = (rs - rt).pow(2)
    elif mode == "smooth_l1":
        per_pair = F.smooth_l1_loss(rs, rt, reduction="none", beta=beta)
    else:
        raise ValueError(f"unknown relation loss {mode!r}")
    return (per_pair * mask).sum() / mask.sum()


class RPSDLoss(LossTerm):
    """Pairwise-similarity distillation over in-batch and mined memory-bank pairs (see module doc).

    Knobs: ``bank_size`` (K), ``k_neg`` (hard negatives per anchor), ``loss`` ("mse" | "smooth_l1" | "kl"),
    ``tau_r`` (KL temperature), ``smooth_l1_beta``, ``student_bank`` (student-side bank), ``in_batch``
    (include the B x B in-batch pairs), ``use_labels`` (false: mine by teacher similarity alone, for
    label-free distillation). ``gather`` (code only, not a config knob): the all-gather used when
    enqueueing under DDP; None = ``all_gather_no_grad`` when a process group runs.
    """

    needs_teacher = True

    def __init__(
        self,
        dims: LossDims,
        bank_size: int = 4096,
        k_neg: int = 128,
        loss: str = "mse",
        tau_r: float = 0.1,
        smooth_l1_beta: float = 0.1,
        student_bank: bool = False,
        in_batch: bool = True,
        use_labels: bool = True,
        gather: Gather | None = None,
    ) -> None:
        super().__init__()
        if dims.teacher_dim is None:
            raise ValueError("rpsd needs a teacher")
        if loss not in LOSS_MODES:
            raise InputError(f"rpsd.loss: must be one of {', '.join(LOSS_MODES)}; got {loss!r}")
        if bank_size < 1:
            raise InputError(f"rpsd.bank_size: must be >= 1; got {bank_size}")
        if k_neg < 0:
            raise InputError(f"rpsd.k_neg: must be >= 0; got {k_neg}")
        if tau_r <= 0:
            raise InputError(f"rpsd.tau_r: must be > 0; got {tau_r}")
        if smooth_l1_beta < 0:
            raise InputError(f"rpsd.smooth_l1_beta: must be >= 0; got {smooth_l1_beta}")
        self.k_neg = int(k_neg)
        self.loss_mode = loss
        self.tau_r = float(tau_r)
        self.beta = float(smooth_l1_beta)
        self.in_batch = bool(in_batch)
        self.use_labels = bool(use_labels)
        self.gather = gather
        self.projector = Projector(dims.student_dim, dims.teacher_dim)
        self.bank = MemoryBank(bank_size, dims.teacher_dim)
        self.student_bank = MemoryBank(bank_size, dims.teacher_dim) if student_bank else None

    def relations(
        self, inputs: LossInputs
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(R^s, R^t, selection mask, ŝ, t̂); columns are the B in-batch entries, then the bank."""
        assert inputs.teacher is not None
        s = F.normalize(self.projector(inputs.student), dim=1)
        t = F.normalize(inputs.teacher.to(s.dtype), dim=1)
        labels = inputs.labels
        bank_t, bank_y = self.bank.valid()
        bank_t, bank_y = bank_t.to(s.dtype), bank_y.to(labels.device)
        if self.student_bank is not None:
            bank_s = self.student_bank.valid()[0].to(s.dtype)
        else:
            bank_s = bank_t
        rt_bank = t @ bank_t.T
        rs_bank = s @ bank_s.T
        if self.use_labels:
            mask_bank = mine_bank(rt_bank, labels, bank_y, self.k_neg)
        else:
            mask_bank = mine_bank(rt_bank, None, None, self.k_neg)
        b = s.shape[0]
        mask_in = ~torch.eye(b, dtype=torch.bool, device=s.device)
        if not self.in_batch:
            mask_in = torch.zeros_like(mask_in)
        rs = torch.cat([s @ s.T, rs_bank], dim=1)
        rt = torch.cat([t @ t.T, rt_bank], dim=1)
        return rs, rt, torch.cat([mask_in, mask_bank], dim=1), s, t

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        if self.gather is None and distributed_world() > 1:
            # Under DDP the relations are those of the global batch: every rank computes the same loss,
            # its own samples carry the gradient (scaled so DDP's mean equals the 1-process gradient).
            inputs = LossInputs(
                student=all_gather_with_grad(inputs.student),
                labels=all_gather_no_grad(inputs.labels),
                teacher=all_gather_no_grad(inputs.teacher),
                step=inputs.step,
            )
            return self._loss(inputs, gather=_already_global)
        return self._loss(inputs, gather=self.gather)

    def _loss(self, inputs: LossInputs, gather: Gather | None) -> torch.Tensor:
        rs, rt, mask, s, t = self.relations(inputs)
        if bool(mask.any()):
            value = relation_loss(rs, rt, mask, self.loss_mode, self.tau_r, self.beta)
        else:  # one sample and an empty bank: nothing to relate yet
            value = s.sum() * 0.0
        if self.training:
            self.bank.enqueue(t.detach(), inputs.labels, gather=gather)
            if self.student_bank is not None:
                self.student_bank.enqueue(s.detach(), inputs.labels, gather=gather)
        return value
