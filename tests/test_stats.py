"""Wilson intervals against hand-computed values (z = 1.96, 95%)."""

import math

import pytest

from opsd.eval.stats import Proportion, proportion, wilson_interval


def _hand_wilson(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n,lo,hi", [
    # values worked out by hand from the formula in opsd/eval/stats.py (4 decimals)
    (41, 200, 0.1549, 0.2663),
    (50, 100, 0.4038, 0.5962),
    (0, 64, 0.0, 0.0566),
    (64, 64, 0.9434, 1.0),
    (1, 10, 0.0179, 0.4042),
])
def test_wilson_interval_hand_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-4)
    assert got[1] == pytest.approx(hi, abs=1e-4)


def test_wilson_matches_formula_and_contains_estimate():
    for k, n in [(3, 7), (120, 533), (199, 200)]:
        lo, hi = wilson_interval(k, n)
        assert (lo, hi) == pytest.approx(_hand_wilson(k, n))
        assert lo <= k / n <= hi


def test_wilson_edge_cases_and_errors():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    with pytest.raises(ValueError):
        wilson_interval(-1, 4)


def test_proportion_text_and_overlap():
    a, b = proportion(41, 200), proportion(120, 200)
    assert str(a) == "41/200 = 20.5% [15.5, 26.6]"
    assert isinstance(a, Proportion) and a.value == pytest.approx(0.205)
    assert not a.overlaps(b) and not b.overlaps(a)
    assert proportion(50, 100).overlaps(proportion(55, 100))


def test_accuracy_text_of_a_heldout_result():
    from opsd.eval.stats import accuracy_text

    assert accuracy_text({"correct": 41, "n": 200, "accuracy": 0.205}) == "41/200 = 20.5% [15.5, 26.6]"
