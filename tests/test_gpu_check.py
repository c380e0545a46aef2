"""benchmarks/gpu_check.py on the CPU: without CUDA every row is skipped with its reason; the row logic, the
in-memory tokenizer and the two training steps (tiny model, CPU, float32) it runs on a GPU."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu_check as g


def test_without_cuda_every_row_is_skipped_with_the_reason(capsys, monkeypatch):
    monkeypatch.setattr(g.torch.cuda, "is_available", lambda: False)
    assert g.main([]) == 0
    out = capsys.readouterr().out
    names = ["cuda", "train_plain", "trainer-sdpa", "trainer-flash", "divergence", "ddp (2 GPUs)", "zero2 (2 GPUs)", "vllm"]
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows] == names
    assert all(" | skipped | " in r and "no CUDA device" in r for r in rows)
    assert f"0 ok, {len(names)} skipped, 0 failed" in out


def test_row_logic():
    assert g.cuda_reason(0).startswith("no CUDA device") and g.cuda_reason(1, 2) == "1 CUDA device(s), 2 needed"
    assert g.cuda_reason(2, 2) is None
    assert g.missing_module("surely_not_a_module_x") == "surely_not_a_module_x not installed"
    assert g.missing_module("torch") is None
    skipped = g.run_row("r", [None, "a", "b"], lambda: pytest.fail("ran"))
    assert (skipped.status, skipped.detail, skipped.seconds) == ("skipped", "a; b", None)
    ok = g.run_row("r", [None], lambda: "fine")
    assert ok.status == "ok" and ok.detail == "fine" and ok.seconds >= 0
    failed = g.run_row("r", [], lambda: 1 / 0)
    assert failed.status == "failed" and failed.detail.startswith("ZeroDivisionError")
    table = g.format_table([ok, skipped])
    assert table.splitlines()[2].startswith("| r | ok | ") and table.splitlines()[3] == "| r | skipped |  | a; b |"


def test_offline_tokenizer_round_trips_and_chats():
    tok = g.offline_tokenizer()
    text = "What is 12 + 30? \\boxed{42} é"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token_id != tok.pad_token_id and tok.padding_side == "left"


def test_two_plain_steps_on_cpu():
    assert g.plain_steps("cpu", torch.float32, vocab=512).endswith("LoRA weights changed")


@pytest.mark.slow
def test_two_trainer_steps_on_cpu():
    result = g.trainer_steps("cpu", torch.float32, vocab=512)
    assert len(result["losses"]) == 2 and result["world_size"] == 1 and result["peak"] == ""
