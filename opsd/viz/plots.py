"""The kit's one figure style, the one accuracy plotter, and curves over training steps and runs.

Every function takes plain Python inputs (metric records from ``metrics.jsonl``, eval JSON dicts) and
returns a ``matplotlib.figure.Figure`` or a ``pandas.DataFrame``; pictures of one rollout's tokens are in
``opsd.viz.rollout``, the paper's figures in ``opsd.paper.figures``.

    style     use_style (globally), styled (a context)       reproduce/opsd.mplstyle, the only style
    accuracy  plot_accuracy                                  accuracy curves on one axes: every accuracy figure
              plot_accuracy_vs_step                          eval results (run_dir/eval/*/step-N.json)
    curves    plot_training_diagnostics, plot_runs           metrics.jsonl curves, runs overlaid
              runs_table, live_metrics                       the same as numbers / printed while training
    other     plot_kl_by_category                            mean KL of style / math / other tokens, paper beside
              plot_privilege_gap                             student vs self-teacher accuracy and the per-problem 2x2 table
              plot_prompt_lengths                            student and teacher prompt lengths
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from transformers import TrainerCallback

from opsd.config import REPO_ROOT
from opsd.runs.layout import read_metrics
from opsd.viz.series import CATEGORIES, eval_curves, metric_series

#: The figure style of every figure of the kit (figures/, notebooks).
STYLE_PATH = REPO_ROOT / "reproduce" / "opsd.mplstyle"
#: Markers of successive curves, so that curves on top of each other stay distinguishable.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

NEGATIVE_LOSS_NOTE = "loss < 0: clipping lets the optimizer push below zero"
# on three lines, for a small-multiple panel, in the style of a warning
_NEGATIVE_NOTE_TEXT = NEGATIVE_LOSS_NOTE.replace(": ", ":\n").replace(" push", "\npush")
_NOTE_STYLE = {"fontsize": 7.5, "color": "#b2182b", "fontweight": "bold", "ha": "left", "va": "bottom",
               "bbox": {"facecolor": "white", "alpha": 0.8, "lw": 0}}
# the objective's keys (as `opsd.runs.layout.read_metrics` returns them): a zero line, and the note when negative
_OBJECTIVE_KEYS = ("loss", "divergence_mean")


# ------------------------------------------------------------------------------------------------ style


def _style_params() -> dict[str, Any]:
    return dict(mpl.rc_params_from_file(str(STYLE_PATH), use_default_template=False))


def use_style() -> None:
    """Apply the kit's matplotlib style (``reproduce/opsd.mplstyle``) globally."""
    mpl.rcParams.update(_style_params())


@contextlib.contextmanager
def styled():
    """The kit's style for the figures made inside, without changing the caller's rcParams.

    The first pyplot figure of a Jupyter session may switch on interactive mode (inline backend) while
    inside ``rc_context``; that switch is kept on exit, or later figures would not show automatically.
    """
    with mpl.rc_context(_style_params()):
        yield
        interactive = mpl.is_interactive()
    mpl.interactive(interactive)


def _new_axes(ax=None, figsize=(6.0, 3.6)):
    """(figure, axes): ``ax`` and its figure, or a new figure of ``figsize`` inches."""
    return (ax.figure, ax) if ax is not None else plt.subplots(figsize=figsize)


# --------------------------------------------------------------------------------------------- accuracy


