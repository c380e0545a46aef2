"""Tests for opsd.divergence against an independent pure-Python float64 reference."""

import dataclasses
import itertools
import math

import pytest
import torch

from opsd import divergence
from opsd.divergence import (
    MATH_PATTERN,
    STYLE_WORDS,
    DivergenceSpec,
    assert_finite,
    distillation_loss,
    distillation_loss_from_hidden,
    divergence_diagnostics,
    sampled_token_loss,
    suggest_chunk_size,
    token_category,
    token_divergence,
    token_logprobs,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation on shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------------
# Brute-force reference: plain Python floats, one position and one vocabulary entry at a time.
# --------------------------------------------------------------------------------------------------


def ref_summands(zs, zt, beta, temperature, top_k):
    """Summands l_v of one position, over the teacher's top-k support (or the whole vocabulary)."""
    support = list(range(len(zs)))
    if top_k is not None:
        support = sorted(support, key=lambda v: zt[v], reverse=True)[:top_k]

    def softmax(z):
        top = max(z[v] / temperature for v in support)
        weights = {v: math.exp(z[v] / temperature - top) for v in support}
        total = sum(weights.values())
        return {v: w / total for v, w in weights.items()}

    ps, pt = softmax(zs), softmax(zt)
    terms = []
    for v in support:
        if beta == 0:
            terms.append(pt[v] * math.log(pt[v] / ps[v]))
        elif beta == 1:
            terms.append(ps[v] * math.log(ps[v] / pt[v]))
        else:
            m = (1 - beta) * ps[v] + beta * pt[v]
            terms.append(beta * pt[v] * math.log(pt[v] / m) + (1 - beta) * ps[v] * math.log(ps[v] / m))
    return terms


def ref_token(zs, zt, *, beta, temperature, top_k, clip, clip_mode):
    terms = ref_summands(zs, zt, beta, temperature, top_k)
    if clip is None or clip_mode == "none":
        return sum(terms)
    if clip_mode == "pointwise":
        return sum(min(term, clip) for term in terms)
    return min(max(sum(terms), 0.0), clip)


def ref_loss(student, teacher, mask, **options):
    values = [
        ref_token(student[b][n], teacher[b][n], **options)
        for b in range(len(mask))
        for n in range(len(mask[b]))
        if mask[b][n]
    ]
    return sum(values) / len(values) if values else 0.0


CLIPS = [(0.05, "pointwise"), (0.05, "token"), (None, "none")]
GRID = [
    {"beta": beta, "temperature": tau, "top_k": k, "clip": clip, "clip_mode": mode}
    for beta, tau, k, (clip, mode) in itertools.product([0.0, 0.5, 1.0], [1.0, 1.1], [None, 3], CLIPS)
]
GRID_IDS = [f"b{o['beta']}-t{o['temperature']}-k{o['top_k']}-{o['clip_mode']}" for o in GRID]

B, T, V = 3, 5, 9
LENGTHS = [5, 2, 0]  # ragged rows, the last one entirely masked out


def ragged_mask(lengths=LENGTHS, width=T):
    return torch.tensor([[n < length for n in range(width)] for length in lengths])


def logits(seed, shape=(B, T, V), dtype=torch.float64, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator)).to(dtype)


def with_garbage(x, mask):
    """Masked-out positions filled with huge, infinite and NaN values."""
    x = x.clone()
    junk = torch.tensor([1e30, -1e30, float("inf"), float("nan")], dtype=x.dtype)
    x[~mask] = junk.repeat(x.shape[-1])[: x.shape[-1]]
    return x


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
                top_k=None,
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

GRADCHECK_OPTIONS = [
    {"beta": 0.0, "temperature": 1.0, "top_k": None, "clip": 0.05, "clip_mode": "pointwise"},
    {"beta": 0.0, "temperature": 1.1, "top_k": 3, "clip": 0.05, "clip_mode": "pointwise"},
    {"beta": 0.5, "temperature": 1.1, "top_k": None, "clip": 0.05, "clip_mode": "token"},
    {"beta": 1.0, "temperature": 1.0, "top_k": 3, "clip": None, "clip_mode": "none"},
    {"beta": 0.3, "temperature": 1.1, "top_k": None, "clip": 0.05, "clip_mode": "pointwise"},
]


def is_smooth(s, t, options, margin=1e-3):
    """True when no clip of the option set sits within `margin` of a kink for these logits."""
    for b, n in itertools.product(range(s.shape[0]), range(s.shape[1])):
        terms = ref_summands(
            s[b, n].tolist(), t[b, n].tolist(), options["beta"], options["temperature"], options["top_k"]
        )
        if options["clip_mode"] == "pointwise" and any(
            abs(term - options["clip"]) <= margin for term in terms
        ):
            return False
        if options["clip_mode"] == "token" and (
            abs(sum(terms) - options["clip"]) <= margin or abs(sum(terms)) <= margin
        ):
            return False
    return True


