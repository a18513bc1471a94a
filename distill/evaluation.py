"""Verification accuracy of any embedding function on a list of verification sets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from distill.data.transforms import PIXEL_MEAN, PIXEL_STD
from distill.data.verification_bin import VerificationSet
from distill.metrics.verification import VerificationResult, embed_pairs, evaluate_verification

EmbedFn = Callable[[torch.Tensor], np.ndarray]
# The one batch size every verification figure is computed at (training evaluations, QAT, the measure
# stage, a device's replayed embeddings, model-card thresholds): fake-quant accuracy moves with it.
EVAL_BATCH = 32


def torch_embed_fn(model: torch.nn.Module, device: torch.device | None = None) -> EmbedFn:
    """Wrap a backbone as a no-grad, eval-mode embedding function on normalised NCHW input."""
    device = device or next(model.parameters()).device

    def embed(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model(x.to(device)).float().cpu().numpy()

    return embed


def evaluate_sets(
    embed: EmbedFn,
    sets: list[VerificationSet],
    flip: bool = True,
    batch_size: int = EVAL_BATCH,
    progress: bool = False,
) -> dict[str, VerificationResult]:
    """Verification metrics of any embedding function on each set: the one evaluation path.

    ``embed`` takes the project's normalised NCHW batch (torch) and returns (B, D) embeddings.
    """
    results = {}
    for vs in sets:
        emb, emb_flip = embed_pairs(embed, vs.images, batch_size=batch_size, flip=flip, progress=progress)
        results[vs.name] = evaluate_verification(emb, emb_flip, vs.issame)
    return results


def summary_metrics(results: dict[str, VerificationResult]) -> dict[str, Any]:
    """Flat numbers for logs and TensorBoard: ``<set>/accuracy`` etc."""
    out: dict[str, Any] = {}
    for name, r in results.items():
        out[f"{name}/accuracy"] = float(r.accuracy)
        out[f"{name}/accuracy_std"] = float(r.accuracy_std)
        for far, tar in r.tar_at_far.items():
            if tar is not None:
                out[f"{name}/tar@far={far}"] = float(tar)
    return out


def chance_limit(num_pairs: int) -> float:
    """Highest accuracy still within two binomial standard deviations of a coin toss on ``num_pairs``."""
    return 0.5 + 2.0 * (0.25 / max(num_pairs, 1)) ** 0.5


def pixel_floor(sets: list[VerificationSet]) -> dict[str, dict[str, Any]]:
    """Verification of raw pixels compared by cosine: the score a model that learned nothing beats.

    Same protocol as every model (10 folds, no flip) on the pixels exactly as a model receives them,
    ``(x - 127.5) / 127.5`` (centred: cosine on raw 0..255 mostly measures brightness).
    """
    out: dict[str, dict[str, Any]] = {}
    for vs in sets:
        images = np.asarray(vs.images)
        pixels = (images.reshape(images.shape[0], -1).astype(np.float64) - PIXEL_MEAN) / PIXEL_STD
        r = evaluate_verification(pixels, None, vs.issame)
        out[vs.name] = {
            "accuracy": float(r.accuracy),
            "accuracy_std": float(r.accuracy_std),
            "roc_auc": float(r.roc_auc),
            "pairs": int(r.num_pairs),
        }
    return out
