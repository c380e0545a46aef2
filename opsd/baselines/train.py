"""Baselines: SFT and GRPO through TRL, on the same data, prompts, LoRA and run directory as OPSD.

    SFT   the student prompt -> the reference solution as the assistant turn (TRL SFTTrainer,
          prompt-completion format, so the loss covers the completion tokens only).
    GRPO  the student prompt -> G sampled completions; reward 1 when the last \\boxed{} of a
          completion is graded equal to the gold answer by math-verify, else 0 (TRL GRPOTrainer).
          Advantage of completion i of a group: (r_i - mean(r)) / (std(r) + 1e-4); a group whose
          rewards all agree has zero std and teaches nothing (logged as `reward_std_zero_fraction`).

Paper setting: SFT on the same data; GRPO with 8 generations x 16k tokens at
temperature 1.2. Both write config.yaml, metrics.jsonl and checkpoint-N/ like an OPSD run, so
`opsd.eval.evaluate.evaluate_run` and the figures read them the same way.

    python -m opsd sft  --config sft-cpu-tiny  [key=value ...]
    python -m opsd grpo --config grpo-cpu-tiny [key=value ...]

Config field clashes between `RunFields` and TRL's configs (both mean the same, so one field serves):
`trust_remote_code` (both: allow remote model code) and, for SFT, `max_length` (both: prompt +
completion tokens per sequence; `RunFields`' default 2048 wins). TRL's SFT would cut longer rows
silently; here they are measured first and raise or are dropped (with a logged count) per `on_overflow`.
GRPO has no prompt limit of its own: prompts longer than `max_length - max_completion_length` are
handled the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from opsd.runs.atomic_io import write_json_atomic
from opsd.config import RunFields
from opsd.contexts import build_student_messages
from opsd.runs.layout import (
    check_run_kind,
    checkpoint_dir,
    export_final_model,
    finished_step,
    resume_point,
    write_run_info,
)
from opsd.runs.runlog import RunDirectoryCallback
from opsd.runs.preflight import launched_processes, require_ready
from opsd.validation import InputError, check_config

logger = logging.getLogger(__name__)

KINDS = ("sft", "grpo")
DEFAULT_PROFILES = {"sft": "sft-cpu-tiny", "grpo": "grpo-cpu-tiny"}
OVERFLOW_POLICIES = ("error", "drop")
BASELINE_STATE_FILE = "baseline_state.json"

# TRL GRPOTrainer log key -> our metrics.jsonl name (the TRL names are kept as well).
#   reward               mean total reward of the step's completions
#   frac_reward_zero_std fraction of completions whose prompt group has zero reward std
#                        (= fraction of groups, as groups are equal-sized; with scale_rewards="group"/"none")
GRPO_METRIC_NAMES = {"reward": "reward_mean", "frac_reward_zero_std": "reward_std_zero_fraction"}


# ---------------------------------------------------------------------------------------------- configs


def _bf16_from_dtype(config) -> None:
    """TRL's configs turn bf16 mixed precision on when it is left unset; follow `torch_dtype` instead."""
    if config.bf16 is None:
        config.bf16 = config.torch_dtype == "bfloat16"


def _check_overflow_policy(config) -> None:
    check_config(config)  # every value's type and range, before TRL and transformers see them
    if config.on_overflow not in OVERFLOW_POLICIES:
        raise InputError(f"on_overflow must be one of {OVERFLOW_POLICIES}, got {config.on_overflow!r}")


@dataclass
class SFTRunConfig(RunFields, SFTConfig):
    """Supervised fine-tuning on (student prompt, reference solution) pairs: `RunFields` + `trl.SFTConfig`.

    `max_length` is the shared field (prompt + solution tokens); longer rows raise or are dropped
    per `on_overflow`, never truncated.
    """

    def __post_init__(self):
        _bf16_from_dtype(self)
        _check_overflow_policy(self)
        super().__post_init__()


