"""Does an exported artifact compute the same embeddings as the PyTorch model it came from?

Face verification compares embeddings by cosine, so parity is judged per sample by cosine similarity; the
worst sample decides (one broken input is a broken export). Max |diff| is reported for diagnosis only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Minimum per-sample cosine between reference and exported embeddings, by precision of the artifact.
PARITY_MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}

_EPS = 1e-12


@dataclass(frozen=True)
class ParityResult:
    cos_mean: float
    cos_min: float
    max_abs_diff: float
    threshold: float
    passed: bool


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``; a zero row gives 0."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    dots = np.sum(a64 * b64, axis=1)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return dots / np.maximum(norms, _EPS)


def check_parity(reference: np.ndarray, candidate: np.ndarray, min_cosine: float) -> ParityResult:
    """Compare (N, D) embeddings row by row; passes when every row's cosine is >= ``min_cosine``.

    NaN anywhere fails the check (the comparisons are written so NaN cannot pass).
    """
    ref = np.asarray(reference)
    cand = np.asarray(candidate)
    if ref.ndim != 2 or ref.shape != cand.shape or ref.shape[0] == 0:
        raise ValueError(
            f"parity needs two non-empty (N, D) arrays of the same shape, got {ref.shape}, {cand.shape}"
        )
    cos = row_cosines(ref, cand)
    cos_min = float(np.min(cos))
    max_abs = float(np.max(np.abs(ref.astype(np.float64) - cand.astype(np.float64))))
    passed = bool(np.all(cos >= min_cosine)) and not np.isnan(max_abs)
    return ParityResult(
        cos_mean=float(np.mean(cos)),
        cos_min=cos_min,
        max_abs_diff=max_abs,
        threshold=float(min_cosine),
        passed=passed,
    )
