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
    result   = opsd_loss(model, batch, DivergenceSpec(clip=0.05), "fixed")                  # this module
    result.loss.backward()

`OPSDTrainer.compute_loss` (opsd.trainer) and `train_plain` (opsd.loop) both call `opsd_loss` with the
config's `objective`, inside `opsd.packed_linear.packed_forwards` for the CPU fast path; notebooks 01-03
call `score_rollout` and `teacher_scores`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from opsd.contexts import JoinedBatch
from opsd.divergence import DivergenceSpec, sampled_token_loss
from opsd.divergence_chunked import chunked_loss, loss_from_hidden
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


@dataclass(frozen=True)
class LossPath:
    """How `opsd_loss` computes the divergence; every path gives the same objective (`opsd.divergence_chunked`).

    chunk_size    masked-in positions at a time (None: all at once; the fused path's default block)
    fused_hidden  from the last hidden states [B, N, H], never holding the full logits (loss_type "full")
    """

    chunk_size: int | None = None
    fused_hidden: bool = False


def score_rollout(model, batch: JoinedBatch, role: str, *, hidden: bool = False) -> torch.Tensor:
    """One forward pass over [role's prompt][rollout] -> the scores that predict the rollout tokens.

    Returns logits [B, N, V]: entry [b, n] is the distribution over rollout token n, read at column
    P_role - 1 + n (P_role: the role's left-padded prompt width). Only the last N + 1 columns go through the
    output projection (logits_to_keep). hidden=True returns the last hidden states [B, N, H] at those columns
    instead (after the final norm: logits = h @ W_lm^T). Runs in the caller's grad mode and train/eval mode.
    On a CPU, inside `opsd.packed_linear.packed_forwards(model)` the frozen linear layers run on packed
    oneDNN weights, forward and backward (the same values up to float32 rounding).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    inputs = batch.student_inputs() if role == "student" else batch.teacher_inputs()
    if hidden:
        out = model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    else:
        out = model(**inputs, logits_to_keep=batch.completion_length + 1).logits
    return batch.rollout_slice(out, role)


def teacher_scores(
    model, batch: JoinedBatch, teacher: str | EMATeacher = "fixed", *, hidden: bool = False
) -> torch.Tensor:
    """`score_rollout(model, batch, "teacher")` with the teacher's weights θ': [B, N, V] (or [B, N, H]).

    teacher "fixed": θ' = base model (LoRA adapters disabled); "dynamic": θ' = the current weights; an
    `EMATeacher`: θ' = its EMA weights (`opsd.teacher.teacher_context`). Under no_grad and in eval mode
    (no dropout); the model's weights, adapters and train/eval mode are restored afterwards.
    """
    mode, ema = ("ema", teacher) if isinstance(teacher, EMATeacher) else (teacher, None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), teacher_context(model, mode, ema):
            return score_rollout(model, batch, "teacher", hidden=hidden)
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
    objective: DivergenceSpec = DivergenceSpec(),
    teacher: str | EMATeacher = "fixed",
    *,
    path: LossPath = LossPath(),
    unwrapped=None,
) -> StepResult:
    """The OPSD loss of one batch of rollouts: teacher pass (no grad), student pass (grad), divergence.

    objective.loss_type "full": mean over masked-in positions of D(z_S, z_T), the divergence between the
                        whole next-token distributions (`DivergenceSpec.loss`; `path`: chunk_size positions
                        at a time, `opsd.divergence_chunked.chunked_loss`, or fused_hidden from the last
                        hidden states, never holding the full logits, `loss_from_hidden`).
    "sampled_token":    -mean_n A[n] log p_S(ŷ_n), A[n] = log p_T(ŷ_n) - log p_S(ŷ_n) detached, both at
                        temperature tau (`sampled_token_loss`); the other divergence options do not apply.

    teacher: "fixed" | "dynamic" | an `EMATeacher` (`teacher_scores`). `unwrapped`: the model without a
    DDP / DeepSpeed wrapper (default: `model`). The teacher pass and the output projection use it; the
    student pass goes through `model`, so a wrapper syncs the gradients. The CPU fast path is switched
    around the call: `with opsd.packed_linear.packed_forwards(unwrapped): opsd_loss(...)`.
    Raises `NonFiniteScoresError` when either role's scores hold NaN/inf at a rollout position.
    """
    base = model if unwrapped is None else unwrapped
    fused = path.fused_hidden and objective.loss_type == "full"
    mask = batch.loss_mask

    start = time.perf_counter()
    teacher_out = teacher_scores(base, batch, teacher, hidden=fused)
    teacher_seconds = time.perf_counter() - start
    student = score_rollout(model, batch, "student", hidden=fused)
    kind = "hidden states" if fused else "logits"
    require_finite(student, mask, f"student {kind}")
    require_finite(teacher_out, mask, f"teacher {kind}")

    if objective.loss_type == "sampled_token":
        s_logp = objective.token_logprobs(student, batch.completion_ids)
        t_logp = objective.token_logprobs(teacher_out, batch.completion_ids)
        loss = sampled_token_loss(s_logp, t_logp, mask)
    elif fused:
        weight = base.get_output_embeddings().weight
        loss = loss_from_hidden(student, teacher_out, weight, mask, objective, chunk_size=path.chunk_size)
    elif path.chunk_size is not None:
        loss = chunked_loss(student, teacher_out, mask, objective, path.chunk_size)
    else:
        loss = objective.loss(student, teacher_out, mask)
    return StepResult(loss, student, teacher_out, batch, fused, teacher_seconds)
