"""The paper's figures (arXiv 2601.18734 v3) rebuilt from run directories, and the command that writes
every figure and table.

Input: a mapping of run names to run directories, read by ``opsd.paper.records`` (which lists the names the
figures use, and holds the paper's numbers: printed beside ours, never mixed into our curves); the tables
are built in ``opsd.paper.tables``; every figure is drawn in ``opsd.viz.plots``'s one style, every accuracy curve
by ``opsd.viz.plots.plot_accuracy``.

Each builder takes the loaded runs (``load_runs``) and returns a ``matplotlib`` Figure; when the runs it
needs are missing it prints ``skipped Fig 4: missing runs ['OPSD-clip']`` and returns None (nothing is
ever drawn from made-up numbers). ``save_figure`` / ``save_table`` write PNG + PDF / CSV + Markdown into
a figures directory.

    figure / table                   builder                 needs
    fig3_avg_vs_step                 fig3_avg_vs_step        OPSD, GRPO (eval)
    fig3_avg_vs_tokens               fig3_avg_vs_tokens      OPSD, GRPO (eval + tokens_generated)
    fig3_grpo_zero_std               fig3_grpo_zero_std      GRPO (reward_std_zero_fraction)
    fig4_clipping                    fig4_clipping           OPSD-clip, OPSD (eval)
    fig5_generation_length           fig5_generation_length  OPSD, OPSD-long (eval)
    table2 (.csv/.md)                table2                  OPSD (+ SFT, GRPO, base when present)
    table3 (.csv/.md) + figure       table3, table3_figure   OPSD, OPSD-reverse-KL, OPSD-JSD (eval)
    table5_kl_by_category (+ .csv)   table5, table5_figure   OPSD (kl_style / kl_math / kl_other)
    diagnostics                      diagnostics             any OPSD-family run (metrics)
    fig_imitation_vs_self_distillation  imitation_vs_self_distillation (+ _table)
                                                             OPSD, SFT, OPSD-terse, SFT-terse (eval);
                                                             OPSD-verbose, SFT-verbose: a third panel
                                                             when present

``python -m opsd.paper.figures --runs runs/figures --figures-dir figures`` builds them all (the
notebook ``reproduce/figures.ipynb`` does the same, one cell per figure, through this module's names).
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt

from opsd.paper.questions import build_questions
from opsd.paper.records import (
    DEFAULT_SELECTION,
    OPSD_FAMILY,
    SELECTION_RULES,
    RunRecord,
    _skip,
    bench_label,
    clip_label,
    eval_label,
    eval_proportion,
    generation_label,
    load_paper_results,
    load_runs,
    model_label,
    need_evals,
    need_runs,
    objective_label,
    references_label,
    resolve_figures_dir,
    runs_overview,  # noqa: F401  (the notebook's pf.runs_overview)
    select_benchmarks,
    table5_by_model,
    train_label,
)
from opsd.paper.tables import (
    CI_HI,
    CI_LO,
    TABLE3_RUNS,
    base_eval_source,
    category_counts,
    imitation_vs_self_distillation_table,
    print_table,
    save_table,
    table2,
    table3,
    table3_benchmark,
    table5,
)
from opsd.viz.plots import (
    MARKERS,
    accuracy_limits,
    integer_steps,
    plot_accuracy,
    plot_kl_by_category,
    plot_runs,
    styled,
    use_style,  # noqa: F401  (the notebook's pf.use_style)
)

#: loss (the optimised, possibly clipped objective) beside the unclipped KL; clipped_token_fraction (positions
#: where the clip changed a summand) is readable where the per-entry clipped_fraction (~1e-6) is not.
DIAGNOSTIC_KEYS = ("loss", "divergence_unclipped_mean", "clipped_token_fraction", "negative_token_fraction",
                   "rollout_length_mean", "student_entropy")
DIAGNOSTIC_TITLES = {
    "loss": "loss (the optimised objective, clipped if set)",
    "divergence_unclipped_mean": "unclipped KL per token (nats)",
    "clipped_token_fraction": "tokens where the clip bit",
    "negative_token_fraction": "tokens with D < -1e-5 (only a clip can make D < 0)",
    "rollout_length_mean": "rollout length (tokens)",
    "student_entropy": "student entropy per token (nats)",
}

#: Output file stem -> what it shows (figures/README.md describes them at length).
FIGURES: dict[str, str] = {
    "fig3_avg_vs_step": "Fig 3 (left): Avg@k vs training step, OPSD and GRPO, one panel per benchmark",
    "fig3_avg_vs_tokens": "Fig 3 (middle): average accuracy vs tokens generated during training",
    "fig3_grpo_zero_std": "Fig 3 (right): fraction of GRPO prompt groups with zero reward std vs step",
    "fig4_clipping": "Fig 4: accuracy vs step with point-wise clipping (0.05) and without",
    "fig5_generation_length": "Fig 5: accuracy vs step for two generation lengths",
    "table2": "Table 2: base / SFT / GRPO / OPSD accuracy per benchmark, paper numbers beside",
    "table3": "Table 3: forward KL / reverse KL / JSD(0.5) accuracy at evaluated steps, paper beside",
    "table3_objectives": "Table 3 as curves: accuracy vs step per objective (ours | paper)",
    "table5_kl_by_category": "Table 5: mean per-token divergence by token category (style / math / other)",
    "diagnostics": "training diagnostics: loss, unclipped KL, tokens where the clip bit, negative tokens, rollout "
                   "length, student entropy",
    "fig_imitation_vs_self_distillation": "held-out accuracy vs training, OPSD and SFT on worked references, "
                                          "on terse references and on long-winded references, one panel each, "
                                          "95% bands, starting model",
}

#: Summary keys drawn under the accuracy row when every run has them: at CPU scale the accuracy can sit
#: at zero while the format the teacher demonstrates (a final ``\\boxed{}``) is being learned.
SECONDARY_METRICS = {"boxed_rate": "boxed answers (%)"}
_LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))


def _accuracy_label(records: Sequence[RunRecord]) -> str:
    ks = {r.first_eval().get("k") for r in records if r.first_eval()}
    return f"Avg@{ks.pop()} (%)" if len(ks) == 1 else "Avg@k (%)"


def _title(figure: str, records: Sequence[RunRecord], *, with_eval: bool = True) -> str:
    models = sorted({model_label(r.config) for r in records if r.config})
    head = f"{figure} -- {', '.join(models) if models else 'model unknown'}"
    if with_eval:
        first = next((r.first_eval() for r in records if r.first_eval()), None)
        if first:
            head += f"\neval: {eval_label(first)}"
    return head


@contextlib.contextmanager
def _figure(title: str, *grid: int, **subplots):
    """``plt.subplots(*grid, **subplots)`` in the kit's style, yielding (figure, axes); on leaving, the
    figure's ``title`` and a tight layout."""
    with styled():
        fig, axes = plt.subplots(*grid, **subplots)
        yield fig, axes
        fig.suptitle(title)
        fig.tight_layout()


