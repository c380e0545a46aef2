"""Tests for opsd.evaluate: extraction, grading, pass@k / Avg@k, loaders, run-directory evaluation."""

from __future__ import annotations

import itertools
import json
import threading
from types import SimpleNamespace

import pytest

from opsd import evaluate as ev
from opsd.evaluate import avg_at_k, extract_boxed, is_correct, pass_at_k

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
    summary = ev.summarize(records, k=4)
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
        ev.make_record(pid, j, "no box here" if a is None else f"so \\boxed{{{a}}}", gold, 5)
        for j, a in enumerate(answers)
    ]


def test_majority_vote_groups_equivalent_answers_and_breaks_ties_by_first_sample():
    # 1/2, \frac{1}{2} and 0.5 are one answer for math-verify: it outvotes the two 3s
    assert ev.majority_vote(["3", "1/2", "\\frac{1}{2}", "3", "0.5"]) == 1
    # 2 vs 2: the group opened first wins, whichever order the tie comes in
    assert ev.majority_vote(["4", "3", "3", "4"]) == 0
    assert ev.majority_vote(["3", "4", "4", "3"]) == 0
    # samples without an answer do not vote, and no answer at all gives no winner
    assert ev.majority_vote([None, "", "7", None]) == 2
    assert ev.majority_vote([None, None]) is None
    assert ev.answers_equivalent("\\dfrac{3}{4}", "0.75") and not ev.answers_equivalent("3", "4")


def test_maj_at_k_on_hand_made_records():
    records = (
        _graded("a", ["5", "\\frac{10}{2}", "6", "7"], "5")  # majority 5 (2 votes): right, Avg 2/4
        + _graded("b", ["6", "6", "5", None], "5")  # majority 6: wrong although one sample is right
        + _graded("c", ["8", "5", "5", "8"], "5")  # 2 vs 2, 8 came first: wrong
        + _graded("d", [None, None, None, None], "5")  # nothing boxed: wrong
        + _graded("e", [None, "5", None, None], "5")  # the only vote is right
    )
    assert ev.maj_at_k(records) == pytest.approx(2 / 5)
    # k = 1: the first sample alone; k counts samples in sample_index order, not file order
    assert ev.maj_at_k(records, 1) == pytest.approx(1 / 5)
    assert ev.maj_at_k(list(reversed(records)), 1) == pytest.approx(1 / 5)
    summary = ev.summarize(records, k=4)
    assert summary["maj_at_k"] == pytest.approx(2 / 5)
    assert summary["avg_at_k"] == pytest.approx((2 / 4 + 1 / 4 + 2 / 4 + 0 + 1 / 4) / 5)
    assert ev.maj_at_k([]) == 0.0


def test_avg_at_k_weights_problems_equally():
    records = [_rec("a", 0, True)] + [_rec("b", j, False) for j in range(3)]
    assert avg_at_k(records) == pytest.approx(0.5)
    assert avg_at_k([]) == 0.0


def test_records_from_vllm_outputs():
    """The conversion of vLLM RequestOutputs (duck-typed here) into graded records."""
    outputs = [
        SimpleNamespace(
            outputs=[
                SimpleNamespace(text=r"... \boxed{\frac{1}{2}}", token_ids=[5, 6, 7], finish_reason="stop"),
                SimpleNamespace(text="no answer yet", token_ids=[5] * 8, finish_reason="length"),
            ]
        ),
        SimpleNamespace(
            outputs=[
                SimpleNamespace(text=r"\boxed{12}", token_ids=[1, 2], finish_reason="stop"),
                SimpleNamespace(text=r"\boxed{13}", token_ids=[1, 2, 3], finish_reason="stop"),
            ]
        ),
    ]
    records = ev.records_from_vllm(outputs, ["p0", "p1"], ["0.5", "12"], max_new_tokens=8)
    assert [(r["problem_id"], r["sample_index"]) for r in records] == [
        ("p0", 0),
        ("p0", 1),
        ("p1", 0),
        ("p1", 1),
    ]
    assert [r["correct"] for r in records] == [True, False, True, False]
    assert [r["extracted_answer"] for r in records] == [r"\frac{1}{2}", None, "12", "13"]
    assert [r["completion_tokens"] for r in records] == [3, 8, 2, 3]
    assert [r["truncated"] for r in records] == [False, True, False, False]
    summary = ev.summarize(records, k=2)
    assert summary["avg_at_k"] == pytest.approx(0.5) and summary["pass_at_k"]["2"] == pytest.approx(1.0)


