"""Tests for opsd.runs.atomic_io: JSON-lines logs that survive a line cut by a crash, atomic writes."""

from __future__ import annotations

import logging

import torch

from opsd.runs.atomic_io import (
    append_jsonl,
    json_safe,
    read_jsonl,
    truncate_jsonl,
    write_json_atomic,
    write_text_atomic,
)


def test_read_jsonl_drops_a_cut_last_line_and_append_starts_a_new_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1, "loss": 0.5})
    append_jsonl(path, {"step": 2, "loss": 0.4})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')  # a kill in the middle of a write
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in read_jsonl(path)] == [1, 2]
    assert "line 3 is cut off by a crash" in caplog.text
    append_jsonl(path, {"step": 3, "loss": 0.3})  # the next record is not glued to the cut one
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
    truncate_jsonl(path, 2)  # what a resume from checkpoint-2 does: the cut line goes too
    assert path.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n'


def test_json_safe_and_atomic_json_writes(tmp_path):
    assert json_safe(torch.tensor(0.5)) == 0.5 and type(json_safe(torch.tensor(3))) is int
    assert json_safe(float("nan")) is None and json_safe(torch.tensor(float("nan"))) is None
    assert json_safe(float("inf")) == float("inf") and json_safe("text") == "text"
    path = tmp_path / "sub" / "run_info.json"  # the folder is made
    write_json_atomic(path, {"global_step": 4})
    write_json_atomic(path, {"global_step": 6}, indent=None)  # replaces the file as a whole
    assert path.read_text() == '{"global_step": 6}\n'
    assert [p.name for p in path.parent.iterdir()] == ["run_info.json"]  # no temporary file left behind
    write_text_atomic(path, "plain")
    assert path.read_text() == "plain"