# ------------------------------------------------------------------------------------------ accuracy figures


def _accuracy_panels(what: str, records: Mapping[str, RunRecord], names: Sequence[str], benchmarks: Sequence[str],
                     legend_label, title: str, note=None, styles: Sequence[dict] | None = None):
    """Accuracy (%) vs training step of the runs ``names`` (legend: ``legend_label(name, run)``), one column per
    benchmark they were all evaluated on, and one more row per ``SECONDARY_METRICS`` key that every run's
    evaluations report; ``note(records)`` adds a line to the title. None when evaluations are missing."""
    if not (benchmarks := need_evals(what, records, names, benchmarks)):
        return None
    lines = [(legend_label(n, records[n]), records[n]) for n in names]
    rows = [("avg_at_k", _accuracy_label([rec for _, rec in lines]))]
    rows += [(key, label) for key, label in SECONDARY_METRICS.items()
             if all(rec.curve(b, key)[0] for _, rec in lines for b in benchmarks)]
    n = len(benchmarks)
    title = _title(title, [rec for _, rec in lines]) + (f"\n{note(records)}" if note else "")
    if any(rec.band(b) for _, rec in lines for b in benchmarks):
        title += "\nbands: 95% Wilson intervals"
    with _figure(title, len(rows), n,
                 figsize=(4.6 * n if n > 1 else 6.4, 3.8 + 2.6 * (len(rows) - 1)), squeeze=False, sharex="col") as (fig, axes):
        for r, (metric, ylabel) in enumerate(rows):
            for c, (ax, b) in enumerate(zip(axes[r], benchmarks)):
                curves = [(label, *rec.curve(b, metric), _with_band(styles[i] if styles else {}, rec, b, metric))
                          for i, (label, rec) in enumerate(lines)]
                plot_accuracy(ax, curves, xlabel="training step" if r == len(rows) - 1 else None, ylabel=ylabel,
                              title=bench_label(b) if r == 0 else None,
                              legend={"loc": "best"} if (r, c) == (0, 0) else None)
    return fig


