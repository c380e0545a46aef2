"""Tests for opsd.eval.heldout: reproduce/train.ipynb's held-out check before and after training, its
heldout_accuracy.json, and reproduce/eval.ipynb's comparison with it, on hand-made results (the check on a real
model: tests/contracts/test_reproduce_notebooks.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from opsd.eval import heldout
from opsd.eval.stats import wilson_interval


def result(correct: int, n: int) -> dict:
    """A hand-made ``heldout_accuracy`` result."""
    return {"n": n, "correct": correct, "accuracy": correct / n, "interval": list(wilson_interval(correct, n)),
            "boxed_rate": 1.0, "mean_completion_tokens": 50.0}


CONFIG = SimpleNamespace(dataset="synthetic", max_completion_length=64, student_chat_kwargs={"enable_thinking": False})


def test_heldout_check_measures_each_benchmark_with_the_run_settings(monkeypatch, capsys):
    calls = []

    def fake_accuracy(model, tokenizer, **kwargs):
        calls.append((model, tokenizer, kwargs))
        return result(3, 4)

    monkeypatch.setattr(heldout, "heldout_accuracy", fake_accuracy)
    trainer = SimpleNamespace(model="M", tokenizer="T")
    out = heldout.heldout_check(trainer, CONFIG, "before", n=4)
    assert list(out) == ["synthetic", "synthetic-paraphrased"] and out["synthetic"] == result(3, 4)
    (model, tokenizer, kwargs), _ = calls
    assert (model, tokenizer, kwargs["n"], kwargs["max_new_tokens"], kwargs["batch_size"], kwargs["benchmark"]) == (
        "M", "T", 4, 64, 64, "synthetic")
    assert kwargs["chat_kwargs"] == {"enable_thinking": False} and calls[1][2]["benchmark"] == "synthetic-paraphrased"
    assert "before | synthetic              3/4 = 75.0%" in capsys.readouterr().out
    assert list(heldout.heldout_check(trainer, CONFIG, "after", n=4, paraphrased=False, max_new_tokens=8)) == [
        "synthetic"]
    assert calls[-1][2]["max_new_tokens"] == 8
    calls.clear()
    # nothing to measure: no held-out problems, training in other processes, a dataset that is not synthetic
    assert heldout.heldout_check(trainer, CONFIG, "before", n=0) is None
    assert heldout.heldout_check(None, CONFIG, "before", n=4) is None
    assert heldout.heldout_check(trainer, SimpleNamespace(**CONFIG.__dict__ | {"dataset": "hub"}), "before", n=4) is None
    assert calls == []


def test_heldout_before_after_writes_what_the_train_notebook_wrote(tmp_path, capsys):
    before = {"synthetic": result(1, 20), "synthetic-paraphrased": result(5, 20)}
    after = {"synthetic": result(18, 20), "synthetic-paraphrased": result(7, 20)}
    gap = SimpleNamespace(student="1/2", teacher="2/2", mean_token_kl=0.25, as_dict=lambda: {"n": 2, "kl": 0.25})
    summary = heldout.heldout_before_after(tmp_path, before, after, profile="cpu-tiny", model_name="m", steps=2,
                                           train_seconds=12.345, gap=gap)
    expected = {"profile": "cpu-tiny", "model_name": "m", "steps": 2, "train_seconds": 12.3,
                "gap": {"n": 2, "kl": 0.25}, "before": before, "after": after}
    assert summary == expected
    assert (tmp_path / "heldout_accuracy.json").read_text() == json.dumps(expected, indent=2, default=str)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "privilege gap before training: student 1/2  |  self-teacher 2/2  |  KL 0.250"
    assert lines[1].startswith("synthetic              before 1/20 = 5.0% [") and lines[1].endswith(
        "+85.0 points (separated)")
    assert "  ->  after 7/20 = 35.0%" in lines[2] and lines[2].endswith("+10.0 points (intervals overlap)")
    # without both checks (a multi-process run, a dataset that is not synthetic): printed, nothing written
    (tmp_path / "heldout_accuracy.json").unlink()
    heldout.heldout_before_after(tmp_path, None, None, profile="p", model_name="m", steps=None, train_seconds=1.0)
    assert not (tmp_path / "heldout_accuracy.json").exists() and capsys.readouterr().out == ""


def test_agreement_with_heldout_compares_step_0_and_the_last_step():
    held = {"steps": 2, "before": {"synthetic": result(1, 4)}, "after": {"synthetic": result(3, 4)}}

    def evaluation(step, correct, k=1):
        return {"benchmark": "synthetic", "step": step, "k": k, "summary": {"avg_at_k": correct / 4, "n_samples": 4}}

    lines = heldout.agreement_with_heldout([evaluation(0, 1), evaluation(2, 3)], held, ["synthetic", "other"])
    assert len(lines) == 2 and all(line.endswith("(the same)") for line in lines)
    assert lines[1].startswith("synthetic              step   2: this evaluation 3/4 = 75.0%")
    assert "heldout_accuracy.json after 3/4 = 75.0%" in lines[1]
    lines = heldout.agreement_with_heldout([evaluation(0, 2), evaluation(2, 3, k=4)], held, ["synthetic"])
    assert all(line.endswith("(different settings or results)") for line in lines)
    assert heldout.agreement_with_heldout([evaluation(1, 1)], held, ["synthetic"]) == []
