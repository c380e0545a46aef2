"""opsd/paper/figures.py, opsd/paper/campaign.py and reproduce/figures.ipynb.

Unit tests build run directories by hand (config.yaml, metrics.jsonl, eval JSON as runs write them);
the notebook test trains real 2-step runs (OPSD, OPSD-clip, and the quick campaign's SFT, OPSD-terse and
SFT-terse; not the verbose pair, whose panel the imitation figure leaves out when its runs are missing),
evaluates them on a few problems and executes the notebook.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pytest
from fake_runs import (
    BENCH,
    GRPO_CONFIG,
    OPSD_CONFIG,
    grpo_metrics,
    opsd_metrics,
    write_run,
)

from opsd.paper import campaign as figure_runs
from opsd.paper import figures as pf
from opsd.paper.records import RUN_NAMES, problems_per_step

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ skipped figures


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
    assert _titles(fig) == [pf.DIAGNOSTIC_TITLES[k] for k in pf.DIAGNOSTIC_KEYS
                            if any(records[n].metric(k)[0] for n in records)]
    assert len(fig.axes[0].get_lines()) >= 5  # one line per OPSD-family run (+ zero line)
    assert pf.diagnostics({"SFT": records["SFT"]}) is None


def test_imitation_figure_panels_bands_and_starting_model(full_runs):
    records = pf.load_runs(str(full_runs))
    fig = pf.imitation_vs_self_distillation(records, [BENCH])
    left, middle, right = fig.axes
    assert _titles(fig) == ["worked references\n(synthetic)", "terse references (no derivation)\n(synthetic-terse)",
                            "long-winded references\n(synthetic-verbose)"]
    assert all(ax.get_xlabel() == "problems seen" for ax in fig.axes)
    # per panel: the starting model's line, then OPSD and SFT
    start, opsd, _ = left.get_lines()
    assert list(start.get_ydata()) == [25.0, 25.0]
    assert list(opsd.get_xdata()) == [0, 16, 32] and list(opsd.get_ydata()) == [25.0, 50.0, 75.0]
    assert list(middle.get_lines()[2].get_ydata()) == [25.0, 12.5, 0.0]
    start, opsd, sft = right.get_lines()
    assert list(start.get_ydata()) == [25.0, 25.0]
    assert list(opsd.get_xdata()) == [0, 16, 32] and list(opsd.get_ydata()) == [25.0, 50.0, 62.5]
    assert list(sft.get_xdata()) == [0, 16, 32] and list(sft.get_ydata()) == [25.0, 0.0, 0.0]
    # per panel: one 95% band per curve (fill_between) plus the starting model's band (axhspan)
    for ax in fig.axes:
        assert sum(type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection") for c in ax.collections) == 2
        assert len(ax.patches) == 1
    # one legend for the three panels, without the run names (the panel titles say which references)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["starting model 16/64 = 25.0% [16.0, 36.8]",
                                                                  "OPSD", "SFT"]
    assert all(ax.get_legend() is None for ax in fig.axes)
    title = fig._suptitle.get_text()
    assert "OPSD: 8 problems x <=48 tokens/step" in title and "SFT: 8 solutions/step" in title
    assert any("95% Wilson" in t.get_text() for t in fig.texts)


def test_imitation_figure_without_the_verbose_runs_draws_the_other_panels(full_runs, capsys):
    records = pf.load_runs(str(full_runs))
    partial = {n: r for n, r in records.items() if n not in ("OPSD-verbose", "SFT-verbose")}
    fig = pf.imitation_vs_self_distillation(partial, [BENCH])
    assert _titles(fig) == ["worked references\n(synthetic)", "terse references (no derivation)\n(synthetic-terse)"]
    assert "verbose references left out (missing runs ['OPSD-verbose', 'SFT-verbose'])" in capsys.readouterr().out
    # one of the pair without evaluations: the panel is left out too, never drawn half
    for evaluation in records["SFT-verbose"].evals:
        evaluation.pop("summary")
    df = pf.imitation_vs_self_distillation_table(records, [BENCH])
    assert list(dict.fromkeys(df.index)) == ["OPSD", "SFT", "OPSD-terse", "SFT-terse"]
    assert [references for references, _ in df.attrs["panels"]] == ["worked", "terse"]
    assert "left out (no synthetic eval results in runs ['SFT-verbose'])" in capsys.readouterr().out
    assert len(pf.imitation_vs_self_distillation(records, [BENCH]).axes) == 2


# ------------------------------------------------------------------------------------------ saving


def test_build_all_writes_every_file_with_the_shared_style(full_runs, tmp_path):
    out = tmp_path / "figs"
    written = pf.build_all(str(full_runs), out, BENCH)
    questions = ("teacher_context", "layout_x_clip", "token_efficiency", "long_run")   # their runs are not faked here
    assert all(v for k, v in written.items() if k not in questions), [k for k, v in written.items() if not v]
    assert set(questions) <= set(written) and not any(written[k] for k in questions)   # skipped (test_questions)
    for name in ("fig3_avg_vs_step", "fig3_avg_vs_tokens", "fig3_grpo_zero_std", "fig4_clipping",
                 "fig5_generation_length", "table3_objectives", "table5_kl_by_category", "diagnostics"):
        assert (out / f"{name}.png").stat().st_size > 1000 and (out / f"{name}.pdf").is_file(), name
    for name in ("table2", "table3", "table5_kl_by_category"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.md").is_file(), name
    assert set(pf.FIGURES) == {p.stem for p in out.iterdir()}
    # the data variants' rows: Table 2 lists them after the methods, the imitation data has all 6 runs
    table2 = (out / "table2.md").read_text()
    rows = [line.split(" | ")[0] for line in table2.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["| base", "| SFT", "| GRPO", "| OPSD", "| SFT-terse", "| OPSD-terse", "| SFT-verbose",
                        "| OPSD-verbose"]
    assert "| SFT-verbose | 0.0 [0.0, 5.7] | 2 |" in table2  # best = earliest of the tied checkpoints
    assert "| OPSD-verbose | 62.5 [50.3, 73.3] | 4 |" in table2
    assert "SFT-verbose / OPSD-verbose: trained on long-winded references (synthetic-verbose)" in table2
    curves = (out / "fig_imitation_vs_self_distillation.csv").read_text()
    assert [line.split(",")[:2] for line in curves.splitlines()[1:]][-6:] == \
        [["OPSD-verbose", "verbose"]] * 3 + [["SFT-verbose", "verbose"]] * 3


# ------------------------------------------------------------------------------------------ campaign


def test_campaign_has_every_run_the_figures_need():
    names = [r.name for r in figure_runs.campaign()]
    assert set(names) == set(RUN_NAMES) - {"base"}
    runs = {r.name: r for r in figure_runs.campaign()}
    assert runs["OPSD-clip"].overrides["clip"] == 0.05 and runs["OPSD-clip"].overrides["clip_mode"] == "pointwise"
    assert runs["OPSD-reverse-KL"].overrides["beta"] == 1.0 and runs["OPSD-JSD"].overrides["beta"] == 0.5
    assert runs["OPSD-long"].overrides["max_completion_length"] > 64
    assert runs["OPSD-terse"].overrides["dataset"] == runs["SFT-terse"].overrides["dataset"] == "synthetic-terse"
    assert runs["OPSD-verbose"].overrides["dataset"] == runs["SFT-verbose"].overrides["dataset"] == "synthetic-verbose"
    assert all(r.overrides["max_steps"] == figure_runs.STEPS for r in runs.values()
               if r.kind != "sft" and r.name not in ("OPSD-150", "GRPO-48"))
    assert runs["OPSD-150"].overrides["max_steps"] >= 150 and runs["GRPO-48"].overrides["max_steps"] == 48
    assert runs["SFT"].overrides["max_steps"] == figure_runs.SFT_STEPS_PER_STEP * figure_runs.STEPS
    # the same held-out set for every run: 200 problems of `synthetic`, greedy, 64 new tokens (batches of 64)
    assert figure_runs.BENCHMARK == "synthetic"
    assert figure_runs.EVAL == {"n_problems": 200, "k": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 64,
                                "batch_size": 64}
    assert sum(figure_runs.estimate_seconds(figure_runs.campaign()).values()) <= 120 * 60


@pytest.mark.parametrize("quick", [False, True])
def test_campaign_configs_load(quick, tmp_path):
    configs = {}
    runs_by_name = {r.name: r for r in figure_runs.campaign(quick)}
    for run in figure_runs.campaign(quick):
        config = configs[run.name] = figure_runs.load_run_config(run, tmp_path)
        assert config.output_dir == str(tmp_path / run.name)
        steps = 2 if quick else figure_runs.STEPS * (figure_runs.SFT_STEPS_PER_STEP if run.kind == "sft" else 1)
        long = {"OPSD-150": figure_runs.LONG_STEPS, "GRPO-48": figure_runs.GRPO_LONG_STEPS}
        if run.name in long:
            steps = 4 if quick else long[run.name]
            assert set(run.eval_steps) <= set(range(config.save_steps, steps + 1, config.save_steps)), run.eval_steps
            assert run.eval_steps[-1] == steps
        assert config.max_steps == steps
        assert config.max_steps % config.save_steps == 0  # the last step is a checkpoint, so it is evaluated
        assert run.command(tmp_path).startswith(f"python -m opsd {run.kind} --config {run.profile} ")
    # every run starts from the CPU starting model; the terse and verbose variants differ from their runs in
    # the data only
    assert {c.model_name for c in configs.values()} == {"smollm2-135m-opsd-start"}
    assert configs["OPSD-terse"].dataset == configs["SFT-terse"].dataset == "synthetic-terse"
    assert configs["OPSD-verbose"].dataset == configs["SFT-verbose"].dataset == "synthetic-verbose"
    assert configs["OPSD"].dataset == configs["SFT"].dataset == "synthetic"
    # the controls and the layout x clip runs differ from OPSD in their one setting only
    for name, setting in (("OPSD-context-none", {"teacher_context"}), ("OPSD-context-other", {"teacher_context"}),
                          ("OPSD-context-wrong", {"teacher_context"}), ("OPSD-layout-reference", {"position_layout"}),
                          ("OPSD-clip-layout-reference", {"position_layout", "clip"})):
        differ = {f.name for f in dataclasses.fields(configs[name])
                  if getattr(configs[name], f.name) != getattr(configs["OPSD"], f.name)}
        assert differ == {"output_dir", *setting}, (name, differ)
        assert runs_by_name[name].benchmarks == (("synthetic", "synthetic-paraphrased") if "context" in name
                                                 else ("synthetic",))
    assert configs["OPSD-150"].collapse_watch == "warn"
    runs = {r.name: r for r in figure_runs.campaign(quick)}
    for a, b in (("OPSD-terse", "OPSD"), ("SFT-terse", "SFT"), ("OPSD-verbose", "OPSD"), ("SFT-verbose", "SFT")):
        assert (runs[a].kind, runs[a].profile) == (runs[b].kind, runs[b].profile)
        assert {k: v for k, v in runs[a].overrides.items() if k != "dataset"} == runs[b].overrides
        differ = [f.name for f in dataclasses.fields(configs[a])
                  if getattr(configs[a], f.name) != getattr(configs[b], f.name)]
        assert differ == ["output_dir", "dataset"], (a, differ)
    if not quick:
        # at every evaluated checkpoint SFT and OPSD have read the same number of training problems, and
        # both are evaluated as often
        opsd, sft = configs["OPSD"], configs["SFT"]
        assert opsd.max_steps * problems_per_step(vars(opsd), "opsd") == \
            sft.max_steps * problems_per_step(vars(sft), "sft")
        assert opsd.max_steps // opsd.save_steps == sft.max_steps // sft.save_steps
        # the student prompt of the baselines is the one OPSD's student reads
        from opsd.contexts import PROMPT_PROFILES

        for name in ("SFT", "GRPO", "SFT-terse", "SFT-verbose"):
            assert PROMPT_PROFILES[configs[name].prompt_profile]["student"] == \
                PROMPT_PROFILES[opsd.prompt_profile]["student"]


def test_estimate_counts_every_step_and_evaluation():
    runs = figure_runs.campaign(steps=4, save_every=2)
    est = figure_runs.estimate_seconds(runs)
    s = figure_runs.SECONDS_PER_STEP
    long = s["train"] * figure_runs.LONG_COMPLETION_LENGTH / 64
    # 18 runs: 11 OPSD runs at the base length (OPSD, -clip, -reverse-KL, -JSD, -terse, -verbose, 3 controls,
    # 2 layout runs), OPSD-long, GRPO, 3 SFT runs (SFT, -terse, -verbose) of twice as many steps, and the two
    # long runs (their own steps and evaluated checkpoints)
    train = (18 * figure_runs.SECONDS_PER_RUN_START + 4 * (11 * s["train"] + long + s["grpo"]) + 3 * 8 * s["sft"]
             + figure_runs.LONG_STEPS * s["train"] + figure_runs.GRPO_LONG_STEPS * s["grpo"])
    assert est["train"] == pytest.approx(train)
    # 2 checkpoints each (OPSD on two benchmarks), the last checkpoint of the 3 controls (two benchmarks) and
    # the 2 layout runs; the long runs' evaluated steps; step 0 once per benchmark
    # (the 3 controls and the 2 layout runs: their last checkpoint only)
    n_evals = 11 * 2 + 2 + 3 * 2 + 2 + len(figure_runs.LONG_EVAL_STEPS) + len(figure_runs.GRPO_LONG_EVAL_STEPS) + 2
    assert est["eval"] == pytest.approx(n_evals * figure_runs.SECONDS_PER_EVAL)
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
    assert "dataset=synthetic-terse" in out and out.count("model_name=smollm2-135m-opsd-start") == 18
    assert out.count("dataset=synthetic-verbose") == 2
    assert "--limit 200" in out and "--max-new-tokens 64" in out
    total = float(out.split("total ")[-1].split(" min")[0])
    assert 0 < total <= 120


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
    intervals and the terse rows), Table 5, the diagnostics and the imitation figure (its worked and terse
    panels; the verbose pair is not trained here, to keep the test cheap) are drawn, the rest skipped."""
    papermill = pytest.importorskip("papermill")
    from opsd.config import OPSDConfig, load_config
    from opsd.eval.evaluate import evaluate_run
    from opsd.trainer import run_training

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
    # the verbose pair was not trained: the imitation figure and table leave its panel out, with a note
    assert "verbose references left out (missing runs ['OPSD-verbose', 'SFT-verbose'])" in executed
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
