"""SFT baseline: the two row forms and their loss masks, over-long rows (error, drop, truncate), the held-out
split reaching the trainer, and the paper profiles' reference settings."""

from __future__ import annotations

import datasets
import pytest
from trl import SFTTrainer

from opsd.baselines import sft as sft_module
from opsd.baselines.sft import SFTRunConfig, build_sft_trainer, sft_dataset
from opsd.baselines.train import load_baseline_config
from opsd.contexts import apply_chat, build_student_messages
from opsd.models import tiny_qwen3

ROWS = datasets.Dataset.from_dict({
    "problem": ["What is 2 + 3?", "What is 10 - 4?"],
    "solution": ["2 + 3 = 5, so the answer is \\boxed{5}.", "10 - 4 = 6. The answer is \\boxed{6}."],
    "answer": ["5", "6"],
})
IGNORED = -100  # TRL's label for tokens outside the loss


def _tiny_config(tmp_path, **overrides) -> SFTRunConfig:
    return load_baseline_config("sft", "sft-cpu-tiny", {"output_dir": str(tmp_path), "max_steps": 1, **overrides})


def _trainer(tmp_path, tokenizer, rows, **overrides) -> SFTTrainer:
    """TRL's SFTTrainer on a tiny random Qwen3 (same vocabulary as `tokenizer`): its prepared dataset holds
    the input ids and labels the loss reads."""
    model = tiny_qwen3(vocab_size=len(tokenizer), max_position_embeddings=1024)
    return SFTTrainer(model=model, args=_tiny_config(tmp_path, **overrides), train_dataset=rows,
                      processing_class=tokenizer)


# ------------------------------------------------------------------------------------------- rows


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


def test_full_text_rows_are_the_whole_chat_with_eos(embedded_tokenizer):
    tok = embedded_tokenizer
    out = sft_dataset(ROWS, tok, "plain", loss_tokens="full_text")
    assert out.column_names == ["text"]
    chat = build_student_messages(ROWS[0]["problem"], "plain") + [{"role": "assistant", "content": ROWS[0]["solution"]}]
    rendered = tok.apply_chat_template(chat, tokenize=False)
    assert out[0]["text"] == (rendered if rendered.endswith(tok.eos_token) else rendered + tok.eos_token)
    assert out[0]["text"].count(ROWS[0]["problem"]) == 1 and ROWS[0]["solution"] in out[0]["text"]
    with pytest.raises(ValueError, match="pass the tokenizer"):
        sft_dataset(ROWS, loss_tokens="full_text")
    with pytest.raises(ValueError, match="loss_tokens must be"):
        sft_dataset(ROWS, tok, loss_tokens="prompt")


def test_label_mask_full_text_vs_solution_only(embedded_tokenizer, tmp_path):
    """full_text: every token is a label (the prompt's included); solution: the prompt's tokens are masked
    and the labelled tokens decode to the solution (and the end-of-turn)."""
    tok = embedded_tokenizer
    full = _trainer(tmp_path / "full", tok, sft_dataset(ROWS, tok, loss_tokens="full_text"))
    solution = _trainer(tmp_path / "solution", tok, sft_dataset(ROWS, tok))
    for i, row in enumerate(ROWS):
        f = full.train_dataset[i]
        assert f["labels"] == f["input_ids"]
        assert tok.decode(f["input_ids"]).count(row["problem"]) == 1
        s = solution.train_dataset[i]
        masked = [lab == IGNORED for lab in s["labels"]]
        first = masked.index(False)
        assert all(masked[:first]) and not any(masked[first:])  # one masked prefix: the prompt
        assert row["problem"] in tok.decode(s["input_ids"][:first])
        assert tok.decode(s["input_ids"][first:]).startswith(row["solution"])
        assert len(s["input_ids"]) < len(f["input_ids"]) + 2  # the same chat (full_text adds its EOS)


def test_sft_dataset_never_truncates_unless_asked(embedded_tokenizer):
    with pytest.raises(ValueError, match="row 0: the prompt \\+ solution has .* tokens but the limit is 20"):
        sft_dataset(ROWS, embedded_tokenizer, max_length=20)
    chats = [r["prompt"] + r["completion"] for r in sft_dataset(ROWS)]
    lengths = [len(embedded_tokenizer.apply_chat_template(c, return_dict=True)["input_ids"]) for c in chats]
    kept = sft_dataset(ROWS, embedded_tokenizer, max_length=min(lengths), on_overflow="drop")
    assert len(kept) == sum(n <= min(lengths) for n in lengths) >= 1
    with pytest.raises(ValueError, match="the limit is 20"):
        sft_dataset(ROWS, embedded_tokenizer, max_length=20, loss_tokens="full_text")


