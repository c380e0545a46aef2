"""The teacher-context controls (opsd.privileged): the text each control gives the teacher, on hand-made rows,
and the teacher prompt built from it."""

import random

import datasets
import pytest

from opsd.contexts import PAPER_TRANSITION, build_teacher_messages
from opsd.eval.grading import extract_boxed, last_box_span
from opsd.privileged import (
    TEACHER_CONTEXTS,
    derangement,
    privileged_texts,
    with_teacher_context,
    wrong_answer,
    wrong_reference,
)

SOLUTIONS = [
    "Add the ones: 8 + 5 = 13, write 3 carry 1. Tens: 1 + 5 + 1 = 7. So 18 + 55 = 73.\n\nThe answer is \\boxed{73}.",
    "Tens: 20 + 40 = 60. Ones: 1 + 2 = 3. So 21 + 42 = 63.\n\nThe answer is \\boxed{63}.",
    "Half of it: \\boxed{\\frac{1}{2}}",
    "No box here, the answer is 12 apples.",
]
ANSWERS = ["73", "63", "\\frac{1}{2}", "12"]


def test_reference_is_the_row_itself():
    assert privileged_texts(SOLUTIONS, "reference") == SOLUTIONS


def test_none_gives_the_teacher_prompt_without_its_reference_block():
    assert privileged_texts(SOLUTIONS, "none") == [None] * 4
    paper = build_teacher_messages("What is 18 + 55?", None, "paper")[0]["content"]
    assert paper == ("Problem: What is 18 + 55?\n\n" + PAPER_TRANSITION +
                     "\n\nPlease reason step by step, and put your final answer within \\boxed{}.")
    simple = build_teacher_messages("What is 18 + 55?", None, "simple")[0]["content"]
    assert simple == ("Problem: What is 18 + 55?\n\nNow solve the problem yourself, step by step, and put your final "
                      "answer within \\boxed{}.")
    with_ref = build_teacher_messages("What is 18 + 55?", SOLUTIONS[0], "paper")[0]["content"]
    assert with_ref == ("Problem: What is 18 + 55?\n\nHere is a reference solution to this problem:\n"
                        "=== Reference Solution Begin ===\n" + SOLUTIONS[0] + "\n=== Reference Solution End ===\n\n\n"
                        + PAPER_TRANSITION + "\n\nPlease reason step by step, and put your final answer within \\boxed{}.")


@pytest.mark.parametrize("n", [2, 3, 7, 50])
@pytest.mark.parametrize("seed", [0, 1, 42])
def test_derangement_never_keeps_a_row_and_is_a_permutation(n, seed):
    target = derangement(n, seed)
    assert sorted(target) == list(range(n))
    assert all(target[i] != i for i in range(n))
    assert derangement(n, seed) == target   # deterministic


def test_other_reads_another_rows_reference_fixed_by_the_seed():
    texts = privileged_texts(SOLUTIONS, "other", seed=3)
    assert sorted(texts) == sorted(SOLUTIONS)
    assert all(t != s for t, s in zip(texts, SOLUTIONS))
    assert privileged_texts(SOLUTIONS, "other", seed=3) == texts
    assert any(privileged_texts(SOLUTIONS, "other", seed=s) != texts for s in range(4, 10))
    with pytest.raises(ValueError, match="at least 2 rows"):
        privileged_texts(SOLUTIONS[:1], "other")


def test_wrong_changes_only_the_final_answer():
    texts = privileged_texts(SOLUTIONS, "wrong", answers=ANSWERS, seed=0)
    for original, changed in zip(SOLUTIONS[:2], texts[:2]):
        head = original[: original.rindex("\\boxed{") + len("\\boxed{")]
        assert changed.startswith(head) and changed.endswith("}.")   # derivation kept, incl. its '= 73'
        new = changed[len(head):-2]
        assert new.isdigit() and new != original[len(head):-2] and 1 <= abs(int(new) - int(original[len(head):-2])) <= 9
    assert texts[2] == "Half of it: \\boxed{\\frac{1}{2} + 1}"
    assert texts[3].startswith("No box here, the answer is ") and texts[3].endswith(" apples.")
    assert texts[3] != SOLUTIONS[3]   # no box: the last occurrence of the row's answer changed
    assert privileged_texts(SOLUTIONS, "wrong", answers=ANSWERS, seed=0) == texts


def test_wrong_names_the_row_it_cannot_change():
    with pytest.raises(ValueError, match=r"row 'r7'.*no \\boxed"):
        wrong_reference("nothing to see", "5", random.Random(0), "r7")


def test_wrong_answer_kinds():
    rng = random.Random(0)
    assert all(wrong_answer("3", rng) in {str(v) for v in range(4, 13)} for _ in range(50))   # small: shifted up
    assert all(wrong_answer("73", rng) != "73" for _ in range(50))
    assert wrong_answer("0.5", rng) == "1.5"
    assert wrong_answer("x^2", rng) == "x^2 + 1"


def test_last_box_span_nests_and_skips_unterminated_boxes():
    text = "\\boxed{1} then \\boxed{\\frac{a}{b}} and \\boxed{cut"
    start, end = last_box_span(text)
    assert text[start:end] == "\\frac{a}{b}" == extract_boxed(text)   # the box grading reads
    assert last_box_span("no box") is None
    text = "so \\boxed{ 73 }."
    start, end = last_box_span(text)
    assert text[start:end] == "73" and text[:start] == "so \\boxed{ " and text[end:] == " }."


def test_with_teacher_context_replaces_the_solution_column_only():
    ds = datasets.Dataset.from_dict({"problem": ["p0", "p1", "p2"], "solution": SOLUTIONS[:3], "answer": ANSWERS[:3]})
    assert with_teacher_context(ds, "reference") is ds
    for context in TEACHER_CONTEXTS[1:]:
        out = with_teacher_context(ds, context, seed=0)
        assert out["problem"] == ds["problem"] and out["answer"] == ds["answer"]
        assert out["solution"] == privileged_texts(SOLUTIONS[:3], context, answers=ANSWERS[:3], seed=0)
    with pytest.raises(ValueError, match="teacher_context must be one of"):
        with_teacher_context(ds, "shuffled")


def test_config_checks_the_setting_once():
    from opsd.config import OPSDConfig, load_config
    from opsd.validation import InputError

    config = load_config(OPSDConfig, "cpu-tiny", {"teacher_context": "other"}, output_dir="/tmp/x", report_to="none")
    assert config.teacher_context == "other"
    with pytest.raises(InputError, match="teacher_context"):
        load_config(OPSDConfig, "cpu-tiny", {"teacher_context": "nothing"}, output_dir="/tmp/x", report_to="none")