@dataclass
class GRPORunConfig(RunFields, GRPOConfig):
    """GRPO with the boxed-answer reward: `RunFields` + `trl.GRPOConfig`.

    TRL's own fields carry the method: `num_generations` (G completions per prompt; the global
    generation batch must be divisible by it), `max_completion_length`, `temperature`, `top_p`,
    `top_k`, `beta` (KL to the reference model, 0 = none), `scale_rewards`, `loss_type`, `use_vllm`
    with `vllm_mode` / `vllm_gpu_memory_utilization`. Unset `chat_template_kwargs` take the
    student's (`student_chat_kwargs`), unset `vllm_max_model_length` takes `max_length`.
    """

    reward_functions: list[str] = field(
        default_factory=lambda: ["boxed_answer"],
        metadata={"help": "Reward function names (see REWARD_FUNCTIONS); weights via reward_weights."},
    )

    def __post_init__(self):
        _bf16_from_dtype(self)
        _check_overflow_policy(self)
        if self.chat_template_kwargs is None:
            self.chat_template_kwargs = dict(self.student_chat_kwargs or {})
        if self.vllm_max_model_length is None:
            self.vllm_max_model_length = self.max_length
        unknown = [name for name in self.reward_functions if name not in REWARD_FUNCTIONS]
        if unknown or not self.reward_functions:
            raise InputError(f"unknown reward function(s) {unknown}; valid: {sorted(REWARD_FUNCTIONS)}")
        if self.max_completion_length >= self.max_length:
            raise InputError(
                f"max_completion_length ({self.max_completion_length}) must be below max_length "
                f"({self.max_length}) to leave room for the prompt"
            )
        super().__post_init__()
        if self.scale_rewards == "batch":
            logger.warning("scale_rewards='batch': TRL's frac_reward_zero_std (our reward_std_zero_fraction) "
                           "is then 1 or 0 for the whole batch, not the fraction of prompt groups")

    @property
    def max_prompt_length(self) -> int:
        return self.max_length - self.max_completion_length


CONFIG_CLASSES = {"sft": SFTRunConfig, "grpo": GRPORunConfig}


# ---------------------------------------------------------------------------------------------- reward


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a plain string, or (conversational) the assistant messages' contents."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, (list, tuple)):
        return "".join(
            completion_text(m) for m in completion
            if not isinstance(m, dict) or m.get("role", "assistant") == "assistant"
        )
    return "" if completion is None else str(completion)


def boxed_answer_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs) -> list[float]:
    """1.0 for each completion whose last \\boxed{} is graded equal to its gold `answer`, else 0.0.

    `completions`: strings or conversational completions (lists of {"role", "content"} dicts), as TRL
    passes them; `answer`: the dataset column, one gold answer per completion. Grading is
    `opsd.eval.evaluate.is_correct(extract_boxed(text), answer)` (math-verify), the same as evaluation.
    """
    from opsd.eval.grading import extract_boxed, is_correct

    if len(completions) != len(answer):
        raise ValueError(f"{len(completions)} completions but {len(answer)} answers")
    return [
        1.0 if is_correct(extract_boxed(completion_text(c)), a) else 0.0 for c, a in zip(completions, answer)
    ]


REWARD_FUNCTIONS: dict[str, Callable[..., list[float]]] = {"boxed_answer": boxed_answer_reward}


# ---------------------------------------------------------------------------------------------- data


def _apply_overflow(ds, problems: Sequence[str], lengths: list[int], limit: int, on_overflow: str, what: str):
    """Raise naming the first row longer than `limit`, or drop such rows and log how many."""
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
    if len(too_long) == len(ds):
        raise InputError(f"all {len(ds)} rows are longer than {limit} tokens ({what}); raise max_length")
    logger.warning("dropped %d of %d rows whose %s exceeds %d tokens (on_overflow=drop)",
                   len(too_long), len(ds), what, limit)
    drop = set(too_long)
    return ds.select([i for i in range(len(ds)) if i not in drop])


