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
    logits,
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
    resolve_clip,
    sampled_token_loss,
    token_divergence,
    token_logprobs,
)
from opsd.divergence_chunked import distillation_loss_from_hidden

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
    for chunk_size in (None, 2):
        got = distillation_loss(
            with_garbage(s, mask), with_garbage(t, mask), mask, chunk_size=chunk_size, **options
        )
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
        loss = distillation_loss(s, t, mask, clip=0.05, clip_mode="pointwise", chunk_size=chunk_size)
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
            return distillation_loss(x, t, mask, chunk_size=chunk_size, **options)

        assert torch.autograd.gradcheck(f, (s.clone().requires_grad_(True),))


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_teacher_gets_no_gradient_and_masked_positions_get_zero(chunk_size):
    mask = ragged_mask()
    s = with_garbage(logits(7), mask).requires_grad_(True)
    t = with_garbage(logits(8), mask).requires_grad_(True)
    loss = distillation_loss(s, t, mask, clip=0.05, chunk_size=chunk_size)
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
    loss = distillation_loss(s, with_garbage(logits(1), mask), mask, chunk_size=chunk_size)
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
        distillation_loss(s, t, mask, chunk_size=chunk_size)
    s, t = logits(0), logits(1)
    t[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="teacher logits contain 0 NaN and 1 inf"):
        distillation_loss(s, t, mask, chunk_size=chunk_size)


def test_nan_raises_in_every_entry_point():
    bad = logits(0)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="student logits"):
        token_divergence(bad, logits(1))
    with pytest.raises(ValueError, match="teacher logits"):
        divergence_diagnostics(logits(1), bad, ragged_mask())
    h = torch.randn(B, T, 4, dtype=torch.float64)
    h[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="student logits \\(from hidden states\\)"):
        distillation_loss_from_hidden(
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
        distillation_loss(logits(0), logits(1), ragged_mask(), **kwargs)


def test_misspelled_option_raises_in_every_entry_point():
    s, t, mask = logits(0), logits(1), ragged_mask()
    h, w = torch.randn(B, T, 4, dtype=torch.float64), torch.randn(V, 4, dtype=torch.float64)
    for call in (
        lambda: token_divergence(s, t, betta=0.5),
        lambda: distillation_loss(s, t, mask, betta=0.5),
        lambda: distillation_loss(s, t, mask, chunk_size=2, betta=0.5),
        lambda: distillation_loss_from_hidden(h, h, w, mask, betta=0.5),
        lambda: divergence_diagnostics(s, t, mask, betta=0.5),
        lambda: distillation_loss(s, t, mask, loss_type="full"),
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
        distillation_loss_from_hidden(
            torch.randn(B, T, 4), torch.randn(B, T, 4), torch.randn(V, 5), ragged_mask()
        )


def test_divergence_spec():
    spec = DivergenceSpec(beta=0.0, temperature=1.1, teacher_top_k=20, clip=0.05)
    assert spec.loss_kwargs() == {
        "beta": 0.0,
        "temperature": 1.1,
        "teacher_top_k": 20,
        "clip": 0.05,
        "clip_mode": "pointwise",
    }
    for bad in (
        {"beta": -0.1},
        {"temperature": 0},
        {"clip_mode": "x"},
        {"teacher_top_k": 0},
        {"loss_type": "y"},
    ):
        with pytest.raises(ValueError):
            DivergenceSpec(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.beta = 1.0


def test_clip_none_is_the_one_no_clip_and_the_legacy_clip_mode_none_still_reads_as_it():
    """clip=None is "no clipping"; clip_mode only says how to clip. The older clip_mode="none" (any clip)
    is read as clip=None with the default mode, in every entry point, so old calls keep their values."""
    assert CLIP_MODES == ("pointwise", "token")
    assert resolve_clip(0.05, "none") == (None, "pointwise")
    assert resolve_clip(0.05, "None") == (None, "pointwise")
    assert resolve_clip(0.05, "token") == (0.05, "token") and resolve_clip(None, "token") == (None, "token")
    s, t, mask = logits(0), logits(1), ragged_mask()
    options = {"beta": 0.0, "temperature": 1.1, "teacher_top_k": 3}
    no_clip = distillation_loss(s, t, mask, clip=None, **options)
    want = ref_loss(s.tolist(), t.tolist(), mask.tolist(), clip=None, clip_mode="pointwise", **options)
    assert math.isclose(no_clip.item(), want, rel_tol=1e-10)
    assert not math.isclose(distillation_loss(s, t, mask, clip=0.05, **options).item(), want, rel_tol=1e-3)
    for chunk_size in (None, 2):
        legacy = distillation_loss(s, t, mask, clip=0.05, clip_mode="none", chunk_size=chunk_size, **options)
        assert math.isclose(legacy.item(), want, rel_tol=1e-10)
    assert torch.equal(
        token_divergence(s, t, clip=0.05, clip_mode="none", **options),
        token_divergence(s, t, clip=None, **options),
    )
    hs, ht, w = logits(2, (B, T, 4)), logits(3, (B, T, 4)), logits(4, (V, 4))
    assert math.isclose(
        distillation_loss_from_hidden(hs, ht, w, mask, clip=0.05, clip_mode="none", **options).item(),
        distillation_loss_from_hidden(hs, ht, w, mask, clip=None, **options).item(),
        rel_tol=1e-12,
    )
    legacy = divergence_diagnostics(s, t, mask, clip=0.05, clip_mode="none", **options)
    assert (
        legacy == divergence_diagnostics(s, t, mask, clip=None, **options)
        and legacy["clipped_fraction"] == 0.0
    )
    spec = DivergenceSpec(clip=0.05, clip_mode="none")
    assert (spec.clip, spec.clip_mode) == (None, "pointwise") and spec == DivergenceSpec(clip=None)
