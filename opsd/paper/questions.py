"""What does the reference add, and when does OPSD break? The figures and tables of the campaign's ablations.

    output                          builder                              runs
    teacher_context (.csv/.md/.png) teacher_context_table / _figure      OPSD, OPSD-context-{none,other,wrong}
    layout_x_clip (.csv/.md/.png)   layout_clip_table / _figure          OPSD, OPSD-clip, OPSD-layout-reference,
                                                                         OPSD-clip-layout-reference
    long_run (.png)                 long_run_figure                      OPSD-150 (metrics, eval, collapse_watch.jsonl)
    token_efficiency (.csv/.md/.png) token_efficiency_table / _figure    OPSD-150 (else OPSD), GRPO-48 (eval +
                                                                         tokens_generated)

Every accuracy is Avg@1 on the campaign's held-out problems with its 95% Wilson interval
(``RunRecord.proportion_at``); a builder whose runs are missing prints ``skipped ...`` and returns None.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt

from opsd.collapse import COLLAPSE_SIGNALS, WATCH_FILE
from opsd.paper.records import RunRecord, _skip, model_label, need_runs, train_label
from opsd.paper.tables import _frame
from opsd.runs.atomic_io import read_jsonl
from opsd.runs.eval_results import eval_path
from opsd.viz.plots import integer_steps, plot_accuracy, styled

TRAINING_WORDING, PARAPHRASED = "synthetic", "synthetic-paraphrased"
#: teacher_context -> the campaign run trained with it
CONTEXT_RUNS = {"reference": "OPSD", "none": "OPSD-context-none", "other": "OPSD-context-other",
                "wrong": "OPSD-context-wrong"}
CONTEXT_LABELS = {"reference": "its reference", "none": "no reference", "other": "another problem's reference",
                  "wrong": "its reference, answer changed"}
_TICKS = {"reference": "its\nreference", "none": "no\nreference", "other": "another\nproblem's\nreference",
          "wrong": "its reference,\nanswer\nchanged"}
#: (position layout, clip) -> run
LAYOUT_CLIP_RUNS = {("kit", "no clip"): "OPSD", ("kit", "clip 0.05"): "OPSD-clip",
                    ("reference", "no clip"): "OPSD-layout-reference",
                    ("reference", "clip 0.05"): "OPSD-clip-layout-reference"}
LONG_RUN, GRPO_LONG = "OPSD-150", "GRPO-48"
#: The accuracy whose token cost the token-efficiency table compares (the starting model: 44.5%).
TARGET_ACCURACY = 0.60
SIGNAL_TITLES = {"rollout_length_mean": "rollout length (tokens)", "boxed_rate": "rollouts with a \\boxed answer",
                 "student_entropy": "student entropy per token (nats)", "repetition": "repeated 4-grams per rollout"}


def _cell(p) -> str:
    return "--" if p is None else f"{100 * p.value:.1f} [{100 * p.lo:.1f}, {100 * p.hi:.1f}]"


def gained_lost(rec: RunRecord, benchmark: str, step: int) -> tuple[int, int] | None:
    """(problems right at ``step`` but wrong at step 0, right at 0 but wrong at ``step``), from the two eval
    files' per-problem records; None when either is missing."""
    graded = []
    for s in (0, step):
        path = eval_path(rec.path, benchmark, s)
        if not path.is_file():
            return None
        graded.append({r["problem_id"]: bool(r["correct"]) for r in json.loads(path.read_text())["records"]})
    start, end = graded
    return (sum(end.get(k, False) and not v for k, v in start.items()),
            sum(v and not end.get(k, False) for k, v in start.items()))


def _last_step(rec: RunRecord, benchmark: str) -> int | None:
    steps = rec.curve(benchmark)[0]
    return steps[-1] if steps and steps[-1] > 0 else None


# ------------------------------------------------------------------------------------ teacher context