def _chat_token_counts(tokenizer, conversations, chat_kwargs, *, add_generation_prompt: bool,
                       chunk: int = 1024) -> list[int]:
    """Token count of each chat-formatted conversation (rendered, then tokenized in batches)."""
    counts: list[int] = []
    for start in range(0, len(conversations), chunk):
        texts = [
            tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=add_generation_prompt,
                                          **dict(chat_kwargs or {}))
            for c in conversations[start:start + chunk]
        ]
        counts += [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return counts


def sft_dataset(ds, tokenizer=None, profile: str = "paper", *, chat_kwargs: dict | None = None,
                max_length: int | None = None, on_overflow: str = "error"):
    """Problems with solutions -> TRL's conversational prompt-completion rows.

    Each row: ``prompt = build_student_messages(problem, profile)`` (the OPSD student's chat),
    ``completion = [{"role": "assistant", "content": solution}]``, plus ``chat_template_kwargs``
    (e.g. ``{"enable_thinking": False}``) when given. With a tokenizer and `max_length`, rows whose
    chat-formatted prompt + solution is longer raise or are dropped (`on_overflow`); nothing is truncated.
    """
    from opsd.data import require_columns

    require_columns(ds, ["problem", "solution"], "SFT data")
    kwargs = dict(chat_kwargs or {})

    def to_row(row):
        out = {
            "prompt": build_student_messages(row["problem"], profile),
            "completion": [{"role": "assistant", "content": row["solution"]}],
        }
        if kwargs:
            out["chat_template_kwargs"] = kwargs
        return out

    out = ds.map(to_row, remove_columns=ds.column_names)
    if tokenizer is not None and max_length is not None:
        chats = [p + c for p, c in zip(out["prompt"], out["completion"])]
        lengths = _chat_token_counts(tokenizer, chats, kwargs, add_generation_prompt=False)
        out = _apply_overflow(out, ds["problem"], lengths, max_length, on_overflow, "prompt + solution")
    return out


def grpo_dataset(ds, tokenizer=None, profile: str = "paper", *, chat_kwargs: dict | None = None,
                 max_prompt_length: int | None = None, on_overflow: str = "error"):
    """Problems with gold answers -> TRL's conversational prompt rows with an ``answer`` column.

    ``prompt = build_student_messages(problem, profile)``; ``answer`` is the dataset's `answer` column,
    or else the last \\boxed{} of `solution` (rows with neither are dropped, with a logged count).
    With a tokenizer and `max_prompt_length`, longer prompts raise or are dropped (`on_overflow`).
    """
    from opsd.data import require_columns
    from opsd.eval.grading import extract_boxed

    require_columns(ds, ["problem"], "GRPO data")
    if "answer" not in ds.column_names:
        require_columns(ds, ["problem", "solution"], "GRPO data (no `answer` column: answers from solutions)")
    has_answer = "answer" in ds.column_names

    def to_row(row):
        gold = row["answer"] if has_answer else extract_boxed(row["solution"])
        gold = None if gold is None or str(gold).strip() == "" else str(gold)
        return {"prompt": build_student_messages(row["problem"], profile), "answer": gold}

    out = ds.map(to_row, remove_columns=[c for c in ds.column_names if c != "problem"])
    missing = [i for i, a in enumerate(out["answer"]) if a is None]
    if missing:
        if len(missing) == len(out):
            raise InputError("no row has a gold answer (an `answer` column or a \\boxed{} in `solution`)")
        logger.warning("dropped %d of %d rows without a gold answer", len(missing), len(out))
        drop = set(missing)
        out = out.select([i for i in range(len(out)) if i not in drop])
    if tokenizer is not None and max_prompt_length is not None:
        lengths = _chat_token_counts(tokenizer, out["prompt"], chat_kwargs, add_generation_prompt=True)
        out = _apply_overflow(out, out["problem"], lengths, max_prompt_length, on_overflow, "prompt")
    return out


# ---------------------------------------------------------------------------------------------- trainers


class GRPOMetricNames(TrainerCallback):
    """Adds our names for TRL's GRPO metrics to each log (`GRPO_METRIC_NAMES`); put it before the
    `RunDirectoryCallback` so metrics.jsonl receives them."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            for trl_name, ours in GRPO_METRIC_NAMES.items():
                if trl_name in logs:
                    logs[ours] = logs[trl_name]


class BaselineGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` that also counts generated tokens (`tokens_generated`, cumulative over all
    processes, kept across resumes). TRL's `num_tokens` counts prompt + completion tokens."""

    tokens_generated: int = 0

    def _generate(self, prompts):
        out = super()._generate(prompts)
        if self.model.training:
            completion_ids, tool_mask = out[1], out[2]
            if tool_mask is not None:  # only model-generated tokens
                local = sum(int(sum(m)) for m in tool_mask)
            else:
                local = sum(len(ids) for ids in completion_ids)
            total = self.accelerator.gather(torch.tensor([local], device=self.accelerator.device)).sum()
            self.tokens_generated += int(total.item())
            self._metrics["train"]["tokens_generated"] = [self.tokens_generated]
        return out

    def _save_checkpoint(self, model, trial):
        # Written first (atomically): the Trainer's trainer_state.json, written last, marks the checkpoint complete.
        if self.accelerator.is_main_process:
            folder = checkpoint_dir(self.args.output_dir, self.state.global_step)
            write_json_atomic(folder / BASELINE_STATE_FILE, {"tokens_generated": self.tokens_generated}, None)
        super()._save_checkpoint(model, trial)

    def restore_counters(self, checkpoint: str | Path) -> None:
        state_file = Path(checkpoint) / BASELINE_STATE_FILE
        if state_file.exists():
            self.tokens_generated = int(json.loads(state_file.read_text()).get("tokens_generated", 0))

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint:
            self.restore_counters(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


def _load(config, kind: str, require: Sequence[str]):
    """The data (every row checked), then the model: bad input fails before any model loads."""
    from opsd.data import load_problems
    from opsd.models import load_model_and_tokenizer

    check_run_kind(config.output_dir, kind)
    ds = load_problems(config.dataset, config.dataset_split, n=config.dataset_size, seed=config.seed,
                       require=require, on_invalid=config.on_invalid_row)
    from transformers import set_seed

    set_seed(config.seed)  # TRL draws the LoRA matrices before the Trainer seeds: seed first, runs repeat
    model, tokenizer = load_model_and_tokenizer(
        config.model_name, dtype=getattr(torch, config.torch_dtype), lora=None,
        attn_implementation=config.attn_implementation, trust_remote_code=config.trust_remote_code,
    )
    settings = config.lora_settings()
    peft_config = settings.to_peft() if settings is not None else None
    return model, tokenizer, peft_config, ds


def _required_state(config) -> tuple[str, ...]:
    """Files a complete checkpoint of this kind of run holds besides the Trainer's."""
    return (BASELINE_STATE_FILE,) if isinstance(config, GRPORunConfig) else ()


def _finish(trainer, config, *, global_step: int, resumed_from: str | None) -> Path:
    if trainer.is_world_process_zero():
        counted = {"tokens_generated": trainer.tokens_generated} if hasattr(trainer, "tokens_generated") else {}
        write_run_info(config.output_dir, global_step=global_step, resumed_from=resumed_from, **counted)
    return Path(config.output_dir)


def build_sft_trainer(config: SFTRunConfig, *, callbacks=None) -> SFTTrainer:
    """Model (LoRA via peft_config), tokenizer and prompt-completion data from the config -> `SFTTrainer`."""
    model, tokenizer, peft_config, ds = _load(config, "sft", ("problem", "solution"))
    train = sft_dataset(ds, tokenizer, config.prompt_profile, chat_kwargs=config.student_chat_kwargs,
                        max_length=config.max_length, on_overflow=config.on_overflow)
    return SFTTrainer(
        model=model, args=config, train_dataset=train, processing_class=tokenizer, peft_config=peft_config,
        callbacks=[RunDirectoryCallback(extra={"run_kind": "sft"}), *(callbacks or [])],
    )


def build_grpo_trainer(config: GRPORunConfig, *, callbacks=None) -> BaselineGRPOTrainer:
    """Model (LoRA via peft_config), tokenizer, prompts with answers, reward(s) -> `BaselineGRPOTrainer`."""
    model, tokenizer, peft_config, ds = _load(config, "grpo", ("problem",))
    train = grpo_dataset(ds, tokenizer, config.prompt_profile, chat_kwargs=config.chat_template_kwargs,
                         max_prompt_length=config.max_prompt_length, on_overflow=config.on_overflow)
    return BaselineGRPOTrainer(
        model=model, reward_funcs=[REWARD_FUNCTIONS[name] for name in config.reward_functions], args=config,
        train_dataset=train, processing_class=tokenizer, peft_config=peft_config,
        callbacks=[GRPOMetricNames(), RunDirectoryCallback(extra={"run_kind": "grpo"}), *(callbacks or [])],
    )


def _train(trainer, config, resume) -> Path:
    point = resume_point(config.output_dir, resume, required=_required_state(config))
    point = None if point is None else str(point)
    done = finished_step(point, config.max_steps) if point else None
    if done is not None:
        # Trainer would run one more step past max_steps; the finished checkpoint is the final model.
        logger.warning("%s already reached the last step (%d); exporting it as the final model", point, done)
        if trainer.is_world_process_zero():
            export_final_model(point, config.output_dir, state_files=_required_state(config))
        if hasattr(trainer, "restore_counters"):
            trainer.restore_counters(point)
        return _finish(trainer, config, global_step=done, resumed_from=point)
    trainer.train(resume_from_checkpoint=point)
    trainer.save_model(config.output_dir)
    return _finish(trainer, config, global_step=trainer.state.global_step, resumed_from=point)


def train_sft(config: SFTRunConfig, *, resume: bool | str = "auto", callbacks=None) -> Path:
    """SFT baseline: train, save the final model (adapters with LoRA) into output_dir, return it.
    Resumes from the last checkpoint-N in output_dir when there is one (`resume=False`: start over)."""
    return _train(build_sft_trainer(config, callbacks=callbacks), config, resume)


def train_grpo(config: GRPORunConfig, *, resume: bool | str = "auto", callbacks=None) -> Path:
    """GRPO baseline: train, save the final model into output_dir, return it (resumes like `train_sft`)."""
    return _train(build_grpo_trainer(config, callbacks=callbacks), config, resume)


TRAIN_FUNCTIONS = {"sft": train_sft, "grpo": train_grpo}


# ---------------------------------------------------------------------------------------------- CLI


def load_baseline_config(kind: str, profile: str | Path | None = None, overrides: dict | None = None):
    """The config of a baseline `kind` ('sft' | 'grpo') from a profile (default `<kind>-cpu-tiny`) and
    overrides; a profile written for another kind is an error."""
    from opsd.config import load_config, read_profile

    if kind not in KINDS:
        raise InputError(f"unknown baseline {kind!r}; valid: {list(KINDS)}")
    profile = profile or DEFAULT_PROFILES[kind]
    declared = read_profile(profile).get("kind")
    if declared is not None and declared != kind:
        raise InputError(f"profile {str(profile)!r} is a {declared!r} profile, not {kind!r}")
    return load_config(CONFIG_CLASSES[kind], profile, overrides)


def main(kind: str, argv: Sequence[str] | None = None) -> int:
    """`python -m opsd sft|grpo --config NAME [--no-resume] [key=value ...]`."""
    from opsd.config import command_parser, parse_overrides

    if kind not in KINDS:
        raise InputError(f"unknown baseline {kind!r}; valid: {list(KINDS)}")
    parser = command_parser(f"python -m opsd {kind}", CONFIG_CLASSES[kind], DEFAULT_PROFILES[kind],
                            f"{kind.upper()} baseline.")
    ns = parser.parse_args(list(argv or []))
    require_ready(ns.config, parse_overrides(ns.overrides), num_processes=launched_processes(), kind=kind,
                  config_class=CONFIG_CLASSES[kind])  # every missing piece of this machine, before any model loads
    config = load_baseline_config(kind, ns.config, parse_overrides(ns.overrides))
    out = TRAIN_FUNCTIONS[kind](config, resume=not ns.no_resume and "auto")
    print(f"run directory: {out}")
    return 0
