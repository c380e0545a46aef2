"""The OPSD objective: a per-token divergence between the student and teacher next-token distributions.

Notation. At every rollout position n the student scores the next token with
logits z_S[n] (context: the problem) and the teacher with z_T[n] (context: problem + reference solution),
both over the same vocabulary of V entries. With temperature tau on both sides,

    log p_S = log_softmax(z_S / tau),    log p_T = log_softmax(z_T / tau),

and one summand l[n, v] per vocabulary entry v:

    beta = 0      forward KL   l = p_T(v) * (log p_T(v) - log p_S(v))
    beta = 1      reverse KL   l = p_S(v) * (log p_S(v) - log p_T(v))
    0 < beta < 1  generalised JSD with M = (1 - beta) p_S + beta p_T
                  l = beta * p_T(v) * log(p_T(v) / M(v)) + (1 - beta) * p_S(v) * log(p_S(v) / M(v))

Teacher top-k (optional k) keeps, at each position, only the k entries with the largest teacher logits and
renormalises both distributions over them before the formulas above. The per-token divergence D[n] then
depends on the clip mode (clip c):

    "pointwise"  D[n] = sum_v min(l[n, v], c)        (the reference implementation's clip)
    "token"      D[n] = min(max(sum_v l[n, v], 0), c)
    "none"       D[n] = sum_v l[n, v]                (also what clip=None means in any mode)

Pointwise clipping caps only the positive summands, while the negative ones (entries where the student
puts more mass than the teacher, for forward KL) pass unchanged, so D[n] can be negative, and so can the
loss. That is intended: it is the reference objective, and `divergence_diagnostics` reports how often it
happens ("negative_token_fraction").

The loss is the mean of D[n] over the masked-in positions of the whole batch. Gradients reach the student
logits only; teacher logits are detached here whatever the caller did. Half-precision logits are upcast to
float32 for the computation (float64 stays float64); gradients flow back in the caller's dtype.

Memory. A plain pass holds several (positions x V) tensors at once. `distillation_loss(chunk_size=N)`
walks the masked-in positions N at a time and computes each chunk's gradient during the forward pass, so
only one chunk's intermediates are alive at a time plus one gradient buffer shaped like the logits.
`distillation_loss_from_hidden` goes further and never builds the full logits: blocks of positions are
projected from the last hidden states, the divergence runs on sub-chunks of each block, and the gradient
goes straight to the hidden states (and to the projection weight when it is trainable). Measurements:
benchmarks/README.md.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "CLIP_MODES",
    "CUDA_CHUNK_ELEMENTS",
    "DEFAULT_CHUNK_ELEMENTS",
    "FUSED_BLOCK_ELEMENTS",
    "LOSS_TYPES",
    "MATH_PATTERN",
    "STYLE_WORDS",
    "DivergenceSpec",
    "assert_finite",
    "distillation_loss",
    "distillation_loss_from_hidden",
    "divergence_diagnostics",
    "sampled_token_loss",
    "suggest_chunk_size",
    "token_category",
    "token_divergence",
    "token_logprobs",
]

CLIP_MODES = ("pointwise", "token", "none")
LOSS_TYPES = ("full", "sampled_token")

# Elements of one chunk of logits (positions x vocabulary) in the chunked paths. CPU: 2**22 float32 values
# are 16 MiB, i.e. 27 positions of Qwen3's 151,936-entry vocabulary (the fastest of 16/27/55/110 positions
# in benchmarks/README.md). GPU: larger chunks amortise kernel launches (a heuristic, not measured here).
DEFAULT_CHUNK_ELEMENTS = 1 << 22
CUDA_CHUNK_ELEMENTS = 1 << 26
# Logits built at once by the fused hidden-state path on the CPU (2**25 values: 220 Qwen3 positions):
# matrix products with few rows are several times slower per row, so the projection runs on blocks this
# large while the divergence runs on DEFAULT_CHUNK_ELEMENTS sub-chunks of them.
FUSED_BLOCK_ELEMENTS = 1 << 25


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------


def _check_options(beta, temperature, top_k, clip, clip_mode) -> None:
    """Raise ValueError/TypeError for an invalid combination of objective options."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be a number in [0, 1] (0 forward KL, 1 reverse KL), got {beta!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1
    ):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, numbers.Real) or not clip > 0):
        raise ValueError(f"clip must be None or a number > 0, got {clip!r}")
    if clip_mode not in CLIP_MODES:
        raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {clip_mode!r}")


