"""Quantization-aware distillation: NNCF fake-quant student, trained by the stage-one engine.

The sequence is the one NNCF documents for QAT (quantize with calibration, then fine-tune the hooked
model), with the fine-tuning done by :func:`distill.engine.train.train` so the teacher keeps teaching
through the same loss terms as stage one. The post-training-quantized model (same calibration, no
fine-tuning) is kept beside it as the PTQ baseline. Both are resumable: ``ptq.pt`` is written once, and
the engine's ``checkpoints/last.pt`` carries the QAT state (model incl. quantizer scales, optimiser, RNG).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress.checkpoint import load_quantized, save_quantized
from compress.config import QatConfig
from compress.quantize import calibration_batches, quantize_model, quantizer_counts, scheme_problems
from distill.config import LossSpec
from distill.data.verification_bin import VerificationSet
from distill.engine.distributed import current_dist
from distill.engine.train import TeacherTargets, TrainJob, TrainSummary, train
from distill.errors import InputError
from distill.evaluation import EmbedFn, evaluate_sets, summary_metrics, torch_embed_fn, verification_fields
from distill.losses import LossDims, build_losses
from distill.models.checkpoint import load_model

# NNCF's trainable quantizer scales: no weight decay on them (decay would shrink every range).
SCALE_PARAMS = ("_scale_param_storage",)


@dataclass
class QatOutcome:
    ptq_path: Path
    qat_path: Path | None  # None under qat.keep: ptq (no fine-tuning)
    metrics: dict[str, Any]  # per model ("fp32", "ptq", "qat"): verification metrics
    evaluation: dict[str, Any] = field(default_factory=dict)  # per model: a results row's verification fields
    # per model, per verification set: the embeddings of the images as they are (no mirror), float32
    plain_embeddings: dict[str, dict[str, Any]] = field(default_factory=dict)
    shipped: str = "qat"  # the INT8 model export turns into artifacts: "qat" or "ptq" (see qat.keep)
    selection: dict[str, Any] = field(default_factory=dict)  # how ``shipped`` was chosen, with the scores


def quantization_aware_distill(
    *,
    student_path: Path,
    cfg: QatConfig,
    expected_arch: str | None = None,
    stage_one_losses: list[LossSpec] | None = None,
    dataset: Any,
    val_sets: list[VerificationSet],
    out_dir: Path,
    dev_sets: list[VerificationSet] | None = None,
    teacher: TeacherTargets | None,
    teacher_head: torch.Tensor | None = None,
    flip_eval: bool = True,
    workers: int = 0,
    progress: bool = True,
    stop_after_step: int = 0,
    evaluate_models: tuple[str, ...] = ("fp32", "ptq", "qat"),
    embed_fn_for: Callable[[str, torch.nn.Module], tuple[EmbedFn, str]] | None = None,
) -> QatOutcome:
    """PTQ then QAT of the fp32 ``student_path``; writes ``ptq.pt``, ``qat.pt``, ``history.json`` (only
    ``ptq.pt`` under ``cfg.keep == "ptq"``, which skips the fine-tuning).

    Everything about the student (architecture, the loss terms stage one trained it with) is read from
    its checkpoint, not from another stage's settings; ``expected_arch`` and ``stage_one_losses`` only
    override or check that for callers that have them. ``evaluate_models`` names the models evaluated on
    ``val_sets`` at the end (the pipeline leaves out "fp32": the distill stage evaluated that file);
    ``embed_fn_for(name, model)`` gives each one's embedding function and what it computes (the pipeline
    passes the INT8 Q/DQ ONNX on a CPU), by default the module in PyTorch. ``dev_sets``: what
    ``cfg.keep == "best_on_dev"`` chooses the shipped model by (never ``val_sets``: those are reported).
    """
    fp32, meta = load_model(student_path)
    if expected_arch is not None and meta["arch"] != expected_arch:
        raise InputError(
            f"{student_path}: fp32 checkpoint is a '{meta['arch']}', but the config's student is "
            f"'{expected_arch}' (distill.arch)"
        )
    arch, arch_kwargs = meta["arch"], meta["arch_kwargs"]
    ptq_path = out_dir / "ptq.pt"
    if not ptq_path.exists():  # resume: calibrate once; a re-run reuses the same ranges
        batches = calibration_batches(dataset, cfg.calibration_images, cfg.calibration_batch, cfg.train.seed)
        ptq = quantize_model(
            fp32, batches, range_estimator=cfg.range_estimator, fast_bias_correction=cfg.fast_bias_correction
        )
        problems = scheme_problems(ptq)
        if problems:
            raise InputError(f"{student_path}: quantized model breaks the INT8 scheme: {problems[0]}")
        if current_dist().is_main:
            save_quantized(
                ptq_path, ptq, arch=arch, arch_kwargs=arch_kwargs, extra={"quantizers": quantizer_counts(ptq)}
            )
    qmodel: torch.nn.Module | None = None
    qat_path: Path | None = None
    metrics: dict[str, Any] = {"steps": 0}
    if cfg.keep != "ptq":  # "ptq": the PTQ model ships as it is, no fine-tuning
        qmodel, qat_path, summary = fine_tune(
            ptq_path,
            student_path=student_path,
            meta=meta,
            fp32=fp32,
            cfg=cfg,
            stage_one_losses=stage_one_losses,
            dataset=dataset,
            val_sets=val_sets,
            out_dir=out_dir,
            teacher=teacher,
            teacher_head=teacher_head,
            flip_eval=flip_eval,
            workers=workers,
            progress=progress,
            stop_after_step=stop_after_step,
            evaluate_at_end="qat" not in evaluate_models,
        )
        metrics = {"steps": summary.steps, "images_per_second": summary.images_per_second}
    evaluation: dict[str, Any] = {}
    plain: dict[str, dict[str, Any]] = {}
    shipped, selection = "qat", {"rule": cfg.keep}
    if qmodel is None:
        shipped, selection = (
            "ptq",
            {"rule": "ptq", "why": "qat.keep: ptq (the PTQ model; no QAT fine-tuning)"},
        )
    if (val_sets or dev_sets) and current_dist().is_main:
        ptq, _ = load_quantized(ptq_path)
        models = {"fp32": fp32, "ptq": ptq, **({"qat": qmodel} if qmodel is not None else {})}
        embeds: dict[str, tuple[EmbedFn, str]] = {}

        def embed_of(name: str) -> tuple[EmbedFn, str]:  # one embedding function per model, built once
            if name not in embeds:
                model = models[name].eval()
                if embed_fn_for is None:
                    embeds[name] = torch_embed_fn(model), "the module itself in PyTorch"
                else:
                    embeds[name] = embed_fn_for(name, model)
            return embeds[name]

        if cfg.keep == "best_on_dev":
            # unmirrored, as an app runs the file (and half the cost of flip fusion)
            shipped, selection = choose_on_dev(dev_sets or [], lambda name: embed_of(name)[0], flip=False)
        for name in ("fp32", "ptq", "qat"):
            if name not in evaluate_models or name not in models or not val_sets:
                continue
            plain[name] = {}
            embed, how = embed_of(name)
            results = evaluate_sets(embed, val_sets, flip=flip_eval, keep_plain=plain[name])
            metrics[name] = summary_metrics(results)
            evaluation[name] = verification_fields(results)  # the measure stage's rows, not recomputed
            evaluation[name]["accuracy_via"] = how
    metrics["shipped"], metrics["selection"] = shipped, selection
    return QatOutcome(
        ptq_path=ptq_path,
        qat_path=qat_path,
        metrics=metrics,
        evaluation=evaluation,
        plain_embeddings=plain,
        shipped=shipped,
        selection=selection,
    )


def fine_tune(
    ptq_path: Path,
    *,
    student_path: Path,
    meta: dict[str, Any],
    fp32: torch.nn.Module,
    cfg: QatConfig,
    stage_one_losses: list[LossSpec] | None,
    dataset: Any,
    val_sets: list[VerificationSet],
    out_dir: Path,
    teacher: TeacherTargets | None,
    teacher_head: torch.Tensor | None,
    flip_eval: bool,
    workers: int,
    progress: bool,
    stop_after_step: int,
    evaluate_at_end: bool,
) -> tuple[torch.nn.Module, Path, TrainSummary]:
    """QAT proper: the PTQ model trained by the engine with the (stage-one) loss terms; writes ``qat.pt``."""
    arch, arch_kwargs = meta["arch"], meta["arch_kwargs"]
    qmodel, _ = load_quantized(ptq_path)

    if stage_one_losses is None:
        recorded = (meta.get("extra") or {}).get("losses") or []
        stage_one_losses = [LossSpec(**spec) for spec in recorded]
    specs = list(cfg.losses or stage_one_losses)
    if not specs:
        raise InputError(f"{student_path}: no qat.losses given and the checkpoint records no stage-one loss")
    if cfg.fp32_anchor > 0:
        specs.append(LossSpec("fp32_anchor", cfg.fp32_anchor))
    embedding_dim = int(arch_kwargs.get("embedding_dim", 128))
    dims = LossDims(
        student_dim=embedding_dim,
        teacher_dim=teacher.dim if teacher else None,
        num_classes=dataset.num_classes,
        teacher_head=teacher_head,
        reference_dim=embedding_dim,
    )
    torch.manual_seed(cfg.train.seed)  # fresh loss parameters (heads, projectors) are seeded, as in stage one
    terms = build_losses(specs, dims, where="qat.losses" if cfg.losses else "distill.losses")
    anchored = any(term.needs_reference for term in terms.values())
    restored = restore_loss_state(terms, (meta.get("extra") or {}).get("loss_state") or {})

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        # batch 32, as the measure stage: fake-quant outputs move with the batch size (oneDNN picks other
        # kernels, and values at a rounding boundary flip), by up to ~0.6 points of accuracy here
        return summary_metrics(evaluate_sets(torch_embed_fn(model), val_sets, flip=flip_eval))

    job = TrainJob(
        name="qat",
        model=qmodel,
        losses=terms,
        weights={key: spec.weight for key, spec in zip(terms.keys(), specs, strict=True)},
        dataset=dataset,
        cfg=cfg.train,
        out_dir=out_dir,
        teacher=teacher,
        evaluate=evaluate if val_sets else None,
        progress=progress,
        workers=workers,
        stop_after_step=stop_after_step,
        no_decay=SCALE_PARAMS,
        reference=copy.deepcopy(fp32).eval() if anchored else None,  # a copy: training moves the device
        evaluate_at_end=evaluate_at_end,  # False: the caller evaluates it, once, with its embeddings kept
    )
    summary = train(job)
    qmodel = qmodel.cpu().eval()
    qat_path = out_dir / "qat.pt"
    extra = {
        "train": asdict(cfg.train),
        "losses": [asdict(s) for s in specs],
        "restored_loss_state": restored,
        "steps": summary.steps,
        "images_per_second": summary.images_per_second,
        "quantizers": quantizer_counts(qmodel),
    }
    if current_dist().is_main:
        save_quantized(qat_path, qmodel, arch=arch, arch_kwargs=arch_kwargs, extra=extra)
    return qmodel, qat_path, summary


def choose_on_dev(
    dev_sets: list[VerificationSet], embed_of: Callable[[str], EmbedFn], flip: bool
) -> tuple[str, dict[str, Any]]:
    """``("qat" | "ptq", record)``: the PTQ model only when it scores higher than the QAT model on the dev
    sets (mean verification accuracy, with or without ``flip`` fusion; a tie keeps QAT); the QAT model when
    there is no dev set.

    Fine-tuning a converged student with fake quantization can cost accuracy instead of winning it back;
    this choice never looks at the reported val sets, so their numbers stay an unbiased report of it.
    """
    if not dev_sets:
        return "qat", {"rule": "best_on_dev", "why": "no dev set (data.dev): the QAT model"}
    scores = {}
    for name in ("ptq", "qat"):
        results = evaluate_sets(embed_of(name), dev_sets, flip=flip)
        scores[name] = sum(r.accuracy for r in results.values()) / len(results)
    shipped = "qat" if scores["qat"] >= scores["ptq"] else "ptq"
    verdict = "at least as high as" if shipped == "qat" else "below"
    return shipped, {
        "rule": "best_on_dev",
        "sets": [d.name for d in dev_sets],
        "dev_accuracy": scores,
        "flip": flip,
        "why": f"QAT {100 * scores['qat']:.2f} % {verdict} PTQ {100 * scores['ptq']:.2f} % on the dev sets",
    }


def restore_loss_state(terms: torch.nn.ModuleDict, state: dict[str, torch.Tensor]) -> list[str]:
    """Start the loss terms (margin head, projectors, memory bank) where stage one left them.

    Only tensors whose name and shape match are taken, so a QAT loss list that differs from stage
    one's still works; returns the names restored.
    """
    own = terms.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if usable:
        terms.load_state_dict(usable, strict=False)
    return sorted(usable)
