"""Pair verification metrics: the InsightFace (arcface_torch) protocol, plus ROC-based numbers.

Accuracy follows arcface_torch ``eval/verification.py`` exactly (shared/research/data.md §1.9), so the
numbers compare with published LFW / CFP-FP / AgeDB-30 tables:

* flip fusion: raw embeddings of image and mirror are **summed**, then L2-normalised row-wise
  (``sklearn.preprocessing.normalize`` semantics: zero rows stay zero);
* distance: squared L2 of the normalised pair, ``sum((e1 - e2)**2)``; a pair is "same" iff ``dist < t``
  (strict);
* thresholds ``np.arange(0, 4, 0.01)``; ``nfolds`` contiguous, unshuffled folds like
  ``KFold(n_splits=nfolds, shuffle=False)`` (the first ``n % nfolds`` folds one pair larger);
  per fold the threshold is the first argmax of train-fold accuracy and the fold's accuracy is measured
  on the test fold; report mean and population std (ddof=0) over folds;
* VAL@FAR=1e-3 as insightface ``calculate_val`` (thresholds ``np.arange(0, 4, 0.001)``), with SciPy's
  ``interp1d(kind='slinear')`` replaced by ``np.interp`` (same values, and it does not crash on the
  repeated FAR values that modern SciPy rejects — data.md §1.9). A fold without positive or negative
  pairs gives NaN where insightface would raise ZeroDivisionError.

On top, over all pairs at once (no folds), with score = -dist:

* ROC: every distinct-score vertex (``sklearn.metrics.roc_curve(drop_intermediate=False)`` equivalent);
* ``roc_auc``: trapezoidal area under that ROC;
* ``eer``: where the piecewise-linear ROC crosses FNR = FPR (linear interpolation on the crossing segment);
* ``tar_at_far[str(far)]``: the highest TPR among ROC vertices with FPR <= far, i.e. at most
  ``floor(far * n_negative)`` false accepts. This is a conservative rule; insightface's IJB script instead
  takes the vertex *nearest* to the target FAR. It is None (and explained in ``tar_not_computable``) when
  there are fewer than ``1/far`` negative pairs, since the FAR cannot then be resolved.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from distill.data.transforms import hflip_nchw, to_model_input

ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
VAL_FAR_TARGET = 1e-3


@dataclass
class VerificationResult:
    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    best_thresholds: list[float]
    val: float  # VAL (TAR) at FAR=1e-3, insightface calculate_val, mean over folds
    val_std: float
    val_far: float  # the FAR actually reached on the test folds, mean over folds
    tar_at_far: dict[str, float | None]
    tar_not_computable: list[str]
    roc_auc: float
    eer: float
    xnorm: float
    roc: tuple[np.ndarray, np.ndarray] = field(repr=False)  # (fpr, tpr) of the full ROC, for plotting
    num_pairs: int = 0
    # 1 - |mean of the normalised embeddings|: 0 when every image gets the same direction (a model fed so
    # wrongly that it outputs a constant), near 1 for embeddings spread over the sphere
    spread: float = math.nan
    # genuine/impostor cosine summaries of the fused embeddings: on a handful of pairs they say more
    # than an accuracy (genuine_mean, genuine_min, impostor_mean, impostor_max; None without such pairs)
    cosine: dict[str, float | None] = field(default_factory=dict)
    # the pairs the accuracy counts as wrong (each at its test fold's threshold), in pair order: two
    # models' lists on the same set give a paired comparison (distill/metrics/paired.py)
    wrong_pairs: list[int] = field(default_factory=list)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation with ``sklearn.preprocessing.normalize`` semantics (zero rows unchanged)."""
    x = np.array(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0
    x /= norms[:, np.newaxis]
    return x


def fuse_embeddings(emb: np.ndarray, emb_flip: np.ndarray | None) -> np.ndarray:
    """Flip fusion of the protocol: sum raw embeddings, then L2-normalise."""
    emb = np.asarray(emb, dtype=np.float64)
    if emb_flip is None:
        return l2_normalize(emb)
    return l2_normalize(emb + np.asarray(emb_flip, dtype=np.float64))


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance between rows 2i and 2i+1."""
    diff = np.subtract(embeddings[0::2], embeddings[1::2])
    return np.sum(np.square(diff), axis=1)


def kfold_bounds(n: int, nfolds: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) test blocks like ``KFold(n_splits=nfolds, shuffle=False)``."""
    sizes = [n // nfolds + (1 if i < n % nfolds else 0) for i in range(nfolds)]
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


def _count_below(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t, how many values are < t (strict), exactly like counting ``values < t``."""
    return np.searchsorted(np.sort(values), thresholds, side="left")


def _fold_accuracies(dist: np.ndarray, issame: np.ndarray, nfolds: int) -> tuple[list[float], list[float]]:
    pos_all = _count_below(dist[issame], ACC_THRESHOLDS)
    neg_all = _count_below(dist[~issame], ACC_THRESHOLDS)
    n_neg_all = int(np.sum(~issame))
    accs, best = [], []
    for start, stop in kfold_bounds(len(dist), nfolds):
        d, s = dist[start:stop], issame[start:stop]
        pos_test = _count_below(d[s], ACC_THRESHOLDS)
        neg_test = _count_below(d[~s], ACC_THRESHOLDS)
        n_neg_test = int(np.sum(~s))
        # Correct decisions on the train folds = true accepts + true rejects; integer counts so the
        # argmax ties exactly like insightface's float accuracies (same denominator at every threshold).
        correct_train = (pos_all - pos_test) + ((n_neg_all - n_neg_test) - (neg_all - neg_test))
        b = int(np.argmax(correct_train))
        accs.append(float((pos_test[b] + (n_neg_test - neg_test[b])) / d.size))
        best.append(float(ACC_THRESHOLDS[b]))
    return accs, best


def wrong_pair_indices(
    dist: np.ndarray, issame: np.ndarray, thresholds: list[float], nfolds: int
) -> list[int]:
    """Indices of the pairs decided wrong, each with its test fold's threshold (same iff ``dist < t``):
    exactly the decisions ``_fold_accuracies`` counts, one fold's accuracy = 1 - its wrong / its pairs."""
    wrong: list[int] = []
    for (start, stop), t in zip(kfold_bounds(len(dist), nfolds), thresholds, strict=True):
        accepted = dist[start:stop] < t
        wrong += (np.flatnonzero(accepted != issame[start:stop]) + start).tolist()
    return wrong


def _val_at_far(
    dist: np.ndarray, issame: np.ndarray, nfolds: int, far_target: float
) -> tuple[float, float, float]:
    vals, fars = [], []
    for start, stop in kfold_bounds(len(dist), nfolds):
        train = np.ones(len(dist), dtype=bool)
        train[start:stop] = False
        neg_train = dist[train & ~issame]
        if neg_train.size == 0:  # insightface divides by zero here; accept nothing instead
            threshold = 0.0
        else:
            far_train = _count_below(neg_train, VAL_THRESHOLDS) / neg_train.size
            threshold = (
                float(np.interp(far_target, far_train, VAL_THRESHOLDS))
                if far_train.max() >= far_target
                else 0.0
            )
        d, s = dist[start:stop], issame[start:stop]
        n_same, n_diff = int(np.sum(s)), int(np.sum(~s))
        accept = d < threshold
        vals.append(np.sum(accept & s) / n_same if n_same else math.nan)
        fars.append(np.sum(accept & ~s) / n_diff if n_diff else math.nan)
    return float(np.mean(vals)), float(np.std(vals)), float(np.mean(fars))


def roc_points(dist: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full ROC over all pairs, accepting pairs with dist <= each distinct distance.

    Returns (false accepts, true accepts, fpr, tpr), each starting at the accept-nothing point (0, 0).
    Equals ``sklearn.metrics.roc_curve(issame, -dist, drop_intermediate=False)``.
    """
    order = np.argsort(dist, kind="mergesort")
    d, y = dist[order], issame[order]
    last_of_value = np.r_[np.nonzero(np.diff(d))[0], d.size - 1]
    tps = np.r_[0, np.cumsum(y)[last_of_value]]
    fps = np.r_[0, last_of_value + 1 - tps[1:]]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / fps[-1] if fps[-1] else np.full(fps.shape, math.nan)
        tpr = tps / tps[-1] if tps[-1] else np.full(tps.shape, math.nan)
    return fps, tps, fpr, tpr


def _auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def _eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """FPR where the ROC polyline meets FNR = FPR (g = FNR - FPR is non-increasing along the ROC)."""
    g = (1.0 - tpr) - fpr
    i = int(np.argmax(g <= 0))  # g[-1] = -1 <= 0, so a crossing always exists
    if g[i] == 0 or i == 0:
        return float(fpr[i])
    alpha = g[i - 1] / (g[i - 1] - g[i])
    return float(fpr[i - 1] + alpha * (fpr[i] - fpr[i - 1]))


def min_negatives(far: float) -> int:
    """Fewest negative pairs that can resolve ``far`` (one false accept among 1/far pairs)."""
    if not 0 < far < 1:
        raise ValueError(f"far must be in (0, 1), got {far}")
    return math.ceil(round(1.0 / far, 9))


def false_accepts_allowed(far: float, n_neg: int) -> int:
    """False accepts permitted at ``far`` among ``n_neg`` negatives: ``floor(far * n_neg)``."""
    return math.floor(far * n_neg + 1e-9)


def _tar_at_far(
    fps: np.ndarray, tps: np.ndarray, n_pos: int, n_neg: int, far_targets: tuple[float, ...]
) -> tuple[dict[str, float | None], list[str]]:
    tar: dict[str, float | None] = {}
    reasons: list[str] = []
    for far in far_targets:
        key = str(far)
        need = min_negatives(far)
        if n_pos == 0:
            tar[key] = None
            reasons.append(f"TAR@FAR={key}: no positive pairs")
        elif n_neg < need:
            tar[key] = None
            reasons.append(f"TAR@FAR={key}: too few negative pairs ({n_neg}; need at least {need} = 1/far)")
        else:
            allowed = false_accepts_allowed(far, n_neg)
            tar[key] = float(tps[fps <= allowed].max() / n_pos)
    return tar, reasons


def evaluate_verification(
    emb: np.ndarray,
    emb_flip: np.ndarray | None,
    issame: np.ndarray,
    nfolds: int = 10,
    far_targets: tuple[float, ...] = (1e-2, 1e-3, 1e-4),
) -> VerificationResult:
    """Verification metrics for 2N raw embeddings (rows 2i, 2i+1 form pair i) and N same/different labels."""
    emb = np.asarray(emb)
    issame = np.asarray(issame).astype(bool).reshape(-1)
    if emb.ndim != 2 or emb.shape[0] % 2:
        raise ValueError(f"embeddings must be (2N, D), got {emb.shape}")
    if emb_flip is not None and np.shape(emb_flip) != emb.shape:
        raise ValueError(f"flipped embeddings have shape {np.shape(emb_flip)}, expected {emb.shape}")
    n = emb.shape[0] // 2
    if issame.shape[0] != n:
        raise ValueError(f"{issame.shape[0]} labels for {n} pairs")
    if n < nfolds or nfolds < 2:
        raise ValueError(f"need at least nfolds={nfolds} >= 2 pairs, got {n}")

    raw = [np.asarray(emb, dtype=np.float64)]
    if emb_flip is not None:
        raw.append(np.asarray(emb_flip, dtype=np.float64))
    xnorm = float(np.mean(np.concatenate([np.linalg.norm(r, axis=1) for r in raw])))

    fused = fuse_embeddings(emb, emb_flip)
    dist = pair_distances(fused)
    accs, best = _fold_accuracies(dist, issame, nfolds)
    val, val_std, val_far = _val_at_far(dist, issame, nfolds, VAL_FAR_TARGET)

    n_pos, n_neg = int(issame.sum()), int((~issame).sum())
    fps, tps, fpr, tpr = roc_points(dist, issame)
    tar, reasons = _tar_at_far(fps, tps, n_pos, n_neg, tuple(far_targets))
    if n_pos and n_neg:
        roc_auc, eer = _auc(fpr, tpr), _eer(fpr, tpr)
    else:
        roc_auc = eer = math.nan

    return VerificationResult(
        accuracy=float(np.mean(accs)),
        accuracy_std=float(np.std(accs)),
        fold_accuracies=accs,
        best_thresholds=best,
        val=val,
        val_std=val_std,
        val_far=val_far,
        tar_at_far=tar,
        tar_not_computable=reasons,
        roc_auc=roc_auc,
        eer=eer,
        xnorm=xnorm,
        roc=(fpr, tpr),
        num_pairs=n,
        spread=float(1.0 - np.linalg.norm(fused.mean(axis=0))),
        cosine=_cosine_summary(fused, issame),
        wrong_pairs=wrong_pair_indices(dist, issame, best, nfolds),
    )


def _cosine_summary(fused: np.ndarray, issame: np.ndarray) -> dict[str, float | None]:
    cos = np.einsum("ij,ij->i", fused[0::2], fused[1::2])

    def stat(values: np.ndarray, fn: Callable[[np.ndarray], float]) -> float | None:
        return round(float(fn(values)), 6) if values.size else None

    return {
        "genuine_mean": stat(cos[issame], np.mean),
        "genuine_min": stat(cos[issame], np.min),
        "impostor_mean": stat(cos[~issame], np.mean),
        "impostor_max": stat(cos[~issame], np.max),
    }


def distinct_images(images_uint8_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, inverse)``: the index of each distinct image's first copy, and for every image the
    position of its copy in ``first`` (``images[first][inverse]`` equals ``images``).

    Verification sets repeat images across pairs (lfw100's 400 images are 200 photos; insightface's
    .bin files store both images of every pair), and an embedding costs a model call, on a device a
    transfer too. Byte-equal images only: a digest of each image's pixels and shape.
    """
    first: list[int] = []
    inverse = np.empty(len(images_uint8_nhwc), dtype=np.int64)
    seen: dict[bytes, int] = {}
    for i, image in enumerate(images_uint8_nhwc):
        image = np.ascontiguousarray(image)
        h = hashlib.blake2b(image.tobytes(), digest_size=16)
        h.update(repr((image.shape, image.dtype.str)).encode())
        key = h.digest()
        if key not in seen:
            seen[key] = len(first)
            first.append(i)
        inverse[i] = seen[key]
    return np.asarray(first, dtype=np.int64), inverse


def embed_pairs(
    embed_fn: Callable[[torch.Tensor], np.ndarray],
    images_uint8_nhwc: np.ndarray,
    batch_size: int = 64,
    flip: bool = True,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run ``embed_fn`` over uint8 NHWC RGB images (and their mirrors); float64 (M, D) arrays.

    ``embed_fn`` receives ``to_model_input`` batches (float NCHW in [-1, 1]) and returns (B, D) as numpy
    (a torch tensor is accepted too). Each distinct image is embedded once (:func:`distinct_images`),
    in order of first appearance, and its rows copied to every repeat; a set without repeats is fed
    in the same batches as before.
    """
    images = np.asarray(images_uint8_nhwc)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (M, H, W, 3) uint8, got {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")

    def as_numpy(out: np.ndarray | torch.Tensor, rows: int) -> np.ndarray:
        if isinstance(out, torch.Tensor):
            out = out.detach().cpu().numpy()
        arr = np.asarray(out, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] != rows:
            raise ValueError(f"embed_fn returned shape {arr.shape} for a batch of {rows}")
        return arr

    first, inverse = distinct_images(images)
    every = len(first) == images.shape[0]  # no repeats: contiguous slices, no gather copies
    starts = range(0, len(first), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="embedding", unit="batch")
    plain, mirrored = [], []
    for start in starts:
        rows = images[start : start + batch_size] if every else images[first[start : start + batch_size]]
        x = to_model_input(rows)
        plain.append(as_numpy(embed_fn(x), x.shape[0]))
        if flip:
            mirrored.append(as_numpy(embed_fn(hflip_nchw(x)), x.shape[0]))
    if not plain:
        raise ValueError("no images to embed")
    emb = np.concatenate(plain)
    emb_flip = np.concatenate(mirrored) if flip else None
    if not every:
        emb = emb[inverse]
        emb_flip = emb_flip[inverse] if emb_flip is not None else None
    return emb, emb_flip
