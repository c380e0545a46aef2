"""Accuracy with its uncertainty: 95% Wilson score intervals for a proportion of correct answers.

For k correct out of n and z = 1.959964 (two-sided 95%), with p = k / n:

    centre = (p + z^2 / 2n) / (1 + z^2 / n)
    half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)
    interval = [centre - half, centre + half]        (always inside [0, 1], sensible at k = 0 or n)

Two runs whose intervals do not overlap differ by more than sampling noise of the problem set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (``(0.0, 1.0)`` when n is 0)."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Proportion:
    """k of n, with its 95% Wilson interval [lo, hi]. ``str``: ``"41/200 = 20.5% [15.5, 26.6]"``."""

    k: int
    n: int
    lo: float
    hi: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def overlaps(self, other: Proportion) -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def __str__(self) -> str:
        return f"{self.k}/{self.n} = {100 * self.value:.1f}% [{100 * self.lo:.1f}, {100 * self.hi:.1f}]"


def proportion(k: int, n: int) -> Proportion:
    """``k`` of ``n`` with its 95% Wilson interval."""
    lo, hi = wilson_interval(k, n)
    return Proportion(int(k), int(n), lo, hi)


def accuracy_text(result: dict) -> str:
    """A held-out result (``opsd.evaluate.heldout_accuracy``) as ``"123/200 = 61.5% [54.6, 68.0]"``."""
    return str(proportion(result["correct"], result["n"]))
