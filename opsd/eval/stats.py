"""Accuracy with its uncertainty: 95% Wilson score intervals for a proportion of correct answers.

For k correct out of n and z = 1.959964 (two-sided 95%), with p = k / n:

    centre = (p + z^2 / 2n) / (1 + z^2 / n)
    half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)
    interval = [centre - half, centre + half]        (always inside [0, 1], sensible at k = 0 or n)

Two runs whose intervals do not overlap differ by more than sampling noise of the problem set.

Avg@k with k > 1 samples per problem: the samples of one problem are correlated (an easy problem is right
in all of them), so a Wilson interval over the k x n samples is too narrow. The problem is the unit that is
sampled: ``problem_bootstrap_interval`` resamples problems (percentile bootstrap of the mean of the
per-problem correct fractions), and ``paired_difference`` compares two evaluations problem by problem.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

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
    """A held-out result (``opsd.eval.evaluate.heldout_accuracy``) as ``"123/200 = 61.5% [54.6, 68.0]"``."""
    return str(proportion(result["correct"], result["n"]))


# ------------------------------------------------------------------------------------------ problem bootstrap

_CHUNK_VALUES = 2_000_000  # resampled values held at once (bounds memory for large problem sets)


def _bootstrap_means(values: Sequence[float], n_resamples: int, seed: int, level: float, what: str):
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{what}: need at least one problem score, got {x.size}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: problem scores must be finite numbers")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    n, total = x.size, int(n_resamples)
    per_chunk = max(1, _CHUNK_VALUES // n)
    means = np.empty(total)
    for start in range(0, total, per_chunk):
        rows = min(per_chunk, total - start)
        means[start : start + rows] = x[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(x.mean()), (float(lo), float(hi))


def problem_bootstrap_interval(
    per_problem_scores: Sequence[float], *, n_resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-problem scores (Avg@k: each problem's fraction of
    correct samples), resampling problems with replacement: ``n_resamples`` resamples of all n problems,
    the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of their means (numpy's linear quantile).

    Computed with numpy: a ``numpy.random.default_rng(seed)`` Generator, vectorised (scipy, whose
    ``scipy.stats.bootstrap(method="percentile")`` computes the same statistic, is not a dependency of the
    kit), so a given seed gives the same interval everywhere. All problems scoring the same value v give
    ``(v, v)``. Raises ``ValueError`` for no scores, ``n_resamples < 1`` or ``level`` outside (0, 1)."""
    return _bootstrap_means(per_problem_scores, n_resamples, seed, level, "problem_bootstrap_interval")[1]


def paired_difference(a: Mapping[Hashable, float], b: Mapping[Hashable, float], *, n_resamples: int = 10_000,
                      seed: int = 0, level: float = 0.95) -> dict:
    """Two evaluations compared problem by problem: ``a`` and ``b`` map problem id -> score (the fraction of
    its samples that are correct). Over the problems both hold, the paired percentile bootstrap (problems
    resampled with replacement, the same problems for both, as in ``problem_bootstrap_interval``) of the mean
    difference b - a. Pairing takes the problems' own difficulty, shared by both evaluations, out of the
    noise.

    Returns ``{"n", "mean_a", "mean_b", "difference", "interval", "only_a", "only_b"}``: n common problems,
    the two means and their difference (b - a) over them, the interval ``(lo, hi)``, and the ids present in
    one evaluation only (left out, in ``a``'s resp. ``b``'s order). Raises ``ValueError`` when no problem is
    common to both."""
    common = [pid for pid in a if pid in b]
    only_a = [pid for pid in a if pid not in b]
    only_b = [pid for pid in b if pid not in a]
    if not common:
        raise ValueError(f"no problem is common to both evaluations ({len(a)} problems vs {len(b)}, "
                         f"e.g. {list(a)[:3]} vs {list(b)[:3]}): they are not on the same benchmark")
    mean_a = sum(float(a[pid]) for pid in common) / len(common)
    mean_b = sum(float(b[pid]) for pid in common) / len(common)
    diffs = [float(b[pid]) - float(a[pid]) for pid in common]
    _, interval = _bootstrap_means(diffs, n_resamples, seed, level, "paired_difference")
    return {"n": len(common), "mean_a": mean_a, "mean_b": mean_b, "difference": mean_b - mean_a,
            "interval": interval, "only_a": only_a, "only_b": only_b}
