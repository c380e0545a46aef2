"""Wilson intervals against published values (z = 1.96, 95%)."""

import pytest

from opsd.eval.stats import Proportion, proportion, wilson_interval


@pytest.mark.parametrize("k,n,lo,hi", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of seven
    # methods", Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score, no continuity correction)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_published_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=5e-5)
    assert got[1] == pytest.approx(hi, abs=5e-5)


def test_wilson_interval_contains_the_estimate_and_is_symmetric():
    for k, n in [(3, 7), (120, 533), (199, 200), (41, 200)]:
        lo, hi = wilson_interval(k, n)
        assert lo <= k / n <= hi
        mirrored = wilson_interval(n - k, n)  # the interval of the complement is the mirror image
        assert mirrored == pytest.approx((1 - hi, 1 - lo), abs=1e-12)


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