def teacher_context_table(records: Mapping[str, RunRecord]):
    """One row per teacher context: held-out accuracy at the start and after the last step, on the
    training wording and on the paraphrased wordings, with 95% intervals and the change in points."""
    present = {c: records[n] for c, n in CONTEXT_RUNS.items() if n in records}
    if "reference" not in present or len(present) < 2:
        _skip("teacher-context ablation", f"needs {CONTEXT_RUNS['reference']!r} and at least one control run")
        return None
    rows = {}
    for context, rec in present.items():
        row = {"teacher reads": CONTEXT_LABELS[context]}
        for bench, label in ((TRAINING_WORDING, "training wording"), (PARAPHRASED, "paraphrased")):
            last = _last_step(rec, bench)
            start, end = rec.proportion_at(bench, 0), rec.proportion_at(bench, last)
            row[f"{label}: start"] = _cell(start)
            row[f"{label}: step {last}" if last else f"{label}: last"] = _cell(end)
            row[f"{label}: change (points)"] = (f"{100 * (end.value - start.value):+.1f}"
                                                if start is not None and end is not None else "--")
            moved = gained_lost(rec, bench, last) if last else None
            row[f"{label}: problems gained / lost"] = f"{moved[0]} / {moved[1]}" if moved else "--"
        rows[f"{context} ({rec.name})"] = row
    ref = present["reference"]
    return _frame(rows, "teacher_context", (
        f"OPSD from {model_label(ref.config)} with the teacher reading each context ({train_label(ref.config, 'opsd')}; "
        "same seed, problems and settings otherwise). Held-out Avg@1 in % with 95% Wilson intervals "
        f"[lo, hi]: {TRAINING_WORDING} (the wording training uses) and {PARAPHRASED} (wordings training never reads); "
        "gained / lost: problems right after training and wrong at the start, and the reverse."))


def teacher_context_figure(records: Mapping[str, RunRecord]):
    """Held-out accuracy after training per teacher context (points with 95% intervals), the start as a
    dotted line with its band; one panel per wording."""
    present = {c: records[n] for c, n in CONTEXT_RUNS.items() if n in records}
    if "reference" not in present or len(present) < 2:
        _skip("teacher-context figure", f"needs {CONTEXT_RUNS['reference']!r} and at least one control run")
        return None
    ref = present["reference"]
    with styled():
        fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.0), sharey=True)
        for ax, (bench, title) in zip(axes, ((TRAINING_WORDING, "training wording"),
                                              (PARAPHRASED, "paraphrased wordings (never trained on)"))):
            start = ref.proportion_at(bench, 0)
            if start is not None:
                ax.axhline(100 * start.value, color="black", ls=":", lw=1.0, label=f"start {_cell(start)}")
                ax.axhspan(100 * start.lo, 100 * start.hi, color="0.5", alpha=0.12, lw=0)
            for x, (context, rec) in enumerate(present.items()):
                p = rec.proportion_at(bench, _last_step(rec, bench))
                if p is None:
                    continue
                ax.errorbar([x], [100 * p.value], yerr=[[100 * (p.value - p.lo)], [100 * (p.hi - p.value)]],
                            fmt="o", color=f"C{x}", capsize=4, ms=7)
                ax.annotate(f"{100 * p.value:.1f}", (x, 100 * p.value), textcoords="offset points", xytext=(8, -3),
                            fontsize="small")
            ax.set_xticks(range(len(present)), [_TICKS[c] for c in present], fontsize="small")
            ax.set(title=title, xlim=(-0.5, len(present) - 0.5))
            ax.legend(loc="lower left", fontsize="small")
        axes[0].set_ylabel("held-out Avg@1 after training (%)")
        fig.suptitle(f"What does the reference add? OPSD, teacher reading each context -- {model_label(ref.config)}\n"
                     f"{train_label(ref.config, 'opsd')}; points: 95% Wilson intervals")
        fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ layout x clip


def layout_clip_table(records: Mapping[str, RunRecord]):
    """The 2 x 2 of position layout (kit | reference) x clip (none | point-wise 0.05): held-out accuracy after
    the last step with 95% intervals, and the mean unclipped KL of the last 3 steps."""
    if not need_runs("layout x clip", records, list(LAYOUT_CLIP_RUNS.values())):
        return None
    rows = {}
    for (layout, clip), name in LAYOUT_CLIP_RUNS.items():
        rec = records[name]
        last = _last_step(rec, TRAINING_WORDING)
        kl = rec.metric("divergence_unclipped_mean")[1][-3:]
        rows[f"{layout} layout, {clip}"] = {
            "run": name, f"held-out accuracy, step {last}": _cell(rec.proportion_at(TRAINING_WORDING, last)),
            "start": _cell(rec.proportion_at(TRAINING_WORDING, 0)),
            "unclipped KL, last 3 steps": f"{sum(kl) / len(kl):.3f}" if kl else "--",
        }
    rec = records["OPSD"]
    return _frame(rows, "position layout, clip", (
        f"OPSD from {model_label(rec.config)}, {train_label(rec.config, 'opsd')}: the kit's position layout (positions "
        "count attended tokens) or the reference's (right padding per micro-batch, no position ids: rows shorter "
        "than the widest prompt are scored across a gap and their first rollout token from a pad column), without "
        "and with the paper's point-wise clip 0.05. Held-out Avg@1 in % [95% Wilson interval]."))


