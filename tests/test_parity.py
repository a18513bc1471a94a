"""Parity check: per-row cosine against hand-computed values, worst row decides, NaN never passes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deploy.parity import PARITY_MIN_COSINE, ParityResult, check_parity


def test_hand_computed_cosines():
    ref = np.array([[1.0, 0.0], [3.0, 4.0], [1.0, 0.0]], np.float32)
    cand = np.array([[1.0, 1.0], [6.0, 8.0], [-2.0, 0.0]], np.float32)
    # rows: 45 degrees -> 1/sqrt(2); same direction -> 1; opposite -> -1
    res = check_parity(ref, cand, min_cosine=0.5)
    assert isinstance(res, ParityResult)
    assert res.cos_min == pytest.approx(-1.0)
    assert res.cos_mean == pytest.approx((1 / math.sqrt(2) + 1 - 1) / 3)
    assert res.max_abs_diff == pytest.approx(4.0)  # |4 - 8| in row 2
    assert res.threshold == 0.5
    assert res.passed is False


def test_worst_row_decides_at_the_threshold():
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    cand = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 2.0]])  # second row: cos = 4 / (2 * sqrt(8)) = 1/sqrt(2)
    cos2 = 1 / math.sqrt(2)
    assert check_parity(ref, cand, min_cosine=cos2 - 1e-9).passed is True
    res = check_parity(ref, cand, min_cosine=cos2 + 1e-9)
    assert res.passed is False
    assert res.cos_min == pytest.approx(cos2) and res.cos_mean == pytest.approx((1 + cos2) / 2)
    assert res.max_abs_diff == pytest.approx(2.0)


def test_identical_embeddings_pass_every_precision():
    x = np.random.default_rng(0).normal(size=(10, 128)).astype(np.float32)
    for threshold in PARITY_MIN_COSINE.values():
        res = check_parity(x, x.copy(), threshold)
        assert res.passed and res.max_abs_diff == 0.0 and res.cos_min == pytest.approx(1.0)


def test_scaled_embeddings_keep_cosine_but_report_the_difference():
    x = np.array([[0.6, 0.8]])
    res = check_parity(x, 2 * x, PARITY_MIN_COSINE["fp32"])
    assert res.passed and res.cos_min == pytest.approx(1.0)
    assert res.max_abs_diff == pytest.approx(0.8)


def test_nan_and_zero_rows_fail():
    ref = np.array([[1.0, 2.0], [1.0, 1.0]])
    assert check_parity(ref, np.array([[1.0, 2.0], [np.nan, 1.0]]), 0.9).passed is False
    res = check_parity(ref, np.array([[1.0, 2.0], [0.0, 0.0]]), 0.9)
    assert res.passed is False and res.cos_min == 0.0


def test_thresholds_get_looser_with_lower_precision():
    assert PARITY_MIN_COSINE == {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError):
        check_parity(np.zeros((2, 4)), np.zeros((2, 5)), 0.9)
    with pytest.raises(ValueError):
        check_parity(np.zeros(4), np.zeros(4), 0.9)
    with pytest.raises(ValueError):
        check_parity(np.zeros((0, 4)), np.zeros((0, 4)), 0.9)
