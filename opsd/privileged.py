"""What the teacher is privileged with: the teacher-context controls (setting `teacher_context`).

    reference  the row's own reference solution (the method)
    none       no reference: the teacher prompt without its reference block, so the teacher differs from
               the student only by the prompt's wording (self-distillation from a reworded prompt)
    other      another row's reference: row i reads the solution of row pi(i), pi a derangement drawn
               from `seed` (a shuffled cycle: never the row's own, the same for every run with that seed)
    wrong      the row's reference with its final answer changed and its derivation kept: the content of
               the last \\boxed{} (else the last occurrence of the row's answer) becomes `wrong_answer`

`privileged_texts` gives the text each row's teacher reads (None: no reference block); `with_teacher_context`
applies it to a dataset's ``solution`` column once, where the data is loaded, so every batch drawn from it
carries the control.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from opsd.eval.grading import last_box_span

TEACHER_CONTEXTS = ("reference", "none", "other", "wrong")

_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.\d*|\.\d+)")


def check_teacher_context(context: str) -> str:
    if context not in TEACHER_CONTEXTS:
        raise ValueError(f"teacher_context must be one of {TEACHER_CONTEXTS}, got {context!r}")
    return context


def derangement(n: int, seed: int) -> list[int]:
    """pi with pi[i] != i for every i (n >= 2): a random order of 0..n-1 read as one cycle."""
    if n < 2:
        raise ValueError(f"teacher_context 'other' needs at least 2 rows to draw another row's reference, got {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    target = [0] * n
    for k, i in enumerate(order):
        target[i] = order[(k + 1) % n]
    return target


def wrong_answer(answer: str, rng: random.Random) -> str:
    """A different answer of the same kind: an integer shifted by 1-9 either way, a decimal plus 1, any
    other expression X as ``X + 1``."""
    text = answer.strip()
    if _INTEGER.fullmatch(text):
        value, shift = int(text), rng.randint(1, 9)
        return str(value - shift if value > 9 and rng.random() < 0.5 else value + shift)
    if _NUMBER.fullmatch(text):
        return repr(float(text) + 1.0)
    return f"{text} + 1"


def wrong_reference(solution: str, answer: str | None, rng: random.Random, row=None) -> str:
    """`solution` with its final answer replaced by `wrong_answer` (the derivation kept): the content of its
    last complete box, the one grading reads (`opsd.eval.grading.last_box_span`), else the last occurrence
    of `answer`; ValueError naming the row when it has neither."""
    span = last_box_span(solution)
    if span is None and answer and answer.strip() and answer.strip() in solution:
        start = solution.rindex(answer.strip())
        span = (start, start + len(answer.strip()))
    if span is None:
        raise ValueError(f"row {row!r}: teacher_context 'wrong' needs a final answer to change, but the solution "
                         f"has no \\boxed{{}} and does not contain the row's answer {answer!r} "
                         f"(solution starts {solution[:60]!r})")
    start, end = span
    return solution[:start] + wrong_answer(solution[start:end], rng) + solution[end:]


def privileged_texts(solutions: Sequence[str], context: str, *, answers: Sequence[str | None] | None = None,
                     seed: int = 0, row_ids: Sequence | None = None) -> list[str | None]:
    """The text each row's teacher reads under `context` (module docstring); None for ``none``.

    ``other`` and ``wrong`` are drawn from `seed` and the row's index: the same rows give the same texts.
    """
    check_teacher_context(context)
    n = len(solutions)
    names = list(row_ids) if row_ids is not None else list(range(n))
    if context == "reference":
        return list(solutions)
    if context == "none":
        return [None] * n
    if context == "other":
        return [solutions[j] for j in derangement(n, seed)]
    answers = list(answers) if answers is not None else [None] * n
    return [wrong_reference(s, a, random.Random(f"{seed}:{i}"), names[i])
            for i, (s, a) in enumerate(zip(solutions, answers))]


def with_teacher_context(dataset, context: str, seed: int = 0):
    """The dataset (`datasets.Dataset` with ``solution``) with each ``solution`` replaced by what the
    teacher reads under `context`; ``reference`` returns it unchanged."""
    if check_teacher_context(context) == "reference":
        return dataset
    answers = dataset["answer"] if "answer" in dataset.column_names else None
    row_ids = dataset["row_id"] if "row_id" in dataset.column_names else None
    texts = privileged_texts(dataset["solution"], context, answers=answers, seed=seed, row_ids=row_ids)
    return dataset.remove_columns("solution").add_column("solution", texts)