def smooth_inputs(options, shape=(2, 3, 7)):
    """Logits away from every clip kink (finite differences need a smooth point)."""
    for seed in range(100):
        s, t = logits(100 + seed, shape, scale=1.5), logits(200 + seed, shape, scale=1.5)
        if is_smooth(s, t, options):
            return s, t
    raise AssertionError("no smooth inputs found")


@pytest.mark.parametrize("options", GRADCHECK_OPTIONS)
def test_gradcheck_plain_and_chunked(options):
    s, t = smooth_inputs(options)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    for chunk_size in (None, 2):

        def f(x, chunk_size=chunk_size):
            return distillation_loss(x, t, mask, chunk_size=chunk_size, **options)

        assert torch.autograd.gradcheck(f, (s.clone().requires_grad_(True),))


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
        return distillation_loss_from_hidden(
            h, ht, weight, mask, chunk_size=2, teacher_lm_head_weight=wt, **options
        )

    assert torch.autograd.gradcheck(f, (hs.requires_grad_(True), w.requires_grad_(True)))


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


def test_all_masked_out_from_hidden_and_sampled():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    h = torch.randn(2, 3, 4, requires_grad=True)
    w = torch.randn(7, 4, requires_grad=True)
    loss = distillation_loss_from_hidden(h, torch.randn(2, 3, 4), w, mask)
    assert loss.item() == 0.0
    loss.backward()
    assert (h.grad == 0).all() and (w.grad == 0).all()
    lp = torch.randn(2, 3, requires_grad=True)
    loss = sampled_token_loss(lp, torch.randn(2, 3), mask)
    assert loss.item() == 0.0
    loss.backward()
    assert (lp.grad == 0).all()


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
        loss, per_token = distillation_loss(s, t, mask, return_per_token=True, **options)
        (grad,) = torch.autograd.grad(loss, s)
        for chunk_size in (3, 64):
            s = s0.clone().requires_grad_(True)
            loss_c, per_token_c = distillation_loss(
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
        loss = distillation_loss(hs @ w.T, ht @ w0.T, mask, **options)
        grad_h, grad_w = torch.autograd.grad(loss, (hs, w))
        for chunk_size in (3, 64):
            hs, w = garbage.clone().requires_grad_(True), w0.clone().requires_grad_(True)
            t_hidden = ht.clone().requires_grad_(True)
            loss_f = distillation_loss_from_hidden(hs, t_hidden, w, mask, chunk_size=chunk_size, **options)
            loss_f.backward()
            assert_rel_close(loss_f, loss, rel)
            assert_rel_close(hs.grad[mask], grad_h[mask], rel)
            assert (hs.grad[~mask] == 0).all()
            assert_rel_close(w.grad, grad_w, rel)
            assert t_hidden.grad is None


def test_fused_hidden_sub_chunks(monkeypatch):
    """Blocks of positions for the projection, smaller sub-chunks for the divergence."""
    monkeypatch.setattr(divergence, "DEFAULT_CHUNK_ELEMENTS", 2 * V)  # sub-chunks of 2 positions
    mask = ragged_mask([5, 4, 1])
    generator = torch.Generator().manual_seed(14)
    hs = torch.randn(B, T, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    ht = torch.randn(B, T, 6, generator=generator, dtype=torch.float64)
    w = torch.randn(V, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    options = {"beta": 0.5, "temperature": 1.1, "top_k": 3, "clip": 0.05}
    want = distillation_loss(hs @ w.T, ht @ w.detach().T, mask, **options)
    want_h, want_w = torch.autograd.grad(want, (hs, w))
    for block in (None, 3, 7):
        loss = distillation_loss_from_hidden(hs, ht, w, mask, chunk_size=block, **options)
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
    loss, per_token = distillation_loss_from_hidden(
        hs, ht, w, mask, teacher_lm_head_weight=wt, chunk_size=4, return_per_token=True, **options
    )
    (grad,) = torch.autograd.grad(loss, hs)
    hs2 = hs.detach().clone().requires_grad_(True)
    loss_ref, per_ref = distillation_loss(hs2 @ w.T, ht @ wt.T, mask, return_per_token=True, **options)
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
    want = ref_loss(s.tolist(), t.tolist(), mask.tolist(), top_k=None, clip_mode="pointwise", **options)
    grads = []
    for chunk_size in (None, 4):
        loss = distillation_loss(s, t, mask, chunk_size=chunk_size, **options)
        assert math.isclose(loss.item(), want, rel_tol=1e-10)
        grads.append(torch.autograd.grad(loss, full_s)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)
    assert (grads[0][:, :3] == 0).all() and (grads[0][:, 3 + T :] == 0).all()
    hidden = torch.randn(B, T + 4, 6, dtype=torch.float64)
    w = torch.randn(V, 6, dtype=torch.float64)
    h_s, h_t = hidden[:, 2 : 2 + T], hidden.flip(1)[:, 2 : 2 + T]
    fused = distillation_loss_from_hidden(h_s, h_t, w, mask, chunk_size=4, **options)
    assert math.isclose(
        fused.item(), distillation_loss(h_s @ w.T, h_t @ w.T, mask, **options).item(), rel_tol=1e-10
    )


def test_chunked_backward_scaling_retain_graph_and_no_grad_input():
    mask = ragged_mask()
    s, t = logits(20).requires_grad_(True), logits(21)
    loss = distillation_loss(s, t, mask, chunk_size=2, clip=0.05)
    (3.0 * loss).backward(retain_graph=True)
    first = s.grad.clone()
    loss.backward()
    torch.testing.assert_close(s.grad, first * 4.0 / 3.0)
    ref = logits(20).requires_grad_(True)
    distillation_loss(ref, t, mask, clip=0.05).backward()
    torch.testing.assert_close(first, 3.0 * ref.grad)
    plain = distillation_loss(logits(20), t, mask, chunk_size=2)  # student without grad: value only
    assert plain.grad_fn is None and torch.isclose(plain, distillation_loss(logits(20), t, mask))


def test_efficient_paths_under_no_grad_return_values_only(monkeypatch):
    mask = ragged_mask()
    s, t = logits(22).requires_grad_(True), logits(23)
    want = distillation_loss(s, t, mask, clip=0.05)

    def no_grad_please(*args, **kwargs):
        raise AssertionError("a gradient was computed under torch.no_grad()")

    monkeypatch.setattr(torch.autograd, "grad", no_grad_please)
    with torch.no_grad():
        got = distillation_loss(s, t, mask, clip=0.05, chunk_size=2)
        h = torch.randn(B, T, 4, dtype=torch.float64, requires_grad=True)
        w = torch.randn(V, 4, dtype=torch.float64, requires_grad=True)
        fused = distillation_loss_from_hidden(h, h, w, mask, chunk_size=2)
    assert not got.requires_grad and torch.isclose(got, want.detach())
    assert fused.item() == 0.0  # identical student and teacher


def test_bfloat16_logits_compute_in_float32():
    mask = ragged_mask()
    s0, t = logits(30, dtype=torch.bfloat16), logits(31, dtype=torch.bfloat16)
    s = s0.clone().requires_grad_(True)
    loss = distillation_loss(s, t, mask, clip=0.05)
    loss.backward()
    s_c = s0.clone().requires_grad_(True)
    loss_c = distillation_loss(s_c, t, mask, clip=0.05, chunk_size=3)
    loss_c.backward()
    assert loss.dtype == torch.float32 and s.grad.dtype == torch.bfloat16
    assert_rel_close(loss_c, loss, 1e-4)
    assert_rel_close(s_c.grad.float(), s.grad.float(), 1e-2)
    want = distillation_loss(s0.double(), t.double(), mask, clip=0.05)
    assert math.isclose(loss.item(), want.item(), rel_tol=1e-5)


# --------------------------------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------------------------------


def diagnostics_example():
    """Position 0: the negative case above; 1: identical distributions (D = 0); 2: masked out."""
    pt = torch.tensor([0.9, 0.025, 0.025, 0.025, 0.025], dtype=torch.float64).log()
    ps = torch.tensor([0.5, 0.125, 0.125, 0.125, 0.125], dtype=torch.float64).log()
    same = torch.tensor([0.3, 0.1, 0.2, 0.2, 0.2], dtype=torch.float64).log()
    junk = torch.full((5,), float("nan"), dtype=torch.float64)
    s = torch.stack([ps, same, junk]).unsqueeze(0)
    t = torch.stack([pt, same, junk]).unsqueeze(0)
    mask = torch.tensor([[True, True, False]])
    unclipped = 0.9 * math.log(0.9 / 0.5) + 4 * 0.025 * math.log(0.2)
    clipped = 0.05 + 4 * 0.025 * math.log(0.2)
    return s, t, mask, unclipped, clipped


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_diagnostics_on_a_hand_made_example(chunk_size):
    s, t, mask, unclipped, clipped = diagnostics_example()
    tokens = [["\u0120Wait", "\u01202", "garbage"]]
    got = divergence_diagnostics(
        s, t, mask, token_strings=tokens, clip=0.05, clip_mode="pointwise", chunk_size=chunk_size
    )
    assert math.isclose(got["divergence_mean"], clipped / 2, rel_tol=1e-12)
    assert math.isclose(got["divergence_unclipped_mean"], unclipped / 2, rel_tol=1e-12)
    assert got["clipped_fraction"] == pytest.approx(1 / 10)  # one summand of the ten masked-in ones
    assert got["negative_token_fraction"] == pytest.approx(1 / 2)
    assert got["num_tokens"] == 2.0
    assert math.isclose(got["kl_style"], unclipped, rel_tol=1e-12)
    assert got["kl_math"] == 0.0 and math.isnan(got["kl_other"])
    assert (got["count_style"], got["count_math"], got["count_other"]) == (1.0, 1.0, 0.0)
    assert all(isinstance(value, float) for value in got.values())

    token = divergence_diagnostics(s, t, mask, clip=0.05, clip_mode="token")
    assert token["clipped_fraction"] == pytest.approx(1 / 2)
    assert token["divergence_mean"] == pytest.approx(0.05 / 2)
    assert token["negative_token_fraction"] == 0.0
    none = divergence_diagnostics(s, t, mask, clip=0.05, clip_mode="none")
    assert none["clipped_fraction"] == 0.0
    assert none["divergence_mean"] == pytest.approx(unclipped / 2)


def test_diagnostics_with_nothing_masked_in():
    s, t, _, _, _ = diagnostics_example()
    got = divergence_diagnostics(s, t, torch.zeros(1, 3, dtype=torch.bool), token_strings=[["a", "b", "c"]])
    assert got["num_tokens"] == 0.0 and math.isnan(got["divergence_mean"]) and math.isnan(got["kl_style"])


def test_diagnostics_checks_token_strings():
    s, t, mask, _, _ = diagnostics_example()
    with pytest.raises(ValueError, match="rows"):
        divergence_diagnostics(s, t, mask, token_strings=[["a"], ["b"]])
    with pytest.raises(ValueError, match="position 1"):
        divergence_diagnostics(s, t, mask, token_strings=[["a"]])


@pytest.mark.parametrize(
    "token, category",
    [
        ("\u0120Wait", "style"),
        ("wait", "style"),
        ("\u2581So", "style"),
        (" Hmm", "style"),
        ("Alternatively,", "style"),
        ("\u0120Let's", "style"),
        ("\u0120therefore", "style"),
        ("OKAY", "style"),
        ("\u0120123", "math"),
        ("3.14", "math"),
        ("+", "math"),
        (" =", "math"),
        ("\\frac", "math"),
        ("\\boxed{", "math"),
        ("\u0120x", "math"),
        ("n", "math"),
        ("^{2}", "math"),
        ("2x", "math"),
        ("f(x)", "math"),
        ("$", "math"),
        ("\u0120the", "other"),
        ("\u0120triangle", "other"),
        (".", "other"),
        ("\u0120a", "other"),
        ("I", "other"),
        ("\u010a\u010a", "other"),
        ("", "other"),
        ("sin", "other"),
    ],
)
def test_token_category(token, category):
    assert token_category(token) == category


def test_keyword_lists_are_documented_constants():
    assert {
        "wait",
        "so",
        "think",
        "hmm",
        "let",
        "okay",
        "alternatively",
        "maybe",
        "check",
        "actually",
    } <= STYLE_WORDS
    assert all(word == word.lower() for word in STYLE_WORDS)
    assert MATH_PATTERN.fullmatch("\\sqrt") and not MATH_PATTERN.fullmatch("word")


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
        ({"top_k": 0}, "top_k"),
        ({"top_k": V + 1}, "top_k"),
        ({"clip": -1.0}, "clip"),
        ({"clip_mode": "sometimes"}, "clip_mode"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_invalid_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distillation_loss(logits(0), logits(1), ragged_mask(), **kwargs)


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
    spec = DivergenceSpec(beta=0.0, temperature=1.1, top_k=20, clip=0.05)
    assert spec.loss_kwargs() == {
        "beta": 0.0,
        "temperature": 1.1,
        "top_k": 20,
        "clip": 0.05,
        "clip_mode": "pointwise",
    }
    for bad in ({"beta": -0.1}, {"temperature": 0}, {"clip_mode": "x"}, {"top_k": 0}, {"loss_type": "y"}):
        with pytest.raises(ValueError):
            DivergenceSpec(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.beta = 1.0


def test_suggest_chunk_size():
    assert suggest_chunk_size(151_936) == 27
    assert suggest_chunk_size(10**9) == 1
    assert suggest_chunk_size(151_936, device="cuda") == 441
    assert suggest_chunk_size(1000, 5000) == 5
    with pytest.raises(ValueError):
        suggest_chunk_size(0)
