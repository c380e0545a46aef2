"""Checkers for the notebooks' exercises: each takes the reader's answer (a value or a function), prints
one verdict line ("✓ right: ..." or "✗ not yet: ..." with a hint and the first failing case) and returns
True or False, never raising for a wrong answer. Expected answers are computed here (float64, written out)."""

from __future__ import annotations

import functools
import inspect
import math
import operator
from collections.abc import Mapping, Sequence

import torch

from opsd.divergence import token_divergence
from opsd.toy import ClipCase, clip_case_values, negative_clip_threshold

Z95 = 1.959963984540054
LN2 = math.log(2.0)


class _Raised(Exception):
    """The reader's function raised; the message is the verdict."""


def _call(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:
        raise _Raised(f"your function raised {type(exc).__name__}: {exc}") from exc


def _checker(check):
    """`check` returns (ok, text): print it as one verdict line, return ok; never raise for the answer."""
    @functools.wraps(check)
    def wrapper(*args, **kwargs) -> bool:
        if args and args[0] is None:  # the notebook's placeholder, not yet replaced
            print("✗ not yet: no answer yet (replace the None, or write the function's body, and run the cell again)")
            return False
        try:
            ok, text = check(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the reader's function raised, or an answer of an odd type
            ok, text = False, (str(exc) if isinstance(exc, _Raised)
                               else f"could not read your answer ({type(exc).__name__}: {exc})")
        print(("✓ right: " if ok else "✗ not yet: ") + " ".join(str(text).split()))
        return ok
    wrapper.__signature__ = inspect.signature(check).replace(return_annotation="bool")
    return wrapper


def _first(pairs, default: str) -> str:
    return next((hint for cond, hint in pairs if cond), default)


def _as_int(x):
    return None if isinstance(x, (bool, float)) or not hasattr(x, "__index__") else operator.index(x)


def _log_softmax64(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().double()
    x = x - x.amax(-1, keepdim=True)
    return x - x.exp().sum(-1, keepdim=True).log()


def _diff(got, expected: torch.Tensor, atol: float, what: str = "your result") -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"{what} must be a torch.Tensor, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"{what} has shape {tuple(got.shape)}, not {tuple(expected.shape)}"
    bad = ~((got.detach().double() - expected).abs() <= atol)
    if not bad.any():
        return None
    idx = tuple(int(i) for i in bad.nonzero()[0])
    return f"at index {idx}: expected {float(expected[idx]):.6g}, got {float(got[idx]):.6g}"


# Notebook 00: the privilege gap ------------------------------------------------------------------------
@_checker
def check_teachable_count(answer: int, student_correct: Sequence[bool], teacher_correct: Sequence[bool]):
    """How many problems the teacher gets right and the student wrong: what OPSD can teach."""
    pairs = [(bool(s), bool(t)) for s, t in zip(student_correct, teacher_correct, strict=True)]
    expected, got = sum(t and not s for s, t in pairs), _as_int(answer)
    if got == expected:
        return True, f"{expected} of {len(pairs)}: the teacher is right where the student is wrong"
    return False, _first([
        (got is None, "answer with an integer count"),
        (got == sum(t for _, t in pairs), "that is all the teacher solves; drop what the student solves"),
        (got == sum(s and not t for s, t in pairs), "reversed: that is student right, teacher wrong"),
    ], "count the problems i with teacher_correct[i] and not student_correct[i]") + f" (got {answer!r})"


def _wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    centre, half = (k + z * z / 2) / (n + z * z), z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return centre - half, centre + half


@_checker
def check_wilson_interval(fn):
    """fn(k, n) -> (lo, hi), the 95% Wilson score interval."""
    for k, n in [(0, 64), (30, 64), (60, 64), (89, 200), (200, 200), (1, 1)]:
        exp, got = _wilson(k, n), _call(fn, k, n)
        try:
            lo, hi = (float(v) for v in got)
        except (TypeError, ValueError):
            return False, f"return a pair (lo, hi) of floats; for k={k}, n={n} got {got!r}"
        p, wald = k / n, Z95 * math.sqrt(k / n * (1 - k / n) / n)
        if not (abs(lo - exp[0]) <= 1e-6 and abs(hi - exp[1]) <= 1e-6):  # NaN fails too
            hint = ("that is the normal (Wald) interval p ± z·sqrt(p(1-p)/n)"
                    if max(abs(lo - p + wald), abs(hi - p - wald)) <= 1e-6 else
                    f"z = {Z95}, centre (k + z²/2)/(n + z²), half-width z·sqrt(k(n-k)/n + z²/4)/(n + z²)")
            return False, (f"{hint}; first failing case: k={k}, n={n}, expected ({exp[0]:.6f}, "
                           f"{exp[1]:.6f}), got ({lo:.6f}, {hi:.6f})")
    return True, "all 6 cases match; unlike p ± z·sqrt(p(1-p)/n) it stays in [0, 1], never a point"


# Notebook 01: dual contexts ----------------------------------------------------------------------------
@_checker
def check_teacher_column(fn, batch):
    """fn(batch, n) -> the column of the teacher's full sequence whose logits predict rollout token n."""
    p_t, p_s = batch.teacher_prompt_width, batch.student_prompt_width
    for n in range(batch.completion_length):
        got = _call(fn, batch, n)
        value = _as_int(got)
        if value != p_t - 1 + n:
            hint = _first([
                (value == p_t + n, "off by one: token n sits at column P_T + n, it is predicted one earlier"),
                (p_s != p_t and value in (p_s - 1 + n, p_s + n), "that is a student column"),
            ], "count from batch.teacher_prompt_width")
            return False, (f"{hint} (the logits at column j predict token j+1); first failing case: n={n}, "
                           f"teacher_prompt_width={p_t}, expected {p_t - 1 + n}, got {got!r}")
    return True, "teacher_prompt_width - 1 + n: the logits at column j predict token j+1"


def _mask_loop(ids: list[list[int]], eos: list[int], include_eos: bool = True) -> list[list[bool]]:
    out = []
    for row in ids:
        keep, mask = True, []
        for token in row:
            mask.append(include_eos if keep and token in eos else keep)
            keep = keep and token not in eos
        out.append(mask)
    return out


@_checker
def check_loss_mask(fn):
    """fn(completion_ids [R, N], eos_ids) -> bool [R, N], True up to and including each row's first eos."""
    mask_cases = [
        ("eos first", [[2, 5, 6, 7]], [2]), ("eos in the middle", [[5, 6, 2, 7, 8]], [2]),
        ("no eos", [[5, 6, 7, 8]], [2]), ("two eos in a row", [[5, 2, 2, 7]], [2]),
        ("two different eos ids", [[5, 3, 6, 2, 7], [5, 6, 2, 3, 7]], [2, 3]),
        ("pad id = eos id after the first eos", [[5, 6, 7, 2], [5, 2, 2, 2], [2, 2, 2, 2]], [2]),
    ]
    for name, ids, eos in mask_cases:
        expected = _mask_loop(ids, eos)
        got = _call(fn, torch.tensor(ids, dtype=torch.long), list(eos))
        problem = _diff(got, torch.tensor(expected, dtype=torch.float64), 0.5, "your mask")
        if problem is None and got.dtype != torch.bool:
            problem = f"your mask has dtype {got.dtype}; return a bool tensor (e.g. .bool())"
        elif problem is not None and isinstance(got, torch.Tensor) and got.shape == (len(ids), len(ids[0])):
            problem = _first([
                (got.tolist() == _mask_loop(ids, eos, False), "keep the first eos (it teaches to stop)"),
                (got.tolist() == [[t not in eos for t in r] for r in ids], "do not drop every eos token"),
            ], "True up to and including the first eos of each row, False after it")
        if problem is not None:
            shown = got.long().tolist() if isinstance(got, torch.Tensor) else repr(got)
            return False, (f"{problem}; first failing case ({name}): completion_ids={ids}, eos_ids={eos}, "
                           f"expected {[[int(b) for b in r] for r in expected]}, got {shown}")
    return True, "each row is kept up to and including its first eos, whatever follows (even a pad = eos)"


# Notebook 02: on-policy rollout ------------------------------------------------------------------------
@_checker
def check_token_logprobs(fn):
    """fn(logits [B, N, V], token_ids [B, N], temperature) -> log p(token) [B, N]."""
    g = torch.Generator().manual_seed(0)
    logits, token_ids = 3 * torch.randn(2, 3, 7, generator=g), torch.randint(0, 7, (2, 3), generator=g)

    def ref(scale: float) -> torch.Tensor:
        return _log_softmax64(logits.double() * scale).gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)

    for t in (1.0, 0.7):
        expected, got = ref(1 / t), _call(fn, logits.clone(), token_ids.clone(), t)
        problem = _diff(got, expected, 1e-5)
        if problem is not None:
            hint = _first([
                (_diff(got, expected.exp(), 1e-5) is None or _diff(got, ref(1.0).exp(), 1e-5) is None,
                 "those are probabilities: take the log (log_softmax, not softmax)"),
                (_diff(got, ref(1.0), 1e-5) is None, "divide the logits by the temperature first"),
            ], "log_softmax(logits / temperature) at token_ids")
            return False, f"{hint}; first failing case (temperature {t}, logits [2, 3, 7], seed 0) {problem}"
    return True, "log_softmax(logits / temperature) at the sampled tokens, at temperature 1.0 and 0.7"


@_checker
def check_which_changes(answer: Mapping[str, bool]):
    """After one optimizer step on the LoRA adapters, which roles' logits change?"""
    roles = {
        "student": (True, "its logits come from the base weights plus the adapters the step changed"),
        "fixed teacher": (False, "fixed = adapters disabled = the frozen base weights, never stepped"),
        "dynamic teacher": (True, "dynamic = adapters on = the current student's weights"),
    }
    if not isinstance(answer, Mapping) or set(answer) != set(roles):
        keys = sorted(answer) if isinstance(answer, Mapping) else type(answer).__name__
        return False, f"answer a dict with exactly the keys {sorted(roles)} (True = changes), got {keys}"
    for role, (right, why) in roles.items():
        if not isinstance(answer[role], bool) or answer[role] != right:
            return False, f"{role!r} is {right} (got {answer[role]!r}): {why}"
    return True, "the student and the dynamic teacher read the adapters and change; the fixed teacher doesn't"


# Notebook 03: token divergence -------------------------------------------------------------------------
@_checker
def check_reverse_kl_summands(fn):
    """fn(student_logits [.., V], teacher_logits [.., V]) -> p_S(v)(log p_S(v) - log p_T(v)) [.., V]."""
    g = torch.Generator().manual_seed(0)
    student, teacher = 2 * torch.randn(3, 5, 11, generator=g), 2 * torch.randn(3, 5, 11, generator=g)
    lps, lpt = _log_softmax64(student), _log_softmax64(teacher)
    expected, got = lps.exp() * (lps - lpt), _call(fn, student.clone(), teacher.clone())
    problem = _diff(got, expected, 1e-5, "your summands")
    if problem is not None:
        hint = _first([
            (_diff(got, lpt.exp() * (lpt - lps), 1e-5) is None,
             "those are forward-KL summands p_T(log p_T - log p_S); reverse KL weights by the student"),
            (_diff(got, lps - lpt, 1e-5) is None, "weight each log-ratio by p_S(v)"),
            (_diff(got, expected.sum(-1), 1e-5) is None, "return the summands [.., V], not their sum"),
        ], "p_S(v)(log p_S(v) - log p_T(v)) with log p = log_softmax(logits)")
        return False, f"{hint}; first failing case (logits (3, 5, 11), seed 0): {problem}"
    problem = _diff(got.sum(-1), token_divergence(student.double(), teacher.double(), beta=1.0), 1e-4)
    if problem is not None:
        return False, f"summed over v they differ from token_divergence(beta=1.0) {problem}"
    return True, "p_S(v)(log p_S(v) - log p_T(v)); summed over v: token_divergence(beta=1), KL(p_S || p_T)"


@_checker
def check_jsd_bound(student_logits, teacher_logits, values):
    """values = token_divergence(student_logits, teacher_logits, beta=0.5), logits of the reader's choice."""
    s, t, v = ((x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x)).double()
               for x in (student_logits, teacher_logits, values))
    if s.shape != t.shape or s.dim() < 1 or v.shape != s.shape[:-1] or v.numel() == 0:
        return False, f"need logits [.., V] x 2 and values [..], got {[tuple(x.shape) for x in (s, t, v)]}"
    lps, lpt = _log_softmax64(s), _log_softmax64(t)
    lm = torch.logaddexp(lps, lpt) - LN2  # log M, M = (p_S + p_T) / 2: the kit's beta = 0.5
    jsd = sum(0.5 * torch.where(lp.exp() > 0, lp.exp() * (lp - lm), 0.0).sum(-1) for lp in (lpt, lps))
    problem = _diff(v, jsd, 1e-4, "your values")
    if problem is not None:
        return False, f"these are not JSD(0.5) of these logits (beta=0.5?): {problem}"
    top = float(v.max())
    if top > LN2 + 1e-6:
        return False, f"a value {top:.6f} exceeds ln 2 = {LN2:.6f}, impossible for JSD(0.5)"
    if top / LN2 < 0.99:
        return False, (f"your largest JSD is {top:.4f} = {top / LN2:.1%} of ln 2; try two distributions with "
                       "disjoint support, e.g. logits that put almost all mass on different tokens")
    return True, (f"largest JSD {top:.4f} = {top / LN2:.1%} of ln 2: JSD(0.5) <= ln 2, reached when the "
                  "two distributions have disjoint support")


# Notebook 04: clipping ---------------------------------------------------------------------------------
def _clip_case(p_teacher, p_student) -> ClipCase:
    """The reader's position as an `opsd.toy.ClipCase` (probabilities normalised; words are the indices)."""
    pt, ps = [float(x) for x in p_teacher], [float(x) for x in p_student]
    return ClipCase(words=tuple(str(i) for i in range(len(pt))), p_teacher=tuple(x / sum(pt) for x in pt),
                    p_student=tuple(x / sum(ps) for x in ps))


@_checker
def check_negative_clip(answer: float, p_teacher, p_student):
    """c*, the point-wise clip below which sum_v min(p_T(log p_T - log p_S), c) turns negative."""
    case = _clip_case(p_teacher, p_student)
    c_star, c = negative_clip_threshold(case, tol=1e-10), float(answer)
    if not math.isfinite(c):
        return False, f"answer a finite number, got {answer!r}"
    if abs(c - c_star) <= 1e-3 or abs(c - c_star) <= 0.01 * abs(c_star):
        return True, (f"c* = {c_star:.4f}: below it the clipped summands no longer outweigh the negative "
                      "ones (which pass the clip unchanged), so the divergence and the loss turn negative")
    d = float(clip_case_values(case, c)["clipped_divergence"])
    side = "still positive: c* is lower" if d > 0 else "already negative: c* is higher"
    return False, (f"at c = {c:.4g} the clipped divergence is {d:+.4f}, {side} (summands below c pass, "
                   "the others become c: solve sum = 0)")


@_checker
def check_clipped_gradient_sign(answer: str, p_teacher, p_student, clip: float, index: int = 0):
    """The sign of d D_clipped / d z_S[index] (z_S = log p_S, point-wise clip): positive, negative or zero."""
    case = _clip_case(p_teacher, p_student)
    values = clip_case_values(case, clip)
    grad = float(values["clipped_grad"][index])
    sign = "zero" if abs(grad) < 1e-12 else ("positive" if grad > 0 else "negative")
    given = answer.strip().lower() if isinstance(answer, str) else answer
    if given not in ("positive", "negative", "zero"):
        return False, f"answer 'positive', 'negative' or 'zero', got {answer!r}"
    if given != sign:
        return False, (f"the sign is not {given}: a summand above the clip is constant (no gradient); "
                       "differentiate the others, with d log p_S(v)/dz_i = [v = i] - p_S(i)")
    pt, ps = case.p_teacher, case.p_student
    clipped = [v for v, x in enumerate(values["summands"].tolist()) if x > clip]
    free = sum(pt[v] for v in range(len(pt)) if v not in clipped)
    why = (f"dD/dz_S[{index}] = {grad:+.4f} = p_S({index}) × Σ_unclipped p_T = {ps[index]:.2f} × "
           f"{free:.2f}" + ("" if index in clipped else f" - p_T({index})") + f" (clipped: {clipped})")
    target = "the teacher's favourite token" if max(range(len(pt)), key=pt.__getitem__) == index else f"token {index}"
    move = {"positive": "LOWERS", "negative": "raises", "zero": "leaves"}[sign]
    pull = ": its own pull is clipped away, the other entries push it down" if index in clipped else ""
    return True, f"{why}, so gradient descent {move} the student's logit of {target}{pull}"


# Notebook 05: one training step ------------------------------------------------------------------------
@_checker
def check_loss_from_divergence(fn):
    """fn(per_token_divergence [B, N], mask bool [B, N]) -> the scalar loss, normalised as the kit does."""
    loss_cases = [
        ("ragged rows", [[1.0, 2.0, 3.0, 4.0], [10.0, 99.0, 99.0, 99.0]], [[1, 1, 1, 1], [1, 0, 0, 0]]),
        ("one row empty", [[0.5, 0.25, -0.125], [3.0, 7.0, 7.0], [9.0] * 3], [[1, 1, 1], [1, 0, 0], [0] * 3]),
        ("all-false mask", [[1.0, 2.0], [3.0, 4.0]], [[0, 0], [0, 0]]),
    ]
    for name, d, m in loss_cases:
        picked = [[x for x, keep in zip(dr, mr, strict=True) if keep] for dr, mr in zip(d, m, strict=True)]
        count, rows = sum(map(len, picked)), [sum(r) / len(r) for r in picked if r]
        expected = sum(map(sum, picked)) / count if count else 0.0
        got = _call(fn, torch.tensor(d), torch.tensor(m, dtype=torch.bool))
        if isinstance(got, torch.Tensor) and got.numel() != 1:
            return False, f"return a scalar, got a tensor of shape {tuple(got.shape)} ({name})"
        value = float(got)
        if not abs(value - expected) <= 1e-5 * max(1.0, abs(expected)):  # NaN fails too
            hint = _first([
                (not count and not math.isfinite(value), "nothing masked in: the loss is 0 (max(count, 1))"),
                (bool(rows) and abs(value - sum(rows) / max(len(rows), 1)) <= 1e-5,
                 ("that is a mean of per-row means; the kit divides the sum by the number of masked-in "
                  "positions of the whole batch, so every token weighs the same")),
                (abs(value - sum(map(sum, d)) / sum(map(len, d))) <= 1e-5, "masked-out positions entered it"),
            ], "sum D over the masked-in positions, divide by their number over the whole batch")
            return False, (f"{hint}; first failing case ({name}): D={d}, mask={m}, expected {expected:.6g}, "
                           f"got {value:.6g}")
    return True, "sum over masked-in positions / their number in the whole batch: every token weighs the same"


@_checker
def check_trainable_count(answer: int, model):
    """The number of parameters that receive gradients (requires_grad) in the model."""
    params = list(model.parameters())
    total, trainable = sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
    got = _as_int(answer)
    if got == trainable:
        return True, f"{trainable:,} of {total:,} parameters ({trainable / max(total, 1):.2%}) get gradients"
    return False, _first([
        (got is None, "answer with an integer"),
        (got == total, "that counts every parameter; count only those with requires_grad"),
        (got == sum(1 for p in params if p.requires_grad), "that counts tensors; count elements (p.numel())"),
    ], "sum p.numel() for p in model.parameters() if p.requires_grad") + f" (got {answer!r})"
