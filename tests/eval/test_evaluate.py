"""Tests for opsd.eval.evaluate and its parts: generation (opsd.eval.generation), result files and tables
(opsd.runs.eval_results), the command line and profiles (opsd.eval.cli), run-directory evaluation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from opsd.eval import cli as eval_cli
from opsd.eval import evaluate as ev
from opsd.eval import generation as eval_generation
from opsd.eval.grading import (
    extract_boxed,
    extract_boxed_reference,
    is_correct,
    is_correct_reference,
    summarize,
)
from opsd.runs import eval_results


def _rec(pid, j, correct, extracted="1", tokens=10):
    return {"problem_id": pid, "sample_index": j, "completion": "", "extracted_answer": extracted, "answer": "1",
            "correct": correct, "completion_tokens": tokens, "truncated": False}


# ------------------------------------------------------------------------------------------- generation


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
    records = eval_generation.records_from_vllm(outputs, ["p0", "p1"], ["0.5", "12"], max_new_tokens=8)
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
    summary = summarize(records, k=2)
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


# ------------------------------------------------------------------------------------ results on disk


def _result(step, avg, benchmark="synthetic", k=2):
    records = [_rec(str(i), j, (i + j + step) % 3 == 0) for i in range(3) for j in range(k)]
    summary = summarize(records, k)
    settings = ev.eval_settings(
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
        eval_results.write_eval_json(
            tmp_path,
            "synthetic",
            step,
            settings=settings,
            records=records,
            summary=summary,
        )
    results = eval_results.load_eval_results(tmp_path)
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
    table = eval_cli.summary_table(results)
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
    ref = eval_generation.eval_prompts(Tok(), ["What is 1 + 1?"], thinking=True)
    assert ref == ["<{'enable_thinking': True}>What is 1 + 1?\n\n" + instruction]
    old = eval_generation.eval_prompts(Tok(), ["What is 1 + 1?"], thinking=False, prompt="student")
    assert old == ["<{'enable_thinking': False}>Problem: What is 1 + 1?\n\n" + instruction]
    # the names known to the command line are the profiles of opsd.contexts, same default
    assert set(eval_generation.EVAL_PROMPTS) == set(contexts.EVAL_PROMPT_PROFILES)
    assert eval_generation.DEFAULT_EVAL_PROMPT == contexts.DEFAULT_EVAL_PROMPT
    # the prompt is part of the settings, so a file evaluated with the other prompt is not reused
    common = {"k": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 8, "thinking": False, "backend": "hf",
              "seed": 0, "n_problems": 1, "model": "m", "batch_size": 1}
    assert ev.eval_settings(**common)["prompt"] == "reference"
    assert not eval_results.same_eval_settings(ev.eval_settings(**common), ev.eval_settings(**common, prompt="student"))
    assert eval_cli.build_parser().parse_args(["--model", "m"]).prompt == "reference"
    assert eval_cli.build_parser().parse_args(["--model", "m", "--prompt", "student"]).prompt == "student"


def test_evaluation_profiles_load_and_set_the_command_line_defaults():
    paper = eval_cli.load_eval_profile("eval-paper")
    assert (paper.k, paper.temperature, paper.top_p, paper.max_new_tokens) == (12, 1.0, 0.95, 38912)
    assert paper.thinking and paper.prompt == "reference" and paper.context_length is None
    nonthink = eval_cli.load_eval_profile("eval-nonthinking")
    assert not nonthink.thinking and nonthink.top_p == 0.8 and nonthink.context_length == 32768
    assert nonthink.prompt == "reference" and nonthink.benchmarks == "aime24,aime25,hmmt25"
    assert set(eval_cli.EVAL_PROFILES) == {"eval-paper", "eval-nonthinking"}
    assert eval_cli.load_eval_profile("eval-nonthinking", {"k": 4}).k == 4
    with pytest.raises(ValueError, match="not an evaluation profile"):
        eval_cli.load_eval_profile("cpu-tiny")
    with pytest.raises(ValueError, match="Valid keys"):
        eval_cli.load_eval_profile("eval-paper", {"top_q": 0.5})
    args = eval_cli.parse_args(["--model", "m", "--profile", "eval-nonthinking"])
    assert (args.thinking, args.top_p, args.context_length, args.k) == (False, 0.8, 32768, 12)
    assert args.benchmarks == "aime24,aime25,hmmt25" and args.backend == "vllm"
    # explicit flags win over the profile
    args = eval_cli.parse_args(["--model", "m", "--profile", "eval-nonthinking", "--k", "2", "--thinking"])
    assert args.k == 2 and args.thinking and args.top_p == 0.8
    # without a profile the CPU defaults stay
    args = eval_cli.parse_args(["--model", "m"])
    assert args.k == 4 and args.context_length is None and not args.thinking


def test_eval_request_follows_the_run_then_the_profile_then_the_caller(tmp_path):
    """opsd.eval.cli.eval_request: what reproduce/eval.ipynb and python -m opsd eval evaluate a run with."""
    import inspect

    import yaml

    from opsd.config import read_profile

    # a cpu-tiny run: the demo's held-out check (train.ipynb's heldout_accuracy), greedy, its 64 tokens
    tiny = eval_cli.eval_request(read_profile("cpu-tiny"))
    assert (tiny.benchmarks, tiny.k, tiny.temperature, tiny.max_new_tokens, tiny.n_problems, tiny.batch_size) == (
        "synthetic,synthetic-paraphrased", 1, 0.0, 64, 200, 64)
    assert tiny.prompt == inspect.signature(ev.heldout_accuracy).parameters["prompt"].default == "reference"
    assert not tiny.thinking and tiny.sources["max_new_tokens"] == "run config.yaml"
    assert tiny.settings() == {"k": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 64,
                               "context_length": None, "thinking": False, "prompt": "reference", "grading": "kit",
                               "backend": "hf", "n_problems": 200, "batch_size": 64, "seed": 0}
    assert eval_cli.eval_request({"dataset": "synthetic", "student_chat_kwargs": {"enable_thinking": True}}).thinking
    # the caller wins; None is "not given"; a k above 1 asks for sampling; "all" problems
    given = eval_cli.eval_request(read_profile("cpu-tiny"), k=4, n_problems="all", max_new_tokens=None)
    assert (given.k, given.temperature, given.top_p, given.n_problems, given.max_new_tokens) == (4, 1.0, 0.95, None, 64)
    assert given.sources["k"] == "given" and given.sources["temperature"] == "default"
    assert eval_cli.eval_request(read_profile("cpu-tiny"), temperature=0.7).k == 4
    # a Qwen3 run: its token budget, every problem; the paper's profile over it
    qwen = eval_cli.eval_request(read_profile("qwen3-1.7b-4xh100"))
    assert (qwen.max_new_tokens, qwen.k, qwen.n_problems, qwen.benchmarks) == (1024, 4, None, "synthetic")
    paper = eval_cli.eval_request(read_profile("qwen3-1.7b-4xh100"), profile="eval-paper", k=2)
    assert (paper.max_new_tokens, paper.k, paper.thinking, paper.backend) == (38912, 2, True, "vllm")
    assert paper.sources["max_new_tokens"] == "profile eval-paper"
    # no run: the command line's defaults
    assert eval_cli.eval_request().settings() == {k: v for k, v in eval_cli.EVAL_DEFAULTS.items() if k != "benchmarks"}
    with pytest.raises(ValueError, match="unknown evaluation setting"):
        eval_cli.eval_request(None, top_q=0.5)
    with pytest.raises(ValueError, match="unknown evaluation prompt"):
        eval_cli.eval_request(None, prompt="nope")
    # the command line: flags not given come from --run's config.yaml, explicit ones win
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({**read_profile("cpu-tiny"), "max_completion_length": 48}))
    args = eval_cli.parse_args(["--run", str(run)])
    assert (args.k, args.temperature, args.max_new_tokens, args.limit, args.batch_size) == (1, 0.0, 48, 200, 64)
    assert args.benchmarks == "synthetic,synthetic-paraphrased"
    args = eval_cli.parse_args(["--run", str(run), "--k", "4", "--limit", "all", "--benchmarks", "synthetic"])
    assert (args.k, args.temperature, args.limit, args.benchmarks) == (4, 1.0, None, "synthetic")
    args = eval_cli.parse_args(["--run", str(tmp_path / "missing")])  # evaluate_run reports the missing run
    assert args.k == 4 and args.max_new_tokens == 1024


def test_completion_budgets_fill_the_context():
    assert eval_generation.completion_budgets([100, 30000, 32000], 32768, 32768) == [32668, 2768, 768]
    assert eval_generation.completion_budgets([10], 64, 32768) == [64]  # max_new_tokens still caps
    with pytest.raises(ValueError, match="prompt 1 has 40000 tokens"):
        eval_generation.completion_budgets([10, 40000], 100, 32768)
    # per-prompt budgets decide which vLLM samples count as cut off
    outputs = [
        SimpleNamespace(outputs=[SimpleNamespace(text="\\boxed{1}", token_ids=[1] * 5, finish_reason=None)]),
        SimpleNamespace(outputs=[SimpleNamespace(text="\\boxed{1}", token_ids=[1] * 5, finish_reason=None)]),
    ]
    records = eval_generation.records_from_vllm(outputs, ["a", "b"], ["1", "1"], [5, 9])
    assert [r["truncated"] for r in records] == [True, False]
    common = {"k": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 8, "thinking": False, "backend": "hf",
              "seed": 0, "n_problems": 1, "model": "m", "batch_size": 1}
    assert "context_length" not in ev.eval_settings(**common)
    assert ev.eval_settings(**common, context_length=32768)["context_length"] == 32768


def test_cli_parser_options():
    args = eval_cli.build_parser().parse_args(
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
    assert eval_cli.build_parser().parse_args(["--model", "m", "--no-thinking"]).thinking is False
    with pytest.raises(SystemExit):
        eval_cli.build_parser().parse_args(["--run", "a", "--model", "b"])


def test_cli_rejects_an_unknown_benchmark():
    assert eval_cli.main(["--model", "x", "--benchmarks", "nope"]) == 2  # python -m opsd eval


def test_grading_rules_the_paper_profiles_use_reference_the_rest_the_kit():
    """grading (kit | reference) travels in the request the CLI and reproduce/eval.ipynb share, into the
    result files' settings (only when it is not the kit's, so kit files keep theirs)."""
    from opsd.config import read_profile

    assert eval_cli.eval_request().grading == "kit"
    assert eval_cli.eval_request(read_profile("cpu-tiny")).grading == "kit"  # the synthetic / cpu-tiny path
    for name in eval_cli.EVAL_PROFILES:
        request = eval_cli.eval_request(read_profile("qwen3-1.7b-4xh100"), profile=name)
        assert request.grading == "reference" and request.sources["grading"] == f"profile {name}"
        assert request.settings()["grading"] == "reference"
    assert eval_cli.eval_request(None, profile="eval-paper", grading="kit").grading == "kit"  # the caller wins
    with pytest.raises(ValueError, match="unknown grading rules 'exact'"):
        eval_cli.eval_request(None, grading="exact")
    with pytest.raises(ValueError, match="unknown grading rules"):
        eval_cli.EvalProfile(grading="exact")
    assert eval_cli.parse_args(["--model", "m"]).grading == "kit"
    assert eval_cli.parse_args(["--model", "m", "--profile", "eval-paper"]).grading == "reference"
    assert eval_cli.parse_args(["--model", "m", "--profile", "eval-paper", "--grading", "kit"]).grading == "kit"
    common = {"k": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 8, "thinking": False, "backend": "hf",
              "seed": 0, "n_problems": 1, "model": "m", "batch_size": 1}
    assert "grading" not in ev.eval_settings(**common) and ev.eval_settings(**common, grading="kit") == \
        ev.eval_settings(**common)
    assert ev.eval_settings(**common, grading="reference")["grading"] == "reference"
    assert not eval_results.same_eval_settings(ev.eval_settings(**common), ev.eval_settings(**common, grading="reference"))
    with pytest.raises(ValueError, match="unknown grading rules"):
        ev.evaluate_run("runs/does-not-matter", "synthetic", grading="exact")  # before anything loads


def test_records_from_vllm_grade_with_the_chosen_rules():
    """The vLLM path grades with the request's rules: an unterminated last box after a complete one."""
    outputs = [SimpleNamespace(outputs=[SimpleNamespace(text="\\boxed{7} then \\boxed{8", token_ids=[1] * 5,
                                                         finish_reason="length")])]
    kit = eval_generation.records_from_vllm(outputs, ["a"], ["7"], 5)
    reference = eval_generation.records_from_vllm(outputs, ["a"], ["7"], 5, grading="reference")
    assert (kit[0]["extracted_answer"], kit[0]["correct"]) == ("7", True)
    assert (reference[0]["extracted_answer"], reference[0]["correct"]) == (None, False)


