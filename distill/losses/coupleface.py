"""CoupleFace (Liu et al., ECCV 2022): feature consistency + mutual relation distillation.

RECONSTRUCTED. The paper's method section and code could not be read (losses.md §3.2); only the abstract
is known: the objective is feature-consistency distillation (FCD) plus mutual relation distillation (MRD),
where MRD (1) mines *informative* mutual relations (pairs of samples) and (2) transfers the teacher's
relations with a *relation-aware* distillation (RAD) loss. This module implements the §3.3 proposal, with
every choice a knob:

    L = fcd_weight * mean_i ||p̂_i - t̂_i||²  +  mrd_weight * L_RAD
    L_RAD = Σ_{(i,j)∈I} w_ij (r^s_ij - r^t_ij)² / Σ_{(i,j)∈I} w_ij,   r^t_ij = <t̂_i, t̂_j>

* ``p`` is the student projected to the teacher width (identity when they match); FCD is the FC loss.
* Candidates of anchor ``i``: every other sample ``j`` of the batch with ``r^s_ij = <ŝ_i, ŝ_j>`` (raw
  student: relations need no projection, and this is the embedding that ships), plus, when
  ``bank_size > 0``, the entries ``b`` of a FIFO bank of past *teacher* embeddings with the cross term
  ``r^s_ib = <p̂_i, t̂_b>``.
* Informative set ``I`` (per anchor, mined on the teacher, so mining is stable under student noise):
  all same-label candidates (``use_positives``) plus the ``top_k_negatives`` different-label candidates
  with the highest teacher similarity (the pairs the teacher can still separate but a weak student
  confuses first).
* Relation-aware weight ``w_ij = exp((r^t_ij - 1) / weight_temperature)`` (grows with the teacher
  similarity; the ``- 1`` only avoids overflow and cancels in the ratio); ``weight_temperature: null``
  gives uniform weights. The default 0.5 is a guess that emphasises hard pairs mildly.

The bank (teacher embeddings, labels, write pointer, fill count) lives in buffers, is checkpointed with
the term, and is updated in ``train()`` mode after the loss is computed. Under DDP each rank mines within
its own batch and keeps its own bank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LossDims, LossInputs, LossTerm, Projector


def informative_mask(
    teacher_rel: torch.Tensor,
    positive: torch.Tensor,
    valid: torch.Tensor,
    top_k_negatives: int,
    use_positives: bool = True,
) -> torch.Tensor:
    """(B, M) bool: per row, the valid positives and the ``top_k`` valid negatives by teacher relation."""
    negative = valid & ~positive
    chosen = (valid & positive) if use_positives else torch.zeros_like(valid)
    k = min(int(top_k_negatives), teacher_rel.shape[1])
    if k > 0:
        score = teacher_rel.detach().masked_fill(~negative, float("-inf"))
        top = torch.topk(score, k, dim=1).indices
        picked = torch.zeros_like(valid).scatter(1, top, True)
        chosen = chosen | (picked & negative)  # rows with fewer than k negatives pick -inf slots: drop them
    return chosen


class CoupleFaceLoss(LossTerm):
    """FCD + relation-aware distillation of mined mutual relations (reconstruction, see module doc)."""

    needs_teacher = True

    def __init__(
        self,
        dims: LossDims,
        fcd_weight: float = 1.0,
        mrd_weight: float = 1.0,
        top_k_negatives: int = 16,
        use_positives: bool = True,
        weight_temperature: float | None = 0.5,
        bank_size: int = 0,
    ) -> None:
        super().__init__()
        if dims.teacher_dim is None:
            raise ValueError("coupleface needs a teacher")
        if int(top_k_negatives) != top_k_negatives or top_k_negatives < 0:
            raise ValueError(
                f"coupleface.top_k_negatives: must be a non-negative integer, got {top_k_negatives}"
            )
        if weight_temperature is not None and weight_temperature <= 0:
            raise ValueError(f"coupleface.weight_temperature: must be > 0 or null, got {weight_temperature}")
        if int(bank_size) != bank_size or bank_size < 0:
            raise ValueError(f"coupleface.bank_size: must be a non-negative integer, got {bank_size}")
        self.fcd_weight = float(fcd_weight)
        self.mrd_weight = float(mrd_weight)
        self.top_k_negatives = int(top_k_negatives)
        self.use_positives = bool(use_positives)
        self.weight_temperature = None if weight_temperature is None else float(weight_temperature)
        self.bank_size = int(bank_size)
        self.projector = Projector(dims.student_dim, dims.teacher_dim)
        if self.bank_size:
            self.register_buffer("bank", torch.zeros(self.bank_size, dims.teacher_dim))
            self.register_buffer("bank_labels", torch.full((self.bank_size,), -1, dtype=torch.long))
            self.register_buffer("bank_ptr", torch.zeros((), dtype=torch.long))
            self.register_buffer("bank_filled", torch.zeros((), dtype=torch.long))

    def relation_weights(self, teacher_rel: torch.Tensor) -> torch.Tensor:
        if self.weight_temperature is None:
            return torch.ones_like(teacher_rel)
        return torch.exp((teacher_rel - 1.0) / self.weight_temperature)

    @torch.no_grad()
    def _enqueue(self, teacher: torch.Tensor, labels: torch.Tensor) -> None:
        teacher, labels = teacher[-self.bank_size :], labels[-self.bank_size :]
        n = teacher.shape[0]
        slots = (self.bank_ptr + torch.arange(n, device=teacher.device)) % self.bank_size
        self.bank[slots] = teacher.to(self.bank.dtype)
        self.bank_labels[slots] = labels.to(self.bank_labels.dtype)
        self.bank_ptr.copy_((self.bank_ptr + n) % self.bank_size)
        self.bank_filled.clamp_(max=self.bank_size - n).add_(n)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        if inputs.teacher is None:
            raise ValueError("coupleface needs the teacher embeddings (LossInputs.teacher)")
        labels = inputs.labels
        p = F.normalize(self.projector(inputs.student), dim=1)
        t = F.normalize(inputs.teacher.detach().to(p.dtype), dim=1)
        fcd = (p - t).pow(2).sum(dim=1).mean()

        s = F.normalize(inputs.student, dim=1)
        n = s.shape[0]
        rel_s, rel_t = s @ s.t(), t @ t.t()
        positive = labels[:, None] == labels[None, :]
        valid = ~torch.eye(n, dtype=torch.bool, device=s.device)
        if self.bank_size:
            bank = self.bank.to(p.dtype)
            rel_s = torch.cat([rel_s, p @ bank.t()], dim=1)
            rel_t = torch.cat([rel_t, t @ bank.t()], dim=1)
            positive = torch.cat([positive, labels[:, None] == self.bank_labels[None, :]], dim=1)
            filled = torch.arange(self.bank_size, device=s.device) < self.bank_filled
            valid = torch.cat([valid, filled[None, :].expand(n, -1)], dim=1)
        chosen = informative_mask(rel_t, positive, valid, self.top_k_negatives, self.use_positives)
        w = self.relation_weights(rel_t) * chosen
        # no pair mined (e.g. batch of 1): numerator and loss are 0; the clamp avoids 0/0 without a sync
        rad = (w * (rel_s - rel_t).pow(2)).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
        if self.bank_size and self.training:
            self._enqueue(t.detach(), labels)
        return self.fcd_weight * fcd + self.mrd_weight * rad