def layout_clip_figure(records: Mapping[str, RunRecord]):
    """Accuracy after the last step for the four runs: x = clip, one series per layout, 95% intervals."""
    if not need_runs("layout x clip figure", records, list(LAYOUT_CLIP_RUNS.values())):
        return None
    rec0 = records["OPSD"]
    with styled():
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        start = rec0.proportion_at(TRAINING_WORDING, 0)
        if start is not None:
            ax.axhline(100 * start.value, color="black", ls=":", lw=1.0, label=f"start {_cell(start)}")
            ax.axhspan(100 * start.lo, 100 * start.hi, color="0.5", alpha=0.12, lw=0)
        for i, layout in enumerate(("kit", "reference")):
            xs, ys, lo, hi = [], [], [], []
            for x, clip in enumerate(("no clip", "clip 0.05")):
                rec = records[LAYOUT_CLIP_RUNS[(layout, clip)]]
                p = rec.proportion_at(TRAINING_WORDING, _last_step(rec, TRAINING_WORDING))
                if p is not None:
                    xs.append(x + (i - 0.5) * 0.12)
                    ys.append(100 * p.value)
                    lo.append(100 * (p.value - p.lo))
                    hi.append(100 * (p.hi - p.value))
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-" if i == 0 else "s--", capsize=4, ms=7,
                        label=f"{layout} position layout")
        ax.set_xticks([0, 1], ["no clip", "point-wise clip 0.05"])
        ax.set(xlim=(-0.5, 1.5), ylabel="held-out Avg@1 after training (%)")
        ax.legend(loc="best", fontsize="small")
        fig.suptitle(f"Does the clip repair the reference layout? -- {model_label(rec0.config)}\n"
                     f"{train_label(rec0.config, 'opsd')}; 95% Wilson intervals")
        fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ long run


def watch_warnings(rec: RunRecord) -> list[dict]:
    """The collapse watch's warnings of a run (``collapse_watch.jsonl``: step, warning, action)."""
    path = Path(rec.path) / WATCH_FILE
    return read_jsonl(path) if path.is_file() else []


def long_run_figure(records: Mapping[str, RunRecord], run: str = LONG_RUN):
    """Accuracy (with its band) and the four signals that precede collapse against the training step, the
    collapse watch's warnings as vertical lines."""
    if not need_runs("long run", records, (run,)):
        return None
    rec = records[run]
    warnings = watch_warnings(rec)
    with styled():
        fig, axes = plt.subplots(5, 1, figsize=(7.2, 11.0), sharex=True)
        curves = []
        for i, bench in enumerate(b for b in (TRAINING_WORDING, PARAPHRASED) if rec.curve(b)[0]):
            band = rec.band(bench)
            curves.append((bench, *rec.curve(bench), {"band": band} if band else {}))
        plot_accuracy(axes[0], curves, xlabel=None, ylabel="held-out Avg@1 (%)", title="accuracy (95% bands)",
                      legend={"loc": "best", "fontsize": "small"})
        for ax, signal in zip(axes[1:], COLLAPSE_SIGNALS):
            steps, values = rec.metric(signal)
            ax.plot(steps, values, lw=1.0, color="C0")
            ax.set_title(SIGNAL_TITLES[signal])
        for w in warnings:
            for ax in axes:
                ax.axvline(w["step"], color="#d62728", lw=0.8, ls="--")
        integer_steps(axes[-1])
        axes[-1].set_xlabel("training step")
        note = (f"collapse watch: {len(warnings)} warning{'s' * (len(warnings) != 1)} (red lines: "
                f"{', '.join(sorted({w['warning'].split(' = ')[0].split(': ')[-1] for w in warnings}))}), "
                f"first at step {warnings[0]['step']}"
                if warnings else "collapse watch: no warning")
        fig.suptitle(f"OPSD for {rec.config.get('max_steps')} steps -- {model_label(rec.config)}\n"
                     f"{train_label(rec.config, 'opsd')}\n{note}")
        fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ token efficiency


def _accuracy_by_tokens(rec: RunRecord, bench: str = TRAINING_WORDING) -> list[tuple[int, float, object]]:
    """(step, cumulative generated tokens, Proportion) per evaluated step (``RunRecord.tokens_at``)."""
    points = [(s, rec.tokens_at(s)) for s in rec.curve(bench)[0]]
    return [(s, t, rec.proportion_at(bench, s)) for s, t in points if t is not None]


