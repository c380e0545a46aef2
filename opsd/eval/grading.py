"""Grading and metrics, pure Python (no torch, no transformers).

- ``extract_boxed``: a completion -> the content of its last complete ``\\boxed{}`` (None without one).
- ``is_correct``: an extracted answer vs the gold answer, with math-verify (``1/2`` = ``\\frac12`` = ``0.5``),
  falling back to ``normalize_answer`` string equality. ``make_record``: one completion -> a graded record.
- Metrics on records (dicts with ``problem_id``, ``sample_index``, ``extracted_answer``, ``correct``,
  ``completion_tokens``, ``truncated``), grouped by problem: ``avg_at_k`` (the paper's Avg@k), unbiased
  ``pass_at_k``, ``maj_at_k`` (``majority_vote`` of equivalent answers); ``summarize`` gives them all.
- ``grading="reference"`` (``GRADING_RULES``) swaps in the reference evaluation's three rules
  (``eval/evaluate_math.py`` of github.com/louieworth/OPSD at 7448751): ``extract_boxed_reference``,
  ``is_correct_reference`` and a maj@k vote over exact answer strings. The paper's evaluation profiles use it.
"""

from __future__ import annotations

import math
import operator
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from opsd.eval.stats import problem_bootstrap_interval, wilson_interval

# ---------------------------------------------------------------------------------------------------
# Extraction and grading
# ---------------------------------------------------------------------------------------------------

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox|framebox)(?![A-Za-z])")


def _box_span(text: str, start: int) -> tuple[int, int] | None:
    """(first, end) of the content of the box whose command ends at ``start``, surrounding whitespace left
    out (first == end for an empty box); None if unterminated."""
    i = start
    while i < len(text) and text[i] in " \t\n":
        i += 1
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{" and (j == 0 or text[j - 1] != "\\"):
                depth += 1
            elif text[j] == "}" and text[j - 1] != "\\":
                depth -= 1
                if depth == 0:
                    first, end = i + 1, j
                    while first < end and text[first].isspace():
                        first += 1
                    while end > first and text[end - 1].isspace():
                        end -= 1
                    return first, end
        return None  # unbalanced: a completion cut inside its box
    if i == start:
        return None  # "\boxed" glued to something that is not a brace
    # "\boxed 42": one token, up to whitespace or the closing math delimiter
    match = re.match(r"[^\s$]+", text[i:])
    token = match.group(0).rstrip(".,;") if match else ""
    return (i, i + len(token)) if token else None


def last_box_span(text: str) -> tuple[int, int] | None:
    """(first, end) of the content of the last complete box in ``text`` (``extract_boxed``'s), or None."""
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        if (span := _box_span(text, match.end())) is not None:
            return span
    return None


def extract_boxed(text: str | None) -> str | None:
    """The content of the last complete ``\\boxed{...}`` (or ``\\boxed x``, ``\\fbox{...}``) in ``text``.

    Braces nest (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); a box cut off before its closing
    brace does not count, so the previous complete box is returned. None when there is no box.
    """
    span = last_box_span(text) if text else None
    return None if span is None else text[span[0] : span[1]]


def normalize_answer(s: str) -> str:
    """Textual normal form for the fallback comparison: no spaces, ``$``, ``\\!``, ``\\left/\\right``,
    ``\\text{}`` unwrapped, ``\\dfrac`` -> ``\\frac``, integers without leading zeros or ``.0``."""
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", str(s).strip())
    for old, new in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""),
                     ("\\!", ""), ("\\,", ""), ("\\;", ""), ("$", "")):
        s = s.replace(old, new)
    s = re.sub(r"\s+", "", s).rstrip(".")
    if re.fullmatch(r"[+-]?\d+(\.0+)?", s):
        s = str(int(float(s))) if len(s) < 16 else s.split(".")[0].lstrip("+").lstrip("0") or "0"
    return s


