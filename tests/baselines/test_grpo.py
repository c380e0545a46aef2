"""GRPO baseline: the two box rules of the reward, the prompt forms and columns, the held-out split reaching
the trainer, the metric names, and the paper profiles' reference settings."""

from __future__ import annotations

import datasets
import pytest

from opsd.baselines import grpo as grpo_module
from opsd.baselines.grpo import (
    GRPOMetricNames,
    boxed_answer_reward,
    build_grpo_trainer,
    completion_text,
    first_box_after_think,
    first_box_after_think_reward,
    grpo_dataset,
    grpo_messages,
)
from opsd.baselines.train import load_baseline_config
from opsd.contexts import build_student_messages
from opsd.models import tiny_qwen3

ROWS = datasets.Dataset.from_dict({
    "problem": ["What is 2 + 3?", "What is 10 - 4?"],
    "solution": ["2 + 3 = 5, so the answer is \\boxed{5}.", "10 - 4 = 6. The answer is \\boxed{6}."],
    "answer": ["5", "6"],
})


# ------------------------------------------------------------------------------------------- reward


def test_reward_plain_strings():
    completions = ["so 2 + 3 = \\boxed{5}", "the answer is \\boxed{6}", "no box: 5", "\\boxed{\\frac{1}{2}}"]
    assert boxed_answer_reward(completions, ["5", "5", "5", "0.5"]) == [1.0, 0.0, 0.0, 1.0]