def test_vllm_backend_runs_where_vllm_is_installed():
    vllm = pytest.importorskip("vllm", reason="vllm is not installed (GPU-only optional dependency)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("the vllm backend needs a CUDA GPU")
    from datasets import Dataset

    from opsd.models import embedded_model_dir

    llm = vllm.LLM(model=str(embedded_model_dir()), seed=0, gpu_memory_utilization=0.3, max_model_len=1024)
    ds = Dataset.from_dict(
        {"id": ["a", "b"], "problem": ["What is 2+3?", "What is 4*5?"], "answer": ["5", "20"]}
    )
    records, summary = ev.evaluate(llm, None, ds, k=2, max_new_tokens=32, backend="vllm", progress=False)
    assert len(records) == 4 and summary["n_problems"] == 2


# ---------------------------------------------------------------------------------------------- loaders

AIME_ROWS = {
    "id": [60, 61],
    "problem": ["Find $x$ if $x + 1 = 3$.", "Compute $7 \\cdot 6$."],
    "solution": ["Subtract: $x = \\boxed{2}$.", "It is $42$."],
    "answer": ["2", "042"],
    "url": ["u1", "u2"],
    "year": ["2024", "2024"],
}
HMMT_ROWS = [
    {"problem_idx": 1, "problem": "Compute $1+1$.", "answer": "2", "problem_type": ["Algebra"]},
    {
        "problem_idx": 2,
        "problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.",
        "answer": "\\frac{3}{4}",
        "problem_type": ["Algebra", "Number Theory"],
    },
    {"problem_idx": 3, "problem": "Compute $2^3$.", "answer": "8", "problem_type": []},
]


def test_load_benchmark_from_aime_parquet(tmp_path):
    import pandas as pd

    path = tmp_path / "aime.parquet"
    pd.DataFrame(AIME_ROWS).to_parquet(path)
    ds = ev.load_benchmark(str(path))
    assert len(ds) == 2
    assert list(ds["id"]) == ["60", "61"] and list(ds["answer"]) == ["2", "042"]
    assert ds["problem"][1] == "Compute $7 \\cdot 6$."
    assert len(ev.load_benchmark(str(path), n=1)) == 1


def test_load_benchmark_from_hmmt_jsonl(tmp_path):
    path = tmp_path / "hmmt.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in HMMT_ROWS))
    ds = ev.load_benchmark(str(path))
    assert list(ds["id"]) == ["1", "2", "3"]  # from problem_idx
    assert list(ds["answer"]) == ["2", "\\frac{3}{4}", "8"]


def test_load_benchmark_answer_from_solution_and_question_alias(tmp_path):
    rows = [
        {"question": "What is 3+4?", "solution": "So \\boxed{7}."},
        {"question": "2*2?", "solution": "\\boxed{4}"},
    ]
    path = tmp_path / "amc_like.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = ev.load_benchmark(str(path))
    assert list(ds["problem"]) == ["What is 3+4?", "2*2?"]
    assert list(ds["answer"]) == ["7", "4"] and list(ds["id"]) == ["0", "1"]


def test_unknown_benchmark_names_the_valid_ones():
    with pytest.raises(ValueError, match="aime24"):
        ev.load_benchmark("aime2099")
    with pytest.raises(ValueError, match="math500"):
        ev._split_names("synthetic,aime2099")
    assert ev.main(["--model", "x", "--benchmarks", "nope"]) == 2


def test_synthetic_benchmark_is_the_heldout_split():
    from opsd import data

    ds = ev.load_benchmark("synthetic", n=5)
    assert len(ds) == 5 and set(ds.column_names) >= {"id", "problem", "answer"}
    assert list(ds["problem"]) == list(data.synthetic_math(5, split="heldout")["problem"])


# ------------------------------------------------------------------------------------ results on disk


def _result(step, avg, benchmark="synthetic", k=2):
    records = [_rec(str(i), j, (i + j + step) % 3 == 0) for i in range(3) for j in range(k)]
    summary = ev.summarize(records, k)
    settings = ev._settings(
        k=k,
        temperature=1.0,
        top_p=0.95,
        max_new_tokens=8,
        thinking=False,
        backend="hf",
        seed=0,
        n_problems=3,
        model="m",
        batch_size=4,
    )
    return records, summary, settings


def test_eval_json_round_trip_and_summary_table(tmp_path):
    for step in (0, 10, 5):
        records, summary, settings = _result(step, None)
        ev.write_eval_json(
            ev.eval_path(tmp_path, "synthetic", step),
            benchmark="synthetic",
            step=step,
            settings=settings,
            records=records,
            summary=summary,
        )
    results = ev.load_eval_results(tmp_path)
    assert [r["step"] for r in results] == [0, 5, 10]
    assert set(results[0]) >= {"benchmark", "step", "k", "settings", "summary", "records"}
    assert set(results[0]["settings"]) >= {
        "k",
        "temperature",
        "top_p",
        "max_new_tokens",
        "thinking",
        "backend",
        "seed",
        "n_problems",
        "model",
    }
    table = ev.summary_table(results)
    assert list(table["step"]) == [0, 5, 10]
    assert {"avg@k", "pass@1", "pass@2", "boxed_rate", "mean_tokens"} <= set(table.columns)
    assert list(table.columns[5:7]) == ["avg@k", "maj@k"]
    assert list(table.columns[7:9]) == ["avg@k 95% lo", "avg@k 95% hi"]
    assert (table["avg@k 95% lo"] <= table["avg@k"]).all() and (table["avg@k"] <= table["avg@k 95% hi"]).all()
    assert list(table["maj@k"]) == [r["summary"]["maj_at_k"] for r in results]
    for (_, row), res in zip(table.iterrows(), results, strict=True):
        assert row["avg@k"] == res["summary"]["avg_at_k"]
        assert row["pass@2"] == res["summary"]["pass_at_k"]["2"]


def test_eval_prompts_use_the_evaluation_profile():
    from opsd import contexts

    class Tok:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kwargs):
            return f"<{kwargs}>" + messages[0]["content"]

    instruction = contexts.BOXED_INSTRUCTION
    ref = ev.eval_prompts(Tok(), ["What is 1 + 1?"], thinking=True)
    assert ref == ["<{'enable_thinking': True}>What is 1 + 1?\n\n" + instruction]
    old = ev.eval_prompts(Tok(), ["What is 1 + 1?"], thinking=False, prompt="student")
    assert old == ["<{'enable_thinking': False}>Problem: What is 1 + 1?\n\n" + instruction]
    # the names known to the command line are the profiles of opsd.contexts, same default
    assert set(ev.EVAL_PROMPTS) == set(contexts.EVAL_PROMPT_PROFILES)
    assert ev.DEFAULT_EVAL_PROMPT == contexts.DEFAULT_EVAL_PROMPT
    # the prompt is part of the settings, so a file evaluated with the other prompt is not reused
    common = dict(k=1, temperature=0.0, top_p=1.0, max_new_tokens=8, thinking=False, backend="hf", seed=0,
                  n_problems=1, model="m", batch_size=1)
    assert ev._settings(**common)["prompt"] == "reference"
    assert not ev._same_settings(ev._settings(**common), ev._settings(**common, prompt="student"))
    assert ev.build_parser().parse_args(["--model", "m"]).prompt == "reference"
    assert ev.build_parser().parse_args(["--model", "m", "--prompt", "student"]).prompt == "student"


