"""Tests for opsd.runs.checkpoints: completeness and discovery, resume point, the final model, the checkpoints
an evaluation can load.

The checkpoint folders are built by hand as a kill leaves them (a folder with only config.json, a cut
trainer_state.json or weights file). Whole training runs killed and resumed: tests/contracts/test_faults.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from opsd.runs.checkpoints import (
    check_resume_path,
    checkpoint_dir,
    checkpoint_problem,
    checkpoint_steps,
    export_final_model,
    last_checkpoint,
    resume_checkpoint,
    resume_point,
    usable_checkpoints,
)
from opsd.validation import InputError


def test_checkpoint_folder_name(tmp_path):
    assert checkpoint_dir(tmp_path, 4) == tmp_path / "checkpoint-4"


def make_checkpoint(folder: Path, step: int, *, extra: tuple[str, ...] = ("opsd_state.pt",)) -> Path:
    """A complete checkpoint as the trainer writes it (LoRA adapter, optimizer, state files)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4}))
    save_file({"lora_A": torch.randn(4, 8), "lora_B": torch.zeros(8, 4)}, str(folder / "adapter_model.safetensors"))
    torch.save({"state": {}}, folder / "optimizer.pt")
    torch.save({"cpu": torch.get_rng_state()}, folder / "rng_state.pth")
    for name in extra:
        torch.save({"tokens_generated": 10}, folder / name)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 6}))
    return folder


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_complete_checkpoint_passes(tmp_path):
    ckpt = make_checkpoint(tmp_path / "checkpoint-2", 2)
    assert checkpoint_problem(ckpt, ("opsd_state.pt",)) is None
    assert checkpoint_problem(ckpt, purpose="weights") is None


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda c: [p.unlink() for p in c.iterdir() if p.name != "adapter_config.json"], "no weights file"),
        (lambda c: (c / "trainer_state.json").unlink(), "no trainer_state.json"),
        (lambda c: cut(c / "trainer_state.json"), "trainer_state.json is cut off"),
        (lambda c: cut(c / "adapter_model.safetensors"), "adapter_model.safetensors is cut off"),
        (lambda c: cut(c / "optimizer.pt"), "optimizer.pt is cut off"),
        (lambda c: (c / "opsd_state.pt").unlink(), "missing ['opsd_state.pt']"),
        (lambda c: (c / "trainer_state.json").write_text('{"global_step": 3}'), "global_step 3"),
    ],
    ids=["only-config", "no-trainer-state", "cut-trainer-state", "cut-weights", "cut-optimizer",
         "no-opsd-state", "wrong-step"],
)
def test_incomplete_checkpoints_are_recognised(tmp_path, damage, expected):
    ckpt = make_checkpoint(tmp_path / "checkpoint-2", 2)
    damage(ckpt)
    assert expected in (checkpoint_problem(ckpt, ("opsd_state.pt",)) or "")


def test_resume_moves_incomplete_checkpoints_aside_and_takes_the_last_complete(tmp_path, caplog):
    make_checkpoint(tmp_path / "checkpoint-2", 2)
    make_checkpoint(tmp_path / "checkpoint-4", 4)
    (tmp_path / "checkpoint-6").mkdir()
    (tmp_path / "checkpoint-6" / "config.json").write_text("{}")  # what the issue saw: only config.json
    cut(tmp_path / "checkpoint-4" / "trainer_state.json")
    assert checkpoint_steps(tmp_path) == [2, 4, 6] and checkpoint_steps(tmp_path, complete=True) == [2]
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-2"  # looking changes nothing
    assert (tmp_path / "checkpoint-6").exists()
    with caplog.at_level(logging.WARNING):
        found = resume_checkpoint(tmp_path, ("opsd_state.pt",))
    assert found == tmp_path / "checkpoint-2"
    assert checkpoint_steps(tmp_path) == [2]
    moved = sorted(p.name.rsplit("-", 2)[0] for p in (tmp_path / "incomplete").iterdir())
    assert moved == ["checkpoint-4", "checkpoint-6"]
    assert "checkpoint-6 is incomplete" in caplog.text and "Moved aside" in caplog.text
    with pytest.raises(InputError, match="cannot resume from .*checkpoint-9: the folder does not exist"):
        check_resume_path(tmp_path / "checkpoint-9")


def test_evaluation_skips_a_checkpoint_with_cut_weights_but_keeps_weight_only_ones(tmp_path, caplog):
    whole = tmp_path / "checkpoint-2"
    whole.mkdir()
    (whole / "adapter_config.json").write_text("{}")
    save_file({"w": torch.zeros(3)}, str(whole / "adapter_model.safetensors"))  # no trainer state: still evaluable
    broken = make_checkpoint(tmp_path / "checkpoint-4", 4)
    cut(broken / "adapter_model.safetensors")
    with caplog.at_level(logging.WARNING):
        assert usable_checkpoints({2: whole, 4: broken}) == {2: whole}
    assert "skipping" in caplog.text and broken.exists()  # left in place: a trainer may be writing it
    with pytest.raises(InputError, match="cannot evaluate .*checkpoint-4: adapter_model.safetensors is cut off"):
        usable_checkpoints({2: whole, 4: broken}, requested=[4])


# ------------------------------------------------------------------------------------------ resume point


def _complete_checkpoint(folder, step):
    """A minimal complete checkpoint: LoRA adapter (whole safetensors file) and trainer_state.json."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4}))
    save_file({"w": torch.zeros(2)}, str(folder / "adapter_model.safetensors"))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_resume_point(tmp_path):
    assert resume_point(tmp_path, "auto") is None
    _complete_checkpoint(tmp_path / "checkpoint-3", 3)
    _complete_checkpoint(tmp_path / "checkpoint-12", 12)
    assert resume_point(tmp_path, "auto") == tmp_path / "checkpoint-12"
    assert resume_point(tmp_path, False) is None
    assert resume_point(tmp_path, str(tmp_path / "checkpoint-3")) == tmp_path / "checkpoint-3"
    # a save cut by a crash (only config.json written) is moved aside; the last complete one is used
    (tmp_path / "checkpoint-15").mkdir()
    (tmp_path / "checkpoint-15" / "config.json").write_text("{}")
    assert resume_point(tmp_path, True) == tmp_path / "checkpoint-12"
    assert not (tmp_path / "checkpoint-15").exists()
    assert [p.name.split("-2")[0] for p in (tmp_path / "incomplete").iterdir()] == ["checkpoint-15"]


# ------------------------------------------------------------------------------------------ final model


def test_export_final_model_leaves_the_training_state_behind(tmp_path):
    ckpt = make_checkpoint(tmp_path / "checkpoint-2", 2)
    (ckpt / "rng_state_1.pth").write_bytes(b"")
    (ckpt / "tokenizer.json").write_text("{}")
    export_final_model(ckpt, tmp_path, state_files=("opsd_state.pt",))
    exported = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert exported == ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json"]
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == (ckpt / "adapter_model.safetensors").read_bytes()
