"""Memory-efficient paths of the OPSD objective (`opsd.divergence`): same loss, same gradients.

A plain pass (`DivergenceSpec.loss`) holds several (positions x V) tensors at once. `chunked_loss(...,
chunk_size=N)` walks the masked-in positions N at a time and computes each chunk's gradient during the forward pass, so only one
chunk's intermediates are alive at a time plus one gradient buffer shaped like the logits.
`loss_from_hidden` goes further and never builds the full logits: blocks of positions are
projected from the last hidden states, the divergence runs on sub-chunks of each block, and the gradient
goes straight to the hidden states (and to the projection weight when it is trainable). Both paths are
`_ChunkedLoss`; both take the objective as one `DivergenceSpec`. Measurements: benchmarks/README.md.
"""

from __future__ import annotations

import torch

from opsd.divergence import (
    DivergenceSpec,
    assert_finite,
    check_pair,
    checked_rows,
    gather_rows,
    masked_rows,
    per_token_map,
)

__all__ = [
    "CUDA_CHUNK_ELEMENTS",
    "DEFAULT_CHUNK_ELEMENTS",
    "FUSED_BLOCK_ELEMENTS",
    "check_chunk_size",
    "chunked_loss",
    "loss_from_hidden",
    "suggest_chunk_size",
]

# Elements of one chunk of logits (positions x vocabulary) in the chunked paths. CPU: 2**22 float32 values
# are 16 MiB, i.e. 27 positions of Qwen3's 151,936-entry vocabulary (the fastest of 16/27/55/110 positions
# in benchmarks/README.md). GPU: larger chunks amortise kernel launches (a heuristic, not measured here).
DEFAULT_CHUNK_ELEMENTS = 1 << 22
CUDA_CHUNK_ELEMENTS = 1 << 26
# Logits built at once by the fused hidden-state path on the CPU (2**25 values: 220 Qwen3 positions):
# matrix products with few rows are several times slower per row, so the projection runs on blocks this
# large while the divergence runs on DEFAULT_CHUNK_ELEMENTS sub-chunks of them.
FUSED_BLOCK_ELEMENTS = 1 << 25


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


