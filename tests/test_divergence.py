"""Tests for opsd.divergence against an independent pure-Python float64 reference."""

import dataclasses
import math

import pytest
import torch
from divergence_reference import (
    GRADCHECK_OPTIONS,
    GRID,
    GRID_IDS,
    B,
    T,
    V,
    hidden_loss_with,
    logits,
    loss_with,
    one_thread,  # noqa: F401  (autouse fixture: one intra-op thread)
    ragged_mask,
    ref_loss,
    ref_summands,
    ref_token,
    smooth_inputs,
    with_garbage,
)

from opsd.diagnostics import divergence_diagnostics
from opsd.divergence import (
    CLIP_MODES,
    DivergenceSpec,
    assert_finite,
    distillation_loss,
    sampled_token_loss,
    token_divergence,
    token_logprobs,
)
from opsd.divergence_chunked import chunked_loss, loss_from_hidden
from opsd.validation import InputError

# --------------------------------------------------------------------------------------------------
# Values against the reference
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", GRID, ids=GRID_IDS)
def test_token_divergence_matches_reference(options):
    s, t = logits(0), logits(1)
    got = token_divergence(s, t, **options)
    assert got.shape == (B, T) and got.dtype == torch.float64
    want = torch.tensor(
        [[ref_token(s[b, n].tolist(), t[b, n].tolist(), **options) for n in range(T)] for b in range(B)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("options", GRID, ids=GRID_IDS)
def test_distillation_loss_matches_reference_with_ragged_mask(options):
    mask = ragged_mask()
    s, t = logits(2), logits(3)
    want = ref_loss(s.tolist(), t.tolist(), mask.tolist(), **options)
    s, t = with_garbage(s, mask), with_garbage(t, mask)
    for got in (distillation_loss(s, t, mask, **options), loss_with(s, t, mask, chunk_size=2, **options)):
        assert got.dim() == 0
        assert math.isclose(got.item(), want, rel_tol=1e-10, abs_tol=1e-12)


def test_grid_inputs_exercise_the_clip():
    """The random inputs above do hit the clip, so the clip-mode comparisons mean something."""
    s, t = logits(0), logits(1)
    terms = [
        term
        for b in range(B)
        for n in range(T)
        for term in ref_summands(s[b, n].tolist(), t[b, n].tolist(), 0.0, 1.0, None)
    ]
    assert any(term > 0.05 for term in terms) and any(term < 0 for term in terms)


def test_pointwise_clip_can_make_the_loss_negative():
    # Teacher: 0.9 on entry 0; student: 0.5 there and more than the teacher on the four others. The one
    # positive summand (0.9 ln 1.8 = 0.53) is capped at 0.05, the four negative ones are not.
    pt = torch.tensor([0.9, 0.025, 0.025, 0.025, 0.025], dtype=torch.float64)
    ps = torch.tensor([0.5, 0.125, 0.125, 0.125, 0.125], dtype=torch.float64)
    s, t = ps.log().view(1, 1, 5), pt.log().view(1, 1, 5)
    mask = torch.ones(1, 1, dtype=torch.bool)
    hand = 0.05 + 4 * 0.025 * math.log(0.025 / 0.125)
    unclipped = 0.9 * math.log(0.9 / 0.5) + 4 * 0.025 * math.log(0.025 / 0.125)
    for chunk_size in (None, 1):
        loss = loss_with(s, t, mask, clip=0.05, clip_mode="pointwise", chunk_size=chunk_size)
        assert loss.item() < 0
        assert math.isclose(loss.item(), hand, rel_tol=1e-12)
        assert math.isclose(
            loss.item(),
            ref_loss(
                s.tolist(),
                t.tolist(),
                [[True]],
                beta=0.0,
                temperature=1.0,
                teacher_top_k=None,
                clip=0.05,
                clip_mode="pointwise",
            ),
            rel_tol=1e-12,
        )
    assert math.isclose(distillation_loss(s, t, mask).item(), unclipped, rel_tol=1e-12)
    assert unclipped > 0
    token_mode = distillation_loss(s, t, mask, clip=0.05, clip_mode="token")
    assert math.isclose(token_mode.item(), 0.05, rel_tol=1e-12)


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", GRADCHECK_OPTIONS)
def test_gradcheck_plain_and_chunked(options):
    s, t = smooth_inputs(options)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    for chunk_size in (None, 2):

        def f(x, chunk_size=chunk_size):
            return loss_with(x, t, mask, chunk_size=chunk_size, **options)

        assert torch.autograd.gradcheck(f, (s.clone().requires_grad_(True),))


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_teacher_gets_no_gradient_and_masked_positions_get_zero(chunk_size):
    mask = ragged_mask()
    s = with_garbage(logits(7), mask).requires_grad_(True)
    t = with_garbage(logits(8), mask).requires_grad_(True)
    loss = loss_with(s, t, mask, clip=0.05, chunk_size=chunk_size)
    loss.backward()
    assert t.grad is None
    assert torch.isfinite(s.grad).all()
    assert (s.grad[~mask] == 0).all() and (s.grad[mask] != 0).any()
    # Same gradient as on clean inputs.
    clean = logits(7).requires_grad_(True)
    distillation_loss(clean, logits(8), mask, clip=0.05).backward()
    torch.testing.assert_close(s.grad, clean.grad, rtol=1e-10, atol=1e-14)


def test_token_divergence_detaches_teacher():
    s, t = logits(0).requires_grad_(True), logits(1).requires_grad_(True)
    token_divergence(s, t, beta=0.5).sum().backward()
    assert t.grad is None and s.grad is not None


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_all_masked_out_gives_zero_with_a_graph(chunk_size):
    mask = torch.zeros(B, T, dtype=torch.bool)
    s = with_garbage(logits(0), mask).requires_grad_(True)
    loss = loss_with(s, with_garbage(logits(1), mask), mask, chunk_size=chunk_size)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert (s.grad == 0).all()


# --------------------------------------------------------------------------------------------------
# Sampled-token variant
# --------------------------------------------------------------------------------------------------


def test_sampled_token_loss_value_and_gradients():
    mask = ragged_mask()
    generator = torch.Generator().manual_seed(3)
    s = (-torch.rand(B, T, generator=generator, dtype=torch.float64) * 3).requires_grad_(True)
    t = (-torch.rand(B, T, generator=generator, dtype=torch.float64) * 3).requires_grad_(True)
    s_data, t_data = s.detach().clone(), t.detach().clone()
    s_data[~mask] = float("nan")  # garbage outside the mask is ignored
    s_in = s_data.clone().requires_grad_(True)
    loss = sampled_token_loss(s_in, t, mask)
    pairs = [(s[b, n].item(), t[b, n].item()) for b in range(B) for n in range(T) if mask[b, n]]
    hand = -sum((lt - ls) * ls for ls, lt in pairs) / len(pairs)
    assert math.isclose(loss.item(), hand, rel_tol=1e-12)
    loss.backward()
    assert t.grad is None
    want = torch.where(mask, -(t_data - s.detach()) / len(pairs), torch.zeros_like(s_data))
    torch.testing.assert_close(s_in.grad, want, rtol=1e-12, atol=0)
    # Not detaching the advantage would give -(t - 2 s) / M instead.
    assert not torch.allclose(s_in.grad[mask], (-(t_data - 2 * s.detach()) / len(pairs))[mask])


def test_token_logprobs():
    z = logits(4)
    ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))
    got = token_logprobs(z, ids, temperature=1.1)
    want = torch.log_softmax(z / 1.1, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_assert_finite_names_what_and_counts():
    x = torch.zeros(4)
    assert_finite(x, "anything")
    x[1], x[2], x[3] = float("nan"), float("inf"), -float("inf")
    with pytest.raises(ValueError, match=r"my tensor contain 1 NaN and 2 inf"):
        assert_finite(x, "my tensor")


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_nan_or_inf_logits_at_masked_in_positions_raise(chunk_size):
    mask = ragged_mask()
    s, t = logits(0), logits(1)
    s[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="student logits contain 1 NaN"):
        loss_with(s, t, mask, chunk_size=chunk_size)
    s, t = logits(0), logits(1)
    t[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="teacher logits contain 0 NaN and 1 inf"):
        loss_with(s, t, mask, chunk_size=chunk_size)


def test_nan_raises_in_every_entry_point():
    bad = logits(0)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="student logits"):
        token_divergence(bad, logits(1))
    with pytest.raises(ValueError, match="teacher logits"):
        divergence_diagnostics(logits(1), bad, ragged_mask(), DivergenceSpec())
    h = torch.randn(B, T, 4, dtype=torch.float64)
    h[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="student logits \\(from hidden states\\)"):
        hidden_loss_with(
            h,
            torch.randn(B, T, 4, dtype=torch.float64),
            torch.randn(V, 4, dtype=torch.float64),
            ragged_mask(),
        )
    lp = torch.zeros(B, T)
    lp[0, 0] = float("nan")
    with pytest.raises(ValueError, match="student log-probs"):
        sampled_token_loss(lp, torch.zeros(B, T), ragged_mask())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": 1.5}, "beta"),
        ({"temperature": 0.0}, "temperature"),
        ({"teacher_top_k": 0}, "teacher_top_k"),
        ({"teacher_top_k": V + 1}, "teacher_top_k"),
        ({"clip": -1.0}, "clip"),
        ({"clip_mode": "sometimes"}, "clip_mode"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_invalid_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loss_with(logits(0), logits(1), ragged_mask(), **({"chunk_size": 2} | kwargs))
    if "chunk_size" not in kwargs:
        with pytest.raises(InputError, match=match):
            distillation_loss(logits(0), logits(1), ragged_mask(), **kwargs)


def test_misspelled_option_raises_and_only_the_reader_functions_take_options_as_keywords():
    """The spec, token_divergence and distillation_loss name the options; every other path takes the spec."""
    s, t, mask = logits(0), logits(1), ragged_mask()
    h, w = torch.randn(B, T, 4, dtype=torch.float64), torch.randn(V, 4, dtype=torch.float64)
    spec = DivergenceSpec()
    for call in (
        lambda: DivergenceSpec(betta=0.5),
        lambda: token_divergence(s, t, betta=0.5),
        lambda: distillation_loss(s, t, mask, betta=0.5),
        lambda: distillation_loss(s, t, mask, loss_type="full"),
        lambda: distillation_loss(s, t, mask, chunk_size=2),
        lambda: chunked_loss(s, t, mask, spec, 2, beta=0.5),
        lambda: loss_from_hidden(h, h, w, mask, spec, clip_mode="token"),
        lambda: divergence_diagnostics(s, t, mask, spec, teacher_top_k=3),
    ):
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            call()


def test_invalid_shapes_and_masks_raise():
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(logits(0), logits(1, shape=(B, T, V + 1)), ragged_mask())
    with pytest.raises(ValueError, match="mask shape"):
        distillation_loss(logits(0), logits(1), ragged_mask()[:, :2])
    with pytest.raises(TypeError, match="mask must be bool"):
        distillation_loss(logits(0), logits(1), ragged_mask().double())
    with pytest.raises(ValueError, match="lm_head_weight"):
        hidden_loss_with(
            torch.randn(B, T, 4), torch.randn(B, T, 4), torch.randn(V, 5), ragged_mask()
        )


def test_divergence_spec_is_checked_once_and_names_the_bad_value():
    spec = DivergenceSpec(beta=0.0, temperature=1.1, teacher_top_k=20, clip=0.05)
    assert dataclasses.asdict(spec) == {
        "beta": 0.0,
        "temperature": 1.1,
        "teacher_top_k": 20,
        "clip": 0.05,
        "clip_mode": "pointwise",
        "loss_type": "full",
        "dtype": "float32",
    }
    for bad, match in (
        ({"beta": -0.1}, r"beta=-0.1 is out of range: beta must be in \[0, 1\]"),
        ({"beta": 1.5}, r"beta=1.5 is out of range"),
        ({"beta": "half"}, r"beta='half': beta must be"),
        ({"temperature": 0}, r"temperature=0 is out of range"),
        ({"clip": 0}, r"clip=0 is out of range: clip must be a positive threshold or null"),
        ({"clip_mode": "x"}, r"clip_mode='x': clip_mode must be one of \['pointwise', 'token'\]"),
        ({"teacher_top_k": 0}, r"teacher_top_k=0 is out of range"),
        ({"teacher_top_k": 2.5}, r"teacher_top_k=2.5 is out of range"),
        ({"loss_type": "y"}, r"loss_type='y'"),
        ({"dtype": "float16"}, r"dtype='float16'.*\['float32', 'bfloat16'\]"),
    ):
        with pytest.raises(InputError, match=match):
            DivergenceSpec(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.beta = 1.0


def test_clip_none_is_the_only_no_clip():
    """clip=None is "no clipping"; clip_mode only says how to clip, and "none" is not one of its values."""
    assert CLIP_MODES == ("pointwise", "token")
    s, t, mask = logits(0), logits(1), ragged_mask()
    options = {"beta": 0.0, "temperature": 1.1, "teacher_top_k": 3}
    want = ref_loss(s.tolist(), t.tolist(), mask.tolist(), clip=None, clip_mode="pointwise", **options)
    for chunk_size in (None, 2):
        no_clip = loss_with(s, t, mask, clip=None, chunk_size=chunk_size, **options)
        assert math.isclose(no_clip.item(), want, rel_tol=1e-10)
    assert math.isclose(distillation_loss(s, t, mask, clip=None, **options).item(), want, rel_tol=1e-10)
    assert not math.isclose(distillation_loss(s, t, mask, clip=0.05, **options).item(), want, rel_tol=1e-3)
    no_clip = divergence_diagnostics(s, t, mask, DivergenceSpec(clip=None, **options))
    assert no_clip["clipped_fraction"] == 0.0
    for call in (
        lambda: DivergenceSpec(clip=0.05, clip_mode="none"),
        lambda: token_divergence(s, t, clip=None, clip_mode="none"),
        lambda: distillation_loss(s, t, mask, clip=0.05, clip_mode="none"),
    ):
        with pytest.raises(InputError, match=r"clip_mode='none'.*no clipping is clip=None"):
            call()


# --------------------------------------------------------------------------------------------------
# Precision: the reference's bfloat16 objective
# --------------------------------------------------------------------------------------------------

#: bfloat16's unit roundoff: 8 significant bits, so one rounding changes a value by at most 2**-8 relative.
BF16_U = 2.0**-8


def bf16_error_bound(s, t, beta, clip, clip_mode):
    """First-order bound on |D_bf16 - D_exact| per position, for bf16-exact logits [..., V] and temperature 1.

    Each bf16 operation rounds its result once (relative error <= u; torch accumulates log_softmax and sums
    in float32 inside): a log-probability l gets |dl| <= u |l|; a term p_X (l_X - l_Y) gets u |l_X| |d| from
    p_X = exp(l_X) (plus u for rounding p_X), the operands' errors e_X + e_Y, and u |d| each for rounding
    the difference and the product (d = l_X - l_Y). For 0 < beta < 1 the mixture log M = logaddexp(...)
    has e_M <= u (|l_S| + |l_T| + |log beta| + |log(1 - beta)| + |log M|), and weighting and adding the two
    parts rounds twice more. The sum over v rounds once (u |D|). A clip (c itself rounded to bf16, so off
    by at most u c) moves a value by no more than its input's error, and by only u c where the value sits
    above c by more than that error.
    """
    ls, lt = torch.log_softmax(s.double(), -1), torch.log_softmax(t.double(), -1)
    ps, pt = ls.exp(), lt.exp()

    def part(p, lx, ly, ex, ey):
        d = (lx - ly).abs()
        return p * ((ex + BF16_U) * d + ex + ey + 2 * BF16_U * d)

    es, et = BF16_U * ls.abs(), BF16_U * lt.abs()
    if beta == 0.0:
        terms, exact = part(pt, lt, ls, et, es), pt * (lt - ls)
    elif beta == 1.0:
        terms, exact = part(ps, ls, lt, es, et), ps * (ls - lt)
    else:
        lm = torch.logaddexp(ls + math.log1p(-beta), lt + math.log(beta))
        em = BF16_U * (ls.abs() + lt.abs() + abs(math.log(beta)) + abs(math.log1p(-beta)) + lm.abs())
        t_part, s_part = pt * (lt - lm), ps * (ls - lm)
        terms = beta * part(pt, lt, lm, et, em) + (1 - beta) * part(ps, ls, lm, es, em)
        terms = terms + 2 * BF16_U * (beta * t_part.abs() + (1 - beta) * s_part.abs())
        exact = beta * t_part + (1 - beta) * s_part
    if clip is not None and clip_mode == "pointwise":  # |min(a, c') - min(b, c)| <= |a - b| + |c' - c|
        exact, terms = exact.clamp(max=clip), torch.where(exact - terms > clip, 0.0, terms) + BF16_U * clip
    total, bound = exact.sum(-1), terms.sum(-1) + BF16_U * exact.sum(-1).abs()
    if clip is not None and clip_mode == "token":  # clamp(D, 0, c): the bound of D, or u c where D is far above c
        bound = torch.where(total - bound > clip, 0.0, bound) + BF16_U * clip
    return bound


def hand_made_logits():
    """Student and teacher logits [2, 4, 6] in quarters within [-4, 4]: exact in bfloat16, so both
    precisions start from the same numbers; the teacher is sharp where the student is flat and back."""
    s = torch.tensor([[[2.0, 1.0, 0.5, 0.0, -1.0, -3.0], [0.25, 0.0, 0.0, -0.25, 0.5, 0.0],
                       [-4.0, 4.0, 0.0, 1.0, 2.0, -2.0], [1.5, 1.5, 1.5, -0.75, 3.0, 0.0]],
                      [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [3.5, -3.5, 1.25, 0.75, -0.5, 2.0],
                       [1.0, 2.0, 3.0, 4.0, -4.0, -3.0], [-1.0, -0.5, 0.5, 1.0, 0.25, -0.25]]])
    t = torch.tensor([[[4.0, -2.0, 0.0, 1.0, -4.0, 0.5], [3.0, -1.0, -1.0, 0.0, 0.25, -3.0],
                       [0.0, 2.5, 0.75, 1.0, 2.0, -1.0], [-2.0, 4.0, 0.0, 0.5, 0.0, 1.0]],
                      [[2.0, -2.0, 1.0, -1.0, 0.5, -0.5], [3.0, -3.0, 1.5, 0.5, -0.25, 2.5],
                       [4.0, 1.0, 0.0, -1.0, -2.0, -3.0], [0.0, 0.0, 0.0, 0.0, 0.0, 4.0]]])
    return s, t


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip, clip_mode", [(None, "pointwise"), (0.05, "pointwise"), (0.05, "token")])
def test_bfloat16_objective_equals_float32_within_bf16_rounding(beta, clip, clip_mode):
    s32, t32 = hand_made_logits()
    s16, t16 = s32.bfloat16(), t32.bfloat16()
    assert torch.equal(s16.float(), s32) and torch.equal(t16.float(), t32)  # the same inputs
    options = {"beta": beta, "clip": clip, "clip_mode": clip_mode}
    d32 = token_divergence(s32, t32, **options)
    d16 = token_divergence(s16, t16, dtype="bfloat16", **options)
    assert d32.dtype == torch.float32 and d16.dtype == torch.bfloat16  # no upcast on the bf16 path
    bound = 2 * bf16_error_bound(s32, t32, beta, clip, clip_mode) + 1e-6  # x2: second-order terms and float32's own error
    error = (d16.double() - d32.double()).abs()
    assert (error <= bound).all(), f"errors {error.tolist()} above the bounds {bound.tolist()}"
    # float32 upcasts bf16 logits (the kit's default): the same numbers as from float32 logits
    torch.testing.assert_close(token_divergence(s16, t16, **options), d32, rtol=1e-6, atol=1e-7)
    # the loss and its chunked path on bf16 logits: the mean of the same bf16 D, within one more rounding
    mask = torch.tensor([[True, True, True, False], [True, False, True, True]])
    spec = DivergenceSpec(dtype="bfloat16", **options)
    loss, per_token = spec.loss(s16, t16, mask, return_per_token=True)
    assert loss.dtype == torch.bfloat16 and torch.equal(per_token[mask], d16[mask])
    loss32 = distillation_loss(s32, t32, mask, **options)
    assert abs(loss.item() - loss32.item()) <= bound[mask].mean().item() + BF16_U * abs(loss32.item())
    chunked = chunked_loss(s16, t16, mask, spec, 2, return_per_token=True)
    assert torch.equal(chunked[1], per_token) and chunked[0].item() == loss.item()


def test_bfloat16_objective_on_float32_logits_rounds_them_first():
    """dtype="bfloat16" computes on bf16 logits even when handed float32 ones (the reference's model emits bf16)."""
    s, t = logits(0, dtype=torch.float32), logits(1, dtype=torch.float32)
    got = token_divergence(s, t, dtype="bfloat16", clip=0.05)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, token_divergence(s.bfloat16(), t.bfloat16(), dtype="bfloat16", clip=0.05))
    assert not torch.equal(got.float(), token_divergence(s, t, clip=0.05))  # bf16 arithmetic, not float32
