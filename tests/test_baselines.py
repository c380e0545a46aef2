"""SFT and GRPO baselines: reward, data formats, configs, and 2-step runs on the embedded model."""

from __future__ import annotations

import json

import datasets
import pytest

from opsd.baselines.train import (
    CONFIG_CLASSES,
    GRPO_METRIC_NAMES,
    GRPOMetricNames,
    GRPORunConfig,
    SFTRunConfig,
    boxed_answer_reward,
    completion_text,
    grpo_dataset,
    load_baseline_config,
    main,
    sft_dataset,
    train_grpo,
    train_sft,
)
from opsd.config import check_keys, read_profile
from opsd.contexts import apply_chat, build_student_messages
from opsd.runs.checkpoints import checkpoint_steps, finished_step
from opsd.runs.layout import read_metrics

BASELINE_PROFILES = [
    "sft-cpu-tiny", "grpo-cpu-tiny",
    "sft-qwen3-1.7b-4xh100", "grpo-qwen3-1.7b-4xh100",
    "sft-qwen3-8b-8xh100", "grpo-qwen3-8b-8xh100",
]
ROWS = datasets.Dataset.from_dict({
    "problem": ["What is 2 + 3?", "What is 10 - 4?"],
    "solution": ["2 + 3 = 5, so the answer is \\boxed{5}.", "10 - 4 = 6. The answer is \\boxed{6}."],
    "answer": ["5", "6"],
})
# 2 optimizer steps of 2 rows (SFT) / 2 completions (GRPO), one checkpoint at step 2.
TINY_RUN = {
    "dataset_size": 8, "max_steps": 2, "save_steps": 2, "logging_steps": 1, "lora_r": 4, "lora_alpha": 8,
    "per_device_train_batch_size": 2,
}


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
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        boxed_answer_reward(["a", "b"], ["1"])


# ------------------------------------------------------------------------------------------- data


def test_sft_dataset_prompt_is_student_chat_and_completion_is_solution():
    out = sft_dataset(ROWS, profile="paper", chat_kwargs={"enable_thinking": False})
    assert set(out.column_names) == {"prompt", "completion", "chat_template_kwargs"}
    assert out[0]["prompt"] == build_student_messages(ROWS[0]["problem"], "paper")
    assert out[0]["completion"] == [{"role": "assistant", "content": ROWS[0]["solution"]}]
    assert out[1]["chat_template_kwargs"] == {"enable_thinking": False}


def test_sft_loss_covers_the_solution_only(embedded_tokenizer):
    """TRL masks the tokens of the generation-prompt rendering; they must be a prefix of the full chat,
    so the loss starts exactly at the solution."""
    tok = embedded_tokenizer
    row = sft_dataset(ROWS, tok)[0]
    prompt_ids = tok(apply_chat(tok, row["prompt"]), add_special_tokens=False)["input_ids"]
    full = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=True)
    full_ids = full["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert tok.decode(full_ids[len(prompt_ids):]).startswith(ROWS[0]["solution"])


def test_sft_dataset_never_truncates(embedded_tokenizer):
    with pytest.raises(ValueError, match="row 0: the prompt \\+ solution has .* tokens but the limit is 20"):
        sft_dataset(ROWS, embedded_tokenizer, max_length=20)
    chats = [r["prompt"] + r["completion"] for r in sft_dataset(ROWS)]
    lengths = [len(embedded_tokenizer.apply_chat_template(c, return_dict=True)["input_ids"]) for c in chats]
    kept = sft_dataset(ROWS, embedded_tokenizer, max_length=min(lengths), on_overflow="drop")
    assert len(kept) == sum(n <= min(lengths) for n in lengths) >= 1


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


# ------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", BASELINE_PROFILES)
def test_profiles_have_valid_keys(name):
    values = read_profile(name)
    kind = values.pop("kind")
    assert kind in CONFIG_CLASSES
    check_keys(CONFIG_CLASSES[kind], values, name)
    assert values["report_to"] == "none" and values["output_dir"] == f"runs/{name}"
    if "qwen3" in name:  # GPU profiles: keys only (bf16 / vLLM need a GPU)
        assert values["torch_dtype"] == "bfloat16" and values["attn_implementation"] == "flash_attention_2"
        if kind == "grpo":  # the paper's setting: 8 generations x 16k tokens, temperature 1.2, vLLM colocate
            paper = (values["num_generations"], values["max_completion_length"], values["temperature"])
            assert paper == (8, 16384, 1.2)
            assert values["use_vllm"] and values["vllm_mode"] == "colocate"
        # bf16 needs a GPU; with it off, every other value must still be accepted by the config class
        config = load_baseline_config(kind, name, {"bf16": False})
        assert config.model_name.startswith("Qwen/Qwen3-") and config.use_lora and config.lora_r == 64


def test_cpu_profiles_instantiate():
    sft = load_baseline_config("sft", "sft-cpu-tiny")
    assert isinstance(sft, SFTRunConfig) and sft.bf16 is False and sft.model_name == "smollm2-135m-opsd-start"
    grpo = load_baseline_config("grpo", "grpo-cpu-tiny")
    assert isinstance(grpo, GRPORunConfig) and not grpo.use_vllm
    assert grpo.generation_batch_size % grpo.num_generations == 0
    assert grpo.chat_template_kwargs == grpo.student_chat_kwargs
    assert grpo.max_prompt_length == grpo.max_length - grpo.max_completion_length


def test_unknown_override_key_lists_valid_keys():
    with pytest.raises(ValueError, match="unknown override.*'num_generation'.*'num_generations'.*Valid keys"):
        load_baseline_config("grpo", "grpo-cpu-tiny", {"num_generation": 4})
    with pytest.raises(ValueError, match="unknown override key"):
        main("sft", ["--config", "sft-cpu-tiny", "lerning_rate=1e-4"])
    with pytest.raises(ValueError, match="is a 'grpo' profile, not 'sft'"):
        load_baseline_config("sft", "grpo-cpu-tiny")
    with pytest.raises(ValueError, match="unknown reward function"):
        load_baseline_config("grpo", "grpo-cpu-tiny", {"reward_functions": ["length"]})


def test_finished_checkpoint_is_not_trained_again(tmp_path):
    config = load_baseline_config("sft", "sft-cpu-tiny", {"output_dir": str(tmp_path), "max_steps": 4})
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4, "max_steps": 4}))
    assert finished_step(ckpt, config.max_steps) == 4
    longer = load_baseline_config("sft", "sft-cpu-tiny", {"output_dir": str(tmp_path), "max_steps": 6})
    assert finished_step(ckpt, longer.max_steps) is None  # raising max_steps continues the run
    assert finished_step(ckpt, -1) == 4  # an epoch-based run: the step count its trainer_state recorded


