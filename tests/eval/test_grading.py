"""Tests for opsd.eval.grading: boxed-answer extraction, math-verify grading, pass@k / Avg@k / maj@k, summaries."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading

import pytest

from opsd.eval import grading
from opsd.eval.grading import avg_at_k, extract_boxed, is_correct, make_record, pass_at_k, summarize


def test_grading_imports_without_torch_or_transformers():
    """Grading is pure Python: it imports, and grades with math-verify, where torch cannot be imported."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from opsd.eval.grading import is_correct, summarize, make_record\n"
        "assert is_correct('1/2', '0.5')\n"
        "assert summarize([make_record('a', 0, 'so \\\\boxed{7}', '7', 3)])['avg_at_k'] == 1.0\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so the answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{\sqrt{\frac{a}{b^{2}}}}", r"\sqrt{\frac{a}{b^{2}}}"),  # deeper nesting
        (r"first \boxed{1}, then \boxed{2}", "2"),  # several boxes: the last one
        ("no box at all", None),
        ("", None),
        (None, None),
        (r"\boxed 42", "42"),  # \boxed followed by a space, no braces
        (r"$\boxed 7$.", "7"),
        (r"\boxed {7}", "7"),  # a space before the brace
        (r"\fbox{3}", "3"),
        (r"\boxed{5} and some text after the box", "5"),
        (r"\boxed{3} but then \boxed{4", "3"),  # a box cut off by max_new_tokens does not count
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are not structure
        (r"\boxedx{3}", None),  # not the \boxed command
        (r"\boxed{ 12 }", "12"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


# ---------------------------------------------------------------------------------------------- grading


@pytest.mark.parametrize(
    "prediction, answer",
    [
        ("1/2", r"\frac{1}{2}"),
        ("0.5", r"\frac12"),
        ("007", "7"),
        ("11", "011"),
        (r"\dfrac{3}{4}", "0.75"),
        (r"5 \text{ cm}", "5"),  # units stripped by math-verify
        (r"90^\circ", "90"),
        ("x=3", "3"),
        ("3", 3),  # integer gold (some Hub sets store answers as int)
        ("(1, 2]", "(1,2]"),  # intervals
        (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}"),
        ("2^{10}", "1024"),
        ("1,000", "1000"),
        (r"\text{Tuesday}", "Tuesday"),
    ],
)
def test_is_correct_equivalent(prediction, answer):
    assert is_correct(prediction, answer)


@pytest.mark.parametrize(
    "prediction, answer",
    [
        ("10", "11"),
        ("[1,2)", "(1,2]"),
        (r"5 \text{ cm}", "6"),
        ("1/3", "0.3"),
        ("", "3"),
        ("   ", "3"),
        (None, "3"),
        ("3", ""),
        ("3", None),
    ],
)
def test_is_correct_not_equivalent(prediction, answer):
    assert not is_correct(prediction, answer)


def test_is_correct_falls_back_when_math_verify_fails(monkeypatch):
    import math_verify

    def broken(*args, **kwargs):
        raise RuntimeError("parser exploded")

    monkeypatch.setattr(math_verify, "parse", broken)
    assert is_correct("007", "7")  # normalised string equality
    assert is_correct(r"\dfrac{1}{2}", r"\frac{1}{2}")
    assert not is_correct("8", "7")


def test_is_correct_outside_the_main_thread():
    """math-verify's signal-based timeouts fail off the main thread; grading must still work."""
    results = []
    worker = threading.Thread(
        target=lambda: results.extend([is_correct("1/2", r"\frac12"), is_correct("3", "4")])
    )
    worker.start()
    worker.join()
    assert results == [True, False]


# ---------------------------------------------------------------------------------------------- metrics


def _pass_at_k_brute_force(n: int, c: int, k: int) -> float:
    """Fraction of k-subsets of the n samples (c correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_over_all_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_brute_force(n, c, k), abs=1e-12)


def test_pass_at_k_special_values_and_large_n():
    assert pass_at_k(12, 0, 5) == 0.0
    assert pass_at_k(12, 12, 1) == 1.0
    assert pass_at_k(12, 3, 1) == pytest.approx(3 / 12)  # pass@1 = c / n
    assert pass_at_k(10, 9, 2) == 1.0  # fewer wrong samples than k
    # the product form for big n agrees with the exact binomial ratio
    exact = 1 - __import__("math").comb(1990, 8) / __import__("math").comb(2000, 8)
    assert pass_at_k(2000, 10, 8) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("n, c, k", [(4, 1, 5), (4, 5, 1), (4, -1, 1), (4, 1, 0), (0, 0, 1)])
def test_pass_at_k_rejects_invalid_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_takes_integers_only():
    import numpy as np

    assert pass_at_k(np.int64(4), np.int64(1), 1) == pytest.approx(0.25)
    with pytest.raises(TypeError):
        pass_at_k(4.0, 1, 1)


def _rec(pid, j, correct, extracted="1", tokens=10):
    return {
        "problem_id": pid,
        "sample_index": j,
        "completion": "",
        "extracted_answer": extracted,
        "answer": "1",
        "correct": correct,
        "completion_tokens": tokens,
        "truncated": False,
    }


def test_avg_at_k_and_summary_on_hand_made_records():
    records = [
        _rec("a", 0, True),
        _rec("a", 1, True),
        _rec("a", 2, False),
        _rec("a", 3, False),  # 2/4
        _rec("b", 0, False),
        _rec("b", 1, False),
        _rec("b", 2, False),
        _rec("b", 3, True, tokens=30),  # 1/4
        _rec("c", 0, False, None),
        _rec("c", 1, False, None),
        _rec("c", 2, False),
        _rec("c", 3, False),  # 0/4
    ]
    assert avg_at_k(records) == pytest.approx((0.5 + 0.25 + 0.0) / 3)
    summary = summarize(records, k=4)
    assert summary["n_problems"] == 3 and summary["k"] == 4 and summary["n_samples"] == 12
    assert summary["avg_at_k"] == pytest.approx(0.25)
    assert summary["pass_at_k"]["1"] == pytest.approx(summary["avg_at_k"])
    assert summary["pass_at_k"]["4"] == pytest.approx(2 / 3)  # a and b solved at least once
    expected_2 = (pass_at_k(4, 2, 2) + pass_at_k(4, 1, 2) + 0.0) / 3
    assert summary["pass_at_k"]["2"] == pytest.approx(expected_2)
    assert summary["boxed_rate"] == pytest.approx(10 / 12)
    assert summary["mean_completion_tokens"] == pytest.approx((11 * 10 + 30) / 12)


def _graded(pid, answers, gold):
    """Records as evaluate writes them, graded for real: sample j boxes answers[j] (None: no box)."""
    return [
        make_record(pid, j, "no box here" if a is None else f"so \\boxed{{{a}}}", gold, 5)
        for j, a in enumerate(answers)
    ]


def test_majority_vote_groups_equivalent_answers_and_breaks_ties_by_first_sample():
    # 1/2, \frac{1}{2} and 0.5 are one answer for math-verify: it outvotes the two 3s
    assert grading.majority_vote(["3", "1/2", "\\frac{1}{2}", "3", "0.5"]) == 1
    # 2 vs 2: the group opened first wins, whichever order the tie comes in
    assert grading.majority_vote(["4", "3", "3", "4"]) == 0
    assert grading.majority_vote(["3", "4", "4", "3"]) == 0
    # samples without an answer do not vote, and no answer at all gives no winner
    assert grading.majority_vote([None, "", "7", None]) == 2
    assert grading.majority_vote([None, None]) is None
    assert grading.answers_equivalent("\\dfrac{3}{4}", "0.75") and not grading.answers_equivalent("3", "4")


def test_maj_at_k_on_hand_made_records():
    records = (
        _graded("a", ["5", "\\frac{10}{2}", "6", "7"], "5")  # majority 5 (2 votes): right, Avg 2/4
        + _graded("b", ["6", "6", "5", None], "5")  # majority 6: wrong although one sample is right
        + _graded("c", ["8", "5", "5", "8"], "5")  # 2 vs 2, 8 came first: wrong
        + _graded("d", [None, None, None, None], "5")  # nothing boxed: wrong
        + _graded("e", [None, "5", None, None], "5")  # the only vote is right
    )
    assert grading.maj_at_k(records) == pytest.approx(2 / 5)
    # k = 1: the first sample alone; k counts samples in sample_index order, not file order
    assert grading.maj_at_k(records, 1) == pytest.approx(1 / 5)
    assert grading.maj_at_k(list(reversed(records)), 1) == pytest.approx(1 / 5)
    summary = summarize(records, k=4)
    assert summary["maj_at_k"] == pytest.approx(2 / 5)
    assert summary["avg_at_k"] == pytest.approx((2 / 4 + 1 / 4 + 2 / 4 + 0 + 1 / 4) / 5)
    assert grading.maj_at_k([]) == 0.0


def test_avg_at_k_weights_problems_equally():
    records = [_rec("a", 0, True)] + [_rec("b", j, False) for j in range(3)]
    assert avg_at_k(records) == pytest.approx(0.5)
    assert avg_at_k([]) == 0.0



def test_summary_carries_the_wilson_interval_of_avg_at_k():
    from opsd.eval.stats import wilson_interval

    records = [make_record(i, 0, f"\\boxed{{{a}}}", "7", 5, False) for i, a in enumerate([7, 7, 7, 3])]
    summary = summarize(records, 1)
    assert summary["avg_at_k"] == 0.75
    assert summary["avg_at_k_interval"] == list(wilson_interval(3, 4))
    assert summary["avg_at_k_interval"][0] == pytest.approx(0.3006, abs=1e-4)


# ------------------------------------------------- the reference evaluation's rules (grading="reference")
# eval/evaluate_math.py of github.com/louieworth/OPSD at 7448751: extract_boxed_answer, grade_answer and the
# Counter majority vote, as opsd.eval.grading's extract_boxed_reference, is_correct_reference, majority_vote.


@pytest.mark.parametrize(
    "text, reference, kit",
    [
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", r"\frac{1}{2}"),  # nested braces: both
        (r"\boxed{\sqrt{\frac{a}{b^{2}}}}", r"\sqrt{\frac{a}{b^{2}}}", r"\sqrt{\frac{a}{b^{2}}}"),
        (r"first \boxed{1}, then \boxed{2}", "2", "2"),  # two boxes: the last wins in both
        (r"\boxed{3} but then \boxed{4", None, "3"),  # unterminated last box: the reference none, the kit the 3
        (r"\boxed{12", None, None),  # only an unterminated box: none in both
        # a box inside the thinking, then one after </think>: the last (after) wins; alone, the thinking's counts
        ("<think>maybe \\boxed{3}</think>\nSo the answer is \\boxed{4}.", "4", "4"),
        ("<think>it is \\boxed{3}</think>\nthe answer is 3", "3", "3"),
        ("<think>\\boxed{3}</think> and \\boxed{", None, "3"),
        (r"\boxed 42", None, "42"),  # no brace right after \boxed: the reference none
        (r"\boxed {7}", None, "7"),
        (r"\fbox{3}", None, "3"),  # \fbox is not the reference's box
        (r"\boxed{2} and \fbox{3}", "2", "3"),
        (r"\boxed{}", "", ""),  # an empty box: "" in both
        (r"\boxed{ 12 }", "12", "12"),
        ("no box at all", None, None),
        ("", None, None),
    ],
)
def test_extract_boxed_reference_against_the_kit(text, reference, kit):
    assert grading.extract_boxed_reference(text) == reference
    assert extract_boxed(text) == kit


@pytest.mark.parametrize(
    "prediction, answer",
    [("1/2", "0.5"), (r"\frac{1}{2}", "0.5"), ("007", "7"), (r"\dfrac{3}{4}", "0.75"), ("x=5", "5"), ("(A)", "A")],
)
def test_is_correct_reference_accepts_math_verify_equal_answers_written_differently(prediction, answer):
    assert grading.is_correct_reference(prediction, answer) and is_correct(prediction, answer)


def test_is_correct_reference_has_no_textual_fallback():
    # identical text math-verify cannot parse: the kit's textual fallback accepts it, the reference does not
    assert is_correct("---", "---") and not grading.is_correct_reference("---", "---")
    assert is_correct("?", "?") and not grading.is_correct_reference("?", "?")
    # a prediction holding a "$" is parsed as written (not wrapped in $...$): "\$5" has no math in it
    assert is_correct(r"\$5", "5") and not grading.is_correct_reference(r"\$5", "5")
    assert not grading.is_correct_reference(None, "5") and not grading.is_correct_reference("", "5")
    assert not grading.is_correct_reference("3", "4")


def test_is_correct_reference_falls_back_to_strings_only_when_math_verify_raises(monkeypatch):
    import math_verify

    def broken(*args, **kwargs):
        raise RuntimeError("parser crashed")

    monkeypatch.setattr(math_verify, "parse", broken)
    assert grading.is_correct_reference("$ X $", "x")  # the reference's strings: no $, no spaces, lower case
    assert not grading.is_correct_reference("1/2", "0.5")


def test_majority_vote_reference_groups_exact_strings():
    # math-equal but differently written answers are different groups for the reference: the two 3s win
    answers = ["3", "1/2", "\\frac{1}{2}", "3", "0.5"]
    assert grading.majority_vote(answers) == 1  # kit: 1/2 = \frac{1}{2} = 0.5, three votes
    assert grading.majority_vote(answers, "reference") == 0
    # a tie goes to the answer seen first (the reference's Counter.most_common), as in the kit
    assert grading.majority_vote(["4", "3", "3", "4"], "reference") == 0
    # no box does not vote; an empty box does (one wrong answer), where the kit skips it
    assert grading.majority_vote([None, "", "", "7"], "reference") == 1
    assert grading.majority_vote([None, "", "", "7"]) == 3
    assert grading.majority_vote([None, None], "reference") is None
    with pytest.raises(ValueError, match="unknown grading rules"):
        grading.majority_vote(["1"], "exact")


def test_maj_at_k_reference_on_hand_made_records():
    def graded(pid, answers, gold, rules):
        return [make_record(pid, j, "no box here" if a is None else f"so \\boxed{{{a}}}", gold, 5, grading=rules)
                for j, a in enumerate(answers)]

    for rules in ("kit", "reference"):
        records = (
            graded("a", ["5", "\\frac{10}{2}", "6", "6"], "5", rules)  # kit: 5 (2 votes, first); reference: 6 wins
            + graded("b", ["1/2", "0.5", "7", None], "0.5", rules)  # kit: 1/2 = 0.5 wins; reference: 1/2 first
            + graded("c", [None, None, None, None], "5", rules)  # nothing boxed: wrong
        )
        assert [r["correct"] for r in records[:2]] == [True, True]  # math-verify-equal: right under both rules
        maj = grading.maj_at_k(records, grading=rules)
        assert maj == pytest.approx(2 / 3 if rules == "kit" else 1 / 3)
        assert summarize(records, 4, grading=rules)["maj_at_k"] == maj
    # the first record of b under the reference: 1/2 wins the 1/1/1 tie and is right, so b counts
    assert grading.maj_at_k(graded("b", ["1/2", "0.5", "7", None], "0.5", "reference"), grading="reference") == 1.0


def test_make_record_reference_rules():
    kit = make_record("p", 0, "\\boxed{7} and then \\boxed{8", "7", 9, True)
    ref = make_record("p", 0, "\\boxed{7} and then \\boxed{8", "7", 9, True, grading="reference")
    assert (kit["extracted_answer"], kit["correct"]) == ("7", True)
    assert (ref["extracted_answer"], ref["correct"]) == (None, False)
    assert make_record("p", 0, "\\boxed{---}", "---", 3)["correct"]
    assert not make_record("p", 0, "\\boxed{---}", "---", 3, grading="reference")["correct"]
    with pytest.raises(ValueError, match="unknown grading rules 'exact'"):
        make_record("p", 0, "\\boxed{1}", "1", 3, grading="exact")
