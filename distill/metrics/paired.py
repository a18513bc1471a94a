"""Two models on the same verification pairs: which pairs each gets right, and whether the gap is noise.

Accuracies of two models on one set are not independent samples: most pairs are right (or wrong) for
both, and only the pairs where they disagree say which is better. The exact McNemar test looks at those
alone: under "equally good", each disagreement goes either way with probability 1/2, so the two-sided
p-value is a binomial tail. Written here because it is ten lines of ``math.comb`` (SciPy's
``binomtest`` gives the same numbers; the tests compare them) and SciPy is not a dependency.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PairedDifference:
    """Model A against model B on the same ``pairs``; ``difference_points`` is A's share of pairs right
    minus B's, in points (the 10-fold accuracies' difference when the folds are of equal size)."""

    pairs: int
    only_a_right: int  # pairs A decides right and B wrong
    only_b_right: int
    difference_points: float
    p_value: float  # exact two-sided McNemar: the chance of a split this uneven if A and B were equal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sentence(self, a: str, b: str) -> str:
        """One line for a report: the disagreements and what they mean."""
        verdict = "within noise" if self.p_value >= 0.05 else "unlikely to be noise"
        return (
            f"{a} − {b}: {self.difference_points:+.2f} points on {self.pairs} pairs; they disagree on "
            f"{self.only_a_right + self.only_b_right} ({a} right on {self.only_a_right}, {b} on "
            f"{self.only_b_right}), exact McNemar p = {self.p_value:.2f} ({verdict})"
        )


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: 2 x P(Binomial(n, 1/2) <= min), capped at 1; 1.0 with no
    disagreement."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2.0 * tail / 2.0**n)


def paired_difference(wrong_a: list[int], wrong_b: list[int], pairs: int) -> PairedDifference:
    """Compare two models from the pairs each got wrong on the same set of ``pairs`` pairs."""
    a, b = set(wrong_a), set(wrong_b)
    if any(not 0 <= i < pairs for i in a | b):
        raise ValueError(f"wrong-pair indices must lie in [0, {pairs})")
    only_a_right, only_b_right = len(b - a), len(a - b)
    return PairedDifference(
        pairs=pairs,
        only_a_right=only_a_right,
        only_b_right=only_b_right,
        difference_points=100.0 * (len(b) - len(a)) / pairs,
        p_value=mcnemar_exact_p(only_a_right, only_b_right),
    )