def integer_steps(ax) -> None:
    """Training steps are integers: no 0.25-step ticks on short runs."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def accuracy_limits(ax, values: Sequence[float]) -> None:
    """Accuracy axes start at 0 % (flat zero curves sit on the axis, not mid-plot)."""
    top = max(5.0, max(values, default=0.0) * 1.15 + 1.0)
    ax.set_ylim(-0.03 * top, top)


def plot_accuracy(ax, curves, *, xlabel: str | None = "training step", ylabel: str | None = None,
                  title: str | None = None, integer_x: bool = True, from_zero: bool = True,
                  legend: Mapping[str, Any] | None = None) -> list[float]:
    """Accuracy curves on one axes: the plotter of every accuracy figure of the kit.

    ``curves``: (label, xs, ys, style) per curve (ys in %); style: ``ax.plot`` keyword arguments (marker
    default: the i-th of MARKERS) and optionally ``band=(lo, hi)``, a shaded interval in the curve's
    colour. ``integer_x``: integer ticks (training steps); ``from_zero``: y from 0 % (``accuracy_limits``);
    ``legend``: ``ax.legend`` keyword arguments, None for no legend. Returns the values drawn (band tops
    included), for a limit shared by several axes.
    """
    shown = []
    for i, (label, xs, ys, style) in enumerate(curves):
        style = dict(style)
        band = style.pop("band", None)
        ax.plot(xs, ys, label=label, **{"marker": MARKERS[i % len(MARKERS)], **style})
        shown += list(ys)
        if band is not None:
            ax.fill_between(xs, *band, color=style.get("color"), alpha=0.18, lw=0)
            shown += list(band[1])
    if integer_x:
        integer_steps(ax)
    if from_zero:
        accuracy_limits(ax, shown)
    ax.set(**{k: v for k, v in {"title": title, "xlabel": xlabel, "ylabel": ylabel}.items() if v is not None})
    if legend is not None and ax.get_legend_handles_labels()[0]:
        ax.legend(**legend)
    return shown


def plot_accuracy_vs_step(results, *, metric: str = "avg_at_k", ax=None, percent: bool = True,
                          reference: Mapping[str, Mapping[int, float]] | None = None, title: str | None = None):
    """Accuracy vs training step from eval results (dicts of ``run_dir/eval/<benchmark>/step-N.json``).

    ``results``: a list of such dicts (one line per benchmark) or {run label: list} (one line per
    run and benchmark). ``metric``: a key of ``summary``, dotted for nested ones (``pass_at_k.1``).
    ``reference``: {label: {step: value in %}}, e.g. the paper's Table 3, drawn dashed.
    """
    groups = results.items() if isinstance(results, Mapping) else [(None, results)]
    curves = []
    for run, items in groups:
        for bench, (steps, values) in eval_curves(items, metric, 100.0 if percent else 1.0).items():
            curves.append((bench if run is None else f"{run} · {bench}", steps, values, {"marker": "o", "ms": 4}))
    for label, points in (reference or {}).items():
        steps = sorted(points)
        curves.append((label, steps, [points[s] for s in steps], {"ls": "--", "marker": "s", "ms": 4, "alpha": 0.7}))
    with styled():
        fig, ax = _new_axes(ax)
        plot_accuracy(ax, curves, ylabel=f"{metric} (%)" if percent else metric, from_zero=percent,
                      title=title or f"{metric} vs training step", legend={})
    return fig


# ------------------------------------------------------------------------------------ KL by category


def plot_kl_by_category(measured: Mapping[str, float], paper: Mapping[str, Mapping[str, float]] | None = None,
                        ax=None, *, measured_label: str = "measured", title: str | None = None):
    """Grouped bars of the mean per-token KL for style / math / other tokens, the paper's Table 5 beside.

    ``measured``: {"style": .., "math": .., "other": ..} (keys ``kl_style`` etc. work too; NaN or a
    missing category is drawn as "n/a"). ``paper``: {model: {category: value}}, e.g.
    ``opsd.paper.records.PAPER_TABLE5``; None draws ``measured`` only.
    """
    def get(d, c):
        v = d.get(c, d.get(f"kl_{c}"))
        return float("nan") if v is None else float(v)

    series = [(measured_label, [get(measured, c) for c in CATEGORIES])]
    for name, values in (paper or {}).items():
        series.append((f"paper {name}", [get(values, c) for c in CATEGORIES]))
    with styled():
        fig, ax = _new_axes(ax, figsize=(6.4, 3.6))
        x = np.arange(len(CATEGORIES))
        width = 0.8 / len(series)
        for i, (label, vals) in enumerate(series):
            xs = x - 0.4 + width * (i + 0.5)
            heights = [v if math.isfinite(v) else 0.0 for v in vals]
            kwargs = {} if i == 0 else {"alpha": 0.55, "hatch": "//" if i % 2 else ".."}
            bars = ax.bar(xs, heights, width=width * 0.95, label=label, **kwargs)
            for bar, v in zip(bars, vals):
                text = f"{v:.2f}" if math.isfinite(v) else "n/a"
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 1), textcoords="offset points")
        ax.set_xticks(x, CATEGORIES)
        ax.set(ylabel="mean per-token KL", title=title or "Divergence by token category (paper: v3 Table 5)")
        top = max((v for _, vals in series for v in vals if math.isfinite(v)), default=1.0) or 1.0
        ax.set_ylim(0, top * 1.45)  # headroom for the legend above the bars
        ax.legend(ncols=2, loc="upper right")
    return fig


# ----------------------------------------------------------------------------------- training curves


def _records(records_or_run_dir) -> list[dict]:
    if isinstance(records_or_run_dir, (str, Path)):
        return read_metrics(records_or_run_dir)
    return list(records_or_run_dir)


def _mark_negative(ax, steps, values) -> None:
    """Shade the steps where the objective is below zero and say why that is a failure."""
    if not (negative := [s for s, v in zip(steps, values) if v < 0]):
        return
    ax.axvspan(min(negative) - 0.5, max(negative) + 0.5, color="#d62728", alpha=0.12, lw=0)
    _room_below(ax, values)
    ax.annotate(_NEGATIVE_NOTE_TEXT, xy=(negative[0], values[steps.index(negative[0])]), xycoords="data",
                xytext=(0.03, 0.05), textcoords="axes fraction", **_NOTE_STYLE,
                arrowprops={"arrowstyle": "->", "color": "#b2182b", "lw": 0.8})


def _room_below(ax, values) -> None:
    """Extend the y axis downwards so a note at the bottom of the panel does not cover the data."""
    low, high = min(values), max(max(values), 0.0)
    span = (high - low) or 1.0
    ax.set_ylim(low - 0.9 * span, high + 0.05 * span)


def plot_training_diagnostics(records_or_run_dir, keys: Sequence[str] = (
        "loss", "divergence_mean", "clipped_fraction", "negative_token_fraction", "rollout_length_mean", "grad_norm"),
        title: str | None = None, *, ncols: int = 3):
    """Small multiples of metrics vs step from ``metrics.jsonl`` records (or a run directory).

    Keys no record has are skipped. Loss and divergence get a zero line; if the loss (or the clipped
    divergence) goes negative, that stretch is shaded and annotated with ``NEGATIVE_LOSS_NOTE``.
    """
    records = _records(records_or_run_dir)
    present = [k for k in keys if metric_series(records, k)[0]]
    with styled():
        n = max(len(present), 1)
        cols = min(ncols, n)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.5 * rows), squeeze=False)
        flat = list(axes.ravel())
        for ax in flat[max(len(present), 1):]:
            fig.delaxes(ax)
        if not present:
            flat[0].set_axis_off()
            flat[0].text(0.5, 0.5, "no metrics to plot", ha="center", va="center", transform=flat[0].transAxes)
        for ax, key in zip(flat, present):
            steps, values = metric_series(records, key)
            ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, ms=3)
            ax.set(title=key, xlabel="step")
            if key in _OBJECTIVE_KEYS or min(values) < 0:
                ax.axhline(0.0, color="black", lw=0.8, ls="--")
            if key in _OBJECTIVE_KEYS:
                _mark_negative(ax, steps, values)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig


def plot_runs(runs: Mapping[str, Any], key: str, ax=None, *, title: str | None = None):
    """Overlay one metric of several runs: ``runs`` = {label: records or run directory}."""
    with styled():
        fig, ax = _new_axes(ax)
        all_values = []
        for label, recs in runs.items():
            steps, values = metric_series(_records(recs), key)
            if not steps:
                continue
            ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, ms=3, label=label)
            all_values += values
        any_negative = bool(all_values) and min(all_values) < 0
        if key in _OBJECTIVE_KEYS or any_negative:
            ax.axhline(0.0, color="black", lw=0.8, ls="--")
        if any_negative and key in _OBJECTIVE_KEYS:
            _room_below(ax, all_values)
            ax.text(0.03, 0.05, _NEGATIVE_NOTE_TEXT, transform=ax.transAxes, **_NOTE_STYLE)
        ax.set(xlabel="step", ylabel=key, title=title or key)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return fig


def runs_table(runs: Mapping[str, Any], keys: Sequence[str]):
    """DataFrame with one row per (run, key): first, last, min, max over the logged steps.

    ``runs``: {label: records or run directory}; keys a run never logged are left out.
    """
    rows = []
    for label, recs in runs.items():
        records = _records(recs)
        for key in keys:
            _, values = metric_series(records, key)
            if values:
                rows.append({"run": label, "metric": key, "first": values[0], "last": values[-1],
                             "min": min(values), "max": max(values), "steps": len(values)})
    return pd.DataFrame(rows)


_LIVE_KEYS = ("loss", "divergence_mean", "divergence_unclipped_mean", "negative_token_fraction",
              "rollout_length_mean", "grad_norm")


class LiveMetrics(TrainerCallback):
    """Prints one compact line per logged step with the logged values of ``keys`` (main process only)."""

    def __init__(self, keys: Sequence[str] = _LIVE_KEYS):
        self.keys = tuple(keys)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        parts = [f"{k} {logs[k]:.4g}" for k in self.keys if isinstance(logs.get(k), (int, float))]
        print(f"step {state.global_step:>3d} | " + " | ".join(parts), flush=True)


def live_metrics(keys: Sequence[str] = _LIVE_KEYS) -> LiveMetrics:
    """A ``transformers.TrainerCallback`` printing one compact line per logged step, e.g.
    ``step 3 | loss 0.1408 | divergence_mean 0.1408 | ...`` (pass it in ``callbacks=[...]``)."""
    return LiveMetrics(keys)


# ------------------------------------------------------------------------------ notebook helper plots


def plot_prompt_lengths(audit_rows: Sequence[Mapping], *, max_prompt_length: int | None = None, ax=None,
                        bins: int = 30, title: str | None = None):
    """Histogram of student and teacher prompt lengths from ``opsd.contexts.audit_prompt_lengths``.

    With ``max_prompt_length``, a vertical line marks the limit and the legend counts the rows over it.
    """
    student = [r["student_tokens"] for r in audit_rows]
    teacher = [r["teacher_tokens"] for r in audit_rows]
    with styled():
        fig, ax = _new_axes(ax)
        edges = np.histogram_bin_edges(student + teacher, bins=bins) if student else bins
        ax.hist(student, bins=edges, alpha=0.6, label=f"student prompt ({len(student)} rows)")
        ax.hist(teacher, bins=edges, alpha=0.6, label="teacher prompt (+ reference solution)")
        if max_prompt_length is not None:
            over = sum(max(s, t) > max_prompt_length for s, t in zip(student, teacher))
            ax.axvline(max_prompt_length, color="black", ls="--",
                       label=f"max_prompt_length {max_prompt_length}: {over} row(s) over")
        ax.set(xlabel="prompt tokens", ylabel="rows", title=title or "Prompt lengths per role")
        ax.legend()
    return fig




def plot_privilege_gap(reports: Mapping[str, Any], *, title: str | None = None):
    """``{label: GapReport}`` (``opsd.eval.gap``) -> one Figure: student and self-teacher greedy accuracy per
    model with 95% Wilson intervals (left), and each model's per-problem 2x2 table (student right/wrong x
    teacher right/wrong) as a coloured grid (right, one grid per model)."""
    colors = {"student": "#4C72B0", "self-teacher": "#DD8452"}
    with styled():
        fig, axes = plt.subplots(1, 1 + len(reports), figsize=(4.2 + 2.6 * len(reports), 3.2),
                                 gridspec_kw={"width_ratios": [1.6] + [1] * len(reports)})
        ax = axes[0]
        for i, (label, r) in enumerate(reports.items()):
            for j, (role, p) in enumerate((("student", r.student), ("self-teacher", r.teacher))):
                x = 3 * i + j
                ax.bar(x, 100 * p.value, color=colors[role], label=role if i == 0 else None)
                ax.errorbar(x, 100 * p.value, yerr=[[100 * (p.value - p.lo)], [100 * (p.hi - p.value)]],
                            color="k", capsize=3)
                ax.text(x, 100 * p.hi + 2, f"{p.k}/{p.n}", ha="center", fontsize=8)
        ax.set_xticks([3 * i + 0.5 for i in range(len(reports))], list(reports))
        ax.set_ylim(0, 112)
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title("greedy accuracy, 95% intervals")
        ax.legend(loc="upper left", fontsize=8)
        for grid_ax, (label, r) in zip(axes[1:], reports.items()):
            counts = r.outcome_counts()
            grid = np.array([[counts["both right"], counts["student only"]],
                             [counts["teacher only"], counts["both wrong"]]])
            grid_ax.imshow(grid, cmap="Greens", vmin=0, vmax=max(int(grid.max()), 1))
            names = [["both right", "student only"], ["teacher only\n(OPSD can teach)", "both wrong"]]
            for (row, col), value in np.ndenumerate(grid):
                grid_ax.text(col, row, f"{value}\n{names[row][col]}", ha="center", va="center", fontsize=8,
                             color="white" if value > grid.max() / 2 else "black")
            grid_ax.set_xticks([0, 1], ["teacher\nright", "teacher\nwrong"])
            grid_ax.set_yticks([0, 1], ["student\nright", "student\nwrong"])
            grid_ax.grid(False)
            grid_ax.set_title(f"{label}: {r.n} problems")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig
