"""OPSD in plain PyTorch: the whole training loop, top to bottom, without `transformers.Trainer`.

The step is `OPSDTrainer`'s (both call `opsd.step.opsd_loss`); everything the Trainer does around it is
written out here: AdamW, the config's learning-rate schedule, gradient accumulation, gradient clipping, and
the teacher (fixed: LoRA adapters off in the teacher pass; ema: updated after every optimizer step). One
process, no checkpoints, no metrics files, no mixed precision or gradient checkpointing: read it to see
what training does, use `python -m opsd train` for real runs.

    python -m opsd.loop --config cpu-tiny max_steps=3 [--save DIR]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import torch
from transformers import get_scheduler, set_seed

from opsd.config import DEFAULT_PROFILE, OPSDConfig, load_config, parse_overrides
from opsd.contexts import build_dual_contexts, join_rollout
from opsd.data import load_problems
from opsd.models import load_model_and_tokenizer
from opsd.packed_linear import packed_forwards
from opsd.privileged import with_teacher_context
from opsd.rollout import HFRollout
from opsd.step import LossPath, StepResult, opsd_loss
from opsd.teacher import EMATeacher
from opsd.trainer import resolve_chunk_size


def shuffled_batches(num_rows: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Row indices, batch_size at a time, in a new random order every epoch (a short last batch is kept)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(num_rows, generator=generator).tolist()
        for start in range(0, num_rows, batch_size):
            yield order[start : start + batch_size]


def micro_batch_loss(model, tokenizer, rows: dict, config: OPSDConfig, sampler, teacher, path: LossPath) -> StepResult:
    """One micro-batch: rows {"problem", "solution", "row_id": lists} -> both roles' prompts -> rollouts
    sampled from the student's prompts (no grad) -> [prompt][rollout] -> `opsd_loss` with the config's
    objective, `teacher` ("fixed" | "dynamic" | an EMATeacher) and `path` (on packed CPU weights when
    config.fast_inference)."""
    contexts = build_dual_contexts(tokenizer, rows["problem"], rows["solution"], row_ids=rows["row_id"],
                                   **config.context_kwargs())
    rollout = sampler.generate(contexts.student.input_ids, contexts.student.attention_mask, config.sampling_params())
    contexts = contexts.repeat_interleave(config.num_generations)  # rollout i * n + j belongs to problem i
    batch = join_rollout(contexts, rollout.completion_ids, rollout.completion_mask)
    with packed_forwards(model, enabled=config.fast_inference):
        return opsd_loss(model, batch.to(next(model.parameters()).device), config.objective, teacher, path=path)


def train_plain(config: OPSDConfig, *, model=None, tokenizer=None, dataset=None, rollout_backend=None, log=print):
    """Train with OPSD for config.max_steps optimizer steps; returns (model, history: one dict per step).

    model / tokenizer / dataset default to the config's (the model with LoRA); rollout_backend defaults to
    `HFRollout` (sampling with transformers' generate from the current weights).
    """
    # 1. model, tokenizer, problems --------------------------------------------------------------------
    set_seed(config.seed)  # before loading: LoRA's A matrices are drawn at load time
    if model is None:

        model, tokenizer = load_model_and_tokenizer(
            config.model_name, dtype=getattr(torch, config.torch_dtype), lora=config.lora_settings(),
            device=config.device, attn_implementation=config.attn_implementation,
        )
    if dataset is None:

        dataset = load_problems(config.dataset, config.dataset_split, n=config.dataset_size, seed=config.seed,
                                require=("problem", "solution"), on_invalid=config.on_invalid_row)
    dataset = with_teacher_context(dataset, config.teacher_context, config.seed)  # what the teacher reads
    steps, accumulate = config.max_steps, config.gradient_accumulation_steps

    # 2. optimizer: AdamW (weight decay on matrices, not on biases / norms) and the learning-rate schedule ---
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  eps=config.adam_epsilon, fused=config.optim == "adamw_torch_fused")
    horizon = config.lr_schedule_steps  # the schedule's length: lr_schedule_horizon, else max_steps
    schedule = get_scheduler(config.lr_scheduler_type, optimizer, num_warmup_steps=config.get_warmup_steps(horizon),
                             num_training_steps=horizon, scheduler_specific_kwargs=config.lr_scheduler_kwargs)

    # 3. teacher, sampler, objective ----------------------------------------------------------------------
    ema = EMATeacher(model, decay=config.ema_decay) if config.teacher_mode == "ema" else None
    sampler = rollout_backend if rollout_backend is not None else HFRollout(model, tokenizer, fast=config.fast_inference)
    head = model.get_output_embeddings().weight
    teacher = ema if ema is not None else config.teacher_mode  # the objective itself: config.objective
    path = LossPath(resolve_chunk_size(config, head.shape[0], head.device), config.fused_hidden_loss)

    # 4. the loop: per optimizer step, `accumulate` micro-batches of problems -------------------------------
    batches = shuffled_batches(len(dataset), config.per_device_train_batch_size, config.seed)
    history = []
    model.train()
    for step in range(1, steps + 1):
        start, step_loss = time.perf_counter(), 0.0
        for _ in range(accumulate):
            indices = next(batches)
            rows = {**dataset[indices], "row_id": indices}
            # rollout, teacher pass (no grad), student pass, divergence; gradients add up over micro-batches
            result = micro_batch_loss(model, tokenizer, rows, config, sampler, teacher, path)
            (result.loss / accumulate).backward()
            step_loss += result.loss.item() / accumulate
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm) if config.max_grad_norm > 0 else None
        learning_rate = schedule.get_last_lr()[0]
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
        history.append({"step": step, "loss": step_loss, "learning_rate": learning_rate,
                        "grad_norm": None if grad_norm is None else grad_norm.item(),
                        "seconds": time.perf_counter() - start})
        if log is not None:
            norm = "" if grad_norm is None else f"  grad_norm {grad_norm.item():.3f}"
            log(f"step {step}/{steps}  loss {step_loss:+.4f}{norm}  lr {learning_rate:.2e}  "
                f"{history[-1]['seconds']:.1f} s")
    return model, history


def main(argv: list[str] | None = None) -> int:
    """`python -m opsd.loop --config NAME [key=value ...] [--save DIR]`."""

    parser = argparse.ArgumentParser(prog="python -m opsd.loop", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_PROFILE, help="profile name or YAML path")
    parser.add_argument("--save", help="folder for the trained model (LoRA adapters) at the end")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config fields")
    ns = parser.parse_args(argv)
    model, _ = train_plain(load_config(OPSDConfig, ns.config, parse_overrides(ns.overrides)))
    if ns.save:
        model.save_pretrained(ns.save)
        print(f"saved: {ns.save}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