def is_correct(prediction: str | None, answer: str | float | None, *, timeout_seconds: int = 5) -> bool:
    """Whether ``prediction`` (the extracted boxed content) equals the gold ``answer``.

    Uses math-verify: gold parsed from ``\\boxed{answer}`` (or ``$answer$``), prediction from
    ``\\boxed{prediction}``, compared with ``verify`` (fractions, decimals, LaTeX, intervals, sets,
    units and degrees stripped as math-verify does). math-verify's timeouts use ``signal.alarm``,
    which only works in the main thread, so outside it the timeout is off. A normalised string
    equality (``normalize_answer``) is the fallback when math-verify fails to parse or raises, and
    also accepts textually identical answers. Empty or None predictions are wrong.
    """
    if prediction is None or answer is None:
        return False
    prediction, answer = str(prediction).strip(), str(answer).strip()
    if not prediction or not answer:
        return False
    textual = normalize_answer(prediction) == normalize_answer(answer)
    try:
        # math-verify (and sympy under it) load on the first grade: extraction alone (opsd.data's MATH-500
        # gold answers) does not pay for them, and a failed import falls back to the textual rule
        from math_verify import parse, verify

        timeout = _main_thread_timeout(timeout_seconds)
        gold = parse(answer if "\\boxed" in answer else f"\\boxed{{{answer}}}", parsing_timeout=timeout)
        if not gold:
            gold = parse(f"${answer}$", parsing_timeout=timeout)
        pred = parse(f"\\boxed{{{prediction}}}", parsing_timeout=timeout)
        if not gold or not pred:
            return textual
        return bool(verify(gold, pred, timeout_seconds=timeout)) or textual
    except BaseException as err:  # math-verify raises TimeoutException, a BaseException
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        return textual


def _main_thread_timeout(seconds: int) -> int | None:
    """math-verify's timeouts use ``signal.alarm``, which only works in the main thread: off elsewhere."""
    return seconds if threading.current_thread() is threading.main_thread() else None


# ---------------------------------------------------------------------------------------------------
# The reference evaluation's rules (eval/evaluate_math.py, github.com/louieworth/OPSD at 7448751)
# ---------------------------------------------------------------------------------------------------

#: ``kit``: ``extract_boxed``, ``is_correct``, maj@k over math-verify-equivalent answers. ``reference``: the
#: reference evaluation script's extraction, grading and maj@k grouping (``extract_boxed_reference``,
#: ``is_correct_reference``, ``majority_vote``), what the paper's numbers were computed with.
GRADING_RULES: tuple[str, ...] = ("kit", "reference")


def check_grading(grading: str) -> str:
    """``grading`` when it names one of ``GRADING_RULES``; ``ValueError`` listing them otherwise."""
    if grading not in GRADING_RULES:
        raise ValueError(f"unknown grading rules {grading!r}: use one of {list(GRADING_RULES)}")
    return grading


def extract_boxed_reference(text: str | None) -> str | None:
    """The reference's extraction: the box at the last ``\\boxed`` of ``text`` (``str.rfind``), or None.

    From there every ``{`` adds one and every ``}`` takes one away (escaped braces too); the first ``}`` that
    brings the count back to 0 closes the box, whose content between ``\\boxed{`` and it is returned,
    stripped (an empty box gives ""). None when there is no ``\\boxed``, when the count never closes (an
    unterminated last box gives None even after a complete one; the kit's ``extract_boxed`` returns that
    earlier one) or when ``\\boxed`` is not followed by ``{`` at once (``\\boxed 42``, ``\\boxed {7}``).
    ``\\fbox`` is not a box."""
    if not text:
        return None
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    depth = 0
    for end in range(start, len(text)):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            depth -= 1
            if depth == 0:
                return text[start + len("\\boxed{") : end].strip() if text.startswith("\\boxed{", start) else None
    return None


def _dollars(s: str) -> str:
    """``s`` in ``$...$`` unless it already holds a ``$`` (the reference's wrapping before parsing)."""
    return s if "$" in s else f"${s}$"


