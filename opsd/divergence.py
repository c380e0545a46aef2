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

Teacher top-k (optional k, `teacher_top_k`) keeps, at each position, only the k entries with the largest
teacher logits and renormalises both distributions over them before the formulas above. The per-token
divergence D[n] then depends on the clip threshold c (`clip`) and, when c is set, the clip mode (`clip_mode`):

    clip=None    D[n] = sum_v l[n, v]                (no clipping)
    "pointwise"  D[n] = sum_v min(l[n, v], c)        (the reference implementation's clip)
    "token"      D[n] = min(max(sum_v l[n, v], 0), c)

Pointwise clipping caps only the positive summands, while the negative ones (entries where the student
puts more mass than the teacher, for forward KL) pass unchanged, so D[n] can be negative, and so can the
loss. That is intended: it is the reference objective, and `opsd.diagnostics.divergence_diagnostics`
reports how often it happens ("negative_token_fraction").

The loss is the mean of D[n] over the masked-in positions of the whole batch. Gradients reach the student
logits only; teacher logits are detached here whatever the caller did. Precision (`dtype`): "float32"
upcasts half-precision logits to float32 (float64 stays float64); "bfloat16" computes everything on
bfloat16 logits with no upcast, as the reference does. Gradients flow back in the caller's dtype.

The options travel as one validated value, `DivergenceSpec`, whose methods compute the objective;
`token_divergence` and `distillation_loss` take them as keywords for readers. This module holds the
per-entry math and the loss on logits held in memory; the memory-efficient paths (chunked, from hidden
states) are `opsd.divergence_chunked`, the per-step diagnostics and token categories `opsd.diagnostics`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from opsd.validation import InputError

__all__ = [
    "CLIP_MODES",
    "DTYPES",
    "LOSS_TYPES",
    "DivergenceSpec",
    "assert_finite",
    "check_pair",
    "checked_rows",
    "distillation_loss",
    "gather_rows",
    "masked_rows",
    "per_token_map",
    "sampled_token_loss",
    "token_divergence",
    "token_logprobs",
]

#: How to clip when clip is set, the loss types and the objective's precisions: the one definition of each
#: option set of the objective (teacher modes: `opsd.teacher`).
CLIP_MODES = ("pointwise", "token")
LOSS_TYPES = ("full", "sampled_token")
DTYPES = ("float32", "bfloat16")


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------


def _is_number(x, kind=numbers.Real) -> bool:
    return isinstance(x, kind) and not isinstance(x, bool)


def _invalid(key: str, value, valid: str) -> InputError:
    """InputError naming the option and its value: "beta=1.5 is out of range: beta must be in [0, 1] ..."."""
    if _is_number(value):
        return InputError(f"{key}={value!r} is out of range: {key} must be {valid}")
    return InputError(f"{key}={value!r}: {key} must be {valid}")


@dataclass(frozen=True)
class DivergenceSpec:
    """The objective's options in one value, checked once when it is made (formulas: module docstring).

    beta: 0 forward KL(p_T || p_S), 1 reverse KL(p_S || p_T), in between a generalised JSD.
    temperature: tau applied to both logits. teacher_top_k: the teacher's top-k support, or None for the
    full vocabulary. clip: c, or None for no clipping; clip_mode: "pointwise" | "token", how to clip when
    c is set. loss_type: "full" (the distribution-level divergence) or "sampled_token" (the sampled-token
    advantage variant, `sampled_token_loss`; only temperature and dtype apply). dtype: "float32" (half
    precision upcast, float64 kept) or "bfloat16" (computed on bfloat16 logits, no upcast).
    A bad value raises `opsd.validation.InputError` naming it.
    """

    beta: float = 0.0
    temperature: float = 1.0
    teacher_top_k: int | None = None
    clip: float | None = None
    clip_mode: str = "pointwise"
    loss_type: str = "full"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not (_is_number(self.beta) and 0.0 <= self.beta <= 1.0):
            raise _invalid("beta", self.beta, "in [0, 1] (0 forward KL, 1 reverse KL)")
        if not (_is_number(self.temperature) and self.temperature > 0):
            raise _invalid("temperature", self.temperature, "a number > 0 (the objective's temperature on both "
                           "roles' logits; OPSDConfig: loss_temperature, else the sampling temperature)")
        top_k = self.teacher_top_k
        if top_k is not None and not (_is_number(top_k, numbers.Integral) and top_k >= 1):
            raise _invalid("teacher_top_k", top_k, "a positive integer or null (the whole vocabulary)")
        if self.clip is not None and not (_is_number(self.clip) and self.clip > 0):
            raise _invalid("clip", self.clip, "a positive threshold or null (no clipping)")
        if self.clip_mode not in CLIP_MODES:
            raise InputError(f"clip_mode={self.clip_mode!r}: clip_mode must be one of {list(CLIP_MODES)} "
                             "(no clipping is clip=None)")
        if self.loss_type not in LOSS_TYPES:
            raise InputError(f"loss_type={self.loss_type!r}: loss_type must be one of {list(LOSS_TYPES)}")
        if self.dtype not in DTYPES:
            raise InputError(f"dtype={self.dtype!r}: the objective's dtype must be one of {list(DTYPES)} "
                             "(OPSDConfig: objective_dtype)")

    def compute_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype the divergence of `dtype` logits is computed in: bfloat16, or float32 or wider."""
        return torch.bfloat16 if self.dtype == "bfloat16" else torch.promote_types(dtype, torch.float32)

    def summands(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """l[..., v]: logits [..., V] -> [..., V], or [..., k] with teacher top-k. No checks, no detach."""
        if self.teacher_top_k is not None:
            if self.teacher_top_k > student_logits.shape[-1]:
                raise InputError(
                    f"teacher_top_k={self.teacher_top_k} exceeds the vocabulary size {student_logits.shape[-1]}"
                )
            # The temperature does not change the order, so select on the raw teacher logits.
            support = teacher_logits.topk(self.teacher_top_k, dim=-1).indices
            student_logits = student_logits.gather(-1, support)
            teacher_logits = teacher_logits.gather(-1, support)
        dtype = self.compute_dtype(student_logits.dtype)
        student_logits, teacher_logits = student_logits.to(dtype), teacher_logits.to(dtype)
        tau, beta = self.temperature, self.beta
        if tau != 1.0:
            student_logits, teacher_logits = student_logits / tau, teacher_logits / tau
        logp_s = F.log_softmax(student_logits, dim=-1)
        logp_t = F.log_softmax(teacher_logits, dim=-1)
        if beta == 0.0:
            return logp_t.exp() * (logp_t - logp_s)
        if beta == 1.0:
            return logp_s.exp() * (logp_s - logp_t)
        # log M = logsumexp(log(1 - beta) + log p_S, log(beta) + log p_T), computed stably.
        log_m = torch.logaddexp(logp_s + math.log1p(-beta), logp_t + math.log(beta))
        return beta * logp_t.exp() * (logp_t - log_m) + (1.0 - beta) * logp_s.exp() * (logp_s - log_m)

    def reduce(self, summands: torch.Tensor) -> torch.Tensor:
        """D[...] from summands [..., V]: summed, clipped per entry or per token as the spec says."""
        if self.clip is None:
            return summands.sum(-1)
        if self.clip_mode == "pointwise":
            return summands.clamp(max=self.clip).sum(-1)
        return summands.sum(-1).clamp(min=0.0, max=self.clip)

    def divergence(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """D: logits [..., V] -> [...], every position, no checks (`token_divergence` checks)."""
        return self.reduce(self.summands(student_logits, teacher_logits))

    def token_divergence(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """D: logits [..., V] (student, teacher) -> [...], every position; both checked finite, teacher detached."""
        check_pair(student_logits, teacher_logits, "logits")
        assert_finite(student_logits, "student logits")
        assert_finite(teacher_logits, "teacher logits")
        return self.divergence(student_logits, teacher_logits.detach())

    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, *,
             return_per_token: bool = False):
        """sum over masked-in positions of D[n] / their number (whole batch) -> scalar.

        Logits [B, T, V] (any leading shape), mask bool [B, T] (masked-out positions may hold anything,
        even NaN). No masked-in position -> 0, still connected to the student logits.
        return_per_token=True returns (loss, D [B, T] detached, 0 where masked out).
        """
        check_pair(student_logits, teacher_logits, "logits")
        lead = student_logits.shape[:-1]
        rows = masked_rows(mask, lead, student_logits.device)
        student, teacher = checked_rows(student_logits, teacher_logits.detach(), rows, lead)
        per_token = self.divergence(student, teacher)
        loss = per_token.sum() / max(rows.numel(), 1)
        return (loss, per_token_map(per_token, rows, lead)) if return_per_token else loss

    def token_logprobs(self, logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """log softmax(logits / tau)[token] in the spec's dtype: logits [B, T, V], token_ids [B, T] -> [B, T]."""
        return _token_logprobs(logits, token_ids, self.temperature, self.compute_dtype(logits.dtype))


# --------------------------------------------------------------------------------------------------
# Checks and row selection (shared with opsd.divergence_chunked and opsd.diagnostics)
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


def check_pair(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> None:
    """TypeError / ValueError unless both roles' `kind` are floating point, of one shape [..., X], X > 0."""
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


def masked_rows(mask: torch.Tensor, lead_shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Flat indices [M] of the masked-in positions of a [B, T] mask, on `device`."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor (bool [B, T]), got {type(mask).__name__}")
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"mask must be bool (or integer 0/1), got {mask.dtype}")
    if tuple(mask.shape) != tuple(lead_shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the leading shape {tuple(lead_shape)}")
    return (mask.to(device) != 0).reshape(-1).nonzero().squeeze(1)


def gather_rows(x: torch.Tensor, rows: torch.Tensor, lead_shape) -> torch.Tensor:
    """x at the flat positions `rows` of its leading shape: [*lead_shape, *rest] -> [len(rows), *rest].

    Works on any strides (e.g. logits sliced to the rollout columns) without copying the whole tensor.
    """
    return x[torch.unravel_index(rows, tuple(lead_shape))]


def checked_rows(student, teacher, rows: torch.Tensor, lead_shape, kind: str = "logits"):
    """Both roles' `kind` (logits, log-probs) at the flat positions `rows`, each checked to be finite."""
    s, t = gather_rows(student, rows, lead_shape), gather_rows(teacher, rows, lead_shape)
    assert_finite(s, f"student {kind}")
    assert_finite(t, f"teacher {kind}")
    return s, t


def per_token_map(per_token: torch.Tensor, rows: torch.Tensor, shape) -> torch.Tensor:
    """Scatter D [M] back to [B, T] (0 at masked-out positions), detached."""
    out = per_token.new_zeros(math.prod(shape))
    out.index_copy_(0, rows, per_token.detach())
    return out.view(*shape)


# --------------------------------------------------------------------------------------------------
# The options as keywords, for readers
# --------------------------------------------------------------------------------------------------


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    beta: float = 0.0,
    temperature: float = 1.0,
    teacher_top_k: int | None = None,
    clip: float | None = None,
    clip_mode: str = "pointwise",
    dtype: str = "float32",
) -> torch.Tensor:
    """Per-position divergence D: logits [..., V] (student, teacher) -> [...]; `DivergenceSpec.token_divergence`.

    D = sum_v l[v] with l the beta-divergence summand at temperature tau (module docstring), over the
    teacher's top-k entries when teacher_top_k is set, clipped per entry ("pointwise", D may be < 0), per
    token ("token", D in [0, c]) or, with clip=None, not at all. Every position is computed; mask with
    `distillation_loss`.
    """
    spec = DivergenceSpec(beta=beta, temperature=temperature, teacher_top_k=teacher_top_k, clip=clip,
                          clip_mode=clip_mode, dtype=dtype)
    return spec.token_divergence(student_logits, teacher_logits)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.0,
    temperature: float = 1.0,
    teacher_top_k: int | None = None,
    clip: float | None = None,
    clip_mode: str = "pointwise",
    dtype: str = "float32",
    return_per_token: bool = False,
):
    """OPSD loss: sum over masked-in positions of D[n] / their number (whole batch) -> scalar.

    Shapes: logits [B, T, V], mask bool [B, T]; D[n] and options as in `token_divergence`;
    `DivergenceSpec.loss` (return_per_token=True: also D [B, T], detached). Chunked and fused-from-hidden
    paths of the same loss: `opsd.divergence_chunked`.
    """
    spec = DivergenceSpec(beta=beta, temperature=temperature, teacher_top_k=teacher_top_k, clip=clip,
                          clip_mode=clip_mode, dtype=dtype)
    return spec.loss(student_logits, teacher_logits, mask, return_per_token=return_per_token)


# --------------------------------------------------------------------------------------------------
# Sampled-token variant
# --------------------------------------------------------------------------------------------------


def _token_logprobs(logits, token_ids, temperature, dtype) -> torch.Tensor:
    if logits.shape[:-1] != token_ids.shape:
        raise ValueError(
            f"token_ids shape {tuple(token_ids.shape)} must equal logits.shape[:-1], "
            f"{tuple(logits.shape[:-1])}"
        )
    scaled = logits.to(dtype) / temperature
    picked = scaled.gather(-1, token_ids.unsqueeze(-1).long()).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / tau)[token]: logits [B, T, V], token_ids [B, T] -> [B, T] (float32 or wider)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return _token_logprobs(logits, token_ids, temperature, torch.promote_types(logits.dtype, torch.float32))


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
    rows = masked_rows(mask, student_logprobs.shape, student_logprobs.device)
    student, teacher = checked_rows(
        student_logprobs, teacher_logprobs.detach(), rows, student_logprobs.shape, "log-probs"
    )
    advantage = (teacher - student).detach()
    return -(advantage * student).sum() / max(rows.numel(), 1)