def test_evaluation_profiles_load_and_set_the_command_line_defaults():
    paper = ev.load_eval_profile("eval-paper")
    assert (paper.k, paper.temperature, paper.top_p, paper.max_new_tokens) == (12, 1.0, 0.95, 38912)
    assert paper.thinking and paper.prompt == "reference" and paper.context_length is None
    nonthink = ev.load_eval_profile("eval-nonthinking")
    assert not nonthink.thinking and nonthink.top_p == 0.8 and nonthink.context_length == 32768
    assert nonthink.prompt == "reference" and nonthink.benchmarks == "aime24,aime25,hmmt25"
    assert set(ev.EVAL_PROFILES) == {"eval-paper", "eval-nonthinking"}
    assert ev.load_eval_profile("eval-nonthinking", {"k": 4}).k == 4
    with pytest.raises(ValueError, match="not an evaluation profile"):
        ev.load_eval_profile("cpu-tiny")
    with pytest.raises(ValueError, match="Valid keys"):
        ev.load_eval_profile("eval-paper", {"top_q": 0.5})
    args = ev.parse_args(["--model", "m", "--profile", "eval-nonthinking"])
    assert (args.thinking, args.top_p, args.context_length, args.k) == (False, 0.8, 32768, 12)
    assert args.benchmarks == "aime24,aime25,hmmt25" and args.backend == "vllm"
    # explicit flags win over the profile
    args = ev.parse_args(["--model", "m", "--profile", "eval-nonthinking", "--k", "2", "--thinking"])
    assert args.k == 2 and args.thinking and args.top_p == 0.8
    # without a profile the CPU defaults stay
    args = ev.parse_args(["--model", "m"])
    assert args.k == 4 and args.context_length is None and not args.thinking