def check_chunk_size(chunk_size) -> None:
    """ValueError unless chunk_size is an integer >= 1."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")


def _value_and_grad(student, teacher, objective: DivergenceSpec, count, want_grad, chunk):
    """D [n] of logits [n, V] and, when want_grad, d(sum D / count)/d student [n, V] (else None), computed
    `chunk` rows at a time (the pieces written into one D and one gradient); the teacher is a constant."""
    if student.shape[0] > chunk:
        d = student.new_empty(student.shape[0], dtype=objective.compute_dtype(student.dtype))
        grad = torch.empty_like(student) if want_grad else None
        for start in range(0, student.shape[0], chunk):
            piece = slice(start, start + chunk)
            d[piece], g = _value_and_grad(student[piece], teacher[piece], objective, count, want_grad, chunk)
            if want_grad:
                grad[piece] = g
        return d, grad
    student = student.detach().requires_grad_(want_grad)
    with torch.set_grad_enabled(want_grad):
        d = objective.divergence(student, teacher)
        grad = torch.autograd.grad(d.sum() / count, student)[0] if want_grad else None
    return d.detach(), grad


def _scaled(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """grad * grad_output, without a copy in the common case grad_output == 1."""
    if grad_output.numel() == 1 and float(grad_output) == 1.0:
        return grad
    return grad * grad_output.to(grad.dtype)


class _ChunkedLoss(torch.autograd.Function):
    """mean_{masked n} D[n] over `block` positions at a time, with the gradient made during forward.

    Inputs [B, T, X] of both roles: logits (X = V; weight None), or last hidden states (X = H) whose
    logits z_S = x W^T, z_T = x_T W_T^T are built one block at a time (without graph). Per block,
    `_value_and_grad` gives D and g = d(loss)/d z_S on sub-chunks of `inner` positions; g goes into one
    buffer shaped like the student input (hidden states: g W), and grad W += g^T x when W is trainable.
    Blocks keep the matmuls efficient, sub-chunks keep the divergence small. backward hands the buffers
    on, scaled by the incoming gradient. Outputs: loss (scalar), D [M] (no grad).
    """

    @staticmethod
    def forward(ctx, student, teacher, weight, teacher_weight, rows, block, inner, objective, grad_enabled):
        lead, width = student.shape[:-1], student.shape[-1]
        want_input = ctx.needs_input_grad[0] and grad_enabled  # forward always runs in no-grad mode
        want_weight = ctx.needs_input_grad[2] and grad_enabled
        grad_input = torch.zeros_like(student, memory_format=torch.contiguous_format) if want_input else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.promote_types(weight.dtype, torch.float32), device=weight.device)
            if want_weight
            else None
        )
        student, teacher = student.detach(), teacher.detach()
        if weight is not None:
            weight = weight.detach()
            teacher_weight = weight if teacher_weight is None else teacher_weight.detach()
        count = max(rows.numel(), 1)
        per_token = student.new_empty(rows.numel(), dtype=objective.compute_dtype(student.dtype))
        for start in range(0, rows.numel(), block):
            index = rows[start : start + block]
            if weight is None:
                x, (z_student, z_teacher) = None, checked_rows(student, teacher, index, lead)
            else:
                x = gather_rows(student, index, lead)
                z_student, z_teacher = x @ weight.T, gather_rows(teacher, index, lead) @ teacher_weight.T
                assert_finite(z_student, "student logits (from hidden states)")
                assert_finite(z_teacher, "teacher logits (from hidden states)")
            d, g = _value_and_grad(z_student, z_teacher, objective, count, want_input or want_weight, inner)
            per_token[start : start + index.numel()] = d
            if want_input:
                grad_input.view(-1, width).index_copy_(0, index, g if weight is None else g @ weight)
            if want_weight:
                grad_weight.addmm_(g.T.to(grad_weight.dtype), x.to(grad_weight.dtype))
        if want_weight:
            grad_weight = grad_weight.to(weight.dtype)
        ctx.save_for_backward(grad_input, grad_weight)
        ctx.mark_non_differentiable(per_token)
        return per_token.sum() / count, per_token

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_token):
        grad_input, grad_weight = (None if g is None else _scaled(g, grad_loss) for g in ctx.saved_tensors)
        return grad_input, None, grad_weight, None, None, None, None, None, None


def chunked_loss(student_logits, teacher_logits, mask, objective: DivergenceSpec, chunk_size: int, *,
                 return_per_token: bool = False):
    """`DivergenceSpec.loss` (same value and gradient) computed chunk_size masked-in positions at a time.

    Logits [B, T, V] of both roles, mask bool [B, T]. The gradient wrt the student logits is computed chunk
    by chunk during this call (none under torch.no_grad()) and held in one buffer shaped like the logits.
    return_per_token=True returns (loss, D [B, T] detached, 0 where masked out).
    """
    check_chunk_size(chunk_size)
    check_pair(student_logits, teacher_logits, "logits")
    lead = student_logits.shape[:-1]
    rows = masked_rows(mask, lead, student_logits.device)
    loss, per_token = _ChunkedLoss.apply(
        student_logits, teacher_logits.detach(), None, None, rows, chunk_size, chunk_size, objective,
        torch.is_grad_enabled(),
    )
    return (loss, per_token_map(per_token, rows, lead)) if return_per_token else loss


def loss_from_hidden(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    mask: torch.Tensor,
    objective: DivergenceSpec,
    *,
    chunk_size: int | None = None,
    teacher_lm_head_weight: torch.Tensor | None = None,
    return_per_token: bool = False,
):
    """`DivergenceSpec.loss` on logits = hidden @ lm_head_weight.T, never holding the full logits.

    Shapes: hidden [B, T, H] for both roles (last hidden states at the rollout positions, after the final
    norm), lm_head_weight [V, H] (no bias), mask bool [B, T]. teacher_lm_head_weight defaults to the
    student's (the output projection is shared when only adapters train). Gradients: student hidden and
    lm_head_weight (if it requires grad); the teacher side (hidden states and head) is a constant, even
    when it shares the student's head. chunk_size: positions whose logits exist at once (None: about
    FUSED_BLOCK_ELEMENTS values on CPU, CUDA_CHUNK_ELEMENTS on GPU); the divergence itself runs in
    sub-chunks of at most `suggest_chunk_size(V, device=...)` positions. return_per_token=True returns
    (loss, D [B, T] detached).
    """
    check_pair(student_hidden, teacher_hidden, "hidden states")
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
    check_chunk_size(chunk_size)
    inner = min(chunk_size, suggest_chunk_size(vocab, device=device))
    lead = student_hidden.shape[:-1]
    rows = masked_rows(mask, lead, student_hidden.device)
    loss, per_token = _ChunkedLoss.apply(
        student_hidden,
        teacher_hidden.detach(),
        lm_head_weight,
        None if teacher_lm_head_weight is None else teacher_lm_head_weight.detach(),
        rows,
        chunk_size,
        inner,
        objective,
        torch.is_grad_enabled(),
    )
    return (loss, per_token_map(per_token, rows, lead)) if return_per_token else loss
