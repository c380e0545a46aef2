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

    clip=None    D[n] = sum_v l[n, v]                (no clipping, whatever the mode says)
    "pointwise"  D[n] = sum_v min(l[n, v], c)        (the reference implementation's clip)
    "token"      D[n] = min(max(sum_v l[n, v], 0), c)

clip=None is the only spelling of "no clipping" (the older clip_mode="none" still reads as it, `resolve_clip`).

Pointwise clipping caps only the positive summands, while the negative ones (entries where the student
puts more mass than the teacher, for forward KL) pass unchanged, so D[n] can be negative, and so can the
loss. That is intended: it is the reference objective, and `opsd.diagnostics.divergence_diagnostics`
reports how often it happens ("negative_token_fraction").

The loss is the mean of D[n] over the masked-in positions of the whole batch. Gradients reach the student
logits only; teacher logits are detached here whatever the caller did. Half-precision logits are upcast to
float32 for the computation (float64 stays float64); gradients flow back in the caller's dtype.

Memory-efficient paths (`distillation_loss(chunk_size=N)`, `distillation_loss_from_hidden`) live in
`opsd.divergence_chunked`; the per-step diagnostics and the token categories in `opsd.diagnostics`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "CLIP_MODES",
    "DEFAULT_CLIP_MODE",
    "LOSS_TYPES",
    "DivergenceSpec",
    "assert_finite",
    "distillation_loss",
    "resolve_clip",
    "sampled_token_loss",
    "token_divergence",
    "token_logprobs",
]

#: How to clip when clip is set, and the loss types: the one definition of each option set of the objective
#: (`opsd.step`, `opsd.trainer` and the rest import these; teacher modes: `opsd.teacher`).
CLIP_MODES = ("pointwise", "token")
DEFAULT_CLIP_MODE = "pointwise"
LOSS_TYPES = ("full", "sampled_token")
#: The older second spelling of "no clipping" (clip_mode: none), still read as clip=None by `resolve_clip`.
LEGACY_NO_CLIP_MODE = "none"


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------


def resolve_clip(clip, clip_mode):
    """(clip, clip_mode) with the legacy clip_mode "none" read as (None, DEFAULT_CLIP_MODE); else unchanged.

    clip=None alone means "no clipping"; clip_mode only says how to clip when clip is set. Older configs,
    run directories and calls spelled it clip_mode="none" too (case-insensitive here); they keep working.
    """
    if isinstance(clip_mode, str) and clip_mode.strip().lower() == LEGACY_NO_CLIP_MODE:
        return None, DEFAULT_CLIP_MODE
    return clip, clip_mode


def _is_number(x, kind=numbers.Real) -> bool:
    return isinstance(x, kind) and not isinstance(x, bool)