def _opsd_run(records: Mapping[str, RunRecord]) -> str:
    """The longest OPSD run for the token comparison: OPSD-150 when it is there, else OPSD."""
    return LONG_RUN if LONG_RUN in records else "OPSD"


def token_efficiency_table(records: Mapping[str, RunRecord], target: float = TARGET_ACCURACY):
    """Per method: the first evaluated step at or above ``target`` accuracy, the tokens generated by then,
    the best accuracy and the tokens it took; the ratio of tokens to ``target`` (GRPO / OPSD; a lower
    bound when GRPO never reached it). OPSD: ``_opsd_run``."""
    opsd = _opsd_run(records)
    if not need_runs("token efficiency", records, (opsd, GRPO_LONG)):
        return None
    rows, reached = {}, {}
    for name in (opsd, GRPO_LONG):
        points = _accuracy_by_tokens(records[name])
        hit = next(((s, t, p) for s, t, p in points if p is not None and p.value >= target), None)
        best = max(points, key=lambda x: x[2].value if x[2] else -1)
        reached[name] = hit[1] if hit else None
        rows[name] = {"method": records[name].kind.upper(), f"first step >= {100 * target:.0f}%": hit[0] if hit else "not reached",
                      "tokens by then": f"{int(hit[1]):,}" if hit else f"> {int(points[-1][1]):,}",
                      "best accuracy": _cell(best[2]), "at step": best[0], "tokens generated in all": f"{int(points[-1][1]):,}"}
    o, g = reached[opsd], reached[GRPO_LONG]
    total_g = _accuracy_by_tokens(records[GRPO_LONG])[-1][1]
    ratio = (f"GRPO / OPSD tokens to {100 * target:.0f}%: {g / o:.1f}x" if o and g else
             f"GRPO / OPSD tokens to {100 * target:.0f}%: more than {total_g / o:.1f}x (GRPO never reached it)" if o else
             f"OPSD never reached {100 * target:.0f}%")
    df = _frame(rows, "run", (f"Tokens generated in training (rollouts of the student; GRPO: all group samples) "
                              f"until held-out Avg@1 first reaches {100 * target:.0f}% at an evaluated checkpoint. "
                              f"{ratio}. The paper reports 4-8x fewer tokens for OPSD (Fig 3, Qwen3)."))
    df.attrs["ratio"] = ratio
    return df


def token_efficiency_figure(records: Mapping[str, RunRecord], target: float = TARGET_ACCURACY):
    """Accuracy against cumulative generated tokens, OPSD and GRPO from the same start, 95% bands, the
    target accuracy as a line."""
    opsd = _opsd_run(records)
    if not need_runs("token efficiency figure", records, (opsd, GRPO_LONG)):
        return None
    curves = []
    for name, color in ((opsd, "#1f77b4"), (GRPO_LONG, "#d62728")):
        points = [(t, p) for _, t, p in _accuracy_by_tokens(records[name]) if p is not None]
        xs = [t for t, _ in points]
        curves.append((f"{records[name].kind.upper()} ({name}): {train_label(records[name].config, records[name].kind)}",
                       xs, [100 * p.value for _, p in points],
                       {"color": color, "band": ([100 * p.lo for _, p in points], [100 * p.hi for _, p in points])}))
    table = token_efficiency_table(records, target)
    with styled():
        fig, ax = plt.subplots(figsize=(7.2, 4.2))
        plot_accuracy(ax, curves, xlabel="tokens generated during training (cumulative)", integer_x=False,
                      ylabel="held-out Avg@1 (%)", legend={"loc": "lower right", "fontsize": "small"})
        ax.axhline(100 * target, color="black", lw=0.8, ls="--")
        fig.suptitle(f"Token efficiency, OPSD vs GRPO -- {model_label(records[opsd].config)}\n"
                     f"{table.attrs['ratio']}; bands: 95% Wilson intervals")
        fig.tight_layout()
    return fig


def build_questions(records: Mapping[str, RunRecord], save_figure, save_table) -> dict[str, list]:
    """Every output of this module through the figure builder's savers; {name: written paths}."""
    written: dict[str, list] = {}
    for name, table, figure in (("teacher_context", teacher_context_table, teacher_context_figure),
                                ("layout_x_clip", layout_clip_table, layout_clip_figure),
                                ("token_efficiency", token_efficiency_table, token_efficiency_figure),
                                ("long_run", None, long_run_figure)):
        paths = save_table(table(records), name) if table else []
        fig = figure(records)
        paths += save_figure(fig, name)
        if fig is not None:
            plt.close(fig)
        written[name] = paths
    return written


