"""opsd.viz.plots: the style, the accuracy plotter and the curve helpers, each on small hand-made inputs."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from opsd.paper.records import PAPER_TABLE5
from opsd.viz import plots as viz
from opsd.viz.series import CATEGORIES


def _title(ax) -> str:
    """The axes title wherever the style puts it (reproduce/opsd.mplstyle titles on the left)."""
    return ax.get_title("left") or ax.get_title() or ax.get_title("right")


def _all_texts(fig) -> list[str]:
    """Every text drawn on the figure's axes, line breaks folded into spaces."""
    return [" ".join(t.get_text().split()) for ax in fig.axes for t in ax.texts]


def test_styled_keeps_interactive_mode_switched_on_inside():
    """Jupyter's inline backend turns interactive mode on at the first figure; leaving the style context
    must not turn it off again (later figures would stop showing)."""
    was = matplotlib.is_interactive()
    try:
        matplotlib.interactive(False)
        with viz.styled():
            matplotlib.interactive(True)
        assert matplotlib.is_interactive()
    finally:
        matplotlib.interactive(was)


def test_style_file_parses():
    params = matplotlib.rc_params_from_file(str(viz.STYLE_PATH), use_default_template=False)
    assert params["savefig.bbox"] == "tight" and params["axes.grid"] is True


def test_use_style_applies_params():
    """Every setting of reproduce/opsd.mplstyle is in force after use_style (and only inside the context)."""
    style = matplotlib.rc_params_from_file(str(viz.STYLE_PATH), use_default_template=False)
    assert len(style) > 10
    with matplotlib.rc_context(rc=matplotlib.rcParamsDefault):
        assert matplotlib.rcParams["axes.spines.top"] is True  # matplotlib's default, which the style changes
        viz.use_style()
        wrong = {key: (matplotlib.rcParams[key], value) for key, value in style.items()
                 if matplotlib.rcParams[key] != value}
        assert not wrong
        assert matplotlib.rcParams["axes.spines.top"] is False and matplotlib.rcParams["axes.titlelocation"] == "left"


# ------------------------------------------------------------------------------------------ accuracy


def test_plot_accuracy_draws_curves_bands_and_limits():
    _, ax = plt.subplots()
    shown = viz.plot_accuracy(ax, [("a", [0, 1, 2], [10.0, 20.0, 30.0], {}),
                                   ("b", [0, 2], [5.0, 15.0], {"color": "C3", "band": ([1.0, 10.0], [9.0, 40.0])})],
                              ylabel="Avg@1 (%)", legend={"loc": "best"})
    assert [line.get_marker() for line in ax.lines] == [viz.MARKERS[0], viz.MARKERS[1]]
    assert len(ax.collections) == 1 and shown == [10.0, 20.0, 30.0, 5.0, 15.0, 9.0, 40.0]
    low, high = ax.get_ylim()
    assert low < 0 and high > 40.0  # from 0 %, room above the top of the band
    assert ax.get_xlabel() == "training step" and ax.get_legend_handles_labels()[1] == ["a", "b"]


def test_plot_accuracy_vs_step_lines_per_benchmark_and_reference():
    results = [
        {"benchmark": "synthetic", "step": 0, "summary": {"avg_at_k": 0.0, "pass_at_k": {"1": 0.0}}},
        {"benchmark": "synthetic", "step": 10, "summary": {"avg_at_k": 0.25, "pass_at_k": {"1": 0.25}}},
        {"benchmark": "aime24", "step": 0, "summary": {"avg_at_k": 0.5}},
    ]
    fig = viz.plot_accuracy_vs_step(results, reference={"paper OPSD": {0: 36.7, 50: 43.9}})
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["aime24", "synthetic", "paper OPSD"]
    synthetic = ax.lines[1]
    assert list(synthetic.get_xdata()) == [0, 10] and list(synthetic.get_ydata()) == [0.0, 25.0]
    nested = viz.plot_accuracy_vs_step({"run A": results}, metric="pass_at_k.1", percent=False)
    assert nested.axes[0].get_legend_handles_labels()[1] == ["run A · synthetic"]


# ------------------------------------------------------------------------------------------ categories


def test_plot_kl_by_category_bars_and_paper_reference():
    fig = viz.plot_kl_by_category({"kl_style": 0.4, "kl_math": 0.1, "kl_other": float("nan")}, PAPER_TABLE5)
    ax = fig.axes[0]
    assert len(ax.patches) == 3 * (1 + len(PAPER_TABLE5))
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CATEGORIES)
    labels = ax.get_legend_handles_labels()[1]
    assert labels[0] == "measured" and "paper Qwen3-1.7B" in labels
    assert "n/a" in _all_texts(fig) and "0.85" in _all_texts(fig)
    only = viz.plot_kl_by_category({"style": 1.0, "math": 0.5, "other": 0.2}, paper=None)
    assert len(only.axes[0].patches) == 3
    assert len(viz.plot_kl_by_category({"style": 1.0, "math": 0.5, "other": 0.2}).axes[0].patches) == 3