def test_grpo_metric_names_are_added_to_logs():
    logs = {"reward": 0.25, "frac_reward_zero_std": 0.5, "loss": 0.1}
    GRPOMetricNames().on_log(None, None, None, logs=logs)
    assert logs["reward_mean"] == 0.25 and logs["reward_std_zero_fraction"] == 0.5 and logs["loss"] == 0.1


# ------------------------------------------------------------------------------------------- runs


def _check_run_dir(out, kind, keys):
    assert (out / "config.yaml").exists() and (out / "adapter_model.safetensors").exists()
    assert checkpoint_steps(out) == [2]
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert r["run_kind"] == kind
        assert keys <= set(r), keys - set(r)
    return records


@pytest.mark.slow
def test_sft_two_steps(tmp_path):
    config = load_baseline_config("sft", "sft-cpu-tiny", {**TINY_RUN, "output_dir": str(tmp_path)})
    out = train_sft(config)
    records = _check_run_dir(out, "sft", {"loss", "learning_rate", "grad_norm"})
    assert all(r["loss"] > 0 for r in records)


@pytest.mark.slow
def test_grpo_two_steps_and_resume(tmp_path):
    overrides = {**TINY_RUN, "output_dir": str(tmp_path), "num_generations": 2, "max_completion_length": 16}
    config = load_baseline_config("grpo", "grpo-cpu-tiny", overrides)
    out = train_grpo(config)
    keys = {"loss", "reward_mean", "reward_std_zero_fraction", "tokens_generated", *GRPO_METRIC_NAMES}
    records = _check_run_dir(out, "grpo", keys)
    for r in records:
        assert 0.0 <= r["reward_mean"] <= 1.0 and 0.0 <= r["reward_std_zero_fraction"] <= 1.0
        assert r["reward_mean"] == r["reward"]
        assert r["reward_std_zero_fraction"] == r["frac_reward_zero_std"]
    # 2 completions of at most 16 tokens per step (per_device_train_batch_size counts completions)
    assert 0 < records[0]["tokens_generated"] <= 2 * 16
    assert records[0]["tokens_generated"] < records[1]["tokens_generated"] <= 2 * 2 * 16
    # Running again finds checkpoint-2, which already reached max_steps: no extra step, same metrics.
    train_grpo(load_baseline_config("grpo", "grpo-cpu-tiny", overrides))
    info = json.loads((out / "run_info.json").read_text())
    assert info["resumed_from"] == str(out / "checkpoint-2")
    assert info["tokens_generated"] == records[-1]["tokens_generated"] and info["global_step"] == 2
    assert [r["step"] for r in read_metrics(out)] == [1, 2] and checkpoint_steps(out) == [2]
