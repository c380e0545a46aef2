"""One OPSD step as plain functions: score the student's rollout in both roles, compare them per token.

For B problems with rollouts ŷ of N tokens (right-padded; loss_mask m [B, N] is True on real tokens):

    z_S[b, n] = logits of the model after [student prompt: x][ŷ_<n]           (with grad)
    z_T[b, n] = logits of the teacher after [teacher prompt: x, y*][ŷ_<n]     (no grad, weights θ')
    loss      = sum_{b, n} m[b, n] D(z_S[b, n], z_T[b, n]) / sum_{b, n} m[b, n]

with D the per-token divergence of `opsd.divergence.token_divergence` (forward KL by default). The fixed
teacher θ' is the base model: the same network with its LoRA adapters disabled. One step, end to end:

    contexts = build_dual_contexts(tokenizer, problems, solutions)                          # opsd.contexts
    rollout  = HFRollout(model, tokenizer).generate(contexts.student.input_ids,
                                                    contexts.student.attention_mask, params)  # opsd.rollout
    batch    = join_rollout(contexts, rollout.completion_ids, rollout.completion_mask)
    result   = opsd_loss(model, batch, teacher_mode="fixed")                                # this module
    result.loss.backward()

`OPSDTrainer.compute_loss` (opsd.trainer) and `train_plain` (opsd.loop) both call `opsd_loss`; notebooks
01-03 call `score_rollout` and `teacher_scores`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from opsd.contexts import JoinedBatch
from opsd.divergence import (
    DEFAULT_CLIP_MODE,
    LOSS_TYPES,
    distillation_loss,
    sampled_token_loss,
    token_logprobs,
)
from opsd.divergence_chunked import distillation_loss_from_hidden
from opsd.packed_linear import packed_linears
from opsd.teacher import EMATeacher, teacher_context

ROLES = ("student", "teacher")


class NonFiniteScoresError(FloatingPointError):
    """A role's logits (or hidden states) hold NaN/inf at a rollout position: no loss can be computed."""


@dataclass(frozen=True)
class StepResult:
    """What `opsd_loss` computed for one batch.

    loss     scalar; its gradient reaches the student's trainable weights only.
    student  the student's scores at the rollout positions: logits [B, N, V] (with grad), or, when `fused`,
             last hidden states [B, N, H] (the logits h @ W^T were only ever built chunk by chunk).
    teacher  the teacher's scores, same shape as `student`, no grad.
    batch    the scored `JoinedBatch` (completion_ids, loss_mask [B, N]).
    fused    True on the fused-hidden path (`student` / `teacher` are hidden states).
    teacher_seconds  wall time of the teacher pass.
    """

    loss: torch.Tensor
    student: torch.Tensor
    teacher: torch.Tensor
    batch: JoinedBatch
    fused: bool
    teacher_seconds: float