def is_correct_reference(prediction: str | None, answer: str | float | None, *, timeout_seconds: int = 5) -> bool:
    """The reference's grading: math-verify on ``$prediction$`` and ``$answer$`` (each wrapped unless it holds a
    ``$``), ``parse(..., fallback_mode="no_fallback")`` then ``verify(gold, prediction)``, timeouts of
    ``timeout_seconds`` (off outside the main thread, as in ``is_correct``; the reference grades in its main
    thread). No textual fallback: only when math-verify raises an ``Exception`` do the two strings count
    as equal when they match without ``$``, spaces and case. An empty prediction is graded (and is wrong);
    None is wrong. Needs math-verify (imported here, so that extraction alone stays free of sympy)."""
    if prediction is None or answer is None:
        return False
    from math_verify import parse, verify  # loads sympy: on the first grade only, as in is_correct

    pred, gold = _dollars(str(prediction)), _dollars(str(answer))
    timeout = _main_thread_timeout(timeout_seconds)
    try:
        return bool(verify(parse(gold, fallback_mode="no_fallback", parsing_timeout=timeout),
                           parse(pred, fallback_mode="no_fallback", parsing_timeout=timeout), timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - the reference's rule: any math-verify error falls back to the strings
        return _without_dollars_spaces_case(pred) == _without_dollars_spaces_case(gold)


def _without_dollars_spaces_case(s: str) -> str:
    """The reference's textual form, used only when math-verify raises: no ``$``, no spaces, lower case."""
    return s.replace("$", "").replace(" ", "").lower().strip()


#: grading rules -> (extraction, grading) functions
_RULES = {"kit": (extract_boxed, is_correct), "reference": (extract_boxed_reference, is_correct_reference)}


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Exact with ``math.comb`` for n <= 1000; for larger n the equivalent stable product
    1 - prod_{i=n-c+1}^{n} (1 - k / i). Raises ``ValueError`` unless 0 <= c <= n and 1 <= k <= n.
    """
    n, c, k = operator.index(n), operator.index(c), operator.index(k)  # ints (numpy ints too), not floats
    if n < 1 or c < 0 or c > n:
        raise ValueError(f"need 0 <= c <= n and n >= 1, got n={n}, c={c}")
    if k < 1 or k > n:
        raise ValueError(f"need 1 <= k <= n, got k={k} with n={n} samples")
    if n - c < k:
        return 1.0
    if n <= 1000:
        return 1.0 - math.comb(n - c, k) / math.comb(n, k)
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def group_by_problem(records: Iterable[dict]) -> OrderedDict[Any, list[dict]]:
    """``problem_id`` -> that problem's records, problems in order of first appearance."""
    groups: OrderedDict[Any, list[dict]] = OrderedDict()
    for r in records:
        groups.setdefault(r["problem_id"], []).append(r)
    return groups


def problem_scores(records: Iterable[dict]) -> OrderedDict[Any, float]:
    """Problem id -> the fraction of its samples that are correct, in first-seen order."""
    return OrderedDict((pid, sum(bool(r["correct"]) for r in g) / len(g))
                       for pid, g in group_by_problem(records).items())


def avg_at_k(records: Sequence[dict]) -> float:
    """Avg@k: per problem the mean of ``correct`` over its samples (``problem_scores``), then the mean over
    problems."""
    scores = problem_scores(records)
    return sum(scores.values()) / len(scores) if scores else 0.0


def answers_equivalent(a: str | None, b: str | None) -> bool:
    """Whether two extracted answers say the same thing: the math-verify equivalence of ``is_correct``
    (``b`` taken as the reference), or textual equality after ``normalize_answer``."""
    if a is None or b is None:
        return False
    return a == b or is_correct(a, b)


def majority_vote(answers: Sequence[str | None], grading: str = "kit") -> int | None:
    """Index (into ``answers``) of the majority answer of one problem's samples; None when no sample
    has an answer.

    ``kit``: samples without an answer (None or empty) do not vote. Answers are grouped greedily in sample
    order: each joins the first group whose first answer is equivalent to it (``answers_equivalent``),
    else opens a new group. ``reference``: every boxed answer votes (None does not; an empty box does, for
    one shared wrong answer), grouped by exact string (``1/2`` and ``0.5`` are two answers), as the reference's
    ``collections.Counter``. The largest group wins; among groups of equal size the one opened first
    (the lowest sample index) wins, so the result is deterministic. Returns that group's first index.
    """
    groups: list[list[int]] = []
    if check_grading(grading) == "reference":
        by_string: dict[str, list[int]] = {}
        for i, a in enumerate(answers):
            if a is not None:
                by_string.setdefault(str(a), []).append(i)
        groups = list(by_string.values())
    else:
        for i, a in enumerate(answers):
            if a is None or not str(a).strip():
                continue
            for g in groups:
                if answers_equivalent(str(a), str(answers[g[0]])):
                    g.append(i)
                    break
            else:
                groups.append([i])
    if not groups:
        return None
    return max(groups, key=lambda g: (len(g), -g[0]))[0]


def maj_at_k(records: Sequence[dict], k: int | None = None, grading: str = "kit") -> float:
    """maj@k: the fraction of problems whose majority answer (``majority_vote`` under ``grading`` over the
    first k samples by ``sample_index``; all samples when k is None) is correct (that sample's ``correct``;
    the reference grades the winning string again, the same verdict). A problem where no sample boxed an
    answer counts as wrong."""
    groups = group_by_problem(records)
    if not groups:
        return 0.0
    right = 0
    for g in groups.values():
        g = sorted(g, key=lambda r: r.get("sample_index", 0))[: k if k is not None else None]
        winner = majority_vote([r.get("extracted_answer") for r in g], grading)
        right += winner is not None and bool(g[winner]["correct"])
    return right / len(groups)


def summarize(records: Sequence[dict], k: int | None = None, grading: str = "kit") -> dict:
    """Summary of per-sample records: Avg@k with its 95% Wilson interval over samples (``avg_at_k_interval``)
    and its 95% percentile bootstrap interval over problems (``avg_at_k_problem_interval``, seed 0,
    ``opsd.eval.stats.problem_bootstrap_interval`` of each problem's fraction of correct samples), pass@1..k
    (mean over problems of the unbiased estimator), maj@k (majority vote of the first k samples,
    ``maj_at_k``), boxed rate (samples with a box), mean completion tokens (generated tokens, eos
    included), truncation rate (samples cut by max_new_tokens). All rates are fractions in [0, 1].
    ``grading`` (``GRADING_RULES``) decides maj@k's grouping; the records carry their own ``correct``."""
    groups = group_by_problem(records)
    n_min = min((len(g) for g in groups.values()), default=0)
    k = n_min if k is None else min(k, n_min)
    pass_k = {}
    for kk in range(1, k + 1):
        vals = [pass_at_k(len(g), sum(bool(r["correct"]) for r in g), kk) for g in groups.values()]
        pass_k[str(kk)] = sum(vals) / len(vals)
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    fractions = list(problem_scores(records).values())
    return {
        "n_problems": len(groups),
        "n_samples": n,
        "k": k,
        "avg_at_k": avg_at_k(records),
        # 95% Wilson interval of the share of correct samples; with k > 1 samples per problem they are not
        # independent, so it understates the uncertainty (exact for greedy Avg@1).
        "avg_at_k_interval": list(wilson_interval(correct, n)) if n else [0.0, 1.0],
        # problems are the unit sampled: the bootstrap over problems of the mean per-problem fraction
        "avg_at_k_problem_interval": list(problem_bootstrap_interval(fractions)) if fractions else [0.0, 1.0],
        "pass_at_k": pass_k,
        "maj_at_k": maj_at_k(records, k, grading),
        "boxed_rate": sum(r["extracted_answer"] is not None for r in records) / n if n else 0.0,
        "mean_completion_tokens": sum(r["completion_tokens"] for r in records) / n if n else 0.0,
        "truncated_rate": sum(bool(r.get("truncated", False)) for r in records) / n if n else 0.0,
    }


def make_record(problem_id, sample_index: int, completion: str, answer: str, completion_tokens: int,
                truncated: bool = False, grading: str = "kit") -> dict:
    """One graded sample: problem id, sample index, completion, extracted answer, gold, correct, with the
    extraction and grading of ``grading`` (``kit``: ``extract_boxed`` / ``is_correct``; ``reference``:
    ``extract_boxed_reference`` / ``is_correct_reference``)."""
    extract, grade = _RULES[check_grading(grading)]
    extracted = extract(completion)
    return {
        "problem_id": problem_id,
        "sample_index": int(sample_index),
        "completion": completion,
        "extracted_answer": extracted,
        "answer": answer,
        "correct": grade(extracted, answer),
        "completion_tokens": int(completion_tokens),
        "truncated": bool(truncated),
    }
