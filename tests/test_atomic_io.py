"""Tests for opsd.atomic_io: JSON-lines logs that survive a line cut by a crash."""

from __future__ import annotations

import logging

from opsd.atomic_io import append_jsonl, read_jsonl, truncate_jsonl


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
