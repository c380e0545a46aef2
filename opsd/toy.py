"""Toy distributions for the lessons: small exact cases of the objective, computed with the kit's own
`opsd.divergence.token_divergence` (no second implementation of the divergence).

    two_peaked_teacher / fit_one_peaked_student   forward vs reverse KL: mode covering vs mode seeking
    ClipCase / WORKED_CLIP_CASE / clip_case_values  one token over four words, point-wise clipping by hand
    negative_clip_threshold                         the clip c* below which that token's divergence is < 0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from opsd.divergence import token_divergence

__all__ = [
    "WORKED_CLIP_CASE",
    "ClipCase",
    "OnePeakedFit",
    "clip_case_values",
    "fit_one_peaked_student",
    "negative_clip_threshold",
    "two_peaked_teacher",
]

_DTYPE = torch.float64
# log of a probability that underflowed to 0 on a wide grid: finite, so the divergence accepts it
_LOG_FLOOR = torch.finfo(_DTYPE).tiny
# learning rate of the student's log-std relative to that of its mean (`fit_one_peaked_student`)
_STD_LR_RATIO = 0.25


# -------------------------------------------------------------------------------- forward vs reverse KL


def two_peaked_teacher(x: torch.Tensor, means: Sequence[float] = (-2.0, 2.0), std: float = 0.6,
                       weights: Sequence[float] = (0.5, 0.5)) -> torch.Tensor:
    """A mixture of discretised Gaussians on the grid x [G]: p_T [G] float64, sum 1.

    p_T(x_i) proportional to sum_k w_k exp(-(x_i - m_k)^2 / (2 std^2)); one peak per mean.
    """
    if len(means) != len(weights):
        raise ValueError(f"got {len(means)} means but {len(weights)} weights")
    x = torch.as_tensor(x, dtype=_DTYPE)
    m = torch.as_tensor(means, dtype=_DTYPE)
    w = torch.as_tensor(weights, dtype=_DTYPE)
    density = (w * torch.exp(-((x[:, None] - m) ** 2) / (2 * std**2))).sum(-1)
    return density / density.sum()


@dataclass(frozen=True)
class OnePeakedFit:
    """A fitted one-peaked student: probs [G] float64 on the grid, its parameters (mean, std: those of
    the Gaussian before discretisation), the final divergence and the divergence at every step."""

    probs: torch.Tensor
    mean: float
    std: float
    divergence: float
    history: list[float]


def _student_logits(x: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """z_S [G] = -(x - mu)^2 / (2 s^2), s = exp(log_std): a discretised Gaussian after softmax."""
    return -((x - mu) ** 2) / (2 * torch.exp(2 * log_std))


def fit_one_peaked_student(teacher_probs: torch.Tensor, x: torch.Tensor, *, beta: float, steps: int = 300,
                           lr: float = 0.05, init_mean: float = 0.5, init_std: float = 1.0) -> OnePeakedFit:
    """Fit a one-peaked student to p_T [G] on the grid x [G]: argmin over (mu, log s) of
    D_beta(p_T, p_S) = token_divergence(z_S, log p_T, beta=beta), z_S as in `_student_logits`, by Adam
    (lr for mu, lr / 4 for log s). mean, std: mu and s of the fit (the Gaussian before discretisation).

    beta=0 (forward KL(T||S)) covers both peaks: the moment match, mean ~ 0, std ~ 2 for the default
    teacher. beta=1 (reverse KL(S||T)) sits on the peak nearest init_mean, std ~ the peak's.
    """
    x = torch.as_tensor(x, dtype=_DTYPE)
    teacher_logits = torch.as_tensor(teacher_probs, dtype=_DTYPE).clamp_min(_LOG_FLOOR).log()
    mu = torch.tensor(float(init_mean), dtype=_DTYPE, requires_grad=True)
    log_std = torch.tensor(float(init_std), dtype=_DTYPE).log().requires_grad_(True)
    # The width learns at lr / 4: with both at lr, reverse KL widens over both peaks before the mean
    # has found one, and stays in that wide local minimum.
    optimizer = torch.optim.Adam([{"params": [mu], "lr": lr}, {"params": [log_std], "lr": lr * _STD_LR_RATIO}])
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = token_divergence(_student_logits(x, mu, log_std), teacher_logits, beta=beta)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    with torch.no_grad():
        logits = _student_logits(x, mu, log_std)
        final = float(token_divergence(logits, teacher_logits, beta=beta))
        probs = torch.softmax(logits, dim=-1)
    return OnePeakedFit(probs=probs, mean=float(mu.detach()), std=float(log_std.detach().exp()), divergence=final,
                        history=history + [final])


# ----------------------------------------------------------------------------------- the clipping case


@dataclass(frozen=True)
class ClipCase:
    """One rollout position over a four-word vocabulary: the teacher's and the student's next-token
    probabilities (each sums to 1). Default: the teacher is sure of "73", the student prefers "72"."""

    words: tuple[str, ...] = ("73", "72", " So", " The")
    p_teacher: tuple[float, ...] = (0.70, 0.10, 0.10, 0.10)
    p_student: tuple[float, ...] = (0.30, 0.50, 0.10, 0.10)

    def __post_init__(self) -> None:
        if not len(self.words) == len(self.p_teacher) == len(self.p_student):
            raise ValueError("words, p_teacher and p_student must have the same length")
        for name in ("p_teacher", "p_student"):
            p = getattr(self, name)
            if min(p) <= 0 or abs(sum(p) - 1.0) > 1e-9:
                raise ValueError(f"{name} must be positive and sum to 1, got {p}")

    def logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_S, z_T) [V] float64: log p_S and log p_T."""
        return (torch.tensor(self.p_student, dtype=_DTYPE).log(), torch.tensor(self.p_teacher, dtype=_DTYPE).log())


