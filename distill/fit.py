"""Build a backbone and its loss terms from the config and train it with the engine.

Used for both the teacher (no teacher targets) and the distilled student, so there is one path from
config to trained checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from distill.config import LossSpec, TrainConfig
from distill.data.verification_bin import VerificationSet
from distill.engine.distributed import current_dist
from distill.engine.train import TeacherTargets, TrainJob, TrainSummary, train
from distill.evaluation import evaluate_sets, summary_metrics, torch_embed_fn
from distill.losses import LossDims, build_losses
from distill.models.checkpoint import save_model
from distill.models.factory import build_backbone


def fit_model(
    *,
    name: str,
    arch: str,
    embedding_dim: int,
    arch_params: dict[str, Any],
    losses: list[LossSpec],
    train_cfg: TrainConfig,
    dataset: Any,
    num_classes: int,
    val_sets: list[VerificationSet],
    out_dir: Path,
    teacher: TeacherTargets | None = None,
    flip_eval: bool = True,
    workers: int = 0,
    progress: bool = True,
    where: str = "losses",
    teacher_head: torch.Tensor | None = None,
    stop_after_step: int = 0,
    evaluate_at_end: bool = True,
) -> tuple[Path, TrainSummary]:
    """Train ``arch`` with the weighted ``losses``; write ``<out_dir>/<name>.pt`` (facekd model format).

    ``evaluate_at_end=False``: the caller evaluates the written checkpoint itself, so the engine's
    ``eval_every`` evaluations stop short of the last step instead of computing the same numbers twice.
    """
    torch.manual_seed(train_cfg.seed)
    arch_kwargs = {"embedding_dim": embedding_dim, **arch_params}
    model = build_backbone(arch, **arch_kwargs)
    dims = LossDims(
        student_dim=embedding_dim,
        teacher_dim=teacher.dim if teacher else None,
        num_classes=num_classes,
        teacher_head=teacher_head,
    )
    terms = build_losses(losses, dims, where=where)
    weights = {key: spec.weight for key, spec in zip(terms.keys(), losses, strict=True)}

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        results = evaluate_sets(torch_embed_fn(model), val_sets, flip=flip_eval)
        return summary_metrics(results)

    job = TrainJob(
        name=name,
        model=model,
        losses=terms,
        weights=weights,
        dataset=dataset,
        cfg=train_cfg,
        out_dir=out_dir,
        teacher=teacher,
        evaluate=evaluate if val_sets else None,
        progress=progress,
        workers=workers,
        stop_after_step=stop_after_step,
        evaluate_at_end=evaluate_at_end,
    )
    summary = train(job)
    extra: dict[str, Any] = {
        "train": asdict(train_cfg),
        "losses": [asdict(s) for s in losses],
        "images_per_second": summary.images_per_second,
        "steps": summary.steps,
    }
    # the loss terms' learned state (margin head, projectors, memory bank): stage two resumes from it
    extra["loss_state"] = {k: v.detach().cpu().clone() for k, v in terms.state_dict().items()}
    head = _margin_head_weight(terms)
    if head is not None:
        extra["head_weight"] = head
        # the margin-head term that owns it (a student_head term: the head kind it was built with)
        extra["head_kind"] = next(
            (k.split("#")[0] for k in terms.keys() if k.split("#")[0] in ("arcface", "cosface")),
            next((getattr(t, "kind", "") for t in terms.values() if getattr(t, "kind", "")), "arcface"),
        )
    path = out_dir / f"{name}.pt"
    if current_dist().is_main:  # under torchrun every rank holds the same weights; one writes them
        save_model(path, model.cpu(), arch=arch, arch_kwargs=arch_kwargs, extra=extra)
    return path, summary


def _margin_head_weight(terms: torch.nn.ModuleDict) -> torch.Tensor | None:
    for term in terms.values():
        head = getattr(term, "head", None)
        if head is not None and hasattr(head, "weight"):
            return head.weight.detach().cpu().clone()
    return None
