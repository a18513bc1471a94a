"""GKD, Grouped Knowledge Distillation (Zhao et al., AAAI 2023; code ``WisonZ/GKD``, ``distillation/gkd.py``).

Logit distillation for face recognition, where most of the teacher's probability mass sits on a few
classes. The classes are split per sample into a *primary* group (the ``primary`` classes with the
highest student logits, the target always included: the code's ``gkd_loss_student_base``, which its
``GKD`` module calls) and a *secondary* group (the rest). With temperature T and softmaxes p = softmax(z/T):

    binary    = KL([p_t(P), p_t(S)] || [p_s(P), p_s(S)])                 the mass each group gets
    primary   = KL(softmax(z_t/T over P) || softmax(z_s/T over P))      the shape inside the primary group
    secondary = KL(softmax(z_t/T over S) || softmax(z_s/T over S))      dropped by default (lamda = 0)
    L = CE(z_s, y) + min(step / warmup_steps, 1) · T² · (α·binary + β·primary + λ·secondary)

each KL summed over classes and averaged over the batch. z_s are the logits of the student's own CosFace
head (trained here, as in the code), z_t those of the teacher's frozen head on the cached teacher
embedding, both with the same margin (CosFace s=64, m=0.4 in the released training script). Defaults are
the code's: T=4, α=1, β=8, λ=0, primary = 10,000 classes (with fewer classes the whole softmax is primary
and the binary term vanishes). The code's warm-up is 10 of its 20 epochs, counted in epochs from 0 (the
first epoch has no KD); here it is ``warmup_steps`` (0 = no warm-up) because a loss term sees steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LossDims, LossInputs, LossTerm
from distill.losses.classifier_sharing import require_teacher_head
from distill.models.heads import CosFaceHead


def primary_mask(student_logits: torch.Tensor, labels: torch.Tensor, primary: int) -> torch.Tensor:
    """True for the ``primary`` classes with the highest student logits, the target always among them."""
    forced = student_logits.detach().scatter(1, labels.unsqueeze(1), float("inf"))
    top = forced.topk(min(primary, forced.shape[1]), dim=1).indices
    return torch.zeros_like(forced, dtype=torch.bool).scatter(1, top, True)


def _kl_within(z_s: torch.Tensor, z_t: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """KL(softmax(z_t over group) || softmax(z_s over group)), summed over classes and rows."""
    if not bool(group.any(dim=1).all()):
        return z_s.new_zeros(())
    neg = torch.finfo(z_s.dtype).min
    log_s = F.log_softmax(z_s.masked_fill(~group, neg), dim=1)
    log_t = F.log_softmax(z_t.masked_fill(~group, neg), dim=1)
    p_t = log_t.exp()
    return (p_t * (log_t - log_s)).masked_fill(~group, 0.0).sum()


def gkd_terms(
    z_s: torch.Tensor, z_t: torch.Tensor, labels: torch.Tensor, temperature: float, primary: int
) -> dict[str, torch.Tensor]:
    """The three KL terms (already × T² and averaged over the batch)."""
    z_s, z_t = z_s / temperature, z_t / temperature
    group = primary_mask(z_s, labels, primary)
    p_s, p_t = F.softmax(z_s, dim=1), F.softmax(z_t, dim=1)
    b_s = torch.stack([(p_s * group).sum(1), (p_s * ~group).sum(1)], dim=1)
    b_t = torch.stack([(p_t * group).sum(1), (p_t * ~group).sum(1)], dim=1)
    binary = (b_t * (torch.log(b_t.clamp_min(1e-30)) - torch.log(b_s.clamp_min(1e-30)))).sum()
    scale = temperature**2 / z_s.shape[0]
    return {
        "binary": binary * scale,
        "primary": _kl_within(z_s, z_t, group) * scale,
        "secondary": _kl_within(z_s, z_t, ~group) * scale,
    }


class GKDLoss(LossTerm):
    """CE through the student's CosFace head + grouped KL to the teacher head's logits."""

    needs_teacher = True
    needs_teacher_head = True

    def __init__(
        self, dims: LossDims, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0,
        lamda: float = 0.0, primary: int = 10000, warmup_steps: int = 0, scale: float = 64.0,
        margin: float = 0.4, ce_weight: float = 1.0,
    ) -> None:  # fmt: skip
        super().__init__()
        head = require_teacher_head(dims, "gkd")
        if temperature <= 0 or primary < 1 or warmup_steps < 0:
            raise ValueError("gkd: temperature must be > 0, primary >= 1, warmup_steps >= 0")
        self.temperature, self.alpha, self.beta, self.lamda = float(temperature), alpha, beta, lamda
        self.primary, self.warmup_steps, self.ce_weight = int(primary), int(warmup_steps), float(ce_weight)
        self.head = CosFaceHead(dims.student_dim, dims.num_classes, scale=scale, margin=margin)
        self.teacher_head = CosFaceHead(int(dims.teacher_dim), dims.num_classes, scale=scale, margin=margin)
        self.teacher_head.weight.requires_grad_(False)
        self.teacher_head.weight.data.copy_(head.detach().float())

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        if inputs.teacher is None:
            raise ValueError("gkd needs the teacher embeddings (LossInputs.teacher)")
        labels = inputs.labels.long()
        z_s = self.head(inputs.student, labels)
        with torch.no_grad():
            z_t = self.teacher_head(inputs.teacher.to(z_s.dtype), labels)
        terms = gkd_terms(z_s, z_t, labels, self.temperature, self.primary)
        ramp = min(inputs.step / self.warmup_steps, 1.0) if self.warmup_steps else 1.0
        kd = self.alpha * terms["binary"] + self.beta * terms["primary"] + self.lamda * terms["secondary"]
        return self.ce_weight * F.cross_entropy(z_s, labels) + ramp * kd
