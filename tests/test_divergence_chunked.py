"""Tests for opsd.divergence_chunked: the chunked and fused-from-hidden paths equal the plain objective."""

import math

import pytest
import torch
from divergence_reference import (
    GRADCHECK_OPTIONS,
    GRID,
    B,
    T,
    V,
    hidden_loss_with,
    is_smooth,
    logits,
    loss_with,
    one_thread,  # noqa: F401  (autouse fixture: one intra-op thread)
    ragged_mask,
    ref_loss,
    with_garbage,
)

from opsd import divergence_chunked
from opsd.divergence import sampled_token_loss
from opsd.divergence_chunked import suggest_chunk_size

# --------------------------------------------------------------------------------------------------
# Chunked and fused paths equal the plain path
# --------------------------------------------------------------------------------------------------

TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}


def assert_rel_close(got, want, rel):
    scale = want.abs().max().clamp(min=1e-12)
    assert (got - want).abs().max() <= rel * scale, f"max diff {(got - want).abs().max()} vs scale {scale}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_equals_plain_over_the_grid(dtype):
    mask = ragged_mask([5, 4, 1])  # 10 positions: chunk 3 does not divide, 64 exceeds it
    s0, t = with_garbage(logits(10, dtype=dtype), mask), with_garbage(logits(11, dtype=dtype), mask)
    rel = TOLERANCE[dtype]
    for options in GRID:
        s = s0.clone().requires_grad_(True)
        loss, per_token = loss_with(s, t, mask, return_per_token=True, **options)
        (grad,) = torch.autograd.grad(loss, s)
        for chunk_size in (3, 64):
            s = s0.clone().requires_grad_(True)
            loss_c, per_token_c = loss_with(
                s, t, mask, chunk_size=chunk_size, return_per_token=True, **options
            )
            (grad_c,) = torch.autograd.grad(loss_c, s)
            assert_rel_close(loss_c, loss, rel)
            assert_rel_close(grad_c, grad, rel)
            assert_rel_close(per_token_c, per_token, rel)
        assert (per_token[~mask] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_hidden_equals_plain_over_the_grid(dtype):
    mask = ragged_mask([5, 4, 1])
    generator = torch.Generator().manual_seed(12)
    hs0 = torch.randn(B, T, 6, generator=generator).to(dtype)
    ht = torch.randn(B, T, 6, generator=generator).to(dtype)
    w0 = torch.randn(V, 6, generator=generator).to(dtype)
    garbage = hs0.clone()
    garbage[~mask] = float("nan")  # the fused path never looks at hidden states of padding
    rel = TOLERANCE[dtype]
    for options in GRID:
        hs, w = hs0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        loss = loss_with(hs @ w.T, ht @ w0.T, mask, **options)
        grad_h, grad_w = torch.autograd.grad(loss, (hs, w))
        for chunk_size in (3, 64):
            hs, w = garbage.clone().requires_grad_(True), w0.clone().requires_grad_(True)
            t_hidden = ht.clone().requires_grad_(True)
            loss_f = hidden_loss_with(hs, t_hidden, w, mask, chunk_size=chunk_size, **options)
            loss_f.backward()
            assert_rel_close(loss_f, loss, rel)
            assert_rel_close(hs.grad[mask], grad_h[mask], rel)
            assert (hs.grad[~mask] == 0).all()
            assert_rel_close(w.grad, grad_w, rel)
            assert t_hidden.grad is None


def test_fused_hidden_sub_chunks(monkeypatch):
    """Blocks of positions for the projection, smaller sub-chunks for the divergence."""
    monkeypatch.setattr(divergence_chunked, "DEFAULT_CHUNK_ELEMENTS", 2 * V)  # sub-chunks of 2 positions
    mask = ragged_mask([5, 4, 1])
    generator = torch.Generator().manual_seed(14)
    hs = torch.randn(B, T, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    ht = torch.randn(B, T, 6, generator=generator, dtype=torch.float64)
    w = torch.randn(V, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    options = {"beta": 0.5, "temperature": 1.1, "teacher_top_k": 3, "clip": 0.05}
    want = loss_with(hs @ w.T, ht @ w.detach().T, mask, **options)
    want_h, want_w = torch.autograd.grad(want, (hs, w))
    for block in (None, 3, 7):
        loss = hidden_loss_with(hs, ht, w, mask, chunk_size=block, **options)
        grad_h, grad_w = torch.autograd.grad(loss, (hs, w))
        assert_rel_close(loss, want, 1e-10)
        assert_rel_close(grad_h, want_h, 1e-10)
        assert_rel_close(grad_w, want_w, 1e-10)


def test_fused_hidden_with_frozen_head_and_separate_teacher_head():
    mask = ragged_mask()
    generator = torch.Generator().manual_seed(13)
    hs = torch.randn(B, T, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    ht = torch.randn(B, T, 6, generator=generator, dtype=torch.float64)
    w = torch.randn(V, 6, generator=generator, dtype=torch.float64)  # frozen (LoRA-style)
    wt = torch.randn(V, 6, generator=generator, dtype=torch.float64)
    options = {"beta": 0.0, "temperature": 1.1, "clip": 0.05}
    loss, per_token = hidden_loss_with(
        hs, ht, w, mask, teacher_lm_head_weight=wt, chunk_size=4, return_per_token=True, **options
    )
    (grad,) = torch.autograd.grad(loss, hs)
    hs2 = hs.detach().clone().requires_grad_(True)
    loss_ref, per_ref = loss_with(hs2 @ w.T, ht @ wt.T, mask, return_per_token=True, **options)
    loss_ref.backward()
    assert_rel_close(loss, loss_ref, 1e-10)
    assert_rel_close(grad, hs2.grad, 1e-10)
    assert_rel_close(per_token, per_ref, 1e-10)


def test_sliced_views_of_longer_sequences():
    """Logits / hidden states sliced to the rollout columns (non-contiguous views) work on every path."""
    mask = ragged_mask()
    full_s = logits(40, shape=(B, T + 4, V)).requires_grad_(True)
    full_t = logits(41, shape=(B, T + 4, V))
    options = {"beta": 0.5, "temperature": 1.1, "clip": 0.05}
    s, t = full_s[:, 3 : 3 + T], full_t[:, 3 : 3 + T]
    assert not s.is_contiguous()
    want = ref_loss(s.tolist(), t.tolist(), mask.tolist(), teacher_top_k=None, clip_mode="pointwise", **options)
    grads = []
    for chunk_size in (None, 4):
        loss = loss_with(s, t, mask, chunk_size=chunk_size, **options)
        assert math.isclose(loss.item(), want, rel_tol=1e-10)
        grads.append(torch.autograd.grad(loss, full_s)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)
    assert (grads[0][:, :3] == 0).all() and (grads[0][:, 3 + T :] == 0).all()
    hidden = torch.randn(B, T + 4, 6, dtype=torch.float64)
    w = torch.randn(V, 6, dtype=torch.float64)
    h_s, h_t = hidden[:, 2 : 2 + T], hidden.flip(1)[:, 2 : 2 + T]
    fused = hidden_loss_with(h_s, h_t, w, mask, chunk_size=4, **options)
    assert math.isclose(
        fused.item(), loss_with(h_s @ w.T, h_t @ w.T, mask, **options).item(), rel_tol=1e-10
    )


def test_chunked_backward_scaling_retain_graph_and_no_grad_input():
    mask = ragged_mask()
    s, t = logits(20).requires_grad_(True), logits(21)
    loss = loss_with(s, t, mask, chunk_size=2, clip=0.05)
    (3.0 * loss).backward(retain_graph=True)
    first = s.grad.clone()
    loss.backward()
    torch.testing.assert_close(s.grad, first * 4.0 / 3.0)
    ref = logits(20).requires_grad_(True)
    loss_with(ref, t, mask, clip=0.05).backward()
    torch.testing.assert_close(first, 3.0 * ref.grad)
    plain = loss_with(logits(20), t, mask, chunk_size=2)  # student without grad: value only
    assert plain.grad_fn is None and torch.isclose(plain, loss_with(logits(20), t, mask))


def test_efficient_paths_under_no_grad_return_values_only(monkeypatch):
    mask = ragged_mask()
    s, t = logits(22).requires_grad_(True), logits(23)
    want = loss_with(s, t, mask, clip=0.05)

    def no_grad_please(*args, **kwargs):
        raise AssertionError("a gradient was computed under torch.no_grad()")

    monkeypatch.setattr(torch.autograd, "grad", no_grad_please)
    with torch.no_grad():
        got = loss_with(s, t, mask, clip=0.05, chunk_size=2)
        h = torch.randn(B, T, 4, dtype=torch.float64, requires_grad=True)
        w = torch.randn(V, 4, dtype=torch.float64, requires_grad=True)
        fused = hidden_loss_with(h, h, w, mask, chunk_size=2)
    assert not got.requires_grad and torch.isclose(got, want.detach())
    assert fused.item() == 0.0  # identical student and teacher


def test_bfloat16_logits_compute_in_float32():
    mask = ragged_mask()
    s0, t = logits(30, dtype=torch.bfloat16), logits(31, dtype=torch.bfloat16)
    s = s0.clone().requires_grad_(True)
    loss = loss_with(s, t, mask, clip=0.05)
    loss.backward()
    s_c = s0.clone().requires_grad_(True)
    loss_c = loss_with(s_c, t, mask, clip=0.05, chunk_size=3)
    loss_c.backward()
    assert loss.dtype == torch.float32 and s.grad.dtype == torch.bfloat16
    assert_rel_close(loss_c, loss, 1e-4)
    assert_rel_close(s_c.grad.float(), s.grad.float(), 1e-2)
    want = loss_with(s0.double(), t.double(), mask, clip=0.05)
    assert math.isclose(loss.item(), want.item(), rel_tol=1e-5)


# --------------------------------------------------------------------------------------------------
# Gradients and empty masks of the fused path
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", GRADCHECK_OPTIONS[:3])
def test_gradcheck_from_hidden(options):
    for seed in range(100):
        generator = torch.Generator().manual_seed(seed)
        hs, ht = (torch.randn(2, 3, 4, generator=generator, dtype=torch.float64) for _ in range(2))
        w, wt = (torch.randn(7, 4, generator=generator, dtype=torch.float64) for _ in range(2))
        if is_smooth(hs @ w.T, ht @ wt.T, options):
            break
    mask = torch.tensor([[True, True, False], [True, True, True]])

    # A separate teacher head: with a shared one, finite differences in W would also move the teacher,
    # which the objective treats as a constant.
    def f(h, weight):
        return hidden_loss_with(
            h, ht, weight, mask, chunk_size=2, teacher_lm_head_weight=wt, **options
        )

    assert torch.autograd.gradcheck(f, (hs.requires_grad_(True), w.requires_grad_(True)))


def test_all_masked_out_from_hidden_and_sampled():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    h = torch.randn(2, 3, 4, requires_grad=True)
    w = torch.randn(7, 4, requires_grad=True)
    loss = hidden_loss_with(h, torch.randn(2, 3, 4), w, mask)
    assert loss.item() == 0.0
    loss.backward()
    assert (h.grad == 0).all() and (w.grad == 0).all()
    lp = torch.randn(2, 3, requires_grad=True)
    loss = sampled_token_loss(lp, torch.randn(2, 3), mask)
    assert loss.item() == 0.0
    loss.backward()
    assert (lp.grad == 0).all()


def test_suggest_chunk_size():
    assert suggest_chunk_size(151_936) == 27
    assert suggest_chunk_size(10**9) == 1
    assert suggest_chunk_size(151_936, device="cuda") == 441
    assert suggest_chunk_size(1000, 5000) == 5
    with pytest.raises(ValueError):
        suggest_chunk_size(0)