def score_rollout(model, batch: JoinedBatch, role: str, *, hidden: bool = False, fast: bool = False) -> torch.Tensor:
    """One forward pass over [role's prompt][rollout] -> the scores that predict the rollout tokens.

    Returns logits [B, N, V]: entry [b, n] is the distribution over rollout token n, read at column
    P_role - 1 + n (P_role: the role's left-padded prompt width). Only the last N + 1 columns go through the
    output projection (logits_to_keep). hidden=True returns the last hidden states [B, N, H] at those columns
    instead (after the final norm: logits = h @ W_lm^T). Runs in the caller's grad mode and train/eval mode.
    fast: on a CPU, the frozen linear layers run on packed oneDNN weights, forward and backward
    (`opsd.packed_linear`; the same values up to float32 rounding).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    inputs = batch.student_inputs() if role == "student" else batch.teacher_inputs()
    with packed_linears(model, enabled=fast):
        if hidden:
            out = model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
        else:
            out = model(**inputs, logits_to_keep=batch.completion_length + 1).logits
    return batch.rollout_slice(out, role)


def teacher_scores(
    model, batch: JoinedBatch, mode: str = "fixed", ema: EMATeacher | None = None, *, hidden: bool = False,
    fast: bool = False,
) -> torch.Tensor:
    """`score_rollout(model, batch, "teacher")` with the teacher's weights θ': [B, N, V] (or [B, N, H]).

    mode "fixed": θ' = base model (LoRA adapters disabled); "ema": θ' = the EMA weights of `ema`;
    "dynamic": θ' = the current weights (`opsd.teacher.teacher_context`). Under no_grad and in eval mode
    (no dropout); the model's weights, adapters and train/eval mode are restored afterwards. fast: as in
    `score_rollout`, LoRA merged into the packed copy (the fixed teacher's weights pack once per run).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), teacher_context(model, mode, ema):
            return score_rollout(model, batch, "teacher", hidden=hidden, fast=fast)
    finally:
        model.train(was_training)


def require_finite(scores: torch.Tensor, mask: torch.Tensor, what: str) -> None:
    """Raise `NonFiniteScoresError` if `scores` [B, N, ...] hold NaN/inf at a masked-in position of mask [B, N]."""
    # per position: max and min over the last dim are finite iff every entry is (NaN propagates); no copy of
    # the [B, N, V] scores is made (indexing them by the mask first took ~0.4 s per call on the CPU profile)
    finite = torch.isfinite(scores.amax(-1)) & torch.isfinite(scores.amin(-1))
    if mask.any() and not finite[mask.bool()].all():
        raise NonFiniteScoresError(f"the {what} contain NaN/inf")


def opsd_loss(
    model,
    batch: JoinedBatch,
    *,
    teacher_mode: str = "fixed",
    ema: EMATeacher | None = None,
    loss_type: str = "full",
    fused_hidden: bool = False,
    chunk_size: int | None = None,
    unwrapped=None,
    beta: float = 0.0,
    temperature: float = 1.0,
    teacher_top_k: int | None = None,
    clip: float | None = None,
    clip_mode: str = DEFAULT_CLIP_MODE,
    fast: bool = False,
) -> StepResult:
    """The OPSD loss of one batch of rollouts: teacher pass (no grad), student pass (grad), divergence.

    loss_type "full":   mean over masked-in positions of D(z_S, z_T), the divergence between the whole
                        next-token distributions (beta, temperature tau, teacher_top_k, clip c or None
                        for no clipping, clip_mode; `opsd.divergence.distillation_loss`, chunk_size
                        positions at a time if set).
                        fused_hidden=True computes it from the last hidden states, never holding the full
                        logits (`opsd.divergence_chunked.distillation_loss_from_hidden`).
    "sampled_token":    -mean_n A[n] log p_S(ŷ_n), A[n] = log p_T(ŷ_n) - log p_S(ŷ_n) detached, both at
                        temperature tau (`sampled_token_loss`); the other divergence options do not apply.

    fast: both passes on packed CPU weights (`score_rollout(fast=True)`; `OPSDConfig.fast_inference`).
    `unwrapped`: the model without a DDP / DeepSpeed wrapper (default: `model`). The teacher pass and the
    output projection use it; the student pass goes through `model`, so a wrapper syncs the gradients.
    Raises `NonFiniteScoresError` when either role's scores hold NaN/inf at a rollout position.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    base = model if unwrapped is None else unwrapped
    fused = fused_hidden and loss_type == "full"
    mask = batch.loss_mask

    start = time.perf_counter()
    teacher = teacher_scores(base, batch, teacher_mode, ema, hidden=fused, fast=fast)
    teacher_seconds = time.perf_counter() - start
    student = score_rollout(model, batch, "student", hidden=fused, fast=fast)
    kind = "hidden states" if fused else "logits"
    require_finite(student, mask, f"student {kind}")
    require_finite(teacher, mask, f"teacher {kind}")

    options = {"beta": beta, "temperature": temperature, "teacher_top_k": teacher_top_k, "clip": clip,
               "clip_mode": clip_mode}
    if loss_type == "sampled_token":
        s_logp = token_logprobs(student, batch.completion_ids, temperature)
        t_logp = token_logprobs(teacher, batch.completion_ids, temperature)
        loss = sampled_token_loss(s_logp, t_logp, mask)
    elif fused:
        weight = base.get_output_embeddings().weight
        loss = distillation_loss_from_hidden(student, teacher, weight, mask, chunk_size=chunk_size, **options)
    else:
        loss = distillation_loss(student, teacher, mask, chunk_size=chunk_size, **options)
    return StepResult(loss, student, teacher, batch, fused, teacher_seconds)
