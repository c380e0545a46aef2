"""opsd.paper.records: reading run directories, labels from their configs, checkpoint selection, and the
paper's numbers."""

from __future__ import annotations

import json

import pytest
from fake_runs import (
    BENCH,
    GRPO_CONFIG,
    OPSD_CONFIG,
    SFT_CONFIG,
    eval_json,
    opsd_metrics,
    write_run,
)

from opsd.paper import records as pdata

# ------------------------------------------------------------------------------------------ readers


def test_read_run_reads_config_metrics_and_eval_summaries(full_runs):
    rec = pdata.read_run("OPSD", full_runs / "OPSD")
    assert rec.config["beta"] == 0.0 and rec.kind == "opsd"
    assert [m["step"] for m in rec.metrics] == [1, 2, 3, 4]
    assert rec.curve(BENCH) == ([0, 2, 4], [25.0, 50.0, 75.0])
    assert rec.final_accuracy(BENCH) == (4, 75.0)
    assert all("records" not in e for e in rec.evals)  # per-sample records are not kept in memory
    assert rec.metric("tokens_generated") == ([1, 2, 3, 4], [240.0, 480.0, 720.0, 960.0])
    assert rec.benchmarks() == [BENCH]


def test_read_run_tolerates_a_directory_with_only_eval(tmp_path):
    write_run(tmp_path / "base", None, None, {0: 0.5})
    rec = pdata.read_run("base", tmp_path / "base")
    assert rec.config == {} and rec.metrics == [] and rec.curve(BENCH) == ([0], [50.0])
    with pytest.raises(FileNotFoundError):
        pdata.read_run("x", tmp_path / "missing")


def test_metric_series_skip_missing_and_nan(tmp_path):
    write_run(tmp_path / "r", OPSD_CONFIG, [{"step": 1, "loss": 1.0}, {"step": 2}, {"step": 3, "loss": float("nan")}])
    rec = pdata.read_run("r", tmp_path / "r")
    assert rec.metric("loss") == ([1], [1.0])


def test_resolve_runs_accepts_mapping_json_string_and_directory(full_runs):
    as_dir = pdata.resolve_runs(str(full_runs))
    assert list(as_dir) == ["OPSD", "OPSD-clip", "OPSD-reverse-KL", "OPSD-JSD", "OPSD-long", "SFT", "GRPO",
                            "OPSD-terse", "SFT-terse", "OPSD-verbose", "SFT-verbose"]
    as_json = pdata.resolve_runs(json.dumps({"OPSD": str(full_runs / "OPSD"), "GRPO": None}))
    assert as_json == {"OPSD": full_runs / "OPSD", "GRPO": None}
    assert pdata.resolve_runs({"OPSD": full_runs / "OPSD"}) == {"OPSD": full_runs / "OPSD"}
    with pytest.raises(ValueError, match="neither a mapping"):
        pdata.resolve_runs(str(full_runs / "nope"))


def test_default_runs_are_the_campaign_directory(monkeypatch, full_runs, tmp_path, capsys):
    monkeypatch.setattr(pdata, "DEFAULT_RUNS_ROOT", full_runs)
    found = set(pdata.resolve_runs(None))
    assert found == {p.name for p in full_runs.iterdir() if p.is_dir()} and found <= set(pdata.RUN_NAMES)
    monkeypatch.setattr(pdata, "DEFAULT_RUNS_ROOT", tmp_path / "none")
    assert pdata.resolve_runs(None) == {}
    assert "make figures" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ labels


def test_labels_come_from_the_run_config():
    assert pdata.clip_label({"clip": 0.05, "clip_mode": "pointwise"}) == "point-wise clip 0.05"
    assert pdata.clip_label({"clip": None, "clip_mode": "none"}) == "no clip"
    assert pdata.clip_label({"clip": 0.05, "clip_mode": "none"}) == "no clip"
    assert pdata.clip_label({"clip": 0.06, "clip_mode": "token"}) == "token clip 0.06"
    assert [pdata.objective_label({"beta": b}) for b in (0.0, 1.0, 0.5)] == ["forward KL", "reverse KL", "JSD(0.5)"]
    assert pdata.train_label(OPSD_CONFIG, "opsd") == "8 problems x <=48 tokens/step, LoRA r16, lr 0.0003, 4 steps"
    assert pdata.train_label(GRPO_CONFIG).startswith("2 prompts x 4 samples x <=48 tokens/step")
    assert pdata.model_label({"model_name": "Qwen/Qwen3-1.7B"}) == "Qwen3-1.7B"
    assert pdata.eval_label(eval_json(0, 0.5)) == "synthetic held-out, 64 problems, greedy, <=96 tokens, Avg@1"
    assert pdata.run_kind(GRPO_CONFIG) == "grpo" and pdata.run_kind(OPSD_CONFIG) == "opsd" and pdata.run_kind(SFT_CONFIG) == "sft"


def test_best_and_last_checkpoint_selection_on_hand_made_evals(tmp_path):
    # the paper's forward-KL curve: 36.7 at step 0, 43.9 at 50, 41.1 at 100 -> best is step 50, last step 100
    write_run(tmp_path / "OPSD", OPSD_CONFIG, opsd_metrics(), {0: 0.367, 50: 0.439, 100: 0.411})
    rec = pdata.read_run("OPSD", tmp_path / "OPSD")
    assert rec.selected_accuracy(BENCH, "best") == (50, pytest.approx(43.9))
    assert rec.selected_accuracy(BENCH, "last") == (100, pytest.approx(41.1))
    assert rec.selected_accuracy("aime24", "best") == (None, None)
    with pytest.raises(ValueError, match="valid"):
        rec.selected_accuracy(BENCH, "median")
    # ties go to the earliest step; the base model (step 0) is not a checkpoint of the run ...
    write_run(tmp_path / "tie", OPSD_CONFIG, None, {0: 0.9, 25: 0.5, 75: 0.5})
    assert pdata.read_run("tie", tmp_path / "tie").selected_accuracy(BENCH) == (25, 50.0)
    # ... unless nothing else was evaluated
    write_run(tmp_path / "only-base", OPSD_CONFIG, None, {0: 0.25})
    assert pdata.read_run("only-base", tmp_path / "only-base").selected_accuracy(BENCH) == (0, 25.0)


def test_eval_proportion_counts_correct_answers_with_the_wilson_interval():
    from opsd.eval.stats import wilson_interval

    e = eval_json(4, 41 / 200)
    e["summary"].update(n_problems=200, n_samples=200)
    prop = pdata.eval_proportion(e)
    assert (prop.k, prop.n) == (41, 200) and str(prop) == "41/200 = 20.5% [15.5, 26.6]"
    assert (prop.lo, prop.hi) == wilson_interval(41, 200)
    # without n_samples: n = problems x k (Avg@4 of 10 problems, 0.5 -> 20 of 40 samples)
    e = eval_json(4, 0.5, k=4)
    e["summary"].update(n_problems=10)
    assert (pdata.eval_proportion(e).k, pdata.eval_proportion(e).n) == (20, 40)
    e["summary"].pop("avg_at_k")
    assert pdata.eval_proportion(e) is None


def test_paper_table5_values():
    assert pdata.PAPER_TABLE5["Qwen3-1.7B"] == {"style": 0.85, "math": 0.14, "other": 0.25}
    assert pdata.PAPER_TABLE5["Qwen3-4B"] == {"style": 0.92, "math": 0.10, "other": 0.29}
    assert pdata.PAPER_TABLE5["Qwen3-8B"] == {"style": 0.79, "math": 0.06, "other": 0.25}
