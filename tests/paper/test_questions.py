"""opsd/paper/questions.py on hand-made run directories: the ablation tables hold the runs' numbers, the
figures draw them, missing runs are skipped."""

import json

import matplotlib
import pytest

from opsd.paper import questions as pq
from opsd.paper.records import load_runs
from tests.fake_runs import GRPO_CONFIG, OPSD_CONFIG, grpo_metrics, opsd_metrics, write_run

matplotlib.use("Agg")
PARA = "synthetic-paraphrased"


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    after = {"OPSD": (0.75, 0.5), "OPSD-context-none": (0.5, 0.25), "OPSD-context-other": (0.25, 0.25),
             "OPSD-context-wrong": (0.125, 0.125)}
    for name, (train, para) in after.items():
        context = name.removeprefix("OPSD-context-") if "context" in name else "reference"
        write_run(root / name, {**OPSD_CONFIG, "teacher_context": context}, opsd_metrics(), {0: 0.25, 4: train})
        write_run(root / name, None, None, {0: 0.25, 4: para}, benchmark=PARA)
    for name, acc in (("OPSD-clip", 0.25), ("OPSD-layout-reference", 0.5), ("OPSD-clip-layout-reference", 0.375)):
        write_run(root / name, OPSD_CONFIG, opsd_metrics(), {0: 0.25, 4: acc})
    metrics = [dict(m, divergence_unclipped_mean=0.1 * m["step"], boxed_rate=0.9, student_entropy=0.5,
                    repetition=0.0) for m in opsd_metrics(8)]
    write_run(root / "OPSD-150", {**OPSD_CONFIG, "max_steps": 8}, metrics, {0: 0.25, 2: 0.5, 4: 0.625, 8: 0.5})
    (root / "OPSD-150" / "collapse_watch.jsonl").write_text(json.dumps({"step": 7, "warning": "w", "action": "warn"}) + "\n")
    write_run(root / "GRPO-48", {**GRPO_CONFIG, "max_steps": 8}, grpo_metrics(8), {0: 0.25, 4: 0.375, 8: 0.625})
    return load_runs(str(root))


def test_teacher_context_table_holds_each_runs_start_and_end(runs):
    df = pq.teacher_context_table(runs)
    assert list(df.index) == ["reference (OPSD)", "none (OPSD-context-none)", "other (OPSD-context-other)",
                              "wrong (OPSD-context-wrong)"]
    ref = df.loc["reference (OPSD)"]
    assert ref["training wording: start"].startswith("25.0 [") and ref["training wording: step 4"].startswith("75.0 [")
    assert ref["training wording: change (points)"] == "+50.0" and ref["paraphrased: change (points)"] == "+25.0"
    assert df.loc["wrong (OPSD-context-wrong)", "training wording: change (points)"] == "-12.5"
    # the fake eval files hold one record (problem 0, correct) at every step: nothing gained or lost
    assert ref["training wording: problems gained / lost"] == "0 / 0"
    assert "Wilson" in df.attrs["note"]
    assert pq.teacher_context_table({"OPSD": runs["OPSD"]}) is None   # no control: skipped


def test_teacher_context_figure_draws_one_point_per_context_and_wording(runs):
    fig = pq.teacher_context_figure(runs)
    left, right = fig.axes
    points = [line.get_ydata()[0] for line in left.get_lines() if line.get_marker() == "o"]
    assert points == [75.0, 50.0, 25.0, 12.5]
    assert [line.get_ydata()[0] for line in right.get_lines() if line.get_marker() == "o"] == [50.0, 25.0, 25.0, 12.5]


def test_layout_clip_table_and_figure(runs):
    df = pq.layout_clip_table(runs)
    assert list(df["run"]) == ["OPSD", "OPSD-clip", "OPSD-layout-reference", "OPSD-clip-layout-reference"]
    assert df.loc["reference layout, no clip", "held-out accuracy, step 4"].startswith("50.0 [")
    fig = pq.layout_clip_figure(runs)
    kit, reference = [line for line in fig.axes[0].get_lines() if line.get_marker() in ("o", "s")][:2]
    assert list(kit.get_ydata()) == [75.0, 25.0] and list(reference.get_ydata()) == [50.0, 37.5]
    assert pq.layout_clip_table({k: v for k, v in runs.items() if k != "OPSD-clip"}) is None


def test_long_run_figure_marks_the_watch_warnings(runs):
    fig = pq.long_run_figure(runs)
    assert len(fig.axes) == 5
    red = [line for line in fig.axes[1].get_lines() if list(line.get_xdata()) == [7, 7]]
    assert red and "first at step 7" in fig._suptitle.get_text()


def test_token_efficiency_counts_tokens_to_the_target(runs):
    df = pq.token_efficiency_table(runs, target=0.6)
    # OPSD-150 first >= 60% at step 4: 240 tokens per step -> 960; GRPO-48 at step 8: 300 per step -> 2,400
    assert df.loc["OPSD-150", "tokens by then"] == "960" and df.loc["GRPO-48", "tokens by then"] == "2,400"
    assert df.attrs["ratio"] == "GRPO / OPSD tokens to 60%: 2.5x"
    never = pq.token_efficiency_table(runs, target=0.7)
    assert never.attrs["ratio"] == "OPSD never reached 70%"
    fig = pq.token_efficiency_figure(runs, target=0.6)
    opsd = fig.axes[0].get_lines()[0]
    assert list(opsd.get_xdata()) == [0.0, 480.0, 960.0, 1920.0]


def test_token_efficiency_takes_the_12_step_opsd_run_without_the_long_one(runs):
    partial = {k: v for k, v in runs.items() if k != "OPSD-150"}
    df = pq.token_efficiency_table(partial, target=0.6)
    assert list(df.index) == ["OPSD", "GRPO-48"] and df.loc["OPSD", "tokens by then"] == "960"