@dataclass(frozen=True)
class DivergenceSpec:
    """The objective's options in one validated value (see the module docstring for the formulas).

    beta: 0 forward KL(p_T || p_S), 1 reverse KL(p_S || p_T), in between a generalised JSD.
    temperature: tau applied to both logits. top_k: teacher top-k support, or None for the full vocabulary.
    clip / clip_mode: c and "pointwise" | "token" | "none". loss_type: "full" (the distribution-level
    divergence) or "sampled_token" (the sampled-token advantage variant, `sampled_token_loss`).
    """

    beta: float = 0.0
    temperature: float = 1.0
    top_k: int | None = None
    clip: float | None = None
    clip_mode: str = "pointwise"
    loss_type: str = "full"

    def __post_init__(self) -> None:
        _check_options(self.beta, self.temperature, self.top_k, self.clip, self.clip_mode)
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")

    def loss_kwargs(self) -> dict:
        """Keyword arguments for token_divergence / distillation_loss / divergence_diagnostics."""
        kwargs = asdict(self)
        del kwargs["loss_type"]
        return kwargs


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def assert_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise ValueError naming `what` and counting NaN / inf entries if `tensor` has any.

    The fast path allocates nothing of the tensor's size (NaN and inf show up in its min / max).
    """
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return
    low, high = torch.aminmax(tensor.detach())
    if bool(torch.isfinite(low) & torch.isfinite(high)):  # one device sync
        return
    n_nan = int(torch.isnan(tensor).sum())
    n_inf = int(torch.isinf(tensor).sum())
    raise ValueError(
        f"{what} contain {n_nan} NaN and {n_inf} inf value(s) among {tensor.numel()} checked entries "
        f"(shape {tuple(tensor.shape)}); the divergence needs finite logits. Check the model forward "
        f"(e.g. fp16 overflow, a bad checkpoint) before computing the loss."
    )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 -> float32, float32 -> float32, float64 -> float64."""
    return torch.promote_types(dtype, torch.float32)


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> None:
    if not (student.is_floating_point() and teacher.is_floating_point()):
        raise TypeError(
            f"student and teacher {kind} must be floating point, got {student.dtype} and {teacher.dtype}"
        )
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher {kind} must have the same shape, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)} (are both roles sliced to the rollout positions, with one vocabulary?)"
        )
    if student.dim() < 1 or student.shape[-1] == 0:
        raise ValueError(f"{kind} need a non-empty last dimension, got shape {tuple(student.shape)}")


