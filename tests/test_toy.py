"""opsd.toy: the toy teacher, the one-peaked fits of forward and reverse KL, and the worked clipping case."""

from __future__ import annotations

import math

import pytest
import torch

from opsd.toy import (
    WORKED_CLIP_CASE,
    ClipCase,
    clip_case_values,
    fit_one_peaked_student,
    negative_clip_threshold,
    two_peaked_teacher,
)

GRID = torch.linspace(-6.0, 6.0, 601)  # step 0.02: x = -2, 0, 2 at indices 200, 300, 400


@pytest.fixture(scope="module")
def teacher():
    return two_peaked_teacher(GRID)


def test_teacher_is_a_two_peaked_distribution(teacher):
    assert teacher.dtype == torch.float64 and teacher.shape == (601,)
    assert float(teacher.sum()) == pytest.approx(1.0, abs=1e-12)
    interior = (teacher[1:-1] > teacher[:-2]) & (teacher[1:-1] > teacher[2:])
    peaks = GRID.double()[1:-1][interior]
    assert peaks.tolist() == pytest.approx([-2.0, 2.0], abs=1e-6)
    # between the peaks (4 std from each) almost nothing: exp(-4 / (2 * 0.36)) of a peak, twice
    assert float(teacher[300] / teacher.max()) == pytest.approx(2 * math.exp(-4 / 0.72), rel=1e-9)


def test_teacher_weights_set_the_peak_heights():
    p = two_peaked_teacher(GRID, weights=(0.8, 0.2))
    left, right = float(p[200]), float(p[400])  # x = -2, +2
    assert left / right == pytest.approx(4.0, rel=1e-6)
    with pytest.raises(ValueError, match="weights"):
        two_peaked_teacher(GRID, weights=(1.0,))


def test_forward_kl_covers_both_peaks(teacher):
    fit = fit_one_peaked_student(teacher, GRID, beta=0.0)
    assert abs(fit.mean) < 0.3 and fit.std > 1.5
    assert fit.probs.dtype == torch.float64 and float(fit.probs.sum()) == pytest.approx(1.0, abs=1e-12)
    assert fit.history[-1] == fit.divergence < fit.history[0]
    assert len(fit.history) == 301


def test_forward_kl_is_the_moment_match_on_a_wide_grid():
    """The forward-KL-optimal Gaussian has the teacher's mean 0 and variance 2^2 + 0.6^2."""
    x = torch.linspace(-10.0, 10.0, 1001)
    fit = fit_one_peaked_student(two_peaked_teacher(x), x, beta=0.0)
    assert fit.mean == pytest.approx(0.0, abs=0.01)
    assert fit.std == pytest.approx(math.sqrt(4.36), abs=0.02)


@pytest.mark.parametrize(("init_mean", "peak"), [(0.5, 2.0), (-0.5, -2.0)])
def test_reverse_kl_sits_on_the_nearest_peak(teacher, init_mean, peak):
    fit = fit_one_peaked_student(teacher, GRID, beta=1.0, init_mean=init_mean)
    assert abs(fit.mean - peak) < 0.3 and fit.std < 0.9
    assert fit.std == pytest.approx(0.6, abs=0.05)
    # on one peak of two equal ones: the reverse KL is log 2 (half the teacher's mass is missed)
    assert fit.divergence == pytest.approx(math.log(2.0), abs=0.01)


# ------------------------------------------------------------------------------------ clipping case


def test_worked_case_divergence_is_the_kl_written_out():
    v = clip_case_values(WORKED_CLIP_CASE, 0.05)
    kl = 0.7 * math.log(0.7 / 0.3) + 0.1 * math.log(0.1 / 0.5) + 0.1 * math.log(1.0) + 0.1 * math.log(1.0)
    assert v["divergence"].dtype == torch.float64
    assert float(v["divergence"]) == pytest.approx(kl, abs=1e-12)
    assert v["summands"].tolist() == pytest.approx([0.7 * math.log(7 / 3), 0.1 * math.log(0.2), 0.0, 0.0], abs=1e-12)
    assert v["clipped"].tolist() == pytest.approx([0.05, 0.1 * math.log(0.2), 0.0, 0.0], abs=1e-12)
    # only "73" is above c: D = 0.05 + 0.1 log 0.2 = -0.111
    assert float(v["clipped_divergence"]) == pytest.approx(0.05 + 0.1 * math.log(0.2), abs=1e-12)
    assert float(v["clipped_divergence"]) < 0


def test_worked_case_gradients_match_the_closed_forms():
    case, clip = WORKED_CLIP_CASE, 0.05
    v = clip_case_values(case, clip)
    p_s, p_t = torch.tensor(case.p_student, dtype=torch.float64), torch.tensor(case.p_teacher, dtype=torch.float64)
    torch.testing.assert_close(v["grad"], p_s - p_t, atol=1e-10, rtol=0)
    unclipped = (v["summands"] < clip).double()
    closed = -p_t * unclipped + p_s * (p_t * unclipped).sum()
    torch.testing.assert_close(v["clipped_grad"], closed, atol=1e-10, rtol=0)
    assert float(v["clipped_grad"][0]) == pytest.approx(0.3 * 0.3, abs=1e-10)  # "73": pushed down by descent
    assert float(v["grad"][0]) == pytest.approx(-0.4, abs=1e-10)  # without the clip: pushed up


def test_negative_clip_threshold_is_where_the_clipped_divergence_crosses_zero():
    c_star = negative_clip_threshold(WORKED_CLIP_CASE)
    # D(c) = c + 0.1 log 0.2 for 0 < c < l_73: zero at 0.1 log 5
    assert c_star == pytest.approx(0.1 * math.log(5.0), abs=1e-8)

    def clipped(c):
        return float(clip_case_values(WORKED_CLIP_CASE, c)["clipped_divergence"])

    assert clipped(c_star - 1e-4) < 0 < clipped(c_star + 1e-4)
    assert abs(clipped(c_star)) < 1e-8


def test_negative_clip_threshold_of_another_case():
    """Two negative summands: D(c) = c + sum of the negatives while only the top entry is clipped."""
    case = ClipCase(words=("a", "b", "c"), p_teacher=(0.6, 0.3, 0.1), p_student=(0.2, 0.4, 0.4))
    negatives = 0.3 * math.log(0.3 / 0.4) + 0.1 * math.log(0.1 / 0.4)
    assert negative_clip_threshold(case) == pytest.approx(-negatives, abs=1e-8)


def test_clip_case_checks_its_probabilities():
    with pytest.raises(ValueError, match="sum to 1"):
        ClipCase(words=("a", "b"), p_teacher=(0.5, 0.6), p_student=(0.5, 0.5))
    with pytest.raises(ValueError, match="same length"):
        ClipCase(words=("a",), p_teacher=(0.5, 0.5), p_student=(0.5, 0.5))