def _with_band(style: Mapping, rec: RunRecord, benchmark: str, metric: str = "avg_at_k") -> dict:
    """``style`` plus the accuracy curve's 95% interval band (``RunRecord.band``) when it has one."""
    band = rec.band(benchmark) if metric == "avg_at_k" else None
    return {**style, "band": band} if band is not None else dict(style)


def fig3_avg_vs_step(records: Mapping[str, RunRecord], benchmarks: Sequence[str]):
    """Fig 3 (left): Avg@k vs training step for OPSD and GRPO, one panel per benchmark."""
    return _accuracy_panels("Fig 3 (Avg@k vs step)", records, ("OPSD", "GRPO"), benchmarks,
                            lambda n, rec: f"{n}: {train_label(rec.config, rec.kind)}",
                            "Fig 3 analogue: accuracy vs training step")


def fig4_caveat(records: Mapping[str, RunRecord], benchmarks: Sequence[str]) -> str | None:
    """A line for the figure when the clipped run ends below the unclipped one on every benchmark: the
    opposite of the paper's Fig 4 (on Qwen3 the clip helps)."""
    ends = [(records["OPSD-clip"].final_accuracy(b)[1], records["OPSD"].final_accuracy(b)[1]) for b in benchmarks]
    if ends and all(c is not None and u is not None and c < u for c, u in ends):
        return ("caveat: here the clip ends below no clip, the opposite of the paper's Fig 4 "
                "(Qwen3 1.7B-8B); figures/README says why")
    return None


def fig4_clipping(records: Mapping[str, RunRecord], benchmarks: Sequence[str]):
    """Fig 4: accuracy vs step with the point-wise clip (OPSD-clip) and without (OPSD); a caveat line
    when the result is the opposite of the paper's (``fig4_caveat``)."""
    def note(r):
        caveat = fig4_caveat(r, benchmarks)
        return (f"{objective_label(r['OPSD'].config)}, {train_label(r['OPSD'].config, 'opsd')}"
                + (f"\n{caveat}" if caveat else ""))

    return _accuracy_panels("Fig 4", records, ("OPSD-clip", "OPSD"), benchmarks,
                            lambda n, rec: f"{clip_label(rec.config)} ({n})", "Fig 4 analogue: point-wise clipping",
                            note, styles=[{"color": "#1f77b4"}, {"color": "#7f7f7f", "ls": "--"}])


def fig5_generation_length(records: Mapping[str, RunRecord], benchmarks: Sequence[str]):
    """Fig 5: accuracy vs step for two generation lengths (OPSD vs OPSD-long)."""
    return _accuracy_panels("Fig 5", records, ("OPSD", "OPSD-long"), benchmarks,
                            lambda n, rec: f"{generation_label(rec.config)} ({n})", "Fig 5 analogue: generation length",
                            lambda r: f"{objective_label(r['OPSD'].config)}, {clip_label(r['OPSD'].config)}")


def fig3_avg_vs_tokens(records: Mapping[str, RunRecord], benchmarks: Sequence[str]):
    """Fig 3 (middle): accuracy averaged over benchmarks vs cumulative tokens generated in training."""
    what = "Fig 3 (accuracy vs tokens generated)"
    names = ("OPSD", "GRPO")
    if not (bs := need_evals(what, records, names, benchmarks)):
        return None
    lacking = [n for n in names if not records[n].metric("tokens_generated")[0]]
    if lacking:
        _skip(what, f"runs {lacking} logged no tokens_generated in metrics.jsonl")
        return None
    curves = []
    for n in names:
        rec = records[n]
        by_step = [dict(zip(*rec.curve(b))) for b in bs]
        xs, ys = [], []
        for s in sorted(set.intersection(*(set(c) for c in by_step))):
            tokens = rec.tokens_at(s)
            if tokens is not None:
                xs.append(tokens)
                ys.append(sum(c[s] for c in by_step) / len(by_step))
        style = {}
        if len(bs) == 1 and (band := rec.band(bs[0])) is not None:
            steps = rec.curve(bs[0])[0]
            kept = [i for i, s in enumerate(steps) if rec.tokens_at(s) is not None]
            style["band"] = ([band[0][i] for i in kept], [band[1][i] for i in kept])
        curves.append((f"{n}: {train_label(rec.config, rec.kind)}", xs, ys, style))
    drawn = [records[n] for n in names]
    label = _accuracy_label(drawn)
    with _figure(_title("Fig 3 analogue: accuracy vs generated tokens", drawn), figsize=(6.4, 3.8)) as (fig, ax):
        plot_accuracy(ax, curves, xlabel="tokens generated during training (cumulative)", integer_x=False,
                      ylabel=label if len(bs) == 1 else f"mean {label} over {len(bs)} benchmarks", legend={"loc": "best"})
    return fig


