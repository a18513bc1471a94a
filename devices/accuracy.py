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
from distill.evaluation import evaluate_sets, verification_fields

HOST_LABEL = "host-cpu"


def host_description() -> str:
    return f"{platform.machine()} {platform.processor() or ''}".strip()


def accuracy_fields(embedder: Embedder, sets: list[VerificationSet], flip: bool) -> dict[str, Any]:
    """Verification metrics of an artifact; the first set is the headline, all sets are kept."""

    def embed(x: Any) -> np.ndarray:
        return embedder.embed(x.numpy())

    return verification_fields(evaluate_sets(embed, sets, flip=flip))
