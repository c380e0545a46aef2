"""opsd.paper.tables: Tables 2, 3 and 5 and the imitation table, ours beside the paper's, with intervals."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pytest
import yaml
from fake_runs import (
    BENCH,
    OPSD_CONFIG,
    SFT_CONFIG,
    opsd_metrics,
    write_run,
)

from opsd.paper import figures as pf
from opsd.paper import tables as pt
from opsd.paper.records import load_runs

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ tables


def test_table2_has_ours_and_the_papers_numbers_side_by_side(full_runs, tmp_path):
    records = load_runs({n: full_runs / n for n in ("OPSD", "GRPO")})
    df = pt.table2(records, [BENCH])
    paper = yaml.safe_load((REPO / "reproduce" / "paper_results.yaml").read_text())["table2"]
    assert list(df.index) == ["base", "SFT", "GRPO", "OPSD"]
    assert df.loc["OPSD", "ours: synthetic"] == 75.0 and df.loc["GRPO", "ours: synthetic"] == 37.5
    assert df.loc["base", "ours: synthetic"] == 25.0 and df.loc["base", "ours: synthetic step"] == 0
    assert math.isnan(df.loc["SFT", "ours: synthetic"])  # no SFT run: shown as --, not invented
    assert df.loc["OPSD", "paper Qwen3-1.7B: aime24"] == paper["Qwen3-1.7B"]["OPSD"][0]
    assert "not comparable" in df.attrs["note"] and "CPU edition" in df.attrs["note"]
    paths = pt.save_table(df, "table2", tmp_path / "figs")
    md = (tmp_path / "figs" / "table2.md").read_text()
    assert [p.name for p in paths] == ["table2.csv", "table2.md"]
    # 75% of 64 problems = 48/64, Wilson 95% [63.2, 84.0]; base 16/64 [16.0, 36.8]
    assert "| OPSD | 75.0 [63.2, 84.0] | 4 |" in md and "| base | 25.0 [16.0, 36.8] | 0 |" in md
    assert "| SFT | -- | -- |" in md and "Paper scale vs CPU edition" in md
    assert df.loc["OPSD", "ours: synthetic 95% lo"] == pytest.approx(63.2, abs=0.05)
    assert "Wilson" in df.attrs["note"] and "n = problems" in df.attrs["note"]
    assert "95% lo" not in md and "95% hi" not in md  # folded into the value's cell
    assert pt.table2(records, [BENCH], paper_model="Qwen3-8B").loc["OPSD", "paper Qwen3-8B: aime24"] == 77.8
    with pytest.raises(ValueError, match="valid"):
        pt.table2(records, [BENCH], paper_model="Qwen3-70B")


def test_table2_base_row_prefers_a_base_run(full_runs, tmp_path):
    write_run(tmp_path / "base", None, None, {0: 0.125})
    records = load_runs({"OPSD": full_runs / "OPSD", "base": tmp_path / "base"})
    assert pt.table2(records, [BENCH]).loc["base", "ours: synthetic"] == 12.5


def test_table3_rows_per_objective_with_paper_columns(full_runs):
    records = load_runs(str(full_runs))
    df = pt.table3(records, [BENCH])
    assert list(df.index) == ["forward KL (OPSD)", "reverse KL (OPSD-reverse-KL)", "JSD(0.5) (OPSD-JSD)"]
    assert list(df.columns) == ["ours: step 0", "ours: step 0 95% lo", "ours: step 0 95% hi",
                                "ours: step 2", "ours: step 2 95% lo", "ours: step 2 95% hi",
                                "ours: step 4", "ours: step 4 95% lo", "ours: step 4 95% hi",
                                "ours: best", "ours: best 95% lo", "ours: best 95% hi", "ours: best step",
                                "paper: step 0", "paper: step 50", "paper: step 100"]
    md = pt.markdown_table(df)
    assert "| JSD(0.5) (OPSD-JSD) | 25.0 [16.0, 36.8] | 35.0 [" in md and "| 50.0 [38.1, 61.9] | 4 |" in md
    assert df.loc["JSD(0.5) (OPSD-JSD)", "ours: step 4"] == 50.0
    assert df.loc["reverse KL (OPSD-reverse-KL)", "paper: step 100"] == 35.0
    assert df.loc["JSD(0.5) (OPSD-JSD)", "paper: step 100"] == 39.0
    assert pf.table3_figure(records, [BENCH]) is not None


def test_table2_and_table3_report_best_or_last_with_the_chosen_step(tmp_path):
    # two benchmarks whose best checkpoints differ: the step is printed beside each value
    root = tmp_path / "runs"
    for name, beta in (("OPSD", 0.0), ("OPSD-reverse-KL", 1.0), ("OPSD-JSD", 0.5)):
        write_run(root / name, {**OPSD_CONFIG, "beta": beta}, opsd_metrics(), {0: 0.3, 50: 0.6, 100: 0.4})
        write_run(root / name, None, None, {0: 0.2, 50: 0.2, 100: 0.5}, benchmark="aime25")
    records = load_runs(str(root))
    best = pt.table2(records, [BENCH, "aime25"])
    assert best.attrs["select"] == "best" and "best evaluated checkpoint" in best.attrs["note"]
    assert best.loc["OPSD", "ours: synthetic"] == pytest.approx(60.0) and best.loc["OPSD", "ours: synthetic step"] == 50
    assert best.loc["OPSD", "ours: aime25"] == pytest.approx(50.0) and best.loc["OPSD", "ours: aime25 step"] == 100
    assert list(best.columns[:8]) == ["ours: synthetic", "ours: synthetic 95% lo", "ours: synthetic 95% hi",
                                      "ours: synthetic step", "ours: aime25", "ours: aime25 95% lo",
                                      "ours: aime25 95% hi", "ours: aime25 step"]
    last = pt.table2(records, [BENCH, "aime25"], select="last")
    assert last.attrs["select"] == "last" and "last evaluated checkpoint" in last.attrs["note"]
    assert last.loc["OPSD", "ours: synthetic"] == pytest.approx(40.0) and last.loc["OPSD", "ours: synthetic step"] == 100
    md = pt.markdown_table(best)
    assert "| OPSD | 60.0 [47.1, 70.5] | 50 | 50.0 [38.1, 61.9] | 100 |" in md  # 60% of 64 -> 38/64
    t3 = pt.table3(records, [BENCH, "aime25"], select="best")  # aime25 is the paper's Table 3 benchmark
    assert t3.attrs["benchmark"] == "aime25" and t3.attrs["select"] == "best"
    assert t3.loc["forward KL (OPSD)", "ours: best"] == pytest.approx(50.0)
    assert t3.loc["forward KL (OPSD)", "ours: best step"] == 100
    t3_last = pt.table3(records, [BENCH], select="last")
    assert t3_last.loc["forward KL (OPSD)", "ours: last step"] == 100 and "ours: best" not in t3_last.columns
    with pytest.raises(ValueError, match="valid"):
        pt.table2(records, [BENCH], select="first")


def test_markdown_folds_interval_columns_into_the_value_cell():
    import pandas as pd

    df = pd.DataFrame({"acc": [50.0, None], "acc 95% lo": [38.1, None], "acc 95% hi": [61.9, None],
                       "acc step": [4, None], "other": [1.25, 2.0]}, index=["a", "b"])
    md = pt.markdown_table(df).splitlines()
    assert md[0] == "|  | acc | acc step | other |"
    assert md[2] == "| a | 50.0 [38.1, 61.9] | 4 | 1.2 |" and md[3] == "| b | -- | -- | 2.0 |"


def test_imitation_table_has_every_checkpoint_with_intervals_and_problems_seen(full_runs):
    records = load_runs(str(full_runs))
    df = pt.imitation_vs_self_distillation_table(records, [BENCH])
    assert list(dict.fromkeys(df.index)) == ["OPSD", "SFT", "OPSD-terse", "SFT-terse", "OPSD-verbose", "SFT-verbose"]
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
    md = pt.markdown_table(df)
    assert "| OPSD | worked | self-distillation (OPSD) | 4 | 32 | 75.0 [63.2, 84.0] | 48 | 64 | 50.0 |" in md
    for missing in ("OPSD-terse", "SFT"):
        partial = {n: r for n, r in records.items() if n != missing}
        assert pt.imitation_vs_self_distillation_table(partial, [BENCH]) is None
        assert pf.imitation_vs_self_distillation(partial, [BENCH]) is None


def test_imitation_findings_are_written_from_the_eval_files(full_runs):
    """The paragraph figures.ipynb displays under the imitation table: every number from the runs."""
    import json

    cut = full_runs / "SFT-verbose" / "eval" / BENCH / "step-4.json"
    data = json.loads(cut.read_text())
    data["summary"]["truncated_rate"] = 1.0
    cut.write_text(json.dumps(data))
    records = load_runs(str(full_runs))
    text = pt.imitation_findings(records, pt.imitation_vs_self_distillation_table(records, [BENCH]))
    assert text.startswith("**What these runs measured** (synthetic held-out, 64 problems, greedy, <=96 tokens")
    assert "every run starts from smollm2-135m-instruct: 25.0% [16.0, 36.8] at step 0" in text
    assert ("- worked references: OPSD 25.0% -> 50.0% (step 2) -> 75.0% [63.2, 84.0] (step 4, 32 training problems "
            "seen); SFT 25.0% -> 20.3% (step 2) -> 12.5% [6.5, 22.8]") in text
    assert "self-distillation wins, the intervals separated" in text
    assert "SFT-verbose 25.0% -> 0.0% (step 2) -> 0.0% [0.0, 5.7] (step 4, 32 training problems seen), 100% of its " \
           "answers cut at the 96-token limit, below the starting model" in text
    assert "Gain of self-distillation over the starting model at its last evaluated step: +50.0 points with worked " \
           "references, +25.0 points with terse references, +37.5 points with long-winded references." in text
    # overlapping intervals: a leader, no winner
    write_run(full_runs / "SFT", SFT_CONFIG, [{"step": s, "loss": 1.0, "run_kind": "sft"} for s in (1, 2, 3, 4)],
              {0: 0.25, 2: 0.5, 4: 0.7})
    records = load_runs(str(full_runs))
    text = pt.imitation_findings(records, pt.imitation_vs_self_distillation_table(records, [BENCH]))
    worked = next(line for line in text.splitlines() if line.startswith("- worked"))
    assert worked.endswith("self-distillation ahead, with overlapping intervals (no winner on this many problems);")
    # without the long-winded pair its line is left out; without the required runs nothing is claimed
    partial = {n: r for n, r in records.items() if n not in ("OPSD-verbose", "SFT-verbose")}
    text = pt.imitation_findings(partial, pt.imitation_vs_self_distillation_table(partial, [BENCH]))
    assert "long-winded" not in text and text.splitlines()[2].startswith("- terse") and text.splitlines()[2][-1] == "."
    assert "nothing" in pt.imitation_findings(records, None)


def test_table5_category_means_first_step_and_count_weighted(full_runs):
    records = load_runs(str(full_runs))
    df = pt.table5(records)
    first, mean = df.iloc[0], df.iloc[1]
    assert first["style"] == 1.0 and first["math"] == pytest.approx(0.1)
    # kl_style = s with weight count_style = s over s = 1..4: sum(s^2) / sum(s) = 30 / 10
    assert mean["style"] == pytest.approx(3.0)
    assert df.loc["paper: Qwen3-1.7B", "style"] == 0.85
    assert pf.table5_figure(records) is not None
    assert pt.table5({"SFT": records["SFT"]}) is None
    # rollouts without any style word log no kl_style: that column is NaN, the table is still made
    for m in records["OPSD"].metrics:
        m.pop("kl_style")
    df = pt.table5(records)
    assert math.isnan(df.iloc[0]["style"]) and df.iloc[1]["math"] == pytest.approx(0.1)


