"""SFT and GRPO baselines together: profiles, the held-out split, the command line, and 2-step runs on the
embedded model (each baseline's rows, reward and reference settings: test_sft.py, test_grpo.py)."""

from __future__ import annotations

import json

import datasets
import pytest

from opsd.baselines.common import split_heldout
from opsd.baselines.grpo import GRPO_METRIC_NAMES, GRPORunConfig, train_grpo
from opsd.baselines.sft import SFTRunConfig, train_sft
from opsd.baselines.train import CONFIG_CLASSES, load_baseline_config, main
from opsd.config import check_keys, read_profile
from opsd.runs.checkpoints import checkpoint_steps, finished_step
from opsd.runs.layout import read_metrics

BASELINE_PROFILES = [
    "sft-cpu-tiny", "grpo-cpu-tiny",
    "sft-qwen3-1.7b-4xh100", "grpo-qwen3-1.7b-4xh100",
    "sft-qwen3-8b-8xh100", "grpo-qwen3-8b-8xh100",
]
# 2 optimizer steps of 2 rows (SFT) / 2 completions (GRPO), one checkpoint at step 2.
TINY_RUN = {
    "dataset_size": 8, "max_steps": 2, "save_steps": 2, "logging_steps": 1, "lora_r": 4, "lora_alpha": 8,
    "per_device_train_batch_size": 2,
}


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
        if kind == "grpo":  # the reference's setting: 8 generations x 16,000 tokens, temperature 1.2, vLLM colocate
            paper = (values["num_generations"], values["max_completion_length"], values["temperature"])
            assert paper == (8, 16000, 1.2)
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


@pytest.mark.parametrize(("fraction", "held"), [(0.01, 295), (0.007, 207)])  # sft_train.py, grpo_train.py
def test_heldout_split_sizes_and_determinism(fraction, held):
    """The reference's splits of the 29,434-row training set: ceil(fraction x rows) held out, the same rows
    for the same seed, another seed another set, nothing shared with the training part."""
    rows = datasets.Dataset.from_dict({"problem": [f"p{i}" for i in range(29_434)]})
    train, heldout = split_heldout(rows, fraction, 42)
    assert (len(train), len(heldout)) == (29_434 - held, held)
    assert not set(train["problem"]) & set(heldout["problem"])
    again_train, again = split_heldout(rows, fraction, 42)
    assert again["problem"] == heldout["problem"] and again_train["problem"] == train["problem"]
    assert split_heldout(rows, fraction, 7)[1]["problem"] != heldout["problem"]
    assert heldout["problem"] == rows.train_test_split(test_size=fraction, seed=42)["test"]["problem"]
    whole, none = split_heldout(rows, 0.0, 42)
    assert none is None and whole is rows


def test_finished_checkpoint_is_not_trained_again(tmp_path):
    config = load_baseline_config("sft", "sft-cpu-tiny", {"output_dir": str(tmp_path), "max_steps": 4})
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4, "max_steps": 4}))
    assert finished_step(ckpt, config.max_steps) == 4
    longer = load_baseline_config("sft", "sft-cpu-tiny", {"output_dir": str(tmp_path), "max_steps": 6})
    assert finished_step(ckpt, longer.max_steps) is None  # raising max_steps continues the run
    assert finished_step(ckpt, -1) == 4  # an epoch-based run: the step count its trainer_state recorded


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
