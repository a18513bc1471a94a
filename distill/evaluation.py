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
    keep_plain: dict[str, np.ndarray] | None = None,
) -> dict[str, VerificationResult]:
    """Verification metrics of any embedding function on each set: the one evaluation path.

    ``embed`` takes the project's normalised NCHW batch (torch) and returns (B, D) embeddings.
    ``keep_plain``: filled with each set's embeddings of the images as they are (no mirror), float32, for
    callers that need them afterwards (the model card's thresholds) instead of computing them again.
    """
    results = {}
    for vs in sets:
        emb, emb_flip = embed_pairs(embed, vs.images, batch_size=batch_size, flip=flip, progress=progress)
        results[vs.name] = evaluate_verification(emb, emb_flip, vs.issame)
        if keep_plain is not None:
            keep_plain[vs.name] = emb.astype(np.float32)
    return results


def verification_fields(results: dict[str, VerificationResult]) -> dict[str, Any]:
    """The verification fields of a results row (the first set is the headline, all sets are kept).

    Stages that evaluate a model anyway (QAT's PTQ and QAT models) save these, so the measure stage
    reads them instead of computing the same numbers twice.
    """
    per_set = {}
    for name, r in results.items():
        per_set[name] = {
            "cosine": dict(r.cosine),
            "accuracy": r.accuracy,
            "accuracy_std": r.accuracy_std,
            "tar_at_far": r.tar_at_far,
            "tar_not_computable": r.tar_not_computable,
            "roc_auc": r.roc_auc,
            "eer": r.eer,
            "pairs": r.num_pairs,
            "roc": {"fpr": _thin(r.roc[0]), "tpr": _thin(r.roc[1])},
            "wrong_pairs": list(r.wrong_pairs),  # for paired comparisons of two rows on this set
        }
    head_name = next(iter(results))
    head = per_set[head_name]
    return {
        "val_set": head_name,
        "accuracy": head["accuracy"],
        "accuracy_std": head["accuracy_std"],
        "tar_at_far": head["tar_at_far"],
        "sets": per_set,
    }


def _thin(values: Any, max_points: int = 200) -> list[float]:
    """Keep ROC curves plot-sized in results.json."""
    v = np.asarray(values, dtype=float)
    if v.size > max_points:
        v = v[np.linspace(0, v.size - 1, max_points).round().astype(int)]
    return [round(float(x), 6) for x in v]


def summary_metrics(results: dict[str, VerificationResult]) -> dict[str, Any]:
    """Flat numbers for logs and TensorBoard: ``<set>/accuracy`` etc."""
    return fields_summary(verification_fields(results))


def fields_summary(fields: dict[str, Any]) -> dict[str, Any]:
    """``summary_metrics`` of results already reduced to ``verification_fields`` (a saved evaluation)."""
    out: dict[str, Any] = {}
    for name, r in fields["sets"].items():
        out[f"{name}/accuracy"] = float(r["accuracy"])
        out[f"{name}/accuracy_std"] = float(r["accuracy_std"])
        for far, tar in r["tar_at_far"].items():
            if tar is not None:
                out[f"{name}/tar@far={far}"] = float(tar)
    return out


def chance_limit(num_pairs: int) -> float:
    """Highest accuracy still within two binomial standard deviations of a coin toss on ``num_pairs``."""
    return 0.5 + 2.0 * (0.25 / max(num_pairs, 1)) ** 0.5


SPREAD_FLOOR = 1e-3  # embeddings closer together than this point one way whatever the face


def blind_to_faces(results: dict[str, VerificationResult]) -> str | None:
    """What in verification results says a model does not tell faces apart, or None when they look sane.

    Near-constant embeddings on any set, or chance on every set: what a model fed the wrong pixels
    (scaling, channel order, layout, size) or the wrong kind of crop shows, since such a model still
    loads and runs. Callers add the advice that fits them (a teacher's config, ``evaluate``'s flags).
    """
    flat = {name: r for name, r in results.items() if r.spread < SPREAD_FLOOR}
    at_chance = {name: r for name, r in results.items() if r.accuracy <= chance_limit(r.num_pairs)}
    if flat:
        name, r = next(iter(flat.items()))
        return f"its embeddings barely vary across images on {name} (spread {r.spread:.1e})"
    if results and len(at_chance) == len(results):
        name, r = next(iter(at_chance.items()))
        return (
            f"it is at chance on {name} ({100 * r.accuracy:.1f} % <= {100 * chance_limit(r.num_pairs):.1f} % "
            f"for {r.num_pairs} pairs)"
        )
    return None


def pixel_floor(sets: list[VerificationSet], chunk: int = 256) -> dict[str, dict[str, Any]]:
    """Verification of raw pixels compared by cosine: the score a model that learned nothing beats.

    Same protocol as every model (10 folds, no flip) on the pixels exactly as a model receives them,
    ``(x - 127.5) / 127.5`` (centred: cosine on raw 0..255 mostly measures brightness). The protocol only
    reads pair distances, so each pair is reduced to two 2-D unit vectors with the pixels' cosine: the
    same numbers without holding every image as float64 (12,000 LFW crops would take 3.6 GB).
    """
    out: dict[str, dict[str, Any]] = {}
    for vs in sets:
        r = evaluate_verification(_pairs_as_2d(np.asarray(vs.images), chunk), None, vs.issame)
        out[vs.name] = {
            "accuracy": float(r.accuracy),
            "accuracy_std": float(r.accuracy_std),
            "roc_auc": float(r.roc_auc),
            "pairs": int(r.num_pairs),
        }
    return out


def _pairs_as_2d(images: np.ndarray, chunk: int) -> np.ndarray:
    """(2N, 2) rows whose pair distances after L2 normalisation equal those of the centred pixels.

    Pair i becomes a = (1, 0), b = (c, sqrt(1 - c^2)) with c the pixels' cosine. Centred uint8 pixels are
    never all zero (|x - 127.5| >= 0.5), so every norm is positive.
    """
    n = images.shape[0] // 2
    out = np.zeros((2 * n, 2))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        a, b = (
            (images[2 * start + k : 2 * stop : 2].reshape(stop - start, -1).astype(np.float64) - PIXEL_MEAN)
            / PIXEL_STD
            for k in (0, 1)
        )
        cos = np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        cos = np.clip(cos, -1.0, 1.0)
        out[2 * start : 2 * stop : 2, 0] = 1.0
        out[2 * start + 1 : 2 * stop : 2] = np.stack([cos, np.sqrt(1.0 - cos**2)], axis=1)
    return out
