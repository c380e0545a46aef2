"""Tests for opsd.runs.layout: what makes a run directory, the held-out accuracy file."""

from __future__ import annotations

import json

from opsd.runs.layout import HELDOUT_FILE, is_run_dir, read_heldout_accuracy, write_heldout_accuracy


def test_what_makes_a_run_directory(tmp_path):
    assert not is_run_dir(tmp_path)
    (tmp_path / "eval").mkdir()
    assert is_run_dir(tmp_path)  # evaluations alone make a run directory
    (tmp_path / "eval").rmdir()
    (tmp_path / "metrics.jsonl").write_text("")
    assert is_run_dir(tmp_path)


def test_heldout_accuracy_file_is_indented_json_with_str_for_the_rest(tmp_path):
    assert read_heldout_accuracy(tmp_path) is None
    summary = {"profile": "cpu-tiny", "steps": 2, "gap": None, "when": tmp_path,
               "before": {"synthetic": {"n": 4, "correct": 1, "interval": [0.05, 0.7]}}, "after": None}
    path = write_heldout_accuracy(tmp_path, summary)
    assert path == tmp_path / HELDOUT_FILE == tmp_path / "heldout_accuracy.json"
    assert path.read_text() == json.dumps(summary, indent=2, default=str)  # what reproduce/train.ipynb wrote
    assert read_heldout_accuracy(tmp_path) == {**summary, "when": str(tmp_path)}
