"""Paired comparison of two models on the same verification pairs (distill/metrics/paired.py)."""

from __future__ import annotations

import pytest

from distill.metrics.paired import mcnemar_exact_p, paired_difference


def test_mcnemar_by_hand():
    assert mcnemar_exact_p(0, 0) == 1.0  # no disagreement: no evidence either way
    assert mcnemar_exact_p(0, 3) == pytest.approx(2 / 8)  # 2 x P(X <= 0), X ~ Bin(3, 1/2)
    assert mcnemar_exact_p(3, 6) == pytest.approx(2 * (1 + 9 + 36 + 84) / 512)  # 2 x P(X <= 3), n = 9
    assert mcnemar_exact_p(5, 5) == 1.0  # capped
    assert mcnemar_exact_p(0, 10) == pytest.approx(2 / 1024)


def test_mcnemar_matches_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats")  # scikit-learn's dependency, a second implementation
    for a, b in [(0, 1), (2, 9), (7, 7), (13, 4), (40, 25), (1, 60)]:
        want = stats.binomtest(min(a, b), a + b, 0.5, alternative="two-sided").pvalue
        assert mcnemar_exact_p(a, b) == pytest.approx(want, rel=1e-9)


def test_paired_difference_counts_disagreements():
    # 10 pairs: A wrong on 1, 2, 3; B wrong on 3, 4 -> A alone right on 4; B alone right on 1, 2
    d = paired_difference([1, 2, 3], [3, 4], pairs=10)
    assert (d.only_a_right, d.only_b_right) == (1, 2)
    assert d.difference_points == pytest.approx(-10.0)  # A 70 % against B 80 %
    assert d.p_value == pytest.approx(mcnemar_exact_p(1, 2)) and d.p_value == 1.0
    assert "disagree on 3" in d.sentence("QAT", "PTQ")
    with pytest.raises(ValueError, match="lie in"):
        paired_difference([10], [], pairs=10)