def _masked_rows(mask: torch.Tensor, lead_shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Flat indices [M] of the masked-in positions of a [B, T] mask, on `device`."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor (bool [B, T]), got {type(mask).__name__}")
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"mask must be bool (or integer 0/1), got {mask.dtype}")
    if tuple(mask.shape) != tuple(lead_shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the leading shape {tuple(lead_shape)}")
    return (mask.to(device) != 0).reshape(-1).nonzero().squeeze(1)


def _gather_rows(x: torch.Tensor, rows: torch.Tensor, lead_shape) -> torch.Tensor:
    """x at the flat positions `rows` of its leading shape: [*lead_shape, *rest] -> [len(rows), *rest].

    Works on any strides (e.g. logits sliced to the rollout columns) without copying the whole tensor.
    """
    return x[torch.unravel_index(rows, tuple(lead_shape))]


# --------------------------------------------------------------------------------------------------
# Per-token divergence
# --------------------------------------------------------------------------------------------------


def _summands(student_logits, teacher_logits, beta, temperature, top_k) -> torch.Tensor:
    """l[..., v] for logits [..., V] -> [..., V], or [..., k] with teacher top-k. No checks."""
    if top_k is not None:
        if top_k > student_logits.shape[-1]:
            raise ValueError(f"top_k={top_k} exceeds the vocabulary size {student_logits.shape[-1]}")
        # The temperature does not change the order, so select on the raw teacher logits.
        support = teacher_logits.topk(top_k, dim=-1).indices
        student_logits = student_logits.gather(-1, support)
        teacher_logits = teacher_logits.gather(-1, support)
    dtype = _compute_dtype(student_logits.dtype)
    student_logits, teacher_logits = student_logits.to(dtype), teacher_logits.to(dtype)
    if temperature != 1.0:
        student_logits, teacher_logits = student_logits / temperature, teacher_logits / temperature
    logp_s = F.log_softmax(student_logits, dim=-1)
    logp_t = F.log_softmax(teacher_logits, dim=-1)
    if beta == 0.0:
        return logp_t.exp() * (logp_t - logp_s)
    if beta == 1.0:
        return logp_s.exp() * (logp_s - logp_t)
    # log M = logsumexp(log(1 - beta) + log p_S, log(beta) + log p_T), computed stably.
    log_m = torch.logaddexp(logp_s + math.log1p(-beta), logp_t + math.log(beta))
    return beta * logp_t.exp() * (logp_t - log_m) + (1.0 - beta) * logp_s.exp() * (logp_s - log_m)


def _reduce(summands: torch.Tensor, clip, clip_mode) -> torch.Tensor:
    """D[...] from summands [..., V] under the clip mode."""
    if clip is None or clip_mode == "none":
        return summands.sum(-1)
    if clip_mode == "pointwise":
        return summands.clamp(max=clip).sum(-1)
    return summands.sum(-1).clamp(min=0.0, max=clip)


def _divergence(student_logits, teacher_logits, *, beta, temperature, top_k, clip, clip_mode) -> torch.Tensor:
    return _reduce(_summands(student_logits, teacher_logits, beta, temperature, top_k), clip, clip_mode)


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    beta: float = 0.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    clip: float | None = None,
    clip_mode: str = "pointwise",
) -> torch.Tensor:
    """Per-position divergence D: logits [..., V] (student, teacher) -> [...].

    D = sum_v l[v] with l the beta-divergence summand at temperature tau (module docstring), over the
    teacher's top-k entries when top_k is set, clipped per entry ("pointwise", D may be < 0), per token
    ("token", D in [0, c]) or not at all. Every position is computed; mask with `distillation_loss`.
    """
    _check_options(beta, temperature, top_k, clip, clip_mode)
    _check_pair(student_logits, teacher_logits, "logits")
    assert_finite(student_logits, "student logits")
    assert_finite(teacher_logits, "teacher logits")
    return _divergence(
        student_logits,
        teacher_logits.detach(),
        beta=beta,
        temperature=temperature,
        top_k=top_k,
        clip=clip,
        clip_mode=clip_mode,
    )


# --------------------------------------------------------------------------------------------------
# Loss: plain and chunked
# --------------------------------------------------------------------------------------------------


