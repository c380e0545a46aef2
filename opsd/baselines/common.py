"""Run plumbing the SFT and GRPO baselines share: config checks, over-long rows, the held-out split,
loading (data first, then the model), training with resume, and run_info.json.

Over-long rows (`on_overflow`): "error" raises naming the first one, "drop" skips them (counted in the
log), "truncate" (SFT only) keeps them and lets TRL cut each to its first `max_length` tokens (counted too).
The held-out split (`heldout_fraction`, `heldout_seed`): `datasets.Dataset.train_test_split`, the call
the reference scripts make (sft_train.py: 1%, grpo_train.py: 0.7%, both seed 42), so the same input order
gives the same held-out rows; they never reach training and are handed to TRL as `eval_dataset`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import datasets
import torch
from transformers import set_seed

from opsd.data import load_problems
from opsd.models import load_model_and_tokenizer
from opsd.runs.checkpoints import export_final_model, finished_step, resume_point
from opsd.runs.layout import check_run_kind, write_run_info
from opsd.validation import InputError, Range, check_config

logger = logging.getLogger(__name__)


@dataclass
class HeldOutFields:
    """The held-out split of the training rows, mixed into both baseline configs."""

    heldout_fraction: float = field(default=0.0, metadata={"help": "Fraction of the loaded rows held out of training and given to TRL as eval_dataset (0: none); evaluated only when eval_strategy is set."})
    heldout_seed: int = field(default=42, metadata={"help": "Seed of the held-out split (kept apart from `seed`, so the same rows stay out when the run seed changes)."})

    #: what each field above accepts (`opsd.validation.check_config_values`)
    FIELD_CHECKS: ClassVar[dict] = {
        "heldout_fraction": Range(lambda v: 0 <= v < 1, "in [0, 1) (0: no held-out split)"),
    }


def prepare_baseline_config(config) -> None:
    """Checks shared by both baselines, run before TRL's own __post_init__ sees the values.

    TRL turns bf16 mixed precision on when it is left unset; here it follows `torch_dtype` instead.
    """
    if config.bf16 is None:
        config.bf16 = config.torch_dtype == "bfloat16"
    check_config(config)  # every value's type and range (opsd.validation), before TRL and transformers see them


def apply_overflow(ds, problems: Sequence[str], lengths: list[int], limit: int, on_overflow: str, what: str):
    """Rows whose `lengths` exceed `limit`: raise naming the first, drop them, or keep them for TRL to cut
    ("truncate"); "drop" and "truncate" log how many."""
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    if not too_long:
        return ds
    if on_overflow == "error":
        i = too_long[0]
        raise InputError(
            f"row {i}: the {what} has {lengths[i]} tokens but the limit is {limit} ({len(too_long)} of "
            f"{len(ds)} rows are over; problem starts {str(problems[i])[:60]!r}). Raise max_length, or set "
            "on_overflow=drop to skip such rows."
        )
    if on_overflow == "truncate":
        logger.warning("%d of %d rows have a %s over %d tokens: each is cut to its first %d (on_overflow=truncate)",
                       len(too_long), len(ds), what, limit, limit)
        return ds
    if len(too_long) == len(ds):
        raise InputError(f"all {len(ds)} rows are longer than {limit} tokens ({what}); raise max_length")
    logger.warning("dropped %d of %d rows whose %s exceeds %d tokens (on_overflow=drop)",
                   len(too_long), len(ds), what, limit)
    drop = set(too_long)
    return ds.select([i for i in range(len(ds)) if i not in drop])


def token_counts(tokenizer, texts: Sequence[str], chunk: int = 1024, *, add_special_tokens: bool = False) -> list[int]:
    """Token count of each text, tokenized in batches (by default without special tokens: a rendered chat
    has them already; TRL's plain-text rows are tokenized with them)."""
    counts: list[int] = []
    for start in range(0, len(texts), chunk):
        ids = tokenizer(list(texts[start:start + chunk]), add_special_tokens=add_special_tokens)["input_ids"]
        counts += [len(row) for row in ids]
    return counts


def chat_token_counts(tokenizer, conversations, chat_kwargs, *, add_generation_prompt: bool,
                      chunk: int = 1024) -> list[int]:
    """Token count of each chat-formatted conversation (rendered and tokenized a chunk at a time)."""
    counts: list[int] = []
    for start in range(0, len(conversations), chunk):
        texts = [
            tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=add_generation_prompt,
                                          **dict(chat_kwargs or {}))

            for c in conversations[start:start + chunk]
        ]
        counts += token_counts(tokenizer, texts, chunk)
    return counts


