"""GRPO baseline: G sampled completions per prompt, a 0/1 correctness reward (TRL GRPOTrainer).

Advantage of completion i of a group: (r_i - mean(r)) / (std(r) + 1e-4); a group whose rewards all agree
has zero std and teaches nothing (logged as `reward_std_zero_fraction`).

Settings that follow the reference's grpo_train.py (louieworth/OPSD@7448751) when the paper profiles set them:

    grpo_prompt       "student": `build_student_messages(problem, prompt_profile)`; "reference": one user
                      turn ``Problem: {problem}\\n`` + the instruction (one newline, `reference_grpo_prompt`).
    problem_column    the column the problem is read from (the reference: `Question`); `answer_column`
                      likewise for the gold answer (the reference: `Answer`).
    reward_functions  "boxed_answer": the last \\boxed{} of the completion; "first_box_after_think": the
                      first \\boxed{} after the last ``</think>`` (the whole text without one), the reference's
                      `extract_boxed_answer`. Both graded by `opsd.eval.grading.is_correct` (math-verify).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from opsd.baselines.common import (
    HeldOutFields,
    apply_overflow,
    chat_token_counts,
    load_rows_and_model,
    prepare_baseline_config,
    run_training,
    split_heldout,
)
from opsd.config import RunFields
from opsd.contexts import BOXED_INSTRUCTION, build_student_messages
from opsd.data import require_columns
from opsd.data_checks import validate_rows
from opsd.eval.grading import extract_boxed, is_correct
from opsd.runs.atomic_io import write_json_atomic
from opsd.runs.checkpoints import checkpoint_dir
from opsd.runs.runlog import RunDirectoryCallback
from opsd.validation import POSITIVE_INT, UNIT_OPEN_CLOSED, InputError, Range

logger = logging.getLogger(__name__)

GRPO_OVERFLOW_POLICIES = ("error", "drop")  # TRL's GRPO has no prompt truncation of its own
BASELINE_STATE_FILE = "baseline_state.json"
THINK_END = "</think>"

# TRL GRPOTrainer log key -> our metrics.jsonl name (the TRL names are kept as well).
#   reward               mean total reward of the step's completions
#   frac_reward_zero_std fraction of completions whose prompt group has zero reward std
#                        (= fraction of groups, as groups are equal-sized; with scale_rewards="group"/"none")
GRPO_METRIC_NAMES = {"reward": "reward_mean", "frac_reward_zero_std": "reward_std_zero_fraction"}


# ---------------------------------------------------------------------------------------------- config


@dataclass
class GRPORunConfig(HeldOutFields, RunFields, GRPOConfig):
    """GRPO with a boxed-answer reward: `RunFields` + `trl.GRPOConfig`.

    TRL's own fields carry the method: `num_generations` (G completions per prompt; the global
    generation batch must be divisible by it), `max_completion_length`, `temperature`, `top_p`,
    `top_k`, `beta` (KL to the reference model, 0 = none), `scale_rewards`, `loss_type`, `use_vllm`
    with `vllm_mode` / `vllm_gpu_memory_utilization`. Unset `chat_template_kwargs` take the
    student's (`student_chat_kwargs`), unset `vllm_max_model_length` takes `max_length`.
    """

    #: checks of the `trl.GRPOConfig` fields it inherits (defined in TRL); GRPO's beta weighs a KL term
    FIELD_CHECKS: ClassVar[dict] = {
        "beta": Range(lambda v: v >= 0, "0 (no KL term) or a positive number"),
        "temperature": Range(lambda v: v > 0, "a positive number (the sampling temperature)"),
        "top_p": UNIT_OPEN_CLOSED,
        "top_k": Range(lambda v: v >= 0, "0 (off) or a positive integer (sampling)"),
        "num_generations": POSITIVE_INT,
        "max_completion_length": Range(lambda v: v > 0, "a positive number of tokens"),
        "vllm_gpu_memory_utilization": UNIT_OPEN_CLOSED,
        "on_overflow": GRPO_OVERFLOW_POLICIES,

        "grpo_prompt": ("student", "reference"),
    }

    reward_functions: list[str] = field(
        default_factory=lambda: ["boxed_answer"],
        metadata={"help": "Reward function names (see REWARD_FUNCTIONS); weights via reward_weights."},
    )
    grpo_prompt: str = field(default="student", metadata={"help": "student (the prompt_profile's student prompt) | reference (the reference GRPO script's 'Problem: ' + one newline)."})
    problem_column: str = field(default="problem", metadata={"help": "Column the problem is read from (falls back to `problem` when absent: the loader renames a lone Question/question/Problem)."})
    answer_column: str = field(default="answer", metadata={"help": "Column of the gold answer (falls back to `answer`, then to the last \\boxed{} of `solution`)."})

    def __post_init__(self):
        prepare_baseline_config(self)
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


def first_box_after_think(text: str) -> str | None:
    """The content of the first ``\\boxed{...}`` after the last ``</think>`` (the whole text when there is
    none), stripped; None without a box there or when that box is cut before its closing brace.

    The reference's rule (grpo_train.py, `extract_boxed_answer`): braces nest, only ``\\boxed{`` counts.
    """
    end = text.rfind(THINK_END)
    tail = text[end + len(THINK_END):] if end != -1 else text
    opener = "\\boxed{"
    start = tail.find(opener)
    if start == -1:
        return None
    depth = 0
    for i in range(start + len(opener) - 1, len(tail)):
        depth += {"{": 1, "}": -1}.get(tail[i], 0)
        if depth == 0:
            return tail[start + len(opener):i].strip()
    return None


def _graded(completions: Sequence[Any], answer: Sequence[Any], extract: Callable[[str], str | None]) -> list[float]:
    if len(completions) != len(answer):
        raise ValueError(f"{len(completions)} completions but {len(answer)} answers")
    return [1.0 if is_correct(extract(completion_text(c)), a) else 0.0 for c, a in zip(completions, answer)]


def boxed_answer_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs) -> list[float]:
    """1.0 for each completion whose last \\boxed{} is graded equal to its gold `answer`, else 0.0.

    `completions`: strings or conversational completions (lists of {"role", "content"} dicts), as TRL
    passes them; `answer`: the dataset column, one gold answer per completion. Grading is
    `is_correct(extract_boxed(text), answer)` (math-verify), the same as evaluation.
    """
    return _graded(completions, answer, extract_boxed)


def first_box_after_think_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs) -> list[float]:
    """As `boxed_answer_reward`, with the answer read by `first_box_after_think` (the reference's rule)."""
    return _graded(completions, answer, first_box_after_think)


REWARD_FUNCTIONS: dict[str, Callable[..., list[float]]] = {
    "boxed_answer": boxed_answer_reward,
    "first_box_after_think": first_box_after_think_reward,
}


# ---------------------------------------------------------------------------------------------- data


def reference_grpo_prompt(problem: str) -> str:
    """The reference GRPO prompt (grpo_train.py, `make_format_prompt`): "Problem: ", the problem, ONE
    newline, the instruction (the student and evaluation prompts have a blank line there)."""
    return f"Problem: {problem}\n{BOXED_INSTRUCTION}"


def grpo_messages(problem: str, grpo_prompt: str = "student", profile: str = "paper") -> list[dict[str, str]]:
    """The policy's chat for a problem: the student prompt of `profile`, or the reference GRPO prompt."""
    if grpo_prompt == "reference":
        return [{"role": "user", "content": reference_grpo_prompt(problem)}]
    if grpo_prompt == "student":
        return build_student_messages(problem, profile)
    raise ValueError(f"grpo_prompt must be 'student' or 'reference', got {grpo_prompt!r}")


def _column(ds, name: str, canonical: str) -> str | None:
    """`name` if the rows have it, else `canonical` if they have that (the loader's spelling), else None."""
    return next((c for c in (name, canonical) if c in ds.column_names), None)


def grpo_dataset(ds, tokenizer=None, profile: str = "paper", *, chat_kwargs: dict | None = None,
                 max_prompt_length: int | None = None, on_overflow: str = "error", grpo_prompt: str = "student",
                 problem_column: str = "problem", answer_column: str = "answer"):
    """Problems with gold answers -> TRL's conversational prompt rows with an ``answer`` column.

    ``prompt = grpo_messages(row[problem_column], grpo_prompt, profile)``; ``answer`` is the
    `answer_column` (else ``answer``), or else the last \\boxed{} of ``solution`` (rows with neither are
    dropped, with a logged count). With a tokenizer and `max_prompt_length`, longer prompts raise or are
    dropped (`on_overflow`).
    """
    problem_col = _column(ds, problem_column, "problem")
    if problem_col is None:
        require_columns(ds, [problem_column], "GRPO data")
    if problem_col != "problem":  # the loader checked `problem`'s rows; check the column actually read
        ds = validate_rows(ds, [problem_col], "GRPO data")
    answer_col = _column(ds, answer_column, "answer")
    if answer_col is None:
        require_columns(ds, [problem_col, "solution"], f"GRPO data (no {answer_column!r} column: answers from solutions)")

    def to_row(row):
        gold = row[answer_col] if answer_col else extract_boxed(row["solution"])
        gold = None if gold is None or str(gold).strip() == "" else str(gold)
        return {"problem": row[problem_col], "prompt": grpo_messages(row[problem_col], grpo_prompt, profile),
                "answer": gold}

    out = ds.map(to_row, remove_columns=ds.column_names)
    missing = [i for i, a in enumerate(out["answer"]) if a is None]
    if missing:
        if len(missing) == len(out):
            raise InputError("no row has a gold answer (an answer column or a \\boxed{} in `solution`)")
        logger.warning("dropped %d of %d rows without a gold answer", len(missing), len(out))
        drop = set(missing)
        out = out.select([i for i in range(len(out)) if i not in drop])
    if tokenizer is not None and max_prompt_length is not None:
        lengths = chat_token_counts(tokenizer, out["prompt"], chat_kwargs, add_generation_prompt=True)
        out = apply_overflow(out, out["problem"], lengths, max_prompt_length, on_overflow, "prompt")
    return out


# ---------------------------------------------------------------------------------------------- trainer


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


def build_grpo_trainer(config: GRPORunConfig, *, callbacks=None) -> BaselineGRPOTrainer:
    """Model (LoRA via peft_config), tokenizer, prompts with answers (training and held-out), reward(s)
    -> `BaselineGRPOTrainer`."""
    model, tokenizer, peft_config, ds = load_rows_and_model(config, "grpo", ("problem",))
    train_rows, heldout_rows = split_heldout(ds, config.heldout_fraction, config.heldout_seed)

    def rows(part):
        return grpo_dataset(part, tokenizer, config.prompt_profile, chat_kwargs=config.chat_template_kwargs,
                            max_prompt_length=config.max_prompt_length, on_overflow=config.on_overflow,
                            grpo_prompt=config.grpo_prompt, problem_column=config.problem_column,
                            answer_column=config.answer_column)

    return BaselineGRPOTrainer(
        model=model, reward_funcs=[REWARD_FUNCTIONS[name] for name in config.reward_functions], args=config,
        train_dataset=rows(train_rows), eval_dataset=None if heldout_rows is None else rows(heldout_rows),
        processing_class=tokenizer, peft_config=peft_config,
        callbacks=[GRPOMetricNames(), RunDirectoryCallback(extra={"run_kind": "grpo"}), *(callbacks or [])],
    )


def train_grpo(config: GRPORunConfig, *, resume: bool | str = "auto", callbacks=None) -> Path:
    """GRPO baseline: train, save the final model into output_dir, return it (resumes like `train_sft`)."""
    return run_training(build_grpo_trainer(config, callbacks=callbacks), config, resume,
                        state_files=(BASELINE_STATE_FILE,))
