"""Verification protocol: a loop-based reference, hand-worked cases and sklearn cross-checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize as sk_normalize

from distill.data.faces import open_verification
from distill.data.transforms import to_model_input
from distill.metrics.verification import (
    ACC_THRESHOLDS,
    distinct_images,
    embed_pairs,
    evaluate_verification,
    fuse_embeddings,
    kfold_bounds,
)

LFW100 = Path(__file__).resolve().parents[2] / "shared" / "real" / "lfw100"

# ----------------------------------------------------------------------------- helpers


def _random_pairs(n_pairs: int, dim: int, seed: int, noise: float = 0.9):
    """Raw (unnormalised) embeddings with varied norms; same pairs correlated, different pairs not."""
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < 0.5
    a = rng.normal(size=(n_pairs, dim))
    b = np.where(
        issame[:, None], a + noise * rng.normal(size=(n_pairs, dim)), rng.normal(size=(n_pairs, dim))
    )
    emb = np.empty((2 * n_pairs, dim))
    emb[0::2], emb[1::2] = a, b
    emb *= rng.uniform(0.2, 30.0, size=(2 * n_pairs, 1))
    emb_flip = emb + 0.5 * rng.normal(size=emb.shape) * np.abs(emb).mean()
    return emb, emb_flip, issame


def _reference_protocol(emb, emb_flip, issame, nfolds=10):
    """Straightforward re-statement of arcface_torch evaluate(): sklearn normalize + KFold, python loops."""
    e = sk_normalize(emb + emb_flip) if emb_flip is not None else sk_normalize(emb)
    dist = np.sum(np.square(np.subtract(e[0::2], e[1::2])), 1)
    thresholds = np.arange(0, 4, 0.01)
    accs, best_t = [], []
    val_thresholds = np.arange(0, 4, 0.001)
    vals = []
    for train, test in KFold(n_splits=nfolds, shuffle=False).split(np.arange(len(dist))):
        acc_train = []
        for t in thresholds:
            pred = dist[train] < t
            acc_train.append(float(np.sum(pred == issame[train])) / len(train))
        best = int(np.argmax(acc_train))
        best_t.append(thresholds[best])
        accs.append(float(np.sum((dist[test] < thresholds[best]) == issame[test])) / len(test))

        far_train = []
        for t in val_thresholds:
            fa = np.sum((dist[train] < t) & ~issame[train])
            far_train.append(fa / np.sum(~issame[train]))
        far_train = np.array(far_train)
        thr = np.interp(1e-3, far_train, val_thresholds) if far_train.max() >= 1e-3 else 0.0
        vals.append(np.sum((dist[test] < thr) & issame[test]) / np.sum(issame[test]))
    return accs, best_t, vals


def _pairs_at_distances(dists) -> np.ndarray:
    """Unit 2-D embeddings whose pair i has squared L2 distance dists[i] (= 2 - 2 cos)."""
    emb = np.zeros((2 * len(dists), 2))
    for i, d in enumerate(dists):
        c = 1.0 - d / 2.0
        emb[2 * i] = (1.0, 0.0)
        emb[2 * i + 1] = (c, math.sqrt(max(0.0, 1.0 - c * c)))
    return emb


# ----------------------------------------------------------------------------- accuracy protocol


@pytest.mark.parametrize("n_pairs,flip", [(600, True), (605, True), (413, False)])
def test_fold_accuracy_matches_loop_reference(n_pairs, flip):
    emb, emb_flip, issame = _random_pairs(n_pairs, 8, seed=n_pairs)
    res = evaluate_verification(emb, emb_flip if flip else None, issame)
    accs, best_t, vals = _reference_protocol(emb, emb_flip if flip else None, issame)
    assert res.fold_accuracies == pytest.approx(accs, abs=1e-12)
    assert res.best_thresholds == pytest.approx(best_t, abs=1e-12)
    assert res.accuracy == pytest.approx(np.mean(accs), abs=1e-12)
    assert res.accuracy_std == pytest.approx(np.std(accs), abs=1e-12)  # population std
    assert res.val == pytest.approx(np.mean(vals), abs=1e-12)
    assert res.val_std == pytest.approx(np.std(vals), abs=1e-12)
    assert 0.6 < res.accuracy < 0.99  # the data is neither trivial nor random
    assert res.num_pairs == n_pairs


def test_hand_computed_twenty_pairs():
    # 2 contiguous folds of 10 pairs. "same" iff dist < t (strict), thresholds 0.00, 0.01, ...
    #
    # fold A (pairs 0-9):   same 0.305 0.405 0.505 0.605 1.205 | diff 0.905 1.005 1.105 1.305 0.555
    # fold B (pairs 10-19): same 0.205 0.355 0.455 0.485 0.805 | diff 0.755 1.505 1.605 1.705 1.805
    #
    # fold 1 = test A, train B. Correct on B at t: t in (0.485, 0.755] -> 4 same + 5 diff = 9;
    #   t in (0.755, 0.805] -> 8; t in (0.805, 1.505] -> 5 + 4 = 9; smaller t -> fewer. First max: t = 0.49.
    #   On A at 0.49: same 0.305, 0.405 accepted (2 of 5), all 5 diff rejected -> 7/10 = 0.7.
    # fold 2 = test B, train A. Correct on A: (0.505, 0.555] -> 3 + 5 = 8; (0.555, 0.605] -> 7;
    #   (0.605, 0.905] -> 4 + 4 = 8; (1.205, 1.305] -> 5 + 1 = 6. First max: t = 0.51.
    #   On B at 0.51: same 0.205 0.355 0.455 0.485 accepted (4), diff all rejected (5) -> 9/10 = 0.9.
    # mean 0.8, population std 0.1.
    #
    # Full ROC, 10 positives / 10 negatives, sorted by distance:
    #   P P P P P P P N(0.555) P(0.605) N(0.755) P(0.805) N N N P(1.205) N N N N N
    #   TAR@FAR=0.1 (<= 1 false accept): 8/10; TAR@FAR=0.2 (<= 2): 9/10.
    #   AUC = P(pos dist < neg dist) = (7 + 8 + 9 + 9 + 9 + 10 + 4*10) / 100 = 0.92.
    #   EER: at vertex (FA=2, TA=8) FPR = 0.2 and FNR = 0.2 -> 0.2.
    same_a, diff_a = [0.305, 0.405, 0.505, 0.605, 1.205], [0.905, 1.005, 1.105, 1.305, 0.555]
    same_b, diff_b = [0.205, 0.355, 0.455, 0.485, 0.805], [0.755, 1.505, 1.605, 1.705, 1.805]
    dists = same_a + diff_a + same_b + diff_b
    issame = np.array([True] * 5 + [False] * 5 + [True] * 5 + [False] * 5)
    res = evaluate_verification(
        _pairs_at_distances(dists), None, issame, nfolds=2, far_targets=(0.1, 0.2, 0.01)
    )
    assert res.fold_accuracies == pytest.approx([0.7, 0.9])
    assert res.best_thresholds == pytest.approx([0.49, 0.51])
    assert res.accuracy == pytest.approx(0.8)
    assert res.accuracy_std == pytest.approx(0.1)
    assert res.tar_at_far["0.1"] == pytest.approx(0.8)
    assert res.tar_at_far["0.2"] == pytest.approx(0.9)
    assert res.tar_at_far["0.01"] is None
    assert res.tar_not_computable == ["TAR@FAR=0.01: too few negative pairs (10; need at least 100 = 1/far)"]
    assert res.roc_auc == pytest.approx(0.92)
    assert res.eer == pytest.approx(0.2)
    assert res.xnorm == pytest.approx(1.0)


def test_strict_less_than_at_an_exact_threshold():
    assert ACC_THRESHOLDS[200] == 2.0 and len(ACC_THRESHOLDS) == 400
    # fold A: same at 1.994 (x2), diff at 4.0 (x2); fold B: same at 0.0 (x2), diff at exactly 2.0 (x2)
    # (orthogonal unit vectors: (1,0) vs (0,1) -> squared distance exactly 2).
    # fold 1: train B -> all correct for t in (0, 2.0] -> first grid t = 0.01; on A: same rejected -> 0.5.
    # fold 2: train A -> all correct for t in (1.994, 4.0] -> t = 2.00; on B the diff pairs at exactly
    #   2.0 are NOT < 2.0, so they are rejected -> 1.0. (With <= they would be accepted: 0.5.)
    emb = _pairs_at_distances([1.994, 1.994, 4.0, 4.0, 0.0, 0.0, 2.0, 2.0])
    issame = np.array([True, True, False, False, True, True, False, False])
    res = evaluate_verification(emb, None, issame, nfolds=2)
    assert res.best_thresholds == [0.01, 2.0]
    assert res.fold_accuracies == [0.5, 1.0]
    assert res.wrong_pairs == [0, 1]  # the same pairs fold 1 rejects; not 6, 7 (exactly at 2.0)


def test_kfold_bounds_match_sklearn():
    for n in [10, 11, 19, 600, 605, 6000, 7001]:
        ours = [np.arange(a, b) for a, b in kfold_bounds(n, 10)]
        theirs = [test for _, test in KFold(n_splits=10, shuffle=False).split(np.arange(n))]
        assert len(ours) == len(theirs)
        for o, t in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(o, t)


def test_flip_fusion_sums_raw_then_normalises():
    emb, emb_flip, _ = _random_pairs(20, 4, seed=3)
    np.testing.assert_allclose(
        fuse_embeddings(emb, emb_flip), sk_normalize(emb + emb_flip), rtol=0, atol=1e-15
    )
    # not the same as averaging normalised embeddings (norms act as weights in the sum)
    other = sk_normalize(sk_normalize(emb) + sk_normalize(emb_flip))
    assert np.abs(fuse_embeddings(emb, emb_flip) - other).max() > 1e-3
    zero = np.zeros((2, 4))
    np.testing.assert_array_equal(fuse_embeddings(zero, None), zero)  # sklearn leaves zero rows at zero


def test_xnorm_over_both_copies():
    emb = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0], [0.0, 3.0]])
    flip = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    res = evaluate_verification(emb, flip, np.array([True, False]), nfolds=2)
    assert res.xnorm == pytest.approx((5 + 2 + 1 + 3 + 1 + 1 + 1 + 1) / 8)
    assert evaluate_verification(emb, None, np.array([True, False]), nfolds=2).xnorm == pytest.approx(11 / 4)


# ----------------------------------------------------------------------------- ROC numbers vs sklearn


def _tied_pairs(n_pairs, seed):
    """Embeddings from a small discrete set, so many pair distances tie exactly."""
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < 0.5
    a = rng.integers(-1, 2, size=(n_pairs, 3)).astype(float)
    b = rng.integers(-1, 2, size=(n_pairs, 3)).astype(float)
    keep = issame & (rng.random(n_pairs) < 0.7)
    b[keep] = a[keep]
    emb = np.empty((2 * n_pairs, 3))
    emb[0::2], emb[1::2] = a, b
    return emb, issame


@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_roc_auc_eer_tar_against_sklearn(kind):
    if kind == "continuous":
        emb, emb_flip, issame = _random_pairs(6000, 16, seed=11, noise=1.3)
    else:
        (emb, issame), emb_flip = _tied_pairs(6000, seed=5), None
    res = evaluate_verification(emb, emb_flip, issame)
    e = sk_normalize(emb + emb_flip) if emb_flip is not None else sk_normalize(emb)
    score = -np.sum((e[0::2] - e[1::2]) ** 2, axis=1)

    fpr, tpr, _ = roc_curve(issame, score, drop_intermediate=False)
    np.testing.assert_allclose(res.roc[0], fpr, atol=1e-12)
    np.testing.assert_allclose(res.roc[1], tpr, atol=1e-12)
    assert res.roc_auc == pytest.approx(roc_auc_score(issame, score), abs=1e-12)

    # EER: where 1 - TPR = FPR on sklearn's (collinear-points-dropped) ROC polyline, found by root search
    f2, t2, _ = roc_curve(issame, score)
    eer = brentq(lambda x: 1.0 - np.interp(x, f2, t2) - x, 0.0, 1.0, xtol=1e-14)
    assert res.eer == pytest.approx(eer, abs=1e-9)

    n_neg = int((~issame).sum())
    assert n_neg >= 1000
    for far in (1e-2, 1e-3):
        assert res.tar_at_far[str(far)] == pytest.approx(tpr[fpr <= far + 1e-12].max(), abs=1e-12)
    assert res.tar_at_far["0.0001"] is None
    assert res.tar_not_computable == [
        f"TAR@FAR=0.0001: too few negative pairs ({n_neg}; need at least 10000 = 1/far)"
    ]


def test_input_validation():
    emb = np.zeros((20, 4))
    with pytest.raises(ValueError, match="labels"):
        evaluate_verification(emb, None, np.ones(9, bool))
    with pytest.raises(ValueError, match=r"\(2N, D\)"):
        evaluate_verification(np.zeros((21, 4)), None, np.ones(10, bool))
    with pytest.raises(ValueError, match="flipped"):
        evaluate_verification(emb, np.zeros((20, 5)), np.ones(10, bool))
    with pytest.raises(ValueError, match="nfolds"):
        evaluate_verification(np.zeros((10, 4)), None, np.ones(5, bool))


# ----------------------------------------------------------------------------- embed_pairs


def test_embed_pairs_batches_normalises_and_flips():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 112, 112, 3), dtype=np.uint8)
    calls = []

    def embed_fn(x: torch.Tensor) -> np.ndarray:
        calls.append(x.shape[0])
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 112, 112)
        return x[:, :, 5, 0].numpy()  # channel values of row 5, leftmost column

    emb, emb_flip = embed_pairs(embed_fn, images, batch_size=3)
    assert calls == [3, 3, 3, 3, 1, 1]  # plain + flipped per batch, ragged last batch
    expected = (images[:, 5, 0, :].astype(np.float64) / 255.0 - 0.5) / 0.5
    np.testing.assert_allclose(emb, expected, atol=1e-6)
    expected_flip = (images[:, 5, -1, :].astype(np.float64) / 255.0 - 0.5) / 0.5  # mirror: rightmost column
    np.testing.assert_allclose(emb_flip, expected_flip, atol=1e-6)
    assert emb.dtype == np.float64

    emb2, none = embed_pairs(lambda x: torch.ones(x.shape[0], 2), images, batch_size=64, flip=False)
    assert none is None and emb2.shape == (7, 2)


def test_embed_pairs_embeds_each_distinct_image_once():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 112, 112, 3), dtype=np.uint8)
    images[4] = images[1]  # copies, as a .bin stores an image once per pair it is in
    images[6] = images[0]
    images[5, 0, 0, 0] = images[2, 0, 0, 0] ^ 1  # one pixel apart: distinct
    images[5, 1:] = images[2, 1:]
    images[5, 0, 1:] = images[2, 0, 1:]
    rows = []

    def embed_fn(x: torch.Tensor) -> np.ndarray:
        rows.append(x.shape[0])
        return x[:, :, 0, :2].reshape(x.shape[0], -1).numpy()  # first two pixels of row 0, 3 channels

    emb, emb_flip = embed_pairs(embed_fn, images, batch_size=3)
    assert rows == [3, 3, 2, 2]  # 5 distinct images (0, 1, 2, 3, 5), plain + mirror per batch
    first, inverse = distinct_images(images)
    assert first.tolist() == [0, 1, 2, 3, 5] and inverse.tolist() == [0, 1, 2, 3, 1, 4, 0]

    def by_hand(cols: slice) -> np.ndarray:  # every image on its own, repeats included
        px = images[:, 0, cols, :].astype(np.float64) / 255.0 * 2.0 - 1.0  # (M, 2, 3)
        return px.transpose(0, 2, 1).reshape(len(images), -1)  # channel-major, as NCHW

    np.testing.assert_allclose(emb, by_hand(slice(0, 2)), atol=1e-6)
    np.testing.assert_allclose(emb_flip, by_hand(slice(111, 109, -1)), atol=1e-6)


@pytest.mark.skipif(not LFW100.is_dir(), reason="../shared/real/ not present")
def test_lfw100_repeats_are_embedded_once():
    # pairs.txt names 200 distinct files in its 400 slots (genuine and impostor pairs share photos)
    names = [n for line in (LFW100 / "pairs.txt").read_text().splitlines() for n in line.split("\t")[:2]]
    vs = open_verification(LFW100)
    first, inverse = distinct_images(vs.images)
    assert len(names) == len(vs.images) == 400
    assert len(first) == len(set(names)) == 200
    by_name = {n: i for i, n in enumerate(names)}  # the last slot of each name
    assert all(inverse[i] == inverse[by_name[n]] for i, n in enumerate(names))
    rows = []

    def embed_fn(x: torch.Tensor) -> np.ndarray:
        rows.append(x.shape[0])
        return x.mean(dim=(2, 3)).numpy()

    emb, emb_flip = embed_pairs(embed_fn, vs.images, batch_size=32, flip=True)
    assert sum(rows) == 2 * 200
    one_by_one = np.concatenate([embed_fn(to_model_input(vs.images[i : i + 1])) for i in range(400)])
    np.testing.assert_allclose(emb, one_by_one, rtol=1e-6, atol=1e-7)


def test_wrong_pairs_are_the_decisions_the_accuracy_counts():
    # the 2-fold example of test_verification_metrics: thresholds 0.49 (pairs 0-9), 0.51 (pairs 10-19);
    # fold A rejects the same pairs at 0.505, 0.605, 1.205 (2, 3, 4); fold B the one at 0.805 (14)
    same_a, diff_a = [0.305, 0.405, 0.505, 0.605, 1.205], [0.905, 1.005, 1.105, 1.305, 0.555]
    same_b, diff_b = [0.205, 0.355, 0.455, 0.485, 0.805], [0.755, 1.505, 1.605, 1.705, 1.805]
    issame = np.array([True] * 5 + [False] * 5 + [True] * 5 + [False] * 5)
    res = evaluate_verification(
        _pairs_at_distances(same_a + diff_a + same_b + diff_b), None, issame, nfolds=2
    )
    assert res.wrong_pairs == [2, 3, 4, 14]


def test_wrong_pairs_agree_with_every_fold_accuracy():
    rng = np.random.default_rng(0)
    n = 605  # folds of 61 and 60 pairs
    issame = rng.random(n) < 0.5
    emb = rng.standard_normal((2 * n, 8))
    emb[1::2][issame] = emb[0::2][issame] + rng.standard_normal((int(issame.sum()), 8)) * 0.8
    res = evaluate_verification(emb, None, issame, nfolds=10)
    wrong = np.zeros(n, bool)
    wrong[res.wrong_pairs] = True
    sizes = [61] * 5 + [60] * 5
    starts = np.cumsum([0] + sizes[:-1])
    for start, size, acc in zip(starts, sizes, res.fold_accuracies, strict=True):
        assert 1 - wrong[start : start + size].sum() / size == pytest.approx(acc, abs=1e-12)