def test_reward_conversational_completions():
    completions = [
        [{"role": "assistant", "content": "First \\boxed{4}, no wait: \\boxed{5}"}],  # last box counts
        [{"role": "assistant", "content": "\\boxed{7}"}],
        [{"role": "assistant", "content": "cut off \\boxed{5"}],  # unterminated box: no answer
    ]
    assert boxed_answer_reward(completions, ["5", "5", "5"], trainer_state=None) == [1.0, 0.0, 0.0]
    two_turns = [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert completion_text(two_turns) == "ab"


def test_reward_length_mismatch():
    for reward in (boxed_answer_reward, first_box_after_think_reward):
        with pytest.raises(ValueError, match="2 completions but 1 answers"):
            reward(["a", "b"], ["1"])


def test_first_box_after_the_last_think_end():
    """The reference's rule (grpo_train.py, extract_boxed_answer), on hand-written completions."""
    think = "<think>maybe \\boxed{3}, then </think> no: \\boxed{4}</think>"
    cases = {
        think + "So \\boxed{5}, i.e. \\boxed{6}.": "5",                 # first box after the LAST </think>
        think + "no box after the thinking": None,                      # boxes inside the thinking do not count
        "<think>\\boxed{1}</think>\\boxed{\\frac{1}{2}} and \\boxed{2}": "\\frac{1}{2}",  # braces nest
        "no thinking: \\boxed{ 7 } then \\boxed{8}": "7",               # no </think>: the whole text, first box
        "\\boxed{9": None,                                              # cut before its closing brace
        "<think>\\boxed{1}": "1",                                       # an unclosed thinking block is the text
        "nothing here": None,
    }
    for text, expected in cases.items():
        assert first_box_after_think(text) == expected, text


def test_the_two_rules_grade_differently():
    completions = [
        "<think>\\boxed{5}</think>The answer is \\boxed{6}.",   # both: 6
        "\\boxed{5} ... on reflection \\boxed{6}",               # kit: last box 6; reference: first box 5
        "<think>it is \\boxed{5}</think>I am not sure.",         # kit: 5; reference: nothing after </think>
    ]
    answers = ["6", "5", "5"]
    assert boxed_answer_reward(completions, answers) == [1.0, 0.0, 1.0]
    assert first_box_after_think_reward(completions, answers) == [1.0, 1.0, 0.0]
    conversational = [[{"role": "assistant", "content": c}] for c in completions]
    assert first_box_after_think_reward(conversational, answers) == [1.0, 1.0, 0.0]


# ------------------------------------------------------------------------------------------- data


def test_grpo_dataset_answers_from_column_or_solution(embedded_tokenizer):
    out = grpo_dataset(ROWS)
    assert out[0]["prompt"] == build_student_messages("What is 2 + 3?") and out["answer"] == ["5", "6"]
    no_answer = datasets.Dataset.from_dict({
        "problem": ["p1", "p2", "p3"], "solution": ["so \\boxed{12}", "no box", "\\boxed{\\frac{1}{3}}"],
    })
    derived = grpo_dataset(no_answer)
    assert derived["answer"] == ["12", "\\frac{1}{3}"]  # the row without a box is dropped
    with pytest.raises(ValueError, match="the prompt has .* tokens but the limit is 5"):
        grpo_dataset(ROWS, embedded_tokenizer, max_prompt_length=5)


def test_reference_prompt_keeps_problem_prefix_and_one_newline():
    content = grpo_messages("What is 2 + 3?", "reference")[0]["content"]
    assert content == "Problem: What is 2 + 3?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert grpo_messages("P?", "student", "plain") == build_student_messages("P?", "plain")
    with pytest.raises(ValueError, match="grpo_prompt must be"):
        grpo_messages("P?", "teacher")


def test_question_and_answer_columns_are_read():
    rows = datasets.Dataset.from_dict({
        "problem": ["unused 1", "unused 2"], "Question": ["What is 1 + 1?", "What is 2 + 2?"],
        "answer": ["0", "0"], "Answer": ["2", "4"],
    })
    out = grpo_dataset(rows, grpo_prompt="reference", problem_column="Question", answer_column="Answer")
    assert out["answer"] == ["2", "4"] and out["problem"] == ["What is 1 + 1?", "What is 2 + 2?"]
    assert out[1]["prompt"][0]["content"].startswith("Problem: What is 2 + 2?\nPlease reason")
    # without those columns (the loader names a lone `Question` `problem`): the canonical ones
    fallback = grpo_dataset(ROWS, grpo_prompt="reference", problem_column="Question", answer_column="Answer")
    assert fallback["answer"] == ["5", "6"] and fallback[0]["prompt"][0]["content"].startswith("Problem: What is 2 + 3?\n")
    with pytest.raises(ValueError, match="missing columns \\['Question'\\]"):
        grpo_dataset(datasets.Dataset.from_dict({"text": ["x"], "answer": ["1"]}), problem_column="Question")
    with pytest.raises(ValueError, match="row 1.*Question"):
        grpo_dataset(datasets.Dataset.from_dict({"problem": ["a", "b"], "Question": ["q", ""], "answer": ["1", "2"]}),
                     problem_column="Question")


def test_grpo_refuses_truncation(tmp_path):
    with pytest.raises(ValueError, match="on_overflow='truncate': must be one of \\['error', 'drop'\\]"):
        load_baseline_config("grpo", "grpo-cpu-tiny", {"on_overflow": "truncate", "output_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="grpo_prompt='plain': must be one of"):
        load_baseline_config("grpo", "grpo-cpu-tiny", {"grpo_prompt": "plain", "output_dir": str(tmp_path)})


def test_heldout_prompts_go_to_eval_dataset_not_training(embedded_tokenizer, tmp_path, monkeypatch):
    rows = datasets.Dataset.from_dict({"problem": [f"What is {i} + 1?" for i in range(10)],
                                       "answer": [str(i + 1) for i in range(10)]})
    model = tiny_qwen3(vocab_size=len(embedded_tokenizer), max_position_embeddings=1024)
    monkeypatch.setattr(grpo_module, "load_rows_and_model", lambda *a: (model, embedded_tokenizer, None, rows))
    config = load_baseline_config("grpo", "grpo-cpu-tiny", {
        "output_dir": str(tmp_path), "heldout_fraction": 0.3, "heldout_seed": 42, "max_steps": 1,
        "reward_functions": ["first_box_after_think"],
    })
    trainer = build_grpo_trainer(config)
    expected = rows.train_test_split(test_size=0.3, seed=42)
    assert trainer.eval_dataset["problem"] == expected["test"]["problem"]  # ceil(0.3 x 10) = 3 rows
    assert trainer.train_dataset["problem"] == expected["train"]["problem"]
    assert trainer.reward_funcs[0] is first_box_after_think_reward


def test_grpo_metric_names_are_added_to_logs():
    logs = {"reward": 0.25, "frac_reward_zero_std": 0.5, "loss": 0.1}
    GRPOMetricNames().on_log(None, None, None, logs=logs)
    assert logs["reward_mean"] == 0.25 and logs["reward_std_zero_fraction"] == 0.5 and logs["loss"] == 0.1


# ------------------------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("name", ["grpo-qwen3-1.7b-4xh100", "grpo-qwen3-8b-8xh100"])
def test_grpo_profiles_follow_the_reference_script(name):
    """grpo_train.py / scripts/run_grpo.sh of louieworth/OPSD@7448751."""
    config = load_baseline_config("grpo", name, {"bf16": False})
    assert config.chat_template_kwargs == {"enable_thinking": True}  # thinking policy
    assert (config.grpo_prompt, config.problem_column, config.answer_column) == ("reference", "Question", "Answer")
    assert config.reward_functions == ["first_box_after_think"]
    assert config.loss_type == "grpo" and config.num_iterations == 2 and config.beta == 0.0
    assert config.num_generations == 8 and config.generation_batch_size == 32  # 4 prompts x 8 per round
    gpus = int(name.split("-")[-1][0])
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps * gpus == 32
    assert (config.temperature, config.max_completion_length, config.max_prompt_length) == (1.2, 16000, 2048)
    assert (config.learning_rate, config.lr_scheduler_type, config.warmup_steps) == (5e-6, "linear", 0)
    assert (config.max_grad_norm, config.lora_dropout, config.save_steps) == (1.0, 0.05, 20)
    assert (config.heldout_fraction, config.heldout_seed) == (0.007, 42)
    assert config.max_steps == 500 and config.max_steps // config.save_steps >= 10  # checkpoints to find the peak


def test_cpu_grpo_keeps_the_kit_choices():
    config = load_baseline_config("grpo", "grpo-cpu-tiny")
    assert (config.grpo_prompt, config.problem_column, config.reward_functions) == ("student", "problem", ["boxed_answer"])
    assert (config.heldout_fraction, config.lora_dropout) == (0.0, 0.0)