def test_completion_budgets_fill_the_context():
    assert ev.completion_budgets([100, 30000, 32000], 32768, 32768) == [32668, 2768, 768]
    assert ev.completion_budgets([10], 64, 32768) == [64]  # max_new_tokens still caps
    with pytest.raises(ValueError, match="prompt 1 has 40000 tokens"):
        ev.completion_budgets([10, 40000], 100, 32768)
    # per-prompt budgets decide which vLLM samples count as cut off
    outputs = [
        SimpleNamespace(outputs=[SimpleNamespace(text="\\boxed{1}", token_ids=[1] * 5, finish_reason=None)]),
        SimpleNamespace(outputs=[SimpleNamespace(text="\\boxed{1}", token_ids=[1] * 5, finish_reason=None)]),
    ]
    records = ev.records_from_vllm(outputs, ["a", "b"], ["1", "1"], [5, 9])
    assert [r["truncated"] for r in records] == [True, False]
    common = dict(k=1, temperature=0.0, top_p=1.0, max_new_tokens=8, thinking=False, backend="hf", seed=0,
                  n_problems=1, model="m", batch_size=1)
    assert "context_length" not in ev._settings(**common)
    assert ev._settings(**common, context_length=32768)["context_length"] == 32768


def test_cli_parser_options():
    args = ev.build_parser().parse_args(
        [
            "--run",
            "runs/x",
            "--benchmarks",
            "aime24,aime25",
            "--k",
            "12",
            "--max-new-tokens",
            "38912",
            "--thinking",
            "--backend",
            "vllm",
            "--steps",
            "0,25",
            "--limit",
            "3",
        ]
    )
    assert args.run == "runs/x" and args.k == 12 and args.thinking and args.backend == "vllm"
    assert args.steps == "0,25" and args.limit == 3 and args.model is None
    assert ev.build_parser().parse_args(["--model", "m", "--no-thinking"]).thinking is False
    with pytest.raises(SystemExit):
        ev.build_parser().parse_args(["--run", "a", "--model", "b"])


# ------------------------------------------------------------------------------- end to end (embedded)


@pytest.fixture(scope="module")
def embedded():
    from opsd.models import load_model_and_tokenizer

    return load_model_and_tokenizer()


@pytest.mark.slow
def test_evaluate_embedded_model_end_to_end(embedded):
    model, tokenizer = embedded
    ds = ev.load_benchmark("synthetic", n=4)
    records, summary = ev.evaluate(
        model, tokenizer, ds, k=2, max_new_tokens=16, batch_size=4, seed=0, progress=False
    )
    assert len(records) == 8
    fields = {
        "problem_id",
        "sample_index",
        "completion",
        "extracted_answer",
        "answer",
        "correct",
        "completion_tokens",
        "truncated",
    }
    assert all(fields <= set(r) for r in records)
    assert [r["sample_index"] for r in records] == [0, 1] * 4
    assert [r["problem_id"] for r in records[::2]] == list(ds["id"])
    assert all(0 < r["completion_tokens"] <= 16 and isinstance(r["completion"], str) for r in records)
    assert all(r["extracted_answer"] == extract_boxed(r["completion"]) for r in records)
    assert all(r["correct"] == is_correct(r["extracted_answer"], r["answer"]) for r in records)
    mean_correct = sum(r["correct"] for r in records) / 8
    assert summary["avg_at_k"] == pytest.approx(mean_correct)
    assert summary["pass_at_k"]["1"] == pytest.approx(summary["avg_at_k"])
    assert summary["boxed_rate"] == pytest.approx(sum(r["extracted_answer"] is not None for r in records) / 8)
    assert summary["mean_completion_tokens"] == pytest.approx(
        sum(r["completion_tokens"] for r in records) / 8
    )
    json.dumps(records)  # JSON-serialisable
    # seeded sampling is reproducible; greedy (temperature 0) repeats one decode k times
    one = ds.select(range(1))
    runs = [
        ev.evaluate(model, tokenizer, one, k=2, max_new_tokens=6, seed=3, progress=False)[0] for _ in range(2)
    ]
    assert [r["completion"] for r in runs[0]] == [r["completion"] for r in runs[1]]
    greedy, _ = ev.evaluate(model, tokenizer, one, k=2, temperature=0.0, max_new_tokens=6, progress=False)
    assert len(greedy) == 2 and greedy[0]["completion"] == greedy[1]["completion"]
    # a context cap leaves the prompt's tokens and generates the rest: here 3 tokens
    prompt_tokens = len(tokenizer(ev.eval_prompts(tokenizer, list(one["problem"]), thinking=False),
                                  add_special_tokens=False)["input_ids"][0])
    capped, _ = ev.evaluate(model, tokenizer, one, k=1, temperature=0.0, max_new_tokens=16,
                            context_length=prompt_tokens + 3, progress=False)
    assert capped[0]["completion_tokens"] <= 3
    assert greedy[0]["completion"].startswith(capped[0]["completion"])  # the same greedy decode, cut short


