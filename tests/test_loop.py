"""opsd.loop (plain PyTorch) against OPSDTrainer on a tiny random Qwen3 with LoRA and fixed rollouts:
the same loss and LoRA gradients on one batch, the same weights after a few optimizer steps."""

from __future__ import annotations

import datasets
import pytest
import torch

from opsd.config import OPSDConfig, load_config
from opsd.data import synthetic_math
from opsd.loop import micro_batch_loss, train_plain
from opsd.models import apply_lora, tiny_qwen3
from opsd.rollout import Rollout
from opsd.runs.atomic_io import read_jsonl
from opsd.runs.layout import read_metrics
from opsd.step import LossPath
from opsd.trainer import OPSDTrainer, resolve_chunk_size

N = 5  # rollout tokens
SETTINGS = {"max_completion_length": N, "max_length": 256, "lora_r": 4, "lora_alpha": 8,
            "per_device_train_batch_size": 2, "report_to": "none", "save_strategy": "no", "log_rollouts_every": 0}


def lora_model(tokenizer, config):
    """Tiny Qwen3 + LoRA, with seeded non-zero B factors (at B = 0 the student is the teacher: no gradient)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = apply_lora(tiny_qwen3(vocab_size=len(tokenizer), hidden_size=32, num_layers=1, seed=0),
                           config.lora_settings())
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape) * 0.05)
    return model


class FixedRollouts:
    """A rollout backend that returns the same completions every call (row r of 8 fixed ones, ragged)."""

    def __init__(self, tokenizer):
        generator = torch.Generator().manual_seed(3)
        self.eos_ids = [tokenizer.eos_token_id]
        self.ids = torch.randint(0, len(tokenizer), (8, N), generator=generator)
        self.mask = torch.ones(8, N, dtype=torch.bool)
        self.mask[0, 3:] = False
        self.mask[3, 1:] = False

    def sync_weights(self, model) -> None:
        pass

    def generate(self, prompt_ids, attention_mask, params) -> Rollout:
        rows = prompt_ids.shape[0] * params.n
        return Rollout(self.ids[:rows], self.mask[:rows], torch.arange(prompt_ids.shape[0]).repeat_interleave(params.n))


def config_for(tmp_path, **overrides) -> OPSDConfig:
    return load_config(OPSDConfig, "cpu-tiny", {**SETTINGS, "output_dir": str(tmp_path), **overrides})


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("overrides", [
    {"clip": 0.05, "clip_mode": "pointwise"},
    {"loss_type": "sampled_token"},
    {"fused_hidden_loss": True, "divergence_chunk_size": 3},
    {"teacher_mode": "dynamic", "beta": 0.5, "num_generations": 2},
], ids=["pointwise-clip", "sampled-token", "fused", "dynamic-jsd-2-samples"])
def test_one_batch_loss_and_gradients_equal_the_trainers(tmp_path, embedded_tokenizer, overrides):
    tok = embedded_tokenizer
    config = config_for(tmp_path, **overrides)
    model = lora_model(tok, config)
    trainer = OPSDTrainer(model, config, synthetic_math(4), tok, rollout_backend=FixedRollouts(tok))
    rows = trainer.data_collator([synthetic_math(4)[i] | {"row_id": i} for i in range(2)])

    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's own loop; training_step divides by it
    trainer_loss = trainer.training_step(trainer.model, rows)  # compute_loss + backward
    trainer_grads = lora_grads(model)
    model.zero_grad()

    model.train()
    path = LossPath(resolve_chunk_size(config, len(tok)), config.fused_hidden_loss)
    result = micro_batch_loss(model, tok, rows, config, FixedRollouts(tok), config.teacher_mode, path)
    result.loss.backward()
    plain_grads = lora_grads(model)

    loss_diff = abs(trainer_loss.item() - result.loss.item())
    grad_diff = max((trainer_grads[k] - plain_grads[k]).abs().max().item() for k in trainer_grads)
    print(f"{overrides}: loss {result.loss.item():.6g}, |loss diff| {loss_diff:.3g}, max |grad diff| {grad_diff:.3g}")
    assert loss_diff <= 1e-6 and grad_diff <= 1e-6
    assert max(g.abs().max().item() for g in plain_grads.values()) > 1e-6  # a real gradient was compared


def test_train_plain_takes_the_trainers_optimizer_steps(tmp_path, embedded_tokenizer):
    """3 steps x 2 accumulated micro-batches, linear schedule with warm-up, active gradient clipping, weight
    decay: the same per-step loss, gradient norm and learning rate, and the same LoRA weights at the end.
    The 4 rows are one problem repeated, so the two data orders (Trainer's sampler, the loop's) see the same
    batches."""
    tok = embedded_tokenizer
    config = config_for(tmp_path, max_steps=3, gradient_accumulation_steps=2, learning_rate=1e-2,
                        lr_scheduler_type="linear", warmup_steps=1, max_grad_norm=0.01, weight_decay=0.1,
                        logging_steps=1, clip=0.05, clip_mode="pointwise")
    data = datasets.Dataset.from_list([synthetic_math(1)[0]] * 4)

    trainer = OPSDTrainer(lora_model(tok, config), config, data, tok, rollout_backend=FixedRollouts(tok))
    trainer.train()
    model, history = train_plain(config, model=lora_model(tok, config), tokenizer=tok, dataset=data,
                                 rollout_backend=FixedRollouts(tok), log=None)

    logged = read_metrics(tmp_path)
    assert [m["step"] for m in logged] == [h["step"] for h in history] == [1, 2, 3]
    # one key per quantity in metrics.jsonl: the loss as `loss` (no `objective`), the diagnostics' mean D[n]
    # as `divergence_mean` (no `divergence` copy); for loss_type full the two are the same number
    raw = read_jsonl(tmp_path / "metrics.jsonl")
    assert not any("objective" in r or "divergence" in r for r in raw)
    assert all(m["loss"] == pytest.approx(m["divergence_mean"], abs=1e-5) for m in logged)
    for m, h in zip(logged, history):
        assert h["loss"] == pytest.approx(m["loss"], abs=1e-4)  # the Trainer logs the loss rounded to 4 places
        assert h["grad_norm"] == pytest.approx(m["grad_norm"], rel=1e-6) and h["grad_norm"] > config.max_grad_norm
        assert h["learning_rate"] == pytest.approx(m["learning_rate"], rel=1e-9)
    assert history[0]["learning_rate"] < history[1]["learning_rate"] > history[2]["learning_rate"]  # warm-up, decay
    assert history[2]["loss"] != history[0]["loss"]  # the weights moved
    trained = dict(trainer.model.named_parameters())
    diff = max((p - trained[n]).abs().max().item() for n, p in model.named_parameters() if p.requires_grad)
    print(f"max |LoRA weight diff| after 3 steps: {diff:.3g}")
    assert diff <= 1e-6
