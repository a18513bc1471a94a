"""The verification fields of a results row, from any Embedder (host runtime, or a device's replay).

Computed by the project's one evaluation path (``distill.evaluation.evaluate_sets`` at ``EVAL_BATCH``),
so a host row, a device row and a training evaluation of the same model agree.
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

from deploy.runtimes import Embedder
from distill.data.verification_bin import VerificationSet
from distill.evaluation import evaluate_sets

HOST_LABEL = "host-cpu"


def host_description() -> str:
    return f"{platform.machine()} {platform.processor() or ''}".strip()


def accuracy_fields(embedder: Embedder, sets: list[VerificationSet], flip: bool) -> dict[str, Any]:
    """Verification metrics of an artifact; the first set is the headline, all sets are kept."""

    def embed(x: Any) -> np.ndarray:
        return embedder.embed(x.numpy())

    per_set = {}
    for name, r in evaluate_sets(embed, sets, flip=flip).items():
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
        }
    head = per_set[sets[0].name]
    return {
        "val_set": sets[0].name,
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