# ------------------------------------------------------------------------------- end to end (embedded)


@pytest.fixture(scope="module")
def embedded():
    from opsd.models import load_model_and_tokenizer

    return load_model_and_tokenizer()


@pytest.mark.slow
def test_evaluate_embedded_model_end_to_end(embedded):
    from opsd.data import load_benchmark

    model, tokenizer = embedded
    ds = load_benchmark("synthetic", n=4)
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
    # the reference's rules on the same samples (same seed): its extraction and grading in every record
    again, _ = ev.evaluate(model, tokenizer, ds, k=2, max_new_tokens=16, batch_size=4, seed=0, progress=False,
                           grading="reference")
    assert [r["completion"] for r in again] == [r["completion"] for r in records]
    assert all(r["extracted_answer"] == extract_boxed_reference(r["completion"]) for r in again)
    assert all(r["correct"] == is_correct_reference(r["extracted_answer"], r["answer"]) for r in again)
    # seeded sampling is reproducible; greedy (temperature 0) repeats one decode k times
    one = ds.select(range(1))
    runs = [
        ev.evaluate(model, tokenizer, one, k=2, max_new_tokens=6, seed=3, progress=False)[0] for _ in range(2)
    ]
    assert [r["completion"] for r in runs[0]] == [r["completion"] for r in runs[1]]
    greedy, _ = ev.evaluate(model, tokenizer, one, k=2, temperature=0.0, max_new_tokens=6, progress=False)
    assert len(greedy) == 2 and greedy[0]["completion"] == greedy[1]["completion"]
    # a context cap leaves the prompt's tokens and generates the rest: here 3 tokens
    prompt_tokens = len(tokenizer(eval_generation.eval_prompts(tokenizer, list(one["problem"]), thinking=False),
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

    kwargs = {"k": 1, "temperature": 0.0, "max_new_tokens": 12, "n_problems": 2, "batch_size": 2, "progress": False}
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
    table = eval_cli.summary_table(eval_results.load_eval_results(run))
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
