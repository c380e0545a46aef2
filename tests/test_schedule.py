"""The learning-rate schedule's horizon: `lr_schedule_horizon` stretches the schedule past max_steps, in the
Trainer and in opsd.loop, and the paper profiles carry the reference's 30-epoch horizon."""

from __future__ import annotations

import math
import re

import datasets
import pytest
import torch

from opsd.config import OPSDConfig, load_config, read_profile
from opsd.data import synthetic_math
from opsd.loop import train_plain
from opsd.models import apply_lora, tiny_qwen3
from opsd.rollout import Rollout
from opsd.runs.layout import read_metrics
from opsd.trainer import OPSDTrainer
from opsd.validation import InputError

PAPER_PROFILES = ["qwen3-1.7b-4xh100", "qwen3-4b-8xh100", "qwen3-8b-8xh100", "qwen3-4b-8xh100-nonthink",
                  "qwen3-8b-8xh100-nonthink"]
REFERENCE_ROWS, REFERENCE_EPOCHS = 29_434, 30  # siyanzhao/Openthoughts_math_30k_opsd; the scripts' num_train_epochs
SETTINGS = {"max_completion_length": 4, "max_length": 256, "lora_r": 4, "lora_alpha": 8, "per_device_train_batch_size": 2,
            "report_to": "none", "save_strategy": "no", "log_rollouts_every": 0, "logging_steps": 1,
            "lr_scheduler_type": "linear", "learning_rate": 1e-2, "max_steps": 3}


class FixedRollouts:
    """The same two 4-token completions at every call."""

    def __init__(self, tokenizer):
        self.eos_ids = [tokenizer.eos_token_id]
        self.ids = torch.randint(0, len(tokenizer), (2, 4), generator=torch.Generator().manual_seed(1))

    def sync_weights(self, model) -> None:
        pass

    def generate(self, prompt_ids, attention_mask, params) -> Rollout:
        rows = prompt_ids.shape[0]
        return Rollout(self.ids[:rows], torch.ones(rows, 4, dtype=torch.bool), torch.arange(rows))


def tiny_lora(tokenizer, config):
    torch.manual_seed(0)
    return apply_lora(tiny_qwen3(vocab_size=len(tokenizer), hidden_size=32, num_layers=1, seed=0),
                      config.lora_settings())


@pytest.mark.parametrize("horizon, expected", [
    (None, [1e-2, 1e-2 * 2 / 3, 1e-2 / 3]),   # the schedule ends at max_steps = 3
    (10, [1e-2, 9e-3, 8e-3]),                 # lr_0 (H - s) / H for s = 0, 1, 2 steps taken, H = 10
], ids=["max-steps", "horizon-10"])
def test_linear_schedule_over_the_horizon(tmp_path, embedded_tokenizer, horizon, expected):
    tok = embedded_tokenizer
    config = load_config(OPSDConfig, "cpu-tiny", {**SETTINGS, "output_dir": str(tmp_path / "trainer"),
                                                  "lr_schedule_horizon": horizon})
    data = datasets.Dataset.from_list([synthetic_math(1)[0]] * 2)
    OPSDTrainer(tiny_lora(tok, config), config, data, tok, rollout_backend=FixedRollouts(tok)).train()
    logged = [m["learning_rate"] for m in read_metrics(tmp_path / "trainer")]
    _, history = train_plain(config, model=tiny_lora(tok, config), tokenizer=tok, dataset=data,
                             rollout_backend=FixedRollouts(tok), log=None)
    assert logged == pytest.approx(expected, rel=1e-9)  # the Trainer stops at max_steps = 3 ...
    assert [h["learning_rate"] for h in history] == pytest.approx(expected, rel=1e-9)  # ... and so does the loop


def test_reference_horizon_at_step_100(tmp_path, embedded_tokenizer):
    """lr 5e-6 decaying linearly over 27,600 steps: 5e-6 x 27,500 / 27,600 after 100 steps (0.36% below)."""
    tok = embedded_tokenizer
    config = load_config(OPSDConfig, "cpu-tiny", {**SETTINGS, "output_dir": str(tmp_path), "learning_rate": 5e-6,
                                                  "max_steps": 100, "lr_schedule_horizon": 27_600})
    trainer = OPSDTrainer(tiny_lora(tok, config), config, datasets.Dataset.from_list(synthetic_math(2)), tok,
                          rollout_backend=FixedRollouts(tok))
    trainer.create_optimizer_and_scheduler(num_training_steps=config.max_steps)
    rates = []
    for _ in range(101):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert rates[0] == 5e-6 and rates[1] == pytest.approx(5e-6 * 27_599 / 27_600, rel=1e-12)
    assert rates[100] == pytest.approx(5e-6 * 27_500 / 27_600, rel=1e-12)
    assert 1 - rates[100] / rates[0] == pytest.approx(0.00362, abs=1e-5)


def reference_horizon(rows: int, gpus: int, batch: int, accumulation: int, epochs: int) -> int:
    """The Trainer's steps for num_train_epochs: per process ceil(rows / (gpus x batch)) micro-batches an epoch,
    ceil(that / accumulation) optimizer steps an epoch, times the epochs."""
    return epochs * math.ceil(math.ceil(rows / (gpus * batch)) / accumulation)


@pytest.mark.parametrize("profile", PAPER_PROFILES)
def test_paper_profiles_carry_the_reference_horizon(profile):
    values = read_profile(profile)
    gpus = int(re.search(r"(\d)xh100", profile).group(1))
    horizon = reference_horizon(REFERENCE_ROWS, gpus, values["per_device_train_batch_size"],
                                values["gradient_accumulation_steps"], REFERENCE_EPOCHS)
    assert horizon == 27_600  # 920 optimizer steps an epoch at 32 rollouts per step
    assert values["lr_schedule_horizon"] == horizon and values["lr_scheduler_type"] == "linear"
    assert values.get("warmup_steps", 0) == 0 and 0 < values["max_steps"] < horizon  # the run stops long before
    assert values["position_layout"] == "reference"
    assert read_profile("cpu-tiny").get("lr_schedule_horizon") is None  # the CPU profile keeps its own schedule


@pytest.mark.parametrize("overrides, message", [
    ({"lr_schedule_horizon": 2, "max_steps": 3}, r"lr_schedule_horizon=2 is out of range: .*>= max_steps \(3\)"),
    ({"lr_schedule_horizon": 0}, r"lr_schedule_horizon=0 is out of range"),
])
def test_bad_horizon_is_refused(tmp_path, overrides, message):
    with pytest.raises(InputError, match=message):
        load_config(OPSDConfig, "cpu-tiny", {"output_dir": str(tmp_path), **overrides})
