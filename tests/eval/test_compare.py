"""Avg@k's uncertainty over problems (opsd.eval.stats bootstrap), the summary's problem-level interval, and
`python -m opsd compare` on hand-made evaluation files. No model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from opsd.__main__ import main as cli
from opsd.eval import cli as eval_cli
from opsd.eval.evaluate import eval_settings
from opsd.eval.grading import group_by_problem, summarize
from opsd.eval.stats import paired_difference, problem_bootstrap_interval, wilson_interval
from opsd.runs import eval_results


def _records(correct_by_problem: dict) -> list[dict]:
    """Graded records as `opsd.eval.grading.make_record` writes them: problem id -> list of booleans (k samples)."""
    return [
        {"problem_id": pid, "sample_index": j, "completion": "\\boxed{1}", "extracted_answer": "1", "answer": "1",
         "correct": bool(c), "completion_tokens": 5, "truncated": False}
        for pid, samples in correct_by_problem.items() for j, c in enumerate(samples)
    ]


def _width(interval) -> float:
    return interval[1] - interval[0]


# ------------------------------------------------------------------------------------------ the bootstrap


def test_bootstrap_contains_the_mean_and_is_seeded():
    scores = np.random.default_rng(1).integers(0, 13, size=30) / 12
    lo, hi = problem_bootstrap_interval(scores)
    assert lo <= scores.mean() <= hi and lo < hi
    assert problem_bootstrap_interval(scores, seed=0) == (lo, hi)
    assert problem_bootstrap_interval(list(scores), seed=3) == problem_bootstrap_interval(list(scores), seed=3)
    assert isinstance(lo, float) and isinstance(hi, float)


def test_bootstrap_narrows_with_more_problems():
    pattern = [0.0, 0.25, 0.5, 1.0, 1.0, 0.75]
    few = problem_bootstrap_interval(pattern * 5)  # 30 problems
    many = problem_bootstrap_interval(pattern * 50)  # 300 problems, the same mix
    assert _width(many) < 0.5 * _width(few)  # ~ 1 / sqrt(10)


def test_bootstrap_hand_computable_cases():
    assert problem_bootstrap_interval([0.5] * 30) == (0.5, 0.5)  # every resample has mean 0.5
    # two problems, 0 and 1: resample means are 0, 0.5, 1 with chances 1/4, 1/2, 1/4 -> the 95% interval is (0, 1)
    assert problem_bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)
    assert problem_bootstrap_interval([1.0]) == (1.0, 1.0)


@pytest.mark.parametrize("kwargs", [{"per_problem_scores": []}, {"per_problem_scores": [0.5], "level": 1.0},
                                    {"per_problem_scores": [0.5], "n_resamples": 0},
                                    {"per_problem_scores": [float("nan")]}])
def test_bootstrap_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        problem_bootstrap_interval(**kwargs)


def test_correlated_samples_problem_interval_is_wider_than_wilson():
    """k = 12 samples of 30 problems, 15 always right and 15 always wrong: 360 samples but 30 independent units."""
    records = _records({f"p{i}": [i < 15] * 12 for i in range(30)})
    summary = summarize(records, 12)
    wilson = summary["avg_at_k_interval"]
    problems = summary["avg_at_k_problem_interval"]
    assert summary["avg_at_k"] == 0.5 and problems[0] <= 0.5 <= problems[1]
    assert wilson == list(wilson_interval(180, 360))  # ~[0.448, 0.552]
    assert _width(problems) > 3 * _width(wilson)  # ~0.36 (2 x 1.96 x 0.5 / sqrt(30)) against ~0.10


# ------------------------------------------------------------------------------------------ summaries


def test_summarize_adds_the_problem_interval_and_keeps_the_wilson_one():
    records = _records({"a": [1, 1, 0, 0], "b": [1, 0, 0, 0], "c": [1, 1, 1, 1]})
    summary = summarize(records, 4)
    assert summary["avg_at_k_interval"] == list(wilson_interval(7, 12))
    fractions = [sum(r["correct"] for r in g) / len(g) for g in group_by_problem(records).values()]
    assert fractions == [0.5, 0.25, 1.0]
    assert summary["avg_at_k_problem_interval"] == list(problem_bootstrap_interval(fractions))
    assert {"n_problems", "n_samples", "k", "avg_at_k", "pass_at_k", "maj_at_k", "boxed_rate",
            "mean_completion_tokens", "truncated_rate"} <= set(summary)
    assert summarize([])["avg_at_k_problem_interval"] == [0.0, 1.0]


def test_summary_table_shows_the_problem_interval_beside_the_wilson_one():
    summary = summarize(_records({"a": [1, 0], "b": [1, 1]}), 2)
    old = {k: v for k, v in summary.items() if k != "avg_at_k_problem_interval"}  # a file written before
    table = eval_cli.summary_table([{"benchmark": "synthetic", "step": 0, "k": 2, "summary": summary},
                                    {"benchmark": "synthetic", "step": 1, "k": 2, "summary": old}])
    assert list(table.columns[7:11]) == ["avg@k 95% lo", "avg@k 95% hi", "avg@k problems 95% lo",
                                         "avg@k problems 95% hi"]
    assert [table.loc[0, "avg@k problems 95% lo"], table.loc[0, "avg@k problems 95% hi"]] == \
        summary["avg_at_k_problem_interval"]
    assert table["avg@k problems 95% lo"].isna()[1]


# ------------------------------------------------------------------------------------------ paired difference


def test_paired_difference_hand_values():
    a = {"p1": 0.25, "p2": 0.5, "p3": 1.0, "only-a": 1.0}
    b = {"p3": 1.0, "p1": 0.75, "only-b": 0.0, "p2": 0.5}
    d = paired_difference(a, b)
    assert d["n"] == 3
    assert d["mean_a"] == pytest.approx(1.75 / 3) and d["mean_b"] == pytest.approx(2.25 / 3)
    assert d["difference"] == pytest.approx(0.5 / 3)
    assert d["only_a"] == ["only-a"] and d["only_b"] == ["only-b"]
    lo, hi = d["interval"]
    assert 0.0 <= lo <= d["difference"] <= hi <= 0.5  # the differences are 0.5, 0, 0
    assert paired_difference(a, b) == d  # seeded


def test_paired_interval_is_narrower_than_unpaired_for_correlated_evaluations():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, size=40)
    a = {i: float(v) for i, v in enumerate(difficulty)}
    b = {i: float(min(1.0, v + rng.choice([0.0, 1 / 12]))) for i, v in enumerate(difficulty)}  # a's easy ones, + a bit
    paired = paired_difference(a, b)["interval"]
    xa, xb = np.array(list(a.values())), np.array(list(b.values()))
    draws = np.random.default_rng(0).integers(0, 40, size=(2, 10_000, 40))
    unpaired = np.quantile(xb[draws[1]].mean(axis=1) - xa[draws[0]].mean(axis=1), [0.025, 0.975])
    assert _width(paired) < 0.25 * _width(unpaired)


def test_paired_difference_without_common_problems():
    with pytest.raises(ValueError, match="no problem is common"):
        paired_difference({"a": 1.0}, {"b": 0.0})


# ------------------------------------------------------------------------------------------ the command


def _write_eval(run_dir, step, correct_by_problem, k=12):
    records = _records(correct_by_problem)
    settings = eval_settings(k=k, temperature=1.0, top_p=0.95, max_new_tokens=8, thinking=False, backend="hf",
                             seed=0, n_problems=len(correct_by_problem), model="m", batch_size=4)
    eval_results.write_eval_json(run_dir, "synthetic", step, settings=settings, records=records,
                           summary=summarize(records, k))
    return eval_results.eval_path(run_dir, "synthetic", step)


def test_compare_cli_on_two_eval_files(tmp_path, capsys):
    a = _write_eval(tmp_path / "a", 0, {f"p{i}": [i < 10] * 12 for i in range(30)})  # 10 of 30 problems right
    b = _write_eval(tmp_path / "b", 5, {f"p{i}": [i < 20] * 12 for i in range(30)})  # 20 of 30
    assert cli(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "Avg@12 = 33.3%" in out and "Avg@12 = 66.7%" in out
    assert "B - A = +33.3 points" in out and "over 30 common problems" in out
    assert "the interval excludes 0: B is higher" in out
    # run directories: --benchmark and the last evaluated step by default
    _write_eval(tmp_path / "b", 2, {f"p{i}": [i < 11] * 12 for i in range(30)})
    assert cli(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--benchmark", "synthetic"]) == 0
    assert "step 5" in capsys.readouterr().out
    assert cli(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--step", "2"]) == 2  # a has no step 2
    assert "no evaluation of synthetic at step 2" in capsys.readouterr().err
    assert cli(["compare", str(a), str(eval_results.eval_path(tmp_path / "b", "synthetic", 2))]) == 0
    out = capsys.readouterr().out
    assert "B - A = +3.3 points" in out and "the interval includes 0" in out


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_compare_cli_bad_input(tmp_path, capsys):
    a = _write_eval(tmp_path / "a", 0, {"p1": [1, 0], "p2": [0, 0]}, k=2)
    other = _write_eval(tmp_path / "other", 0, {"q1": [1, 1]}, k=2)
    assert cli(["compare", str(a), str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in _one_error_line(capsys)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmark": "synthetic", "step": 0, "summary": {}, "records": []}))
    assert cli(["compare", str(a), str(empty)]) == 2
    assert "holds no records" in _one_error_line(capsys)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert cli(["compare", str(broken), str(a)]) == 2
    assert "not a readable evaluation JSON" in _one_error_line(capsys)
    assert cli(["compare", str(a), str(other)]) == 2
    assert "no problem is common" in _one_error_line(capsys)
    (tmp_path / "bare").mkdir()
    assert cli(["compare", str(tmp_path / "bare"), str(a)]) == 2
    assert "holds no evaluations" in _one_error_line(capsys)
    assert cli(["compare", str(tmp_path / "a"), str(a), "--benchmark", "aime24"]) == 2
    assert "no evaluation on benchmark 'aime24'" in _one_error_line(capsys)