def suggest_chunk_size(vocab_size: int, target_elements: int | None = None, *, device=None) -> int:
    """Positions per chunk so that one chunk of logits holds about `target_elements` values.

    target_elements defaults to DEFAULT_CHUNK_ELEMENTS, or CUDA_CHUNK_ELEMENTS when device is a GPU.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if target_elements is None:
        on_gpu = device is not None and torch.device(device).type == "cuda"
        target_elements = CUDA_CHUNK_ELEMENTS if on_gpu else DEFAULT_CHUNK_ELEMENTS
    return max(1, int(target_elements) // int(vocab_size))


def _check_chunk_size(chunk_size) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")


class _ChunkedLogitsLoss(torch.autograd.Function):
    """mean_{masked n} D[n] over logits [B, T, V], chunk by chunk, with the gradient made in forward.

    Each chunk of masked-in rows runs the plain per-token objective on a detached copy and asks autograd
    for d(chunk loss)/d(chunk logits) at once; the result goes into one buffer shaped like the logits,
    which backward hands on (scaled by the incoming gradient). Outputs: loss (scalar), D [M] (no grad).
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, rows, chunk_size, options, grad_enabled):
        vocab, lead = student_logits.shape[-1], student_logits.shape[:-1]
        student, teacher = student_logits.detach(), teacher_logits.detach()
        want_grad = ctx.needs_input_grad[0] and grad_enabled  # forward always runs in no-grad mode
        grad = torch.zeros_like(student_logits, memory_format=torch.contiguous_format) if want_grad else None
        grad_rows = grad.view(-1, vocab) if want_grad else None
        count = max(rows.numel(), 1)
        per_token = student.new_empty(rows.numel(), dtype=_compute_dtype(student.dtype))
        for start in range(0, rows.numel(), chunk_size):
            index = rows[start : start + chunk_size]
            s, t = _gather_rows(student, index, lead), _gather_rows(teacher, index, lead)
            assert_finite(s, "student logits")
            assert_finite(t, "teacher logits")
            if want_grad:
                s.requires_grad_(True)
                with torch.enable_grad():
                    d = _divergence(s, t, **options)
                    (g,) = torch.autograd.grad(d.sum() / count, s)
                grad_rows.index_copy_(0, index, g)
            else:
                d = _divergence(s, t, **options)
            per_token[start : start + index.numel()] = d.detach()
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(per_token)
        return per_token.sum() / count, per_token

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_token):
        (grad,) = ctx.saved_tensors
        return None if grad is None else _scaled(grad, grad_loss), None, None, None, None, None


def _scaled(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """grad * grad_output, without a copy in the common case grad_output == 1."""
    if grad_output.numel() == 1 and float(grad_output) == 1.0:
        return grad
    return grad * grad_output.to(grad.dtype)


def _per_token_map(per_token: torch.Tensor, rows: torch.Tensor, shape) -> torch.Tensor:
    """Scatter D [M] back to [B, T] (0 at masked-out positions), detached."""
    out = per_token.new_zeros(math.prod(shape))
    out.index_copy_(0, rows, per_token.detach())
    return out.view(*shape)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    clip: float | None = None,
    clip_mode: str = "pointwise",
    chunk_size: int | None = None,
    return_per_token: bool = False,
):
    """OPSD loss: sum over masked-in positions of D[n] / their number (whole batch) -> scalar.

    Shapes: logits [B, T, V] (any leading shape works), mask bool [B, T] (ragged rows welcome; masked-out
    positions may hold anything, even NaN). D[n] as in `token_divergence`. No masked-in position -> 0,
    still connected to the student logits. chunk_size=None computes all positions at once; an integer
    processes that many positions at a time and keeps only one chunk's intermediates (same objective).
    return_per_token=True returns (loss, D [B, T] detached, 0 where masked out).
    """
    _check_options(beta, temperature, top_k, clip, clip_mode)
    _check_pair(student_logits, teacher_logits, "logits")
    rows = _masked_rows(mask, student_logits.shape[:-1], student_logits.device)
    options = {"beta": beta, "temperature": temperature, "top_k": top_k, "clip": clip, "clip_mode": clip_mode}
    teacher_logits = teacher_logits.detach()
    if chunk_size is None:
        lead = student_logits.shape[:-1]
        student, teacher = _gather_rows(student_logits, rows, lead), _gather_rows(teacher_logits, rows, lead)
        assert_finite(student, "student logits")
        assert_finite(teacher, "teacher logits")
        per_token = _divergence(student, teacher, **options)
        loss = per_token.sum() / max(rows.numel(), 1)
    else:
        _check_chunk_size(chunk_size)
        loss, per_token = _ChunkedLogitsLoss.apply(
            student_logits, teacher_logits, rows, chunk_size, options, torch.is_grad_enabled()
        )
    if return_per_token:
        return loss, _per_token_map(per_token, rows, student_logits.shape[:-1])
    return loss