def table3_figure(records: Mapping[str, RunRecord], benchmarks: Sequence[str], paper: Mapping | None = None):
    """Table 3 as curves: ours (left) and the paper's (right), accuracy vs step per objective."""
    if (bench := table3_benchmark("Table 3 figure", records, benchmarks)) is None:
        return None
    section = (paper if paper is not None else load_paper_results())["table3"]
    drawn = [records[n] for n in TABLE3_RUNS]
    ours = [(f"{objective_label(rec.config)} ({n})", *rec.curve(bench), _with_band({}, rec, bench))
            for n, rec in zip(TABLE3_RUNS, drawn)]
    theirs = [(key, section["steps"], section[key], {"marker": "s", "ls": "--"}) for key in section if key != "steps"]
    title = (_title("Table 3 analogue: divergence objective", drawn)
             + f"\n{clip_label(records['OPSD'].config)}; left and right are not comparable in absolute value")
    with _figure(title, 1, 2, figsize=(10.0, 3.8)) as (fig, (ax, axp)):
        plot_accuracy(ax, ours, ylabel=_accuracy_label(drawn), title=f"CPU edition: {bench_label(bench)}",
                      legend={"loc": "best"})
        plot_accuracy(axp, theirs, ylabel="Avg@12 (%)", title="paper (Qwen3-1.7B, AIME25 Avg@12, v3 Table 3)",
                      integer_x=False, from_zero=False, legend={"loc": "best"})
    return fig


def imitation_vs_self_distillation(records: Mapping[str, RunRecord], benchmarks: Sequence[str]):
    """Held-out accuracy vs training for OPSD and SFT, one panel per kind of reference solutions: worked
    (left), terse (middle) and long-winded (right; only when OPSD-verbose and SFT-verbose are there, see
    ``opsd.paper.tables.imitation_panels``): 95% Wilson interval bands, the starting model's accuracy
    (step 0) as a dotted line with its band. x: training problems seen (step x problems per step), so
    SFT's smaller, cheaper steps line up with OPSD's; the training step when a run does not record its
    batch size."""
    df = imitation_vs_self_distillation_table(records, benchmarks)
    if df is None:
        return None
    bench, panels = df.attrs["benchmark"], df.attrs["panels"]
    by_seen = df["problems seen"].notna().all()
    base = base_eval_source(records, [bench])
    start = eval_proportion(base.eval_at(bench, 0)) if base else None
    colors = {"opsd": "#1f77b4", "sft": "#ff7f0e"}
    drawn = [records[n] for _, pair in panels for n in pair]
    opsd, sft = (records[n] for n in panels[0][1])
    title = (_title("Imitation (SFT) vs self-distillation (OPSD)", drawn)
             + f"\nOPSD: {train_label(opsd.config, opsd.kind)}\nSFT: {train_label(sft.config, sft.kind)}")
    with _figure(title, 1, len(panels), figsize=(3.6 * len(panels), 4.2), sharey=True, squeeze=False) as (fig, axes):
        shown = []
        for ax, (references, pair) in zip(axes[0], panels):
            if start is not None:
                ax.axhline(100 * start.value, color="black", ls=":", lw=1.0, label=f"starting model {start}")
                ax.axhspan(100 * start.lo, 100 * start.hi, color="0.5", alpha=0.12, lw=0)
                shown.append(100 * start.hi)
            curves = []
            for i, name in enumerate(pair):
                rec = records[name]
                part = df.loc[[name]].sort_values("step")
                xs = part["problems seen" if by_seen else "step"].astype(float).tolist()
                ys, lo, hi = (part[c].astype(float).tolist() for c in ("accuracy", "accuracy" + CI_LO, "accuracy" + CI_HI))
                method = "OPSD" if rec.kind == "opsd" else rec.kind.upper()
                curves.append((method, xs, ys, {"color": colors.get(rec.kind, f"C{i + 2}"), "band": (lo, hi)}))
            shown += plot_accuracy(ax, curves, title="\n(".join(references_label(records[pair[0]].config).rsplit(" (", 1)),
                                   from_zero=False, xlabel="problems seen" if by_seen else "training step", legend=None)
        accuracy_limits(axes[0][0], shown)
        axes[0][0].set_ylabel(_accuracy_label(drawn))
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncols=len(labels), bbox_to_anchor=(0.5, -0.08))
        fig.text(0.5, -0.13, "bands: 95% Wilson intervals; problems seen = steps x problems per step", ha="center",
                 fontsize="small")
    return fig