@pytest.mark.slow
def test_evaluate_run_with_a_lora_checkpoint(tmp_path, embedded):
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model

    from opsd.models import load_model_and_tokenizer

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {"model_name": "smollm2-135m-instruct", "profile": "cpu-tiny", "torch_dtype": "float32"}
        )
    )
    base, _ = load_model_and_tokenizer()
    torch.manual_seed(0)
    lora = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )  # random A and B: a non-trivial adapter
    lora.save_pretrained(run / "checkpoint-5")
    assert (run / "checkpoint-5" / "adapter_config.json").is_file()

    kwargs = dict(k=1, temperature=0.0, max_new_tokens=12, n_problems=2, batch_size=2, progress=False)
    results = ev.evaluate_run(run, "synthetic", **kwargs)
    assert [r["step"] for r in results] == [0, 5]
    for step in (0, 5):
        path = run / "eval" / "synthetic" / f"step-{step}.json"
        data = json.loads(path.read_text())
        assert data["step"] == step and data["benchmark"] == "synthetic" and len(data["records"]) == 2
        assert data["settings"]["model"] == "smollm2-135m-instruct" and data["settings"]["n_problems"] == 2
    base_text = [r["completion"] for r in results[0]["records"]]
    lora_text = [r["completion"] for r in results[1]["records"]]
    assert base_text != lora_text  # the adapter was loaded

    # resumable: the same settings are not evaluated again, other settings are
    stamp = (run / "eval" / "synthetic" / "step-5.json").stat().st_mtime_ns
    ev.evaluate_run(run, ["synthetic"], **kwargs)
    assert (run / "eval" / "synthetic" / "step-5.json").stat().st_mtime_ns == stamp
    table = ev.summary_table(ev.load_eval_results(run))
    assert list(table["step"]) == [0, 5] and list(table["checkpoint"]) == ["base", "checkpoint-5"]
    with pytest.raises(ValueError, match="no checkpoint"):
        ev.evaluate_run(run, "synthetic", steps=[7], **kwargs)


# ------------------------------------------------------------------------------------------ notebook


@pytest.mark.slow
@pytest.mark.notebook
def test_eval_notebook_runs_and_its_table_matches_the_json(tmp_path):
    """reproduce/eval.ipynb headless on the base model with tiny settings (the defaults take minutes)."""
    papermill = pytest.importorskip("papermill")
    from jupyter_client.kernelspec import KernelSpecManager

    from opsd.config import REPO_ROOT

    kernel = "opsd-kit" if "opsd-kit" in KernelSpecManager().find_kernel_specs() else "python3"
    out_dir = tmp_path / "eval-base"
    papermill.execute_notebook(
        str(REPO_ROOT / "reproduce" / "eval.ipynb"),
        str(tmp_path / "out.ipynb"),
        kernel_name=kernel,
        cwd=str(tmp_path),
        progress_bar=False,
        parameters={
            "model": "smollm2-135m-instruct",
            "output_dir": str(out_dir),
            "n_problems": 2,
            "k": 2,
            "max_new_tokens": 8,
            "batch_size": 2,
        },
    )
    data = json.loads((out_dir / "eval" / "synthetic" / "step-0.json").read_text())
    assert data["k"] == 2 and len(data["records"]) == 4 and data["settings"]["max_new_tokens"] == 8
    assert data["settings"]["prompt"] == "reference" and "maj_at_k" in data["summary"]
    # an unknown parameter is an error naming the valid ones
    with pytest.raises(papermill.PapermillExecutionError, match="valid parameters"):
        papermill.execute_notebook(
            str(REPO_ROOT / "reproduce" / "eval.ipynb"),
            str(tmp_path / "bad.ipynb"),
            kernel_name=kernel,
            cwd=str(tmp_path),
            progress_bar=False,
            parameters={"n_problem": 2},
        )


def test_summary_carries_the_wilson_interval_of_avg_at_k():
    from opsd.evaluate import make_record, summarize
    from opsd.stats import wilson_interval

    records = [make_record(i, 0, f"\\boxed{{{a}}}", "7", 5, False) for i, a in enumerate([7, 7, 7, 3])]
    summary = summarize(records, 1)
    assert summary["avg_at_k"] == 0.75
    assert summary["avg_at_k_interval"] == list(wilson_interval(3, 4))
    assert summary["avg_at_k_interval"][0] == pytest.approx(0.3006, abs=1e-4)