def test_viz_never_imports_the_paper_layer():
    """The plots are handed data: no module of opsd.viz imports opsd.paper (which draws with them)."""
    import ast
    from pathlib import Path

    viz_dir = Path(viz.__file__).parent
    for path in viz_dir.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("opsd.paper"), f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("opsd.paper") for a in node.names), path.name


# ------------------------------------------------------------------------------------- training curves


def _records(losses, **extra):
    return [{"step": i + 1, "loss": v, "divergence_mean": v, **{k: f(i) for k, f in extra.items()}}
            for i, v in enumerate(losses)]


def test_training_diagnostics_axes_and_missing_keys_skipped():
    records = _records([0.5, 0.4, 0.3], grad_norm=lambda i: 1.0 + i, rollout_length_mean=lambda i: 30)
    fig = viz.plot_training_diagnostics(records, title="run")
    titles = [_title(ax) for ax in fig.axes]
    assert titles == ["loss", "divergence_mean", "rollout_length_mean", "grad_norm"]
    assert viz.NEGATIVE_LOSS_NOTE not in _all_texts(fig)
    assert fig._suptitle.get_text() == "run"
    # zero line on the loss
    assert any(list(line.get_ydata()) == [0.0, 0.0] for line in fig.axes[0].lines)


def test_training_diagnostics_marks_negative_loss():
    records = [dict(r, divergence_mean=0.1) for r in _records([0.2, 0.05, -0.01, -0.04])]
    fig = viz.plot_training_diagnostics(records)
    loss_ax, divergence_ax = fig.axes
    assert viz.NEGATIVE_LOSS_NOTE in [" ".join(t.get_text().split()) for t in loss_ax.texts]
    assert loss_ax.patches  # shaded span
    assert not divergence_ax.texts and not divergence_ax.patches  # positive curve: nothing marked


def test_training_diagnostics_reads_run_dir(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records([0.3, 0.2])))
    fig = viz.plot_training_diagnostics(tmp_path, keys=("loss", "not_logged"))
    assert [_title(ax) for ax in fig.axes] == ["loss"]
    empty = viz.plot_training_diagnostics([], keys=("loss",))
    assert "no metrics to plot" in _all_texts(empty)


def test_plot_runs_overlays_each_run():
    runs = {"clip 0.05": _records([0.1, -0.02, -0.05]), "no clip": _records([0.3, 0.25, 0.2]), "empty": []}
    fig = viz.plot_runs(runs, "loss")
    ax = fig.axes[0]
    assert ax.get_legend_handles_labels()[1] == ["clip 0.05", "no clip"]
    assert viz.NEGATIVE_LOSS_NOTE in _all_texts(fig)


# ----------------------------------------------------------------------------------- notebook helpers


def test_plot_prompt_lengths_counts_rows_over_limit():
    rows = [{"row": i, "student_tokens": 50 + i, "teacher_tokens": 150 + 10 * i, "too_long": False} for i in range(6)]
    fig = viz.plot_prompt_lengths(rows, max_prompt_length=175)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any("3 row(s) over" in lab for lab in labels)


def test_runs_table_first_last():
    table = viz.runs_table({"a": _records([0.3, 0.1, 0.2]), "b": []}, ["loss", "missing"])
    assert list(table["run"]) == ["a"]
    row = table.iloc[0]
    assert (row["first"], row["last"], row["min"], row["max"], row["steps"]) == (0.3, 0.2, 0.1, 0.3, 3)


def test_live_metrics_prints_one_line_per_log(capsys):
    from types import SimpleNamespace

    callback = viz.live_metrics(keys=("loss", "grad_norm"))
    state = SimpleNamespace(is_world_process_zero=True, global_step=3)
    callback.on_log(None, state, None, logs={"loss": 0.125, "grad_norm": 2.0, "other": 1.0})
    callback.on_log(None, state, None, logs={"train_runtime": 1.0})
    assert capsys.readouterr().out == "step   3 | loss 0.125 | grad_norm 2\n"


def test_plot_privilege_gap_bars_intervals_and_two_by_two():
    from opsd.eval.gap import GapReport
    from opsd.eval.stats import proportion

    report = GapReport(n=4, student=proportion(1, 4), teacher=proportion(3, 4), mean_token_kl=0.2, rollout_tokens=40,
                       student_correct=[True, False, False, False], teacher_correct=[True, True, True, False])
    fig = viz.plot_privilege_gap({"start": report})
    bars, grid = fig.axes[0], fig.axes[1]
    assert [round(p.get_height(), 6) for p in bars.patches] == [25.0, 75.0]
    assert {t.get_text() for t in bars.texts} == {"1/4", "3/4"}
    image = grid.images[0].get_array()
    assert image.tolist() == [[1, 0], [2, 1]]  # [both right, student only], [teacher only, both wrong]
    assert any("OPSD can teach" in t.get_text() and t.get_text().startswith("2") for t in grid.texts)
    plt.close(fig)