def _check_options(
    *, beta=0.0, temperature=1.0, teacher_top_k=None, clip=None, clip_mode=DEFAULT_CLIP_MODE
) -> dict:
    """The objective's options (the keyword arguments of every entry point, with their defaults) as a dict,
    the legacy clip_mode "none" resolved (`resolve_clip`); ValueError for an invalid combination."""
    clip, clip_mode = resolve_clip(clip, clip_mode)
    if not (_is_number(beta) and 0.0 <= beta <= 1.0):
        raise ValueError(f"beta must be a number in [0, 1] (0 forward KL, 1 reverse KL), got {beta!r}")
    if not (_is_number(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if teacher_top_k is not None and not (_is_number(teacher_top_k, numbers.Integral) and teacher_top_k >= 1):
        raise ValueError(f"teacher_top_k must be None or an integer >= 1, got {teacher_top_k!r}")
    if clip is not None and not (_is_number(clip) and clip > 0):
        raise ValueError(f"clip must be None or a number > 0, got {clip!r}")
    if clip_mode not in CLIP_MODES:
        raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {clip_mode!r}")
    return {"beta": beta, "temperature": temperature, "teacher_top_k": teacher_top_k, "clip": clip,
            "clip_mode": clip_mode}


@dataclass(frozen=True)
class DivergenceSpec:
    """The objective's options in one validated value (see the module docstring for the formulas).

    beta: 0 forward KL(p_T || p_S), 1 reverse KL(p_S || p_T), in between a generalised JSD.
    temperature: tau applied to both logits. teacher_top_k: the teacher's top-k support, or None for the
    full vocabulary. clip: c, or None for no clipping; clip_mode: "pointwise" | "token", how to clip when
    c is set (the legacy "none" is stored as clip=None). loss_type: "full" (the distribution-level
    divergence) or "sampled_token" (the sampled-token advantage variant, `sampled_token_loss`).
    """

    beta: float = 0.0
    temperature: float = 1.0
    teacher_top_k: int | None = None
    clip: float | None = None
    clip_mode: str = DEFAULT_CLIP_MODE
    loss_type: str = "full"

    def __post_init__(self) -> None:
        options = _check_options(**self.loss_kwargs())
        object.__setattr__(self, "clip", options["clip"])
        object.__setattr__(self, "clip_mode", options["clip_mode"])
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


def _checked_rows(student, teacher, rows: torch.Tensor, lead_shape, kind: str = "logits"):
    """Both roles' `kind` (logits, log-probs) at the flat positions `rows`, each checked to be finite."""
    s, t = _gather_rows(student, rows, lead_shape), _gather_rows(teacher, rows, lead_shape)
    assert_finite(s, f"student {kind}")
    assert_finite(t, f"teacher {kind}")
    return s, t


def _per_token_map(per_token: torch.Tensor, rows: torch.Tensor, shape) -> torch.Tensor:
    """Scatter D [M] back to [B, T] (0 at masked-out positions), detached."""
    out = per_token.new_zeros(math.prod(shape))
    out.index_copy_(0, rows, per_token.detach())
    return out.view(*shape)


# --------------------------------------------------------------------------------------------------
# Per-token divergence and loss
# --------------------------------------------------------------------------------------------------


def _summands(student_logits, teacher_logits, beta, temperature, teacher_top_k) -> torch.Tensor:
    """l[..., v] for logits [..., V] -> [..., V], or [..., k] with teacher top-k. No checks."""
    if teacher_top_k is not None:
        if teacher_top_k > student_logits.shape[-1]:
            raise ValueError(
                f"teacher_top_k={teacher_top_k} exceeds the vocabulary size {student_logits.shape[-1]}"
            )
        # The temperature does not change the order, so select on the raw teacher logits.
        support = teacher_logits.topk(teacher_top_k, dim=-1).indices
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
    """D[...] from summands [..., V] under the clip (None: no clipping) and the clip mode (checked)."""
    if clip is None:
        return summands.sum(-1)
    if clip_mode == "pointwise":
        return summands.clamp(max=clip).sum(-1)
    return summands.sum(-1).clamp(min=0.0, max=clip)


def _divergence(
    student_logits, teacher_logits, *, beta, temperature, teacher_top_k, clip, clip_mode
) -> torch.Tensor:
    return _reduce(
        _summands(student_logits, teacher_logits, beta, temperature, teacher_top_k), clip, clip_mode
    )


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    beta: float = 0.0,
    temperature: float = 1.0,
    teacher_top_k: int | None = None,
    clip: float | None = None,
    clip_mode: str = DEFAULT_CLIP_MODE,
) -> torch.Tensor:
    """Per-position divergence D: logits [..., V] (student, teacher) -> [...].

    The options (beta, temperature, teacher_top_k, clip, clip_mode) are the same keywords in every entry
    point of the objective. D = sum_v l[v] with l the beta-divergence
    summand at temperature tau (module docstring), over the teacher's top-k entries when teacher_top_k is
    set, clipped per entry ("pointwise", D may be < 0), per token ("token", D in [0, c]) or, with
    clip=None, not at all. Every position is computed; mask with `distillation_loss`.
    """
    options = _check_options(beta=beta, temperature=temperature, teacher_top_k=teacher_top_k, clip=clip,
                             clip_mode=clip_mode)
    _check_pair(student_logits, teacher_logits, "logits")
    assert_finite(student_logits, "student logits")
    assert_finite(teacher_logits, "teacher logits")
    return _divergence(student_logits, teacher_logits.detach(), **options)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.0,
    temperature: float = 1.0,
    teacher_top_k: int | None = None,
    clip: float | None = None,
    clip_mode: str = DEFAULT_CLIP_MODE,
    chunk_size: int | None = None,
    return_per_token: bool = False,
):
    """OPSD loss: sum over masked-in positions of D[n] / their number (whole batch) -> scalar.

    Shapes: logits [B, T, V] (any leading shape works), mask bool [B, T] (ragged rows welcome; masked-out
    positions may hold anything, even NaN). D[n] and options as in `token_divergence`. No masked-in
    position -> 0, still connected to the student logits. chunk_size=None computes all positions at once;
    an integer processes that many positions at a time and keeps only one chunk's intermediates (same
    objective; `opsd.divergence_chunked`). return_per_token=True returns (loss, D [B, T] detached, 0 where
    masked out).
    """
    options = _check_options(beta=beta, temperature=temperature, teacher_top_k=teacher_top_k, clip=clip,
                             clip_mode=clip_mode)
    _check_pair(student_logits, teacher_logits, "logits")
    lead = student_logits.shape[:-1]
    rows = _masked_rows(mask, lead, student_logits.device)
    if chunk_size is None:
        student, teacher = _checked_rows(student_logits, teacher_logits.detach(), rows, lead)
        per_token = _divergence(student, teacher, **options)
        loss = per_token.sum() / max(rows.numel(), 1)
    else:
        from opsd.divergence_chunked import chunked_logits_loss  # it builds on this module

        loss, per_token = chunked_logits_loss(student_logits, teacher_logits, rows, chunk_size, options)
    return (loss, _per_token_map(per_token, rows, lead)) if return_per_token else loss


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
    student, teacher = _checked_rows(
        student_logprobs, teacher_logprobs.detach(), rows, student_logprobs.shape, "log-probs"
    )
    advantage = (teacher - student).detach()
    return -(advantage * student).sum() / max(rows.numel(), 1)