# --------------------------------------------------------------------------------------------------
# Loss fused with the output projection
# --------------------------------------------------------------------------------------------------


class _ChunkedHiddenLoss(torch.autograd.Function):
    """mean_{masked n} D[n] with logits = hidden @ W.T built one block of positions at a time.

    Per block: z_S = h_S W^T, z_T = h_T W_T^T (both without graph); g = d(loss)/d z_S from the per-token
    objective, run in sub-chunks of `inner` positions; then grad h_S[block] = g W and, if W is trainable,
    grad W += g^T h_S[block]. Blocks keep the matmuls efficient, sub-chunks keep the divergence small.
    """

    @staticmethod
    def forward(
        ctx, student_hidden, teacher_hidden, weight, teacher_weight, rows, block, inner, options, grad_enabled
    ):
        width, lead = student_hidden.shape[-1], student_hidden.shape[:-1]
        h_student, h_teacher = student_hidden.detach(), teacher_hidden.detach()
        w_student = weight.detach()
        w_teacher = w_student if teacher_weight is None else teacher_weight.detach()
        want_hidden = ctx.needs_input_grad[0] and grad_enabled  # forward always runs in no-grad mode
        want_weight = ctx.needs_input_grad[2] and grad_enabled
        grad_hidden = (
            torch.zeros_like(student_hidden, memory_format=torch.contiguous_format) if want_hidden else None
        )
        grad_hidden_rows = grad_hidden.view(-1, width) if want_hidden else None
        grad_weight = (
            torch.zeros(w_student.shape, dtype=_compute_dtype(w_student.dtype), device=w_student.device)
            if want_weight
            else None
        )
        count = max(rows.numel(), 1)
        per_token = h_student.new_empty(rows.numel(), dtype=_compute_dtype(h_student.dtype))
        want_grad = want_hidden or want_weight
        for start in range(0, rows.numel(), block):
            index = rows[start : start + block]
            h = _gather_rows(h_student, index, lead)
            z_student = h @ w_student.T
            z_teacher = _gather_rows(h_teacher, index, lead) @ w_teacher.T
            assert_finite(z_student, "student logits (from hidden states)")
            assert_finite(z_teacher, "teacher logits (from hidden states)")
            g = torch.empty_like(z_student) if want_grad else None
            for sub in range(0, index.numel(), inner):
                s, t = z_student[sub : sub + inner].detach(), z_teacher[sub : sub + inner]
                if want_grad:
                    s.requires_grad_(True)
                    with torch.enable_grad():
                        d = _divergence(s, t, **options)
                        (g[sub : sub + inner],) = torch.autograd.grad(d.sum() / count, s)
                else:
                    d = _divergence(s, t, **options)
                per_token[start + sub : start + sub + d.numel()] = d.detach()
            if want_hidden:
                grad_hidden_rows.index_copy_(0, index, g @ w_student)
            if want_weight:
                grad_weight.addmm_(g.T.to(grad_weight.dtype), h.to(grad_weight.dtype))
        if want_weight:
            grad_weight = grad_weight.to(w_student.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.mark_non_differentiable(per_token)
        return per_token.sum() / count, per_token

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_token):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = None if grad_hidden is None else _scaled(grad_hidden, grad_loss)
        grad_weight = None if grad_weight is None else _scaled(grad_weight, grad_loss)
        return grad_hidden, None, grad_weight, None, None, None, None, None, None