WORKED_CLIP_CASE = ClipCase()


def _forward_summands(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """l [V] = p_T (log p_T - log p_S) for log-probabilities z_S, z_T [V] (the forward KL's summands)."""
    return z_t.exp() * (z_t - z_s)


def _divergence_and_grad(z_s: torch.Tensor, z_t: torch.Tensor, clip: float | None):
    """(D, dD/dz_S [V]) of the forward KL at one position, point-wise clipped at `clip` (None: not)."""
    z_s = z_s.detach().clone().requires_grad_(True)
    divergence = token_divergence(z_s, z_t, clip=clip, clip_mode="pointwise")
    (grad,) = torch.autograd.grad(divergence, z_s)
    return divergence.detach(), grad


def clip_case_values(case: ClipCase, clip: float) -> dict[str, torch.Tensor]:
    """The forward KL of `case` with and without point-wise clipping at c = `clip`, float64 tensors:

    "summands" [V]  l_v = p_T(v) (log p_T(v) - log p_S(v));  "clipped" [V]  min(l_v, c)
    "divergence", "clipped_divergence" []  sum_v l_v (= KL(T||S)) and sum_v min(l_v, c) (may be < 0)
    "grad", "clipped_grad" [V]  dD/dz_S by autograd through token_divergence: p_S - p_T without the clip;
        with it, -p_T(j)[l_j < c] + p_S(j) sum_{v: l_v < c} p_T(v) (clipped entries pass no gradient).
    """
    z_s, z_t = case.logits()
    summands = _forward_summands(z_s, z_t)
    divergence, grad = _divergence_and_grad(z_s, z_t, None)
    clipped_divergence, clipped_grad = _divergence_and_grad(z_s, z_t, clip)
    return {"summands": summands, "clipped": summands.clamp(max=clip), "divergence": divergence,
            "clipped_divergence": clipped_divergence, "grad": grad, "clipped_grad": clipped_grad}


def negative_clip_threshold(case: ClipCase, *, tol: float = 1e-9) -> float:
    """c* > 0 with sum_v min(l_v, c*) = 0, found by bisection to `tol`.

    D(c) = sum_v min(l_v, c) is continuous and non-decreasing, D(0+) = sum of the negative summands <= 0
    and D(max l) = KL >= 0, so c* exists in [0, max_v l_v]; for 0 < c < c* the clipped divergence is < 0.
    """
    z_s, z_t = case.logits()
    lo, hi = 0.0, float(_forward_summands(z_s, z_t).max())
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if float(token_divergence(z_s, z_t, clip=mid, clip_mode="pointwise")) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
