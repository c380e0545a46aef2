"""Tests for opsd.runs.file_integrity: whether safetensors, torch and JSON files (and a folder's model weights)
are whole. Checkpoint completeness as a whole (trainer state, required files): tests/runs/test_checkpoints.py."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from opsd.runs.file_integrity import file_problem, weights_problem


def keep_bytes(path: Path, n: int) -> None:
    """What a kill during a write leaves: the first `n` bytes of the file."""
    path.write_bytes(path.read_bytes()[:n])


def test_file_problem_whole_and_cut_files(tmp_path):
    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(64)}, str(weights))
    size = weights.stat().st_size
    assert file_problem(weights) is None
    keep_bytes(weights, size - 10)  # the tensor data cut short
    assert file_problem(weights) == f"model.safetensors is cut off ({size - 10} bytes, {size} expected)"
    keep_bytes(weights, 12)  # inside the header
    assert file_problem(weights).startswith("model.safetensors is cut off (header of ")
    keep_bytes(weights, 4)  # not even the header's length
    assert file_problem(weights) == "model.safetensors is cut off (4 bytes)"

    state = tmp_path / "optimizer.pt"
    torch.save({"state": {"step": torch.ones(8)}}, state)
    assert file_problem(state) is None
    keep_bytes(state, state.stat().st_size // 2)  # a zip archive's central directory is written last
    assert file_problem(state).startswith("optimizer.pt is cut off or not a torch file")

    config = tmp_path / "adapter_config.json"
    config.write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    assert file_problem(config) is None
    keep_bytes(config, 7)
    assert file_problem(config) == "adapter_config.json is cut off or unreadable (JSONDecodeError)"

    notes = tmp_path / "README.md"  # other files are not checked
    notes.write_text("half a sente")
    assert file_problem(notes) is None


def test_weights_problem_adapters_full_and_sharded_models_and_deepspeed(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    assert weights_problem(adapter) == "no model weights (adapter_model.* or model.* with their config)"
    (adapter / "adapter_config.json").write_text("{}")
    assert weights_problem(adapter) == (
        "adapter_config.json is there but no weights file (adapter_model.safetensors, adapter_model.bin)")
    save_file({"w": torch.zeros(4)}, str(adapter / "adapter_model.safetensors"))
    assert weights_problem(adapter) is None
    (adapter / "adapter_config.json").write_text('{"r": ')  # the config is checked too
    assert weights_problem(adapter) == "adapter_config.json is cut off or unreadable (JSONDecodeError)"

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text("{}")
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}}))
    save_file({"a": torch.zeros(4)}, str(sharded / shards[0]))
    assert weights_problem(sharded) == f"weight shards {[shards[1]]} are missing"
    save_file({"b": torch.zeros(4)}, str(sharded / shards[1]))
    assert weights_problem(sharded) is None
    keep_bytes(sharded / shards[1], 20)
    assert weights_problem(sharded).startswith(f"{shards[1]} is cut off")
    keep_bytes(sharded / "model.safetensors.index.json", 10)
    assert weights_problem(sharded) == "model.safetensors.index.json is cut off or unreadable"

    deepspeed = tmp_path / "deepspeed"
    (deepspeed / "global_step4").mkdir(parents=True)  # its weights are in global_stepN/
    assert weights_problem(deepspeed) is None