def split_heldout(ds: datasets.Dataset, fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train, held-out) rows: ``ceil(fraction * len(ds))`` rows held out by ``train_test_split(seed=seed)``
    (the train part comes back in that split's shuffled order, as in the reference); ``fraction`` 0: (ds, None)."""
    if not fraction:
        return ds, None
    try:
        parts = ds.train_test_split(test_size=fraction, seed=seed)
    except ValueError as err:  # e.g. too few rows to leave any for training
        raise InputError(f"heldout_fraction={fraction} of {len(ds)} rows: {err}") from err
    logger.info("held out %d of %d rows (heldout_fraction=%s, seed %d); training on %d",
                len(parts["test"]), len(ds), fraction, seed, len(parts["train"]))
    return parts["train"], parts["test"]


def load_rows_and_model(config, kind: str, require: Sequence[str]):
    """The data (every row checked), then the model: bad input fails before any model loads.

    Returns (model, tokenizer, peft_config or None, rows).
    """
    check_run_kind(config.output_dir, kind)
    ds = load_problems(config.dataset, config.dataset_split, n=config.dataset_size, seed=config.seed,
                       require=require, on_invalid=config.on_invalid_row)
    set_seed(config.seed)  # TRL draws the LoRA matrices before the Trainer seeds: seed first, runs repeat
    model, tokenizer = load_model_and_tokenizer(
        config.model_name, dtype=getattr(torch, config.torch_dtype), lora=None,
        attn_implementation=config.attn_implementation, trust_remote_code=config.trust_remote_code,
    )
    settings = config.lora_settings()
    peft_config = settings.to_peft() if settings is not None else None
    return model, tokenizer, peft_config, ds


def _finish(trainer, config, *, global_step: int, resumed_from: str | None) -> Path:
    if trainer.is_world_process_zero():
        counted = {"tokens_generated": trainer.tokens_generated} if hasattr(trainer, "tokens_generated") else {}
        write_run_info(config.output_dir, global_step=global_step, resumed_from=resumed_from, **counted)
    return Path(config.output_dir)


def run_training(trainer, config, resume, *, state_files: Sequence[str] = ()) -> Path:
    """Train from the last complete checkpoint (`resume`: "auto", a path, or False), save the final model
    into output_dir, write run_info.json; return output_dir. `state_files`: files a complete checkpoint of
    this kind holds besides the Trainer's."""
    point = resume_point(config.output_dir, resume, required=tuple(state_files))
    point = None if point is None else str(point)
    done = finished_step(point, config.max_steps) if point else None
    if done is not None:
        # Trainer would run one more step past max_steps; the finished checkpoint is the final model.
        logger.warning("%s already reached the last step (%d); exporting it as the final model", point, done)
        if trainer.is_world_process_zero():
            export_final_model(point, config.output_dir, state_files=tuple(state_files))
        if hasattr(trainer, "restore_counters"):
            trainer.restore_counters(point)
        return _finish(trainer, config, global_step=done, resumed_from=point)
    trainer.train(resume_from_checkpoint=point)
    trainer.save_model(config.output_dir)
    return _finish(trainer, config, global_step=trainer.state.global_step, resumed_from=point)