def test_truncate_keeps_every_row_and_cuts_it(embedded_tokenizer, tmp_path, caplog):
    """on_overflow=truncate (the reference: rows cut at max_length, here a tiny limit): no row is dropped,
    each over-long row keeps its first `limit` tokens, and the count is logged."""
    tok, limit = embedded_tokenizer, 24
    whole = sft_dataset(ROWS, tok, loss_tokens="full_text")
    lengths = [len(tok(t)["input_ids"]) for t in whole["text"]]
    assert min(lengths) > limit
    with caplog.at_level("WARNING"):
        rows = sft_dataset(ROWS, tok, max_length=limit, on_overflow="truncate", loss_tokens="full_text")
    assert len(rows) == len(ROWS) and "2 of 2 rows have a prompt + solution over 24 tokens" in caplog.text
    trainer = _trainer(tmp_path, tok, rows, max_length=limit, on_overflow="truncate", loss_tokens="full_text")
    assert len(trainer.train_dataset) == len(ROWS)
    for row, text in zip(trainer.train_dataset, whole["text"]):
        assert row["input_ids"] == tok(text)["input_ids"][:limit] == row["labels"]


def test_truncate_is_an_sft_choice_and_loss_tokens_are_checked(tmp_path):
    assert _tiny_config(tmp_path, on_overflow="truncate").on_overflow == "truncate"
    with pytest.raises(ValueError, match="loss_tokens='prompt': must be one of \\['solution', 'full_text'\\]"):
        _tiny_config(tmp_path, loss_tokens="prompt")
    with pytest.raises(ValueError, match="heldout_fraction=1.0 is out of range"):
        _tiny_config(tmp_path, heldout_fraction=1.0)


def test_heldout_rows_go_to_eval_dataset_not_training(embedded_tokenizer, tmp_path, monkeypatch):
    rows = datasets.Dataset.from_dict({"problem": [f"What is {i} + 1?" for i in range(8)],
                                       "solution": [f"\\boxed{{{i + 1}}}" for i in range(8)]})
    model = tiny_qwen3(vocab_size=len(embedded_tokenizer), max_position_embeddings=1024)
    monkeypatch.setattr(sft_module, "load_rows_and_model", lambda *a: (model, embedded_tokenizer, None, rows))
    trainer = build_sft_trainer(_tiny_config(tmp_path, heldout_fraction=0.25, heldout_seed=42))
    assert (len(trainer.train_dataset), len(trainer.eval_dataset)) == (6, 2)  # ceil(0.25 x 8) held out
    decoded = [embedded_tokenizer.decode(r["input_ids"]) for r in trainer.eval_dataset]
    held = [p for p in rows["problem"] if any(p in d for d in decoded)]
    trained = [p for p in rows["problem"] if any(p in embedded_tokenizer.decode(r["input_ids"])
                                                 for r in trainer.train_dataset)]
    assert held == rows.train_test_split(test_size=0.25, seed=42)["test"].sort("problem")["problem"]
    assert not set(held) & set(trained) and len(set(held) | set(trained)) == 8
    assert trainer.args.eval_strategy == "no"  # as the reference: held out, not evaluated unless asked


# ------------------------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("name", ["sft-qwen3-1.7b-4xh100", "sft-qwen3-8b-8xh100"])
def test_sft_profiles_follow_the_reference_script(name):
    """sft_train.py / scripts/run_sft.sh of louieworth/OPSD@7448751."""
    config = load_baseline_config("sft", name, {"bf16": False})
    gpus = int(name.split("-")[-1][0])
    assert config.learning_rate == 5e-6 and config.num_train_epochs == 4
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps * gpus == 64
    assert build_student_messages("P?", config.prompt_profile)[0]["content"].startswith("P?\n\nPlease reason")
    assert (config.loss_tokens, config.max_length, config.on_overflow) == ("full_text", 16000, "truncate")
    assert (config.heldout_fraction, config.heldout_seed) == (0.01, 42)
    assert (config.lr_scheduler_type, config.warmup_steps, config.max_grad_norm) == ("linear", 0, 1.0)
    assert (config.lora_r, config.lora_alpha, config.lora_dropout) == (64, 128, 0.05)
    assert config.save_steps == 20 and config.student_chat_kwargs == {}


def test_cpu_sft_keeps_the_kit_choices():
    config = load_baseline_config("sft", "sft-cpu-tiny")
    assert (config.loss_tokens, config.on_overflow, config.heldout_fraction, config.lora_dropout) == \
        ("solution", "error", 0.0, 0.0)


def test_sft_teacher_context_is_the_imitated_text_and_none_has_no_counterpart():
    from opsd.validation import InputError

    config = load_baseline_config("sft", "sft-cpu-tiny", {"teacher_context": "wrong", "output_dir": "/tmp/s"})
    assert config.teacher_context == "wrong"
    with pytest.raises(InputError, match=r"teacher_context='none': must be one of \['reference', 'other', 'wrong'\]"):
        load_baseline_config("sft", "sft-cpu-tiny", {"teacher_context": "none", "output_dir": "/tmp/s"})