def distillation_loss_from_hidden(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    clip: float | None = None,
    clip_mode: str = "pointwise",
    chunk_size: int | None = None,
    teacher_lm_head_weight: torch.Tensor | None = None,
    return_per_token: bool = False,
):
    """`distillation_loss` on logits = hidden @ lm_head_weight.T, never holding the full logits.

    Shapes: hidden [B, T, H] for both roles (last hidden states at the rollout positions, after the final
    norm), lm_head_weight [V, H] (no bias), mask bool [B, T]. teacher_lm_head_weight defaults to the
    student's (the output projection is shared when only adapters train). Gradients: student hidden and
    lm_head_weight (if it requires grad); the teacher side (hidden states and head) is a constant, even
    when it shares the student's head. chunk_size: positions whose logits exist at once (None: about
    FUSED_BLOCK_ELEMENTS values on CPU, CUDA_CHUNK_ELEMENTS on GPU); the divergence itself runs in
    sub-chunks of at most `suggest_chunk_size(V, device=...)` positions. return_per_token=True returns
    (loss, D [B, T] detached).
    """
    _check_options(beta, temperature, top_k, clip, clip_mode)
    _check_pair(student_hidden, teacher_hidden, "hidden states")
    teacher_weight = lm_head_weight if teacher_lm_head_weight is None else teacher_lm_head_weight
    for name, w in (("lm_head_weight", lm_head_weight), ("teacher_lm_head_weight", teacher_weight)):
        if w.dim() != 2 or w.shape[1] != student_hidden.shape[-1]:
            raise ValueError(
                f"{name} must be [V, H] with H = hidden size {student_hidden.shape[-1]}, got {tuple(w.shape)}"
            )
        if w.dtype != student_hidden.dtype:
            raise TypeError(f"{name} dtype {w.dtype} differs from the hidden states' {student_hidden.dtype}")
    if teacher_weight.shape[0] != lm_head_weight.shape[0]:
        raise ValueError(
            f"student and teacher vocabularies differ: {lm_head_weight.shape[0]} vs {teacher_weight.shape[0]}"
        )
    vocab, device = lm_head_weight.shape[0], student_hidden.device
    if chunk_size is None:
        on_gpu = device.type == "cuda"
        chunk_size = suggest_chunk_size(vocab, CUDA_CHUNK_ELEMENTS if on_gpu else FUSED_BLOCK_ELEMENTS)
    _check_chunk_size(chunk_size)
    inner = min(chunk_size, suggest_chunk_size(vocab, device=device))
    rows = _masked_rows(mask, student_hidden.shape[:-1], student_hidden.device)
    options = {"beta": beta, "temperature": temperature, "top_k": top_k, "clip": clip, "clip_mode": clip_mode}
    loss, per_token = _ChunkedHiddenLoss.apply(
        student_hidden,
        teacher_hidden.detach(),
        lm_head_weight,
        None if teacher_lm_head_weight is None else teacher_lm_head_weight.detach(),
        rows,
        chunk_size,
        inner,
        options,
        torch.is_grad_enabled(),
    )
    if return_per_token:
        return loss, _per_token_map(per_token, rows, student_hidden.shape[:-1])
    return loss


# --------------------------------------------------------------------------------------------------
# Sampled-token variant
# --------------------------------------------------------------------------------------------------


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / tau)[token]: logits [B, T, V], token_ids [B, T] -> [B, T] (float32 or wider)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if logits.shape[:-1] != token_ids.shape:
        raise ValueError(
            f"token_ids shape {tuple(token_ids.shape)} must equal logits.shape[:-1], "
            f"{tuple(logits.shape[:-1])}"
        )
    scaled = logits.to(_compute_dtype(logits.dtype)) / temperature
    picked = scaled.gather(-1, token_ids.unsqueeze(-1).long()).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