# ------------------------------------------------------------------------------------------ other figures


def fig3_grpo_zero_std(records: Mapping[str, RunRecord]):
    """Fig 3 (right): fraction of GRPO prompt groups whose rewards all agree (zero std, no gradient) vs step."""
    what = "Fig 3 (GRPO zero reward std)"
    if not need_runs(what, records, ("GRPO",)):
        return None
    rec = records["GRPO"]
    steps, values = rec.metric("reward_std_zero_fraction")
    if not steps:
        _skip(what, "the GRPO run logged no reward_std_zero_fraction")
        return None
    title = (_title("Fig 3 analogue: GRPO groups with zero reward std", [rec], with_eval=False)
             + f"\nGRPO: {train_label(rec.config, 'grpo')}, temperature {rec.config.get('temperature')}")
    with _figure(title, figsize=(6.4, 3.6)) as (fig, ax):
        ax.plot(steps, values, marker="o", color="#d62728", label="groups with zero reward std (no learning signal)")
        mean = sum(values) / len(values)
        ax.axhline(mean, color="black", lw=0.8, ls="--", label=f"mean {mean:.2f}")
        r_steps, rewards = rec.metric("reward_mean")
        if r_steps:
            ax.plot(r_steps, rewards, marker="s", color="#2ca02c", ls=":", label="mean reward (fraction correct)")
        integer_steps(ax)
        ax.set(ylim=(-0.03, 1.03), xlabel="training step", ylabel="fraction of prompt groups")
        ax.legend(loc="best")
    return fig


def table5_figure(records: Mapping[str, RunRecord], paper: Mapping | None = None, run: str = "OPSD"):
    """Table 5 as grouped bars (``opsd.viz.plots.plot_kl_by_category``): ours (mean over training) and the paper's."""
    df = table5(records, paper, run)
    if df is None:
        return None
    rec = records[run]
    measured = df.iloc[1].to_dict()
    with styled():
        fig = plot_kl_by_category(measured, table5_by_model(paper), measured_label=f"ours ({model_label(rec.config)}, CPU;\n{category_counts(rec)})",
                                  title=_title("Table 5 analogue: divergence by token category", [rec], with_eval=False)
                                  + f"\n{objective_label(rec.config)}, mean over training; paper: v3 Table 5")
        fig.set_size_inches(7.2, 4.0)
        fig.tight_layout()
    return fig


def diagnostics(records: Mapping[str, RunRecord], keys: Sequence[str] = DIAGNOSTIC_KEYS):
    """Training diagnostics of the OPSD-family runs overlaid: loss, clipped fraction, negative-token
    fraction, rollout length vs step (``opsd.viz.plots.plot_runs`` per panel)."""
    what = "diagnostics"
    present = [n for n in OPSD_FAMILY if n in records and records[n].metrics]
    if not present:
        _skip(what, f"missing runs: none of {list(OPSD_FAMILY)} has metrics.jsonl")
        return None
    keys = [k for k in keys if any(records[n].metric(k)[0] for n in present)]
    labels = {}
    for n in present:
        c = records[n].config
        labels[f"{n}: {objective_label(c)}, {clip_label(c)}, len {c.get('max_completion_length')}"] = records[n].metrics
    title = (_title("Training diagnostics", [records[n] for n in present], with_eval=False)
             + f"\n{train_label(records[present[0]].config, 'opsd')}")
    rows = math.ceil(len(keys) / 2)
    with _figure(title, rows, 2, figsize=(10.0, 3.2 * rows), squeeze=False) as (fig, axes):
        for ax, key in zip(axes.ravel(), keys):
            plot_runs(labels, key, ax=ax, title=DIAGNOSTIC_TITLES.get(key, key))
            if ax.get_legend():
                ax.get_legend().remove()
            # runs often coincide (clipped fraction 0, same rollout length): vary style so none hides another
            for i, line in enumerate(l for l in ax.get_lines() if l.get_label() in labels):
                line.set_linestyle(_LINESTYLES[i % len(_LINESTYLES)])
                line.set_marker(MARKERS[i % len(MARKERS)])
            integer_steps(ax)
        for ax in axes.ravel()[len(keys):]:
            fig.delaxes(ax)
        handles, names = axes.ravel()[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncols=2, bbox_to_anchor=(0.5, -0.02 - 0.03 * math.ceil(len(names) / 2)))
    return fig


