"""SFT baseline: the student prompt -> the reference solution as the assistant turn (TRL SFTTrainer).

Loss of a row: the mean, over its unmasked tokens t, of -log p_θ(token_t | tokens_<t). Which tokens count
is `loss_tokens`:

    solution   prompt-completion rows (prompt = `build_student_messages(problem, prompt_profile)`,
               completion = the solution); TRL masks the prompt, so only the solution's tokens count.
    full_text  one chat-formatted text per row (that user turn, the solution as the assistant turn, EOS);
               every token counts, the prompt's included: the reference's SFT (sft_train.py of
               louieworth/OPSD@7448751 formats a `text` column with the chat template and trains on it whole).

Rows longer than `max_length` tokens raise, are dropped or (`on_overflow: truncate`, the reference's
behaviour: TRL cuts at its max_length) are cut to their first `max_length` tokens; each is counted first.
`teacher_context` (opsd.privileged) replaces the imitated solution as it replaces what OPSD's teacher reads:
`other` (another row's) or `wrong` (its final answer changed); `none` does not apply (nothing to imitate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from trl import SFTConfig, SFTTrainer

from opsd.baselines.common import (
    HeldOutFields,
    apply_overflow,
    chat_token_counts,
    load_rows_and_model,
    prepare_baseline_config,
    run_training,
    split_heldout,
    token_counts,
)
from opsd.config import RunFields
from opsd.contexts import build_student_messages
from opsd.data import require_columns
from opsd.privileged import TEACHER_CONTEXTS, with_teacher_context
from opsd.runs.runlog import RunDirectoryCallback

SFT_OVERFLOW_POLICIES = ("error", "drop", "truncate")
SFT_TEACHER_CONTEXTS = tuple(c for c in TEACHER_CONTEXTS if c != "none")  # SFT needs a text to imitate


@dataclass
class SFTRunConfig(HeldOutFields, RunFields, SFTConfig):
    """Supervised fine-tuning on (student prompt, reference solution) pairs: `RunFields` + `trl.SFTConfig`.

    `max_length` is the shared field (prompt + solution tokens per row); `on_overflow` says what happens
    to longer rows (error | drop | truncate). `loss_tokens`: solution | full_text (module docstring).
    """

    FIELD_CHECKS: ClassVar[dict] = {
        "on_overflow": SFT_OVERFLOW_POLICIES,
        "loss_tokens": ("solution", "full_text"),
        "teacher_context": SFT_TEACHER_CONTEXTS,
    }

    loss_tokens: str = field(default="solution", metadata={"help": "Tokens the loss covers: solution (prompt masked) | full_text (the whole chat text, as the reference SFT)."})
    teacher_context: str = field(default="reference", metadata={"help": "The solution imitated: reference (the row's) | other (another row's, a fixed draw from seed) | wrong (the row's with its final answer changed); opsd.privileged. OPSD's none has no SFT counterpart."})

    def __post_init__(self):
        prepare_baseline_config(self)
        super().__post_init__()


def _full_text(tokenizer, messages: list[dict], chat_kwargs: dict) -> str:
    """The rendered chat, ending with the tokenizer's EOS (what TRL appends to a plain-text row; appended
    here so that the counted length is the trained one)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, **chat_kwargs)
    eos = tokenizer.eos_token
    return text if not eos or text.endswith(eos) else text + eos


def sft_dataset(ds, tokenizer=None, profile: str = "paper", *, chat_kwargs: dict | None = None,
                max_length: int | None = None, on_overflow: str = "error", loss_tokens: str = "solution"):
    """Problems with solutions -> TRL rows.

    ``loss_tokens="solution"``: conversational prompt-completion rows, ``prompt =
    build_student_messages(problem, profile)``, ``completion = [{"role": "assistant", "content": solution}]``,
    plus ``chat_template_kwargs`` when given. ``"full_text"``: one ``text`` per row, the same two turns
    rendered by the tokenizer's chat template (needs `tokenizer`). With a tokenizer and `max_length`, rows
    longer than `max_length` tokens raise, are dropped or are kept for TRL to cut (`on_overflow`).
    """
    require_columns(ds, ["problem", "solution"], "SFT data")
    kwargs = dict(chat_kwargs or {})

    def turns(row) -> tuple[list[dict], list[dict]]:
        return build_student_messages(row["problem"], profile), [{"role": "assistant", "content": row["solution"]}]

    if loss_tokens == "full_text":
        if tokenizer is None:
            raise ValueError("loss_tokens='full_text' rows are rendered chat text: pass the tokenizer")

        def to_text(row):
            prompt, completion = turns(row)
            return {"text": _full_text(tokenizer, prompt + completion, kwargs)}

        out = ds.map(to_text, remove_columns=ds.column_names)
        lengths = token_counts(tokenizer, out["text"], add_special_tokens=True) if max_length is not None else None
    elif loss_tokens == "solution":
        def to_row(row):
            prompt, completion = turns(row)
            return {"prompt": prompt, "completion": completion, **({"chat_template_kwargs": kwargs} if kwargs else {})}

        out = ds.map(to_row, remove_columns=ds.column_names)
        lengths = None
        if tokenizer is not None and max_length is not None:
            chats = [p + c for p, c in zip(out["prompt"], out["completion"])]
            lengths = chat_token_counts(tokenizer, chats, kwargs, add_generation_prompt=False)
    else:
        raise ValueError(f"loss_tokens must be 'solution' or 'full_text', got {loss_tokens!r}")
    if lengths is not None:
        out = apply_overflow(out, ds["problem"], lengths, max_length, on_overflow, "prompt + solution")
    return out


def build_sft_trainer(config: SFTRunConfig, *, callbacks=None) -> SFTTrainer:
    """Model (LoRA via peft_config), tokenizer, training rows and held-out rows from the config -> `SFTTrainer`."""
    model, tokenizer, peft_config, ds = load_rows_and_model(config, "sft", ("problem", "solution"))
    ds = with_teacher_context(ds, config.teacher_context, config.seed)
    train_rows, heldout_rows = split_heldout(ds, config.heldout_fraction, config.heldout_seed)

    def rows(part):
        return sft_dataset(part, tokenizer, config.prompt_profile, chat_kwargs=config.student_chat_kwargs,
                           max_length=config.max_length, on_overflow=config.on_overflow,
                           loss_tokens=config.loss_tokens)

    return SFTTrainer(
        model=model, args=config, train_dataset=rows(train_rows), processing_class=tokenizer,
        eval_dataset=None if heldout_rows is None else rows(heldout_rows), peft_config=peft_config,
        callbacks=[RunDirectoryCallback(extra={"run_kind": "sft"}), *(callbacks or [])],
    )


def train_sft(config: SFTRunConfig, *, resume: bool | str = "auto", callbacks=None):
    """SFT baseline: train, save the final model (adapters with LoRA) into output_dir, return it.
    Resumes from the last checkpoint-N in output_dir when there is one (`resume=False`: start over)."""
    return run_training(build_sft_trainer(config, callbacks=callbacks), config, resume)