def sampled_token_loss(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Sampled-token OPSD loss: -mean_{masked n} A[n] * log p_S(y_n), with A = (log p_T - log p_S).detach().

    Shapes: log-probabilities of the sampled tokens [B, T] (see `token_logprobs`), mask bool [B, T].
    The gradient wrt log p_S(y_n) is -A[n] / (number of masked-in positions); the teacher gets none.
    """
    if student_logprobs.shape != teacher_logprobs.shape:
        raise ValueError(
            f"student and teacher log-probs must have the same shape, got {tuple(student_logprobs.shape)} "
            f"and {tuple(teacher_logprobs.shape)}"
        )
    rows = _masked_rows(mask, student_logprobs.shape, student_logprobs.device)
    student = _gather_rows(student_logprobs, rows, student_logprobs.shape)
    teacher = _gather_rows(teacher_logprobs.detach(), rows, student_logprobs.shape)
    assert_finite(student, "student log-probs")
    assert_finite(teacher, "teacher log-probs")
    advantage = (teacher - student).detach()
    return -(advantage * student).sum() / max(rows.numel(), 1)


# --------------------------------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------------------------------

#: Discourse and reasoning-style words (lower case). A token is "style" when, stripped of its leading
#: space marker ("Ġ", "▁", whitespace) and trailing punctuation, it is one of these, ignoring case.
STYLE_WORDS = frozenset(
    {
        "wait",
        "so",
        "think",
        "thinking",
        "hmm",
        "hm",
        "um",
        "uh",
        "let",
        "let's",
        "lets",
        "okay",
        "ok",
        "alright",
        "alternatively",
        "alternative",
        "maybe",
        "perhaps",
        "check",
        "checking",
        "verify",
        "double",
        "actually",
        "first",
        "second",
        "next",
        "now",
        "then",
        "therefore",
        "thus",
        "hence",
        "but",
        "however",
        "also",
        "again",
        "instead",
        "well",
        "oh",
        "ah",
        "right",
        "yes",
        "no",
        "sure",
        "indeed",
        "recall",
        "remember",
        "notice",
        "note",
        "consider",
        "suppose",
        "assume",
        "since",
        "because",
        "seems",
        "seem",
        "guess",
        "wonder",
        "try",
        "finally",
        "step",
        "steps",
        "hold",
        "on",
        "wrong",
        "mistake",
        "correct",
        "really",
        "probably",
        "means",
        "meaning",
    }
)

#: A token is "math" when (stripped as above) it consists only of digits, operators, brackets, "$", "\",
#: LaTeX commands (\frac, \boxed, ...) and decimal separators, with at least one digit, operator, bracket
#: or command; or when it is a single-letter variable (any letter except "a", "A" and "I", which are
#: mostly English words).
MATH_PATTERN = re.compile(
    r"""
      [B-HJ-Zb-z]                           # a single-letter variable
    | (?=.*[0-9+\-*/=^<>(){}\[\]\\|$])         # or at least one digit, operator, bracket, "$" or "\"
      (?: \\[A-Za-z]+                        #   LaTeX command: \frac \boxed \sqrt ...
        | [A-Za-z](?![A-Za-z])              #   a lone letter inside an expression: 2x, f(x)
        | [0-9+\-*/=^<>(){}\[\]\\|_$%!.,:;']  #   digits, operators, brackets, separators
      )+
    """,
    re.VERBOSE,
)

_SPACE_MARKERS = " \t\n\r\u0120\u2581\u010a"  # space, tab, newlines, "Ġ", "▁", "Ċ"
_TRAILING_PUNCTUATION = ".,:;!?\"')"


def token_category(token_string: str) -> str:
    """ "style" | "math" | "other" for one decoded token (see STYLE_WORDS and MATH_PATTERN)."""
    text = str(token_string).strip(_SPACE_MARKERS)
    if not text:
        return "other"
    word = text.rstrip(_TRAILING_PUNCTUATION).lower().replace("\u2019", "'")
    if word in STYLE_WORDS:
        return "style"
    if MATH_PATTERN.fullmatch(text):
        return "math"
    return "other"


def divergence_diagnostics(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    token_strings: Sequence[Sequence[str]] | None = None,
    beta: float = 0.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    clip: float | None = None,
    clip_mode: str = "pointwise",
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Per-step numbers about the divergence over the masked-in positions (no gradient).

    Keys: divergence_mean (mean D[n] with the configured clip), divergence_unclipped_mean (mean sum_v l),
    clipped_fraction (pointwise: fraction of (position, entry) summands above c; token: fraction of
    positions whose sum is above c; 0 without clipping), negative_token_fraction (fraction of positions
    with D[n] < 0), num_tokens. With token_strings (decoded tokens, rows aligned with the mask's [B, T]):
    kl_style / kl_math / kl_other (mean unclipped D by `token_category`, NaN when empty) and
    count_style / count_math / count_other. No masked-in position -> NaN means and fractions.
    """
    _check_options(beta, temperature, top_k, clip, clip_mode)
    _check_pair(student_logits, teacher_logits, "logits")
    rows = _masked_rows(mask, student_logits.shape[:-1], student_logits.device)
    if chunk_size is not None:
        _check_chunk_size(chunk_size)
    total = rows.numel()
    step = chunk_size or max(total, 1)
    lead = student_logits.shape[:-1]
    student, teacher = student_logits.detach(), teacher_logits.detach()
    clipped = entries = 0
    clipped_sums, raw_sums = [], []
    with torch.no_grad():
        for start in range(0, total, step):
            index = rows[start : start + step]
            s, t = _gather_rows(student, index, lead), _gather_rows(teacher, index, lead)
            assert_finite(s, "student logits")
            assert_finite(t, "teacher logits")
            summands = _summands(s, t, beta, temperature, top_k)
            raw = summands.sum(-1)
            if clip is not None and clip_mode == "pointwise":
                clipped += int((summands > clip).sum())
                entries += summands.numel()
            elif clip is not None and clip_mode == "token":
                clipped += int((raw > clip).sum())
                entries += raw.numel()
            clipped_sums.append(_reduce(summands, clip, clip_mode).double().cpu())
            raw_sums.append(raw.double().cpu())
    nan = float("nan")
    d = torch.cat(clipped_sums) if clipped_sums else torch.zeros(0, dtype=torch.float64)
    raw = torch.cat(raw_sums) if raw_sums else torch.zeros(0, dtype=torch.float64)
    out = {
        "divergence_mean": float(d.mean()) if total else nan,
        "divergence_unclipped_mean": float(raw.mean()) if total else nan,
        "clipped_fraction": (clipped / entries if entries else 0.0) if total else nan,
        "negative_token_fraction": float((d < 0).double().mean()) if total else nan,
        "num_tokens": float(total),
    }
    if token_strings is not None:
        out.update(_category_means(token_strings, rows.tolist(), raw.tolist(), student_logits.shape[:-1]))
    return out


def _category_means(token_strings, rows, values, lead_shape) -> dict[str, float]:
    if len(lead_shape) != 2:
        raise ValueError(f"token_strings need [B, T] logits, got leading shape {tuple(lead_shape)}")
    batch, length = lead_shape
    if len(token_strings) != batch:
        raise ValueError(f"token_strings has {len(token_strings)} rows, the mask {batch}")
    sums = {"style": 0.0, "math": 0.0, "other": 0.0}
    counts = {"style": 0, "math": 0, "other": 0}
    for row, value in zip(rows, values):
        b, n = divmod(row, length)
        if n >= len(token_strings[b]):
            raise ValueError(
                f"token_strings row {b} has {len(token_strings[b])} entries; position {n} is masked in"
            )
        category = token_category(token_strings[b][n])
        sums[category] += value
        counts[category] += 1
    out = {}
    for category in ("style", "math", "other"):
        out[f"kl_{category}"] = sums[category] / counts[category] if counts[category] else float("nan")
        out[f"count_{category}"] = float(counts[category])
    return out