# ------------------------------------------------------------------------------------------ saving


def save_figure(fig, name: str, figures_dir: str | Path = "figures") -> list[Path]:
    """Write ``<figures_dir>/<name>.png`` and ``.pdf``; returns the paths ([] when ``fig`` is None,
    i.e. the figure was skipped). A relative ``figures_dir`` is taken from the repository root."""
    if fig is None:
        return []
    out = resolve_figures_dir(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    with styled():
        for p in paths:
            # no creation date, so regenerating unchanged figures leaves the files unchanged
            meta = {"Creator": "opsd-kit", "CreationDate": None} if p.suffix == ".pdf" else {"Software": "opsd-kit"}
            fig.savefig(p, metadata=meta)
    return paths


def build_all(runs: Mapping[str, Any] | str | Path | None = None, figures_dir: str | Path = "figures",
              benchmark: str | Sequence[str] | None = "synthetic", paper_model: str | None = None,
              select: str = DEFAULT_SELECTION) -> dict[str, list[Path]]:
    """Every figure and table into ``figures_dir`` (what ``reproduce/figures.ipynb`` does, cell by cell).
    ``select``: which checkpoint Tables 2 and 3 report (``best`` or ``last``).
    Returns {output name: written paths}; skipped ones map to []."""
    records = load_runs(runs)
    benchmarks = select_benchmarks(records, benchmark)
    paper = load_paper_results()
    written: dict[str, list[Path]] = {}

    def fig(name, f):
        written.setdefault(name, []).extend(save_figure(f, name, figures_dir))
        if f is not None:
            plt.close(f)

    def table(name, df, digits=1):
        print_table(df, digits=digits)
        written.setdefault(name, []).extend(save_table(df, name, figures_dir, digits=digits))

    fig("fig3_avg_vs_step", fig3_avg_vs_step(records, benchmarks))
    fig("fig3_avg_vs_tokens", fig3_avg_vs_tokens(records, benchmarks))
    fig("fig3_grpo_zero_std", fig3_grpo_zero_std(records))
    fig("fig4_clipping", fig4_clipping(records, benchmarks))
    fig("fig5_generation_length", fig5_generation_length(records, benchmarks))
    table("table2", table2(records, benchmarks, paper, paper_model, select))
    table("table3", table3(records, benchmarks, paper, select))
    fig("table3_objectives", table3_figure(records, benchmarks, paper))
    table("table5_kl_by_category", table5(records, paper), digits=3)
    fig("table5_kl_by_category", table5_figure(records, paper))
    fig("diagnostics", diagnostics(records))
    ti = imitation_vs_self_distillation_table(records, benchmarks)
    print_table(ti)
    fig("fig_imitation_vs_self_distillation", imitation_vs_self_distillation(records, benchmarks) if ti is not None else None)
    written["fig_imitation_vs_self_distillation"] += save_table(ti, "fig_imitation_vs_self_distillation", figures_dir)
    written.update(build_questions(records, lambda f, name: save_figure(f, name, figures_dir),
                                   lambda df, name: save_table(df, name, figures_dir)))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m opsd.paper.figures [--runs DIR|JSON] [--figures-dir DIR] [--benchmark NAMES]``."""
    p = argparse.ArgumentParser(prog="python -m opsd.paper.figures", description=main.__doc__)
    p.add_argument("--runs", default=None, help="a directory of named run folders or a JSON mapping (default runs/figures)")
    p.add_argument("--figures-dir", default="figures")
    p.add_argument("--benchmark", default="synthetic", help="comma-separated benchmark names")
    p.add_argument("--paper-model", default=None)
    p.add_argument("--select", choices=SELECTION_RULES, default=DEFAULT_SELECTION,
                   help="checkpoint Tables 2 and 3 report: best (the paper's rule, default) or last")
    args = p.parse_args(argv)
    mpl.use("Agg")
    written = build_all(args.runs, args.figures_dir, args.benchmark, args.paper_model, args.select)
    for name, paths in written.items():
        print(f"{name:24s} {'skipped' if not paths else ', '.join(p.name for p in paths)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
