"""opsd/paper_figures.py, opsd/figure_runs.py and reproduce/figures.ipynb.

Unit tests build run directories by hand (config.yaml, metrics.jsonl, eval JSON as runs write them);
the notebook test trains real 2-step runs (OPSD, OPSD-clip, and the quick campaign's SFT, OPSD-terse and
SFT-terse), evaluates them on a few problems and executes the notebook.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import yaml

from opsd import figure_runs
from opsd import paper_figures as pf

REPO = Path(__file__).resolve().parents[1]
BENCH = "synthetic"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------------------------------ fake runs

OPSD_CONFIG = {
    "model_name": "smollm2-135m-instruct", "dataset": "synthetic", "beta": 0.0, "clip": None, "clip_mode": "none",
    "teacher_mode": "fixed",
    "max_completion_length": 48, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "num_generations": 1,
    "use_lora": True, "lora_r": 16, "learning_rate": 3e-4, "max_steps": 4, "temperature": 1.0,
}
GRPO_CONFIG = {
    "model_name": "smollm2-135m-instruct", "reward_functions": ["boxed_answer"], "num_generations": 4,
    "max_completion_length": 48, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "use_lora": True,
    "lora_r": 16, "learning_rate": 3e-4, "max_steps": 4, "temperature": 1.2, "beta": 0.0,
}
SFT_CONFIG = {"model_name": "smollm2-135m-instruct", "dataset": "synthetic", "per_device_train_batch_size": 8,
              "use_lora": True, "lora_r": 16,
                  "learning_rate": 3e-4, "max_steps": 4, "completion_only_loss": None}


def eval_json(step: int, avg: float, benchmark: str = BENCH, k: int = 1) -> dict:
    return {
        "benchmark": benchmark, "step": step, "k": k, "checkpoint": None if step == 0 else f"checkpoint-{step}",
        "settings": {"k": k, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 96, "thinking": False,
                     "backend": "hf", "seed": 0, "n_problems": 64, "model": "smollm2-135m-instruct", "batch_size": 32},
        "summary": {"avg_at_k": avg, "pass_at_k": {"1": avg}, "boxed_rate": 1.0, "mean_completion_tokens": 30.0,
                    "n_problems": 64, "k": k},
        "records": [{"problem_id": "0", "sample_index": 0, "correct": True}],
    }


def write_run(path: Path, config: dict | None, metrics: list[dict] | None = None,
              evals: dict[int, float] | None = None, benchmark: str = BENCH) -> Path:
    """A run directory as the trainers and evaluate_run write it."""
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics:
        (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    for step, avg in (evals or {}).items():
        p = path / "eval" / benchmark / f"step-{step}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(eval_json(step, avg, benchmark)))
    return path


def opsd_metrics(n: int = 4, clipped: float = 0.0, length: float = 30.0) -> list[dict]:
    return [{"step": s, "loss": 0.5 / s, "divergence_mean": 0.5 / s, "clipped_fraction": clipped,
             "negative_token_fraction": 0.0, "rollout_length_mean": length, "tokens_generated": 240 * s,
             "kl_style": 1.0 * s, "kl_math": 0.1, "kl_other": 0.3, "count_style": float(s), "count_math": 10.0,
             "count_other": 5.0, "run_kind": "opsd"} for s in range(1, n + 1)]


def grpo_metrics(n: int = 4) -> list[dict]:
    return [{"step": s, "loss": 0.0, "reward_mean": 0.25, "reward_std_zero_fraction": 1.0 - 0.25 * (s % 2),
             "tokens_generated": 300 * s, "run_kind": "grpo"} for s in range(1, n + 1)]


@pytest.fixture()
def full_runs(tmp_path) -> Path:
    """Every run of the campaign, 4 steps, evaluated at 0, 2, 4."""
    root = tmp_path / "runs"
    write_run(root / "OPSD", OPSD_CONFIG, opsd_metrics(), {0: 0.25, 2: 0.5, 4: 0.75})
    write_run(root / "OPSD-clip", {**OPSD_CONFIG, "clip": 0.05, "clip_mode": "pointwise"},
              opsd_metrics(clipped=0.01), {0: 0.25, 2: 0.3, 4: 0.25})
    write_run(root / "OPSD-reverse-KL", {**OPSD_CONFIG, "beta": 1.0}, opsd_metrics(), {0: 0.25, 2: 0.4, 4: 0.45})
    write_run(root / "OPSD-JSD", {**OPSD_CONFIG, "beta": 0.5}, opsd_metrics(), {0: 0.25, 2: 0.35, 4: 0.5})
    write_run(root / "OPSD-long", {**OPSD_CONFIG, "max_completion_length": 96}, opsd_metrics(length=60.0),
              {0: 0.25, 2: 0.55, 4: 0.6})
    write_run(root / "SFT", SFT_CONFIG, [{"step": s, "loss": 1.0 / s, "run_kind": "sft"} for s in (1, 2, 3, 4)],
              {0: 0.25, 2: 0.2, 4: 0.125})
    write_run(root / "GRPO", GRPO_CONFIG, grpo_metrics(), {0: 0.25, 2: 0.25, 4: 0.375})
    write_run(root / "OPSD-terse", {**OPSD_CONFIG, "dataset": "synthetic-terse"}, opsd_metrics(),
              {0: 0.25, 2: 0.375, 4: 0.5})
    write_run(root / "SFT-terse", {**SFT_CONFIG, "dataset": "synthetic-terse"},
              [{"step": s, "loss": 1.0 / s, "run_kind": "sft"} for s in (1, 2, 3, 4)], {0: 0.25, 2: 0.125, 4: 0.0})
    return root


# ------------------------------------------------------------------------------------------ readers


def test_read_run_reads_config_metrics_and_eval_summaries(full_runs):
    rec = pf.read_run("OPSD", full_runs / "OPSD")
    assert rec.config["beta"] == 0.0 and rec.kind == "opsd"
    assert [m["step"] for m in rec.metrics] == [1, 2, 3, 4]
    assert rec.curve(BENCH) == ([0, 2, 4], [25.0, 50.0, 75.0])
    assert rec.final_accuracy(BENCH) == (4, 75.0)
    assert all("records" not in e for e in rec.evals)  # per-sample records are not kept in memory
    assert rec.metric("tokens_generated") == ([1, 2, 3, 4], [240.0, 480.0, 720.0, 960.0])
    assert rec.benchmarks() == [BENCH]


def test_read_run_tolerates_a_directory_with_only_eval(tmp_path):
    write_run(tmp_path / "base", None, None, {0: 0.5})
    rec = pf.read_run("base", tmp_path / "base")
    assert rec.config == {} and rec.metrics == [] and rec.curve(BENCH) == ([0], [50.0])
    with pytest.raises(FileNotFoundError):
        pf.read_run("x", tmp_path / "missing")


def test_metric_series_skip_missing_and_nan(tmp_path):
    write_run(tmp_path / "r", OPSD_CONFIG, [{"step": 1, "loss": 1.0}, {"step": 2}, {"step": 3, "loss": float("nan")}])
    rec = pf.read_run("r", tmp_path / "r")
    assert rec.metric("loss") == ([1], [1.0])


def test_resolve_runs_accepts_mapping_json_string_and_directory(full_runs):
    as_dir = pf.resolve_runs(str(full_runs))
    assert list(as_dir) == ["OPSD", "OPSD-clip", "OPSD-reverse-KL", "OPSD-JSD", "OPSD-long", "SFT", "GRPO",
                            "OPSD-terse", "SFT-terse"]
    as_json = pf.resolve_runs(json.dumps({"OPSD": str(full_runs / "OPSD"), "GRPO": None}))
    assert as_json == {"OPSD": full_runs / "OPSD", "GRPO": None}
    assert pf.resolve_runs({"OPSD": full_runs / "OPSD"}) == {"OPSD": full_runs / "OPSD"}
    with pytest.raises(ValueError, match="neither a mapping"):
        pf.resolve_runs(str(full_runs / "nope"))


def test_missing_run_is_left_out_with_a_note_and_its_figures_are_skipped(full_runs, tmp_path, capsys):
    records = pf.load_runs({"OPSD": full_runs / "OPSD", "GRPO": tmp_path / "never-trained", "OPSD-clip": None})
    out = capsys.readouterr().out
    assert list(records) == ["OPSD"]
    assert "run 'GRPO': no run directory" in out and "run 'OPSD-clip'" in out
    assert pf.fig3_avg_vs_step(records, [BENCH]) is None
    assert pf.fig4_clipping(records, [BENCH]) is None
    assert pf.fig3_grpo_zero_std(records) is None
    assert pf.table3(records, [BENCH]) is None
    out = capsys.readouterr().out
    assert "skipped Fig 3 (Avg@k vs step): missing runs ['GRPO']" in out
    assert "skipped Fig 4: missing runs ['OPSD-clip']" in out
    assert "skipped Table 3: missing runs ['OPSD-reverse-KL', 'OPSD-JSD']" in out
    assert pf.save_figure(None, "fig4_clipping", tmp_path / "figs") == []
    assert pf.save_table(None, "table3", tmp_path / "figs") == []
    assert not (tmp_path / "figs").exists()


def test_a_run_without_eval_results_is_skipped_not_drawn(full_runs, tmp_path, capsys):
    write_run(tmp_path / "clip", {**OPSD_CONFIG, "clip": 0.05, "clip_mode": "pointwise"}, opsd_metrics())
    records = pf.load_runs({"OPSD": full_runs / "OPSD", "OPSD-clip": tmp_path / "clip"})
    assert pf.fig4_clipping(records, [BENCH]) is None
    assert "skipped Fig 4: no ['synthetic'] eval results in runs ['OPSD-clip']" in capsys.readouterr().out


def test_default_runs_are_the_campaign_directory(monkeypatch, full_runs, tmp_path, capsys):
    monkeypatch.setattr(pf, "DEFAULT_RUNS_ROOT", full_runs)
    assert set(pf.resolve_runs(None)) == set(pf.RUN_NAMES) - {"base"}
    monkeypatch.setattr(pf, "DEFAULT_RUNS_ROOT", tmp_path / "none")
    assert pf.resolve_runs(None) == {}
    assert "make figures" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ labels


def test_labels_come_from_the_run_config():
    assert pf.clip_label({"clip": 0.05, "clip_mode": "pointwise"}) == "point-wise clip 0.05"
    assert pf.clip_label({"clip": None, "clip_mode": "none"}) == "no clip"
    assert pf.clip_label({"clip": 0.05, "clip_mode": "none"}) == "no clip"
    assert pf.clip_label({"clip": 0.06, "clip_mode": "token"}) == "token clip 0.06"
    assert [pf.objective_label({"beta": b}) for b in (0.0, 1.0, 0.5)] == ["forward KL", "reverse KL", "JSD(0.5)"]
    assert pf.train_label(OPSD_CONFIG, "opsd") == "8 problems x <=48 tokens/step, LoRA r16, lr 0.0003, 4 steps"
    assert pf.train_label(GRPO_CONFIG).startswith("2 prompts x 4 samples x <=48 tokens/step")
    assert pf.model_label({"model_name": "Qwen/Qwen3-1.7B"}) == "Qwen3-1.7B"
    assert pf.eval_label(eval_json(0, 0.5)) == "synthetic held-out, 64 problems, greedy, <=96 tokens, Avg@1"
    assert pf.run_kind(GRPO_CONFIG) == "grpo" and pf.run_kind(OPSD_CONFIG) == "opsd" and pf.run_kind(SFT_CONFIG) == "sft"


# ------------------------------------------------------------------------------------------ figures


def _titles(fig) -> list[str]:
    return [ax.get_title("left") or ax.get_title() for ax in fig.axes]


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def test_fig4_labels_clip_settings_and_plots_the_eval_curves(full_runs):
    records = pf.load_runs(str(full_runs))
    fig = pf.fig4_clipping(records, [BENCH])
    assert _legend_texts(fig) == ["point-wise clip 0.05 (OPSD-clip)", "no clip (OPSD)"]
    lines = fig.axes[0].get_lines()
    assert list(lines[0].get_ydata()) == [25.0, 30.0, 25.0] and list(lines[1].get_xdata()) == [0, 2, 4]
    # second row: the boxed-answer rate of the same evaluations (every fixture eval reports 1.0)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "boxed answers (%)"
    assert list(fig.axes[1].get_lines()[0].get_ydata()) == [100.0, 100.0, 100.0]
    assert "smollm2-135m-instruct" in fig._suptitle.get_text() and "greedy" in fig._suptitle.get_text()


def test_secondary_row_only_when_every_run_reports_the_metric(full_runs):
    records = pf.load_runs(str(full_runs))
    for evaluation in records["OPSD"].evals:
        evaluation["summary"].pop("boxed_rate")
    fig = pf.fig4_clipping(records, [BENCH])
    assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "Avg@1 (%)"


def test_fig5_labels_generation_lengths(full_runs):
    records = pf.load_runs(str(full_runs))
    fig = pf.fig5_generation_length(records, [BENCH])
    assert _legend_texts(fig) == ["generation length 48 (OPSD)", "generation length 96 (OPSD-long)"]


def test_fig3_panels_per_benchmark_and_tokens_axis(tmp_path):
    root = tmp_path / "runs"
    for bench in ("aime24", "aime25"):
        write_run(root / "OPSD", OPSD_CONFIG, opsd_metrics(), {0: 0.25, 2: 0.5, 4: 0.75}, benchmark=bench)
        write_run(root / "GRPO", GRPO_CONFIG, grpo_metrics(), {0: 0.25, 4: 0.5}, benchmark=bench)
    records = pf.load_runs(str(root))
    fig = pf.fig3_avg_vs_step(records, pf.select_benchmarks(records, None))
    assert _titles(fig) == ["AIME24", "AIME25", "", ""]  # accuracy row, then the boxed-rate row
    fig = pf.fig3_avg_vs_tokens(records, ["aime24", "aime25"])
    opsd, grpo = fig.axes[0].get_lines()
    assert list(opsd.get_xdata()) == [0.0, 480.0, 960.0] and list(opsd.get_ydata()) == [25.0, 50.0, 75.0]
    assert list(grpo.get_xdata()) == [0.0, 1200.0]
    assert "mean Avg@1 (%) over 2 benchmarks" == fig.axes[0].get_ylabel()


def test_fig3_grpo_zero_std_plots_the_logged_fraction(full_runs):
    records = pf.load_runs(str(full_runs))
    fig = pf.fig3_grpo_zero_std(records)
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_ydata()) == [0.75, 1.0, 0.75, 1.0]


def test_diagnostics_overlays_opsd_runs(full_runs):
    records = pf.load_runs(str(full_runs))
    fig = pf.diagnostics(records)
    assert _titles(fig) == list(pf.DIAGNOSTIC_KEYS)
    assert len(fig.axes[0].get_lines()) >= 5  # one line per OPSD-family run (+ zero line)
    assert pf.diagnostics({"SFT": records["SFT"]}) is None


# ------------------------------------------------------------------------------------------ tables


def test_table2_has_ours_and_the_papers_numbers_side_by_side(full_runs, tmp_path):
    records = pf.load_runs({n: full_runs / n for n in ("OPSD", "GRPO")})
    df = pf.table2(records, [BENCH])
    paper = yaml.safe_load((REPO / "reproduce" / "paper_results.yaml").read_text())["table2"]
    assert list(df.index) == ["base", "SFT", "GRPO", "OPSD"]
    assert df.loc["OPSD", "ours: synthetic"] == 75.0 and df.loc["GRPO", "ours: synthetic"] == 37.5
    assert df.loc["base", "ours: synthetic"] == 25.0 and df.loc["base", "ours: synthetic step"] == 0
    assert math.isnan(df.loc["SFT", "ours: synthetic"])  # no SFT run: shown as --, not invented
    assert df.loc["OPSD", "paper Qwen3-1.7B: aime24"] == paper["Qwen3-1.7B"]["OPSD"][0]
    assert "not comparable" in df.attrs["note"] and "CPU edition" in df.attrs["note"]
    paths = pf.save_table(df, "table2", tmp_path / "figs")
    md = (tmp_path / "figs" / "table2.md").read_text()
    assert [p.name for p in paths] == ["table2.csv", "table2.md"]
    # 75% of 64 problems = 48/64, Wilson 95% [63.2, 84.0]; base 16/64 [16.0, 36.8]
    assert "| OPSD | 75.0 [63.2, 84.0] | 4 |" in md and "| base | 25.0 [16.0, 36.8] | 0 |" in md
    assert "| SFT | -- | -- |" in md and "Paper scale vs CPU edition" in md
    assert df.loc["OPSD", "ours: synthetic 95% lo"] == pytest.approx(63.2, abs=0.05)
    assert "Wilson" in df.attrs["note"] and "n = problems" in df.attrs["note"]
    assert "95% lo" not in md and "95% hi" not in md  # folded into the value's cell
    assert pf.table2(records, [BENCH], paper_model="Qwen3-8B").loc["OPSD", "paper Qwen3-8B: aime24"] == 77.8
    with pytest.raises(ValueError, match="valid"):
        pf.table2(records, [BENCH], paper_model="Qwen3-70B")


def test_table2_base_row_prefers_a_base_run(full_runs, tmp_path):
    write_run(tmp_path / "base", None, None, {0: 0.125})
    records = pf.load_runs({"OPSD": full_runs / "OPSD", "base": tmp_path / "base"})
    assert pf.table2(records, [BENCH]).loc["base", "ours: synthetic"] == 12.5


def test_table3_rows_per_objective_with_paper_columns(full_runs):
    records = pf.load_runs(str(full_runs))
    df = pf.table3(records, [BENCH])
    assert list(df.index) == ["forward KL (OPSD)", "reverse KL (OPSD-reverse-KL)", "JSD(0.5) (OPSD-JSD)"]
    assert list(df.columns) == ["ours: step 0", "ours: step 0 95% lo", "ours: step 0 95% hi",
                                "ours: step 2", "ours: step 2 95% lo", "ours: step 2 95% hi",
                                "ours: step 4", "ours: step 4 95% lo", "ours: step 4 95% hi",
                                "ours: best", "ours: best 95% lo", "ours: best 95% hi", "ours: best step",
                                "paper: step 0", "paper: step 50", "paper: step 100"]
    md = pf.markdown_table(df)
    assert "| JSD(0.5) (OPSD-JSD) | 25.0 [16.0, 36.8] | 35.0 [" in md and "| 50.0 [38.1, 61.9] | 4 |" in md
    assert df.loc["JSD(0.5) (OPSD-JSD)", "ours: step 4"] == 50.0
    assert df.loc["reverse KL (OPSD-reverse-KL)", "paper: step 100"] == 35.0
    assert df.loc["JSD(0.5) (OPSD-JSD)", "paper: step 100"] == 39.0
    assert pf.table3_figure(records, [BENCH]) is not None


def test_best_and_last_checkpoint_selection_on_hand_made_evals(tmp_path):
    # the paper's forward-KL curve: 36.7 at step 0, 43.9 at 50, 41.1 at 100 -> best is step 50, last step 100
    write_run(tmp_path / "OPSD", OPSD_CONFIG, opsd_metrics(), {0: 0.367, 50: 0.439, 100: 0.411})
    rec = pf.read_run("OPSD", tmp_path / "OPSD")
    assert rec.selected_accuracy(BENCH, "best") == (50, pytest.approx(43.9))
    assert rec.selected_accuracy(BENCH, "last") == (100, pytest.approx(41.1))
    assert rec.selected_accuracy("aime24", "best") == (None, None)
    with pytest.raises(ValueError, match="valid"):
        rec.selected_accuracy(BENCH, "median")
    # ties go to the earliest step; the base model (step 0) is not a checkpoint of the run ...
    write_run(tmp_path / "tie", OPSD_CONFIG, None, {0: 0.9, 25: 0.5, 75: 0.5})
    assert pf.read_run("tie", tmp_path / "tie").selected_accuracy(BENCH) == (25, 50.0)
    # ... unless nothing else was evaluated
    write_run(tmp_path / "only-base", OPSD_CONFIG, None, {0: 0.25})
    assert pf.read_run("only-base", tmp_path / "only-base").selected_accuracy(BENCH) == (0, 25.0)


def test_table2_and_table3_report_best_or_last_with_the_chosen_step(tmp_path):
    # two benchmarks whose best checkpoints differ: the step is printed beside each value
    root = tmp_path / "runs"
    for name, beta in (("OPSD", 0.0), ("OPSD-reverse-KL", 1.0), ("OPSD-JSD", 0.5)):
        write_run(root / name, {**OPSD_CONFIG, "beta": beta}, opsd_metrics(), {0: 0.3, 50: 0.6, 100: 0.4})
        write_run(root / name, None, None, {0: 0.2, 50: 0.2, 100: 0.5}, benchmark="aime25")
    records = pf.load_runs(str(root))
    best = pf.table2(records, [BENCH, "aime25"])
    assert best.attrs["select"] == "best" and "best evaluated checkpoint" in best.attrs["note"]
    assert best.loc["OPSD", "ours: synthetic"] == pytest.approx(60.0) and best.loc["OPSD", "ours: synthetic step"] == 50
    assert best.loc["OPSD", "ours: aime25"] == pytest.approx(50.0) and best.loc["OPSD", "ours: aime25 step"] == 100
    assert list(best.columns[:8]) == ["ours: synthetic", "ours: synthetic 95% lo", "ours: synthetic 95% hi",
                                      "ours: synthetic step", "ours: aime25", "ours: aime25 95% lo",
                                      "ours: aime25 95% hi", "ours: aime25 step"]
    last = pf.table2(records, [BENCH, "aime25"], select="last")
    assert last.attrs["select"] == "last" and "last evaluated checkpoint" in last.attrs["note"]
    assert last.loc["OPSD", "ours: synthetic"] == pytest.approx(40.0) and last.loc["OPSD", "ours: synthetic step"] == 100
    md = pf.markdown_table(best)
    assert "| OPSD | 60.0 [47.1, 70.5] | 50 | 50.0 [38.1, 61.9] | 100 |" in md  # 60% of 64 -> 38/64
    t3 = pf.table3(records, [BENCH, "aime25"], select="best")  # aime25 is the paper's Table 3 benchmark
    assert t3.attrs["benchmark"] == "aime25" and t3.attrs["select"] == "best"
    assert t3.loc["forward KL (OPSD)", "ours: best"] == pytest.approx(50.0)
    assert t3.loc["forward KL (OPSD)", "ours: best step"] == 100
    t3_last = pf.table3(records, [BENCH], select="last")
    assert t3_last.loc["forward KL (OPSD)", "ours: last step"] == 100 and "ours: best" not in t3_last.columns
    with pytest.raises(ValueError, match="valid"):
        pf.table2(records, [BENCH], select="first")


def test_eval_proportion_counts_correct_answers_with_the_wilson_interval():
    from opsd.stats import wilson_interval

    e = eval_json(4, 41 / 200)
    e["summary"].update(n_problems=200, n_samples=200)
    prop = pf.eval_proportion(e)
    assert (prop.k, prop.n) == (41, 200) and str(prop) == "41/200 = 20.5% [15.5, 26.6]"
    assert (prop.lo, prop.hi) == wilson_interval(41, 200)
    # without n_samples: n = problems x k (Avg@4 of 10 problems, 0.5 -> 20 of 40 samples)
    e = eval_json(4, 0.5, k=4)
    e["summary"].update(n_problems=10)
    assert (pf.eval_proportion(e).k, pf.eval_proportion(e).n) == (20, 40)
    e["summary"].pop("avg_at_k")
    assert pf.eval_proportion(e) is None


def test_markdown_folds_interval_columns_into_the_value_cell():
    import pandas as pd

    df = pd.DataFrame({"acc": [50.0, None], "acc 95% lo": [38.1, None], "acc 95% hi": [61.9, None],
                       "acc step": [4, None], "other": [1.25, 2.0]}, index=["a", "b"])
    md = pf.markdown_table(df).splitlines()
    assert md[0] == "|  | acc | acc step | other |"
    assert md[2] == "| a | 50.0 [38.1, 61.9] | 4 | 1.2 |" and md[3] == "| b | -- | -- | 2.0 |"


def test_imitation_table_has_every_checkpoint_with_intervals_and_problems_seen(full_runs):
    records = pf.load_runs(str(full_runs))
    df = pf.imitation_vs_self_distillation_table(records, [BENCH])
    assert list(dict.fromkeys(df.index)) == ["OPSD", "SFT", "OPSD-terse", "SFT-terse"]
    assert list(df.loc["SFT-terse", "references"]) == ["terse"] * 3
    assert set(df.loc["SFT", "method"]) == {"imitation (SFT)"}
    assert set(df.loc["OPSD", "method"]) == {"self-distillation (OPSD)"}
    opsd = df.loc["OPSD"]
    assert list(opsd["step"]) == [0, 2, 4] and list(opsd["problems seen"]) == [0, 16, 32]  # 8 problems per step
    assert list(opsd["correct"]) == [16, 32, 48] and set(opsd["n"]) == {64}
    assert list(opsd["vs start (points)"]) == [0.0, 25.0, 50.0]
    assert list(df.loc["SFT-terse", "accuracy"]) == [25.0, 12.5, 0.0]
    assert df.loc["SFT-terse", "accuracy 95% hi"].iloc[-1] == pytest.approx(5.7, abs=0.05)  # 0/64: [0, 5.7]
    assert "synthetic-terse" in df.attrs["note"] and "Wilson" in df.attrs["note"]
    md = pf.markdown_table(df)
    assert "| OPSD | worked | self-distillation (OPSD) | 4 | 32 | 75.0 [63.2, 84.0] | 48 | 64 | 50.0 |" in md
    for missing in ("OPSD-terse", "SFT"):
        partial = {n: r for n, r in records.items() if n != missing}
        assert pf.imitation_vs_self_distillation_table(partial, [BENCH]) is None
        assert pf.imitation_vs_self_distillation(partial, [BENCH]) is None


def test_imitation_figure_panels_bands_and_starting_model(full_runs):
    records = pf.load_runs(str(full_runs))
    fig = pf.imitation_vs_self_distillation(records, [BENCH])
    left, right = fig.axes
    assert _titles(fig) == ["worked references (synthetic)", "terse references (no derivation) (synthetic-terse)"]
    assert left.get_xlabel().startswith("training problems seen")
    # per panel: the starting model's line, then OPSD and SFT
    start, opsd, _ = left.get_lines()
    assert list(start.get_ydata()) == [25.0, 25.0]
    assert list(opsd.get_xdata()) == [0, 16, 32] and list(opsd.get_ydata()) == [25.0, 50.0, 75.0]
    assert list(right.get_lines()[2].get_ydata()) == [25.0, 12.5, 0.0]
    # one 95% band per curve (fill_between) plus the starting model's band (axhspan)
    assert sum(type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection") for c in left.collections) == 2
    assert len(left.patches) == 1
    legend = _legend_texts(fig)
    assert "starting model: 16/64 = 25.0% [16.0, 36.8]" in legend
    assert legend.count("OPSD (OPSD-terse)") == 1 and legend.count("SFT (SFT)") == 1
    title = fig._suptitle.get_text()
    assert "95% Wilson" in title and "OPSD: 8 problems x <=48 tokens/step" in title and "SFT: 8 solutions/step" in title


def test_table5_category_means_first_step_and_count_weighted(full_runs):
    records = pf.load_runs(str(full_runs))
    df = pf.table5(records)
    first, mean = df.iloc[0], df.iloc[1]
    assert first["style"] == 1.0 and first["math"] == pytest.approx(0.1)
    # kl_style = s with weight count_style = s over s = 1..4: sum(s^2) / sum(s) = 30 / 10
    assert mean["style"] == pytest.approx(3.0)
    assert df.loc["paper: Qwen3-1.7B", "style"] == 0.85
    assert pf.table5_figure(records) is not None
    assert pf.table5({"SFT": records["SFT"]}) is None
    # rollouts without any style word log no kl_style: that column is NaN, the table is still made
    for m in records["OPSD"].metrics:
        m.pop("kl_style")
    df = pf.table5(records)
    assert math.isnan(df.iloc[0]["style"]) and df.iloc[1]["math"] == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------ saving


def test_build_all_writes_every_file_with_the_shared_style(full_runs, tmp_path):
    out = tmp_path / "figs"
    written = pf.build_all(str(full_runs), out, BENCH)
    assert all(written.values()), [k for k, v in written.items() if not v]
    for name in ("fig3_avg_vs_step", "fig3_avg_vs_tokens", "fig3_grpo_zero_std", "fig4_clipping",
                 "fig5_generation_length", "table3_objectives", "table5_kl_by_category", "diagnostics"):
        assert (out / f"{name}.png").stat().st_size > 1000 and (out / f"{name}.pdf").is_file(), name
    for name in ("table2", "table3", "table5_kl_by_category"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.md").is_file(), name
    assert set(pf.FIGURES) == {p.stem for p in out.iterdir()}


def test_style_file_parses():
    params = matplotlib.rc_params_from_file(str(pf.STYLE_PATH), use_default_template=False)
    assert params["savefig.bbox"] == "tight" and params["axes.grid"] is True


# ------------------------------------------------------------------------------------------ campaign


def test_campaign_has_every_run_the_figures_need():
    names = [r.name for r in figure_runs.campaign()]
    assert set(names) == set(pf.RUN_NAMES) - {"base"}
    runs = {r.name: r for r in figure_runs.campaign()}
    assert runs["OPSD-clip"].overrides["clip"] == 0.05 and runs["OPSD-clip"].overrides["clip_mode"] == "pointwise"
    assert runs["OPSD-reverse-KL"].overrides["beta"] == 1.0 and runs["OPSD-JSD"].overrides["beta"] == 0.5
    assert runs["OPSD-long"].overrides["max_completion_length"] > 64
    assert runs["OPSD-terse"].overrides["dataset"] == runs["SFT-terse"].overrides["dataset"] == "synthetic-terse"
    assert all(r.overrides["max_steps"] == figure_runs.STEPS for r in runs.values() if r.kind != "sft")
    assert runs["SFT"].overrides["max_steps"] == figure_runs.SFT_STEPS_PER_STEP * figure_runs.STEPS
    # the same held-out set for every run: 200 problems of `synthetic`, greedy, 64 new tokens
    assert figure_runs.BENCHMARK == "synthetic"
    assert figure_runs.EVAL == {"n_problems": 200, "k": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 64,
                                "batch_size": 32}
    assert sum(figure_runs.estimate_seconds(figure_runs.campaign()).values()) <= 60 * 60


@pytest.mark.parametrize("quick", [False, True])
def test_campaign_configs_load(quick, tmp_path):
    configs = {}
    for run in figure_runs.campaign(quick):
        config = configs[run.name] = figure_runs.load_run_config(run, tmp_path)
        assert config.output_dir == str(tmp_path / run.name)
        steps = 2 if quick else figure_runs.STEPS * (figure_runs.SFT_STEPS_PER_STEP if run.kind == "sft" else 1)
        assert config.max_steps == steps
        assert config.max_steps % config.save_steps == 0  # the last step is a checkpoint, so it is evaluated
        assert run.command(tmp_path).startswith(f"python -m opsd {run.kind} --config {run.profile} ")
    # every run starts from the CPU starting model; the terse variants differ from their runs in the data only
    assert {c.model_name for c in configs.values()} == {"smollm2-135m-opsd-start"}
    assert configs["OPSD-terse"].dataset == configs["SFT-terse"].dataset == "synthetic-terse"
    assert configs["OPSD"].dataset == configs["SFT"].dataset == "synthetic"
    runs = {r.name: r for r in figure_runs.campaign(quick)}
    for a, b in (("OPSD-terse", "OPSD"), ("SFT-terse", "SFT")):
        assert (runs[a].kind, runs[a].profile) == (runs[b].kind, runs[b].profile)
        assert {k: v for k, v in runs[a].overrides.items() if k != "dataset"} == runs[b].overrides
    if not quick:
        # at every evaluated checkpoint SFT and OPSD have read the same number of training problems, and
        # both are evaluated as often
        opsd, sft = configs["OPSD"], configs["SFT"]
        assert opsd.max_steps * pf.problems_per_step(vars(opsd), "opsd") == \
            sft.max_steps * pf.problems_per_step(vars(sft), "sft")
        assert opsd.max_steps // opsd.save_steps == sft.max_steps // sft.save_steps
        # the student prompt of the baselines is the one OPSD's student reads
        from opsd.contexts import PROMPT_PROFILES

        for name in ("SFT", "GRPO", "SFT-terse"):
            assert PROMPT_PROFILES[configs[name].prompt_profile]["student"] == \
                PROMPT_PROFILES[opsd.prompt_profile]["student"]


def test_estimate_counts_every_step_and_evaluation():
    runs = figure_runs.campaign(steps=4, save_every=2)
    est = figure_runs.estimate_seconds(runs)
    s = figure_runs.SECONDS_PER_STEP
    long = s["train"] * figure_runs.LONG_COMPLETION_LENGTH / 64
    train = 9 * figure_runs.SECONDS_PER_RUN_START + 4 * (5 * s["train"] + long + s["grpo"]) + 2 * 8 * s["sft"]
    assert est["train"] == pytest.approx(train)
    assert est["eval"] == pytest.approx((9 * 2 + 1) * figure_runs.SECONDS_PER_EVAL)  # 2 checkpoints each + step 0
    with pytest.raises(ValueError, match="multiple"):
        figure_runs.campaign(steps=5, save_every=2)


def test_campaign_entry_mismatch_is_an_error(tmp_path):
    run = figure_runs.campaign()[0]
    figure_runs._check_campaign_entry(run, tmp_path / run.name, fresh=False)
    changed = figure_runs.CampaignRun(run.name, run.kind, run.profile, {**run.overrides, "beta": 1.0})
    with pytest.raises(RuntimeError, match="another campaign entry"):
        figure_runs._check_campaign_entry(changed, tmp_path / run.name, fresh=False)
    figure_runs._check_campaign_entry(changed, tmp_path / run.name, fresh=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    with pytest.raises(RuntimeError, match="not made by"):
        figure_runs._check_campaign_entry(figure_runs.CampaignRun("other", "train", "cpu-tiny"), tmp_path / "other", False)


def test_share_base_eval_copies_step_0_once(tmp_path):
    write_run(tmp_path / "a", OPSD_CONFIG, None, {0: 0.5})
    assert figure_runs.share_base_eval(tmp_path / "a", tmp_path / "b")
    copied = json.loads((tmp_path / "b" / "eval" / BENCH / "step-0.json").read_text())
    assert copied["copied_from"].endswith("a/eval/synthetic/step-0.json") and copied["summary"]["avg_at_k"] == 0.5
    assert not figure_runs.share_base_eval(tmp_path / "a", tmp_path / "b")


def test_plan_prints_commands(capsys, tmp_path):
    assert figure_runs.main(["--plan", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "python -m opsd train --config cpu-tiny" in out and "clip=0.05" in out and "estimate" in out
    assert "dataset=synthetic-terse" in out and out.count("model_name=smollm2-135m-opsd-start") == 9
    assert "--limit 200" in out and "--max-new-tokens 64" in out
    total = float(out.split("total ")[-1].split(" min")[0])
    assert 0 < total <= 60


# ------------------------------------------------------------------------------------------ notebook


def _kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    return "opsd-kit" if "opsd-kit" in KernelSpecManager().find_kernel_specs() else "python3"


def test_notebook_is_committed_clean():
    nb = json.loads((REPO / "reproduce" / "figures.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    params = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1
    for name in ("runs = None", 'figures_dir = "figures"', 'benchmark = "synthetic"', "_names_before_injection"):
        assert name in "".join(params[0]["source"])


TINY_TRAINING = {"max_steps": 2, "per_device_train_batch_size": 2, "max_completion_length": 6, "save_steps": 1,
                     "logging_steps": 1, "log_rollouts_every": 1, "lora_r": 4, "lora_alpha": 8, "learning_rate": 1e-3,
                     "max_length": 256, "dataset_size": 8, "model_name": figure_runs.START_MODEL}
TINY_EVAL = {"n_problems": 2, "k": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 8, "batch_size": 2}


@pytest.mark.slow
@pytest.mark.notebook
def test_notebook_draws_figures_from_real_tiny_runs(tmp_path):
    """Two real 2-step OPSD runs (no clip, point-wise clip), the quick campaign's SFT, OPSD-terse and
    SFT-terse runs, a 2-problem evaluation of their checkpoints, then the notebook: Fig 4, Table 2 (with
    intervals and the terse rows), Table 5, the diagnostics and the imitation figure are drawn, the rest
    skipped."""
    papermill = pytest.importorskip("papermill")
    from opsd.config import load_config
    from opsd.evaluate import evaluate_run
    from opsd.trainer import OPSDConfig, run_training

    runs = {}
    for name, extra in (("OPSD", {}), ("OPSD-clip", {"clip": 0.05, "clip_mode": "pointwise"})):
        config = load_config(OPSDConfig, "cpu-tiny", {**TINY_TRAINING, **extra, "output_dir": str(tmp_path / name)})
        run_training(config)
        if name != "OPSD":  # the base model (step 0) is evaluated once, as the campaign does
            figure_runs.share_base_eval(tmp_path / "OPSD", tmp_path / name)
        evaluate_run(tmp_path / name, BENCH, steps=[2], progress=False, **TINY_EVAL)
        runs[name] = str(tmp_path / name)
    # the imitation comparison's other runs, trained and evaluated by the campaign's own functions
    quick = {r.name: r for r in figure_runs.campaign(quick=True)}
    for name in ("SFT", "OPSD-terse", "SFT-terse"):
        assert figure_runs.train_run(quick[name], tmp_path) == "trained"
        assert figure_runs.evaluate_campaign_run(quick[name], tmp_path, TINY_EVAL, tmp_path / "OPSD") == 3  # 0, 1, 2
        runs[name] = str(tmp_path / name)
    for name in ("OPSD-clip", "SFT-terse"):  # the starting model is evaluated once and shared
        assert json.loads((tmp_path / name / "eval" / BENCH / "step-0.json").read_text())["copied_from"]
    runs["GRPO"] = str(tmp_path / "never-trained")
    out = tmp_path / "figures"
    papermill.execute_notebook(
        str(REPO / "reproduce" / "figures.ipynb"), str(tmp_path / "figures.ipynb"), kernel_name=_kernel(),
        cwd=str(REPO), progress_bar=False, parameters={"runs": json.dumps(runs), "figures_dir": str(out)},
    )
    for name in ("fig4_clipping", "table5_kl_by_category", "diagnostics", "fig_imitation_vs_self_distillation"):
        assert (out / f"{name}.png").is_file() and (out / f"{name}.pdf").is_file(), name
    assert (out / "table2.csv").is_file() and (out / "table2.md").is_file()
    assert (out / "fig_imitation_vs_self_distillation.csv").is_file()
    assert not (out / "fig3_avg_vs_step.png").exists() and not (out / "fig5_generation_length.png").exists()
    executed = (tmp_path / "figures.ipynb").read_text()
    assert "skipped Fig 3 (Avg@k vs step): missing runs ['GRPO']" in executed
    assert "skipped Fig 5: missing runs ['OPSD-long']" in executed
    table2 = (out / "table2.md").read_text()
    assert "| OPSD |" in table2 and "paper Qwen3-1.7B" in table2 and "Wilson" in table2
    assert "| SFT-terse |" in table2 and "| OPSD-terse |" in table2
    opsd_row = next(line for line in table2.splitlines() if line.startswith("| OPSD |"))
    assert re.search(r"\| \d+\.\d \[\d+\.\d, \d+\.\d\] \| 2 \|", opsd_row), opsd_row  # value [lo, hi] | step
    curves = (out / "fig_imitation_vs_self_distillation.csv").read_text()
    assert curves.startswith("run,references,method,step,problems seen,accuracy,accuracy 95% lo,accuracy 95% hi")
    assert "Imitation (SFT) vs self-distillation" in executed and "when each wins" in executed
    with pytest.raises(papermill.PapermillExecutionError, match="valid parameters"):
        papermill.execute_notebook(
            str(REPO / "reproduce" / "figures.ipynb"), str(tmp_path / "bad.ipynb"), kernel_name=_kernel(),
            cwd=str(REPO), progress_bar=False, parameters={"figure_dir": str(out)},
        )
