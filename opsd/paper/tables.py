"""The paper's tables (arXiv 2601.18734 v3) rebuilt from run directories, the paper's numbers beside ours.

Each builder takes the loaded runs (``opsd.paper.records.load_runs``) and returns a ``pandas.DataFrame``
whose ``attrs["note"]`` says what the columns are, or None with a printed note when the runs it needs
(listed in ``opsd.paper.figures``) are missing.

Every accuracy comes with its 95% Wilson score interval (``opsd.eval.stats``), printed as ``61.5 [54.6, 68.0]``:
k correct answers out of n = problems x samples per problem (Avg@1, greedy: one sample per problem, so n
is the number of problems). The DataFrames keep the bounds in columns ``<column> 95% lo`` /
``<column> 95% hi``; ``markdown_table`` folds them into the value's cell. Tables 2 and 3 report, per
benchmark, the checkpoint ``select`` picks (``opsd.paper.records.SELECTION_RULES``); the chosen step is
printed beside each value and the note names the rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from opsd.eval.stats import proportion
from opsd.paper.records import (
    CATEGORIES,
    DEFAULT_SELECTION,
    RunRecord,
    _check_select,
    _skip,
    bench_label,
    clip_label,
    eval_label,
    load_paper_results,
    model_label,
    need_evals,
    need_runs,
    objective_label,
    problems_per_step,
    references_label,
    resolve_figures_dir,
    selection_label,
    table5_by_model,
    train_label,
)

#: The imitation-vs-self-distillation comparison: (references, (self-distillation run, imitation run)),
#: one panel each: worked references (the model's own format), terse ones (no derivation) and long-winded
#: ones (longer than the evaluation's answer budget).
IMITATION_PANELS = (("worked", ("OPSD", "SFT")), ("terse", ("OPSD-terse", "SFT-terse")),
                    ("verbose", ("OPSD-verbose", "SFT-verbose")))
#: Panels drawn only when their runs are there (the others are needed): without them the comparison
#: is drawn with the panels it has, and a note names the runs left out.
IMITATION_OPTIONAL = ("verbose",)
#: The data variants' own rows in Table 2 (the paper has none), in this order, when their runs are there.
VARIANT_ROWS = ("SFT-terse", "OPSD-terse", "SFT-verbose", "OPSD-verbose")
#: Suffixes of the columns holding an accuracy column's 95% interval bounds (in %).
CI_LO, CI_HI = " 95% lo", " 95% hi"
DEFAULT_PAPER_MODEL = "Qwen3-1.7B"
#: Table 3's runs, one per divergence objective.
TABLE3_RUNS = ("OPSD", "OPSD-reverse-KL", "OPSD-JSD")


def _accuracy_cells(column: str, value: float | None, prop) -> dict[str, float | None]:
    """``{column: value, column 95% lo: .., column 95% hi: ..}``: the bounds of ``prop`` in % (None without one)."""
    return {column: value, column + CI_LO: None if prop is None else 100.0 * prop.lo,
            column + CI_HI: None if prop is None else 100.0 * prop.hi}


def _checkpoint_cells(column: str, rec: RunRecord | None, bench: str, step: int | None) -> dict[str, float | None]:
    """``_accuracy_cells`` of ``rec`` on ``bench`` at ``step`` (None where not evaluated), the step in ``column step``."""
    value = dict(zip(*rec.curve(bench))).get(step) if rec else None
    return {**_accuracy_cells(column, value, rec and rec.proportion_at(bench, step)), f"{column} step": step}


def _frame(rows: Mapping[str, Mapping], index: str, note: str, columns: Sequence[str] | None = None, **attrs):
    """A DataFrame of ``rows`` ({label: {column: value}}, ``columns`` in that order), its index named
    ``index``, with ``note`` and ``attrs`` in ``df.attrs``."""
    df = pd.DataFrame.from_dict(rows, orient="index", columns=columns).rename_axis(index)
    df.attrs.update(note=note, **attrs)
    return df


def _interval_note(evaluation: Mapping | None) -> str:
    k = ((evaluation or {}).get("settings") or {}).get("k", (evaluation or {}).get("k", 1))
    note = ("[lo, hi] after each accuracy: its 95% Wilson score interval (opsd.eval.stats), k correct of "
            "n = problems x samples")
    if k == 1:
        return note + " (Avg@1: one sample per problem, so n = problems)"
    return note + f" ({k} samples per problem are not independent: the true interval is wider)"


def imitation_panels(records: Mapping[str, RunRecord], bench: str, what: str = "imitation vs self-distillation"):
    """The ``IMITATION_PANELS`` to draw for ``bench``: every required one, and each optional one whose
    runs are all there with evaluations of ``bench`` (else a printed note names what is missing)."""
    panels = []
    for references, pair in IMITATION_PANELS:
        if references in IMITATION_OPTIONAL:
            if missing := [n for n in pair if n not in records]:
                print(f"{what}: {references} references left out (missing runs {missing})")
                continue
            if lacking := [n for n in pair if not records[n].curve(bench)[0]]:
                print(f"{what}: {references} references left out (no {bench} eval results in runs {lacking})")
                continue
        panels.append((references, pair))
    return tuple(panels)


def imitation_vs_self_distillation_table(records: Mapping[str, RunRecord], benchmarks: Sequence[str]):
    """The data of ``fig_imitation_vs_self_distillation``: one row per evaluated checkpoint of OPSD, SFT,
    OPSD-terse and SFT-terse (and OPSD-verbose and SFT-verbose when present: ``imitation_panels``), with
    the references the run trained on, the method, the step, the training problems seen by then (step x
    ``problems_per_step``), the accuracy (%) with its 95% Wilson interval, k correct of n, and the change
    from the starting model (step 0) in points. ``df.attrs["panels"]``: the panels it holds. None (with a
    printed note) when a required run or its evaluations are missing."""
    what = "imitation vs self-distillation"
    required = [n for references, pair in IMITATION_PANELS if references not in IMITATION_OPTIONAL for n in pair]
    if not (bs := need_evals(what, records, required, benchmarks)):
        return None
    if len(bs) > 1:
        print(f"{what}: drawn for {bs[0]} (the first of {bs})")
    bench = bs[0]
    panels = imitation_panels(records, bench, what)
    rows = []
    for references, pair in panels:
        for name in pair:
            rec = records[name]
            per_step = problems_per_step(rec.config, rec.kind)
            start = rec.proportion_at(bench, 0)
            for step in rec.curve(bench)[0]:
                prop = rec.proportion_at(bench, step)
                rows.append({
                    "run": name, "references": references,
                    "method": "self-distillation (OPSD)" if rec.kind == "opsd" else f"imitation ({rec.kind.upper()})",
                    "step": step, "problems seen": None if per_step is None else step * per_step,
                    **_accuracy_cells("accuracy", None if prop is None else 100.0 * prop.value, prop),
                    "correct": None if prop is None else prop.k, "n": None if prop is None else prop.n,
                    "vs start (points)": None if prop is None or start is None else 100.0 * (prop.value - start.value)})
    df = pd.DataFrame(rows).set_index("run")
    first = records["OPSD"].first_eval()
    kinds = [references_label(records[pair[0]].config) for _, pair in panels]
    df.attrs["note"] = (
        f"Imitation (SFT) vs self-distillation (OPSD) on {len(panels)} kinds of reference solutions: "
        f"{', '.join(kinds[:-1])} and {kinds[-1]}. "
        f"Every run starts from {model_label(records['OPSD'].config)} (step 0) and is evaluated on the same "
        f"held-out problems: {eval_label(records['OPSD'].eval_at(bench, 0) or first)}, accuracy in %; "
        f"{_interval_note(first)}. 'problems seen': training problems read by that step "
        "(step x problems per step)."
    )
    df.attrs["benchmark"] = bench
    df.attrs["panels"] = panels
    return df


#: Share of a run's answers cut at the token limit from which the findings name it.
_CUT_SHARE_NAMED = 0.5
#: How the findings name each panel's references.
_REFERENCE_WORDS = {"worked": "worked", "terse": "terse", "verbose": "long-winded"}


def _number(value) -> float | None:
    """A table cell as a float, None for a missing one (None or NaN)."""
    return None if value is None or math.isnan(float(value)) else float(value)


def imitation_findings(records: Mapping[str, RunRecord], table) -> str:
    """What the runs of ``imitation_vs_self_distillation_table`` measured, as Markdown built from that table
    (``table``: its DataFrame, or None) and the runs' eval files: the protocol and the starting model's accuracy;
    per panel each run's accuracy at every evaluated step (the last with its 95% interval and the training
    problems seen by then), answers cut at the token limit (when at least half are), and the two methods
    compared at their last steps (a winner only where the intervals separate); then each method's gain over the
    starting model per kind of references. ``reproduce/figures.ipynb`` displays it, so that no number of the
    campaign is typed into the notebook."""
    if table is None:
        return "**What these runs measured:** nothing; the runs this comparison needs are missing (note above)."
    bench, panels = table.attrs["benchmark"], table.attrs["panels"]

    def method(name: str) -> str:
        return "self-distillation" if records[name].kind == "opsd" else "imitation"

    def measured(name: str):
        """(rows by step, {step: Proportion}) of one run in the table."""
        rows = table.loc[[name]].sort_values("step")
        return rows, {int(r["step"]): proportion(int(r["correct"]), int(r["n"])) for _, r in rows.iterrows()}

    def pct(prop, interval: bool = False) -> str:
        text = f"{100 * prop.value:.1f}%"
        return text + (f" [{100 * prop.lo:.1f}, {100 * prop.hi:.1f}]" if interval else "")

    first = panels[0][1][0]
    rows, props = measured(first)
    head = f"**What these runs measured** ({eval_label(records[first].eval_at(bench, int(rows['step'].iloc[-1])))}"
    if 0 in props:
        head += f"; every run starts from {model_label(records[first].config)}: {pct(props[0], True)} at step 0"
    lines = [head + "; one run each):"]
    gains: dict[str, list[str]] = {"self-distillation": [], "imitation": []}
    for references, pair in panels:
        words = _REFERENCE_WORDS.get(references, references)
        parts, finals = [], {}
        for name in pair:
            rows, props = measured(name)
            steps = sorted(props)
            last, final = steps[-1], rows.iloc[-1]
            finals[name] = props[last]
            path = [pct(props[0])] if 0 in props and last != 0 else []
            path += [f"{pct(props[s])} (step {s})" for s in steps if 0 < s < last]
            seen = _number(final["problems seen"])
            path.append(f"{pct(props[last], True)} (step {last}"
                        + ("" if seen is None else f", {int(seen)} training problems seen") + ")")
            text = f"{name} " + " -> ".join(path)
            evaluation = records[name].eval_at(bench, last) or {}
            cut = (evaluation.get("summary") or {}).get("truncated_rate")
            if cut is not None and cut >= _CUT_SHARE_NAMED:
                limit = (evaluation.get("settings") or {}).get("max_new_tokens", "?")
                text += f", {cut:.0%} of its answers cut at the {limit}-token limit"
            if 0 in props and last != 0 and props[last].value < props[0].value and not props[last].overlaps(props[0]):
                text += ", below the starting model"
            parts.append(text)
            if (change := _number(final["vs start (points)"])) is not None:
                gains[method(name)].append(f"{change:+.1f} points with {words} references")
        verdict = ""
        if len(finals) == 2:
            (a, pa), (b, pb) = finals.items()
            if pa.k * pb.n == pb.k * pa.n:
                verdict = ": the same accuracy"
            else:
                ahead = method(a if pa.value > pb.value else b)
                verdict = (f": {ahead} ahead, with overlapping intervals (no winner on this many problems)"
                           if pa.overlaps(pb) else f": {ahead} wins, the intervals separated")
        lines.append(f"- {words} references: " + "; ".join(parts) + verdict + ";")
    lines[-1] = lines[-1][:-1] + "."
    lines += [f"\nGain of {kind} over the starting model at its last evaluated step: {', '.join(items)}."
              for kind, items in gains.items() if items]
    return "\n".join(lines)


def _paper_model(records: Mapping[str, RunRecord], paper_section: Mapping, paper_model: str | None) -> str:
    models = [k for k in paper_section if k not in ("benchmarks", "steps", "categories")]
    if paper_model is not None:
        if paper_model not in models:
            raise ValueError(f"paper_model {paper_model!r} not in the paper's table; valid: {models}")
        return paper_model
    ours = {model_label(r.config).lower() for r in records.values() if r.config}
    for m in models:
        if m.lower() in ours:
            return m
    return DEFAULT_PAPER_MODEL if DEFAULT_PAPER_MODEL in models else models[0]


def _fmt(v, digits: int = 1, integer: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "--"
    if integer and float(v).is_integer():
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(df, *, index: bool = True, digits: int = 1) -> str:
    """A GitHub-flavoured Markdown table of a DataFrame (floats to ``digits`` places, steps as integers,
    NaN as --). A column ``X`` with interval columns ``X 95% lo`` / ``X 95% hi`` is printed as one cell
    ``value [lo, hi]``."""
    names = [str(c) for c in df.columns]
    folded = {c + CI_LO for c in names if c + CI_LO in names and c + CI_HI in names}
    folded |= {c[: -len(CI_LO)] + CI_HI for c in folded}
    shown = [c for c in names if c not in folded]
    cols = ([df.index.name or ""] if index else []) + shown
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for idx, row in df.iterrows():
        values = dict(zip(names, row.tolist()))
        cells = [str(idx)] if index else []
        for c in shown:
            cell = _fmt(values[c], digits, c.endswith("step"))
            lo, hi = values.get(c + CI_LO), values.get(c + CI_HI)
            if cell != "--" and c + CI_LO in folded and _fmt(lo) != "--" and _fmt(hi) != "--":
                cell += f" [{float(lo):.{digits}f}, {float(hi):.{digits}f}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def base_eval_source(records: Mapping[str, RunRecord], benchmarks: Sequence[str]) -> RunRecord | None:
    """The run whose step-0 evaluation is the base model's: ``base``, else OPSD, else any run."""
    order = ["base", "OPSD"] + [n for n in records if n not in ("base", "OPSD")]
    for name in order:
        rec = records.get(name)
        if rec is not None and any(rec.eval_at(b, 0) for b in benchmarks):
            return rec
    return None


def table2(records: Mapping[str, RunRecord], benchmarks: Sequence[str], paper: Mapping | None = None,
           paper_model: str | None = None, select: str = DEFAULT_SELECTION):
    """Table 2: accuracy (%) of base / SFT / GRPO / OPSD per benchmark, the paper's beside.

    Ours: per benchmark the checkpoint ``select`` picks (``best``, the paper's rule, or ``last``) in
    ``ours: <benchmark>``, its step in ``ours: <benchmark> step``, its 95% Wilson interval in
    ``ours: <benchmark> 95% lo`` / ``95% hi``; base: the step-0 evaluation of ``base_eval_source``. The data
    variants (``VARIANT_ROWS``) get rows of their own when present (the paper has none: --); a method
    without a run shows --. Paper: ``paper_results.yaml`` table2 for ``paper_model`` (default: the runs'
    model if the paper has it, else Qwen3-1.7B).
    """
    what = "Table 2"
    _check_select(select)
    if not (bs := need_evals(what, records, ("OPSD",), benchmarks)):
        return None
    paper = paper if paper is not None else load_paper_results()
    section = paper["table2"]
    pmodel = _paper_model(records, section, paper_model)
    pbench = list(section["benchmarks"])
    if missing := [n for n in ("SFT", "GRPO") if n not in records]:
        print(f"Table 2: no runs {missing}; their rows show -- for the CPU edition")
    base_src = base_eval_source(records, bs)
    rows = {}
    variants = [n for n in VARIANT_ROWS if n in records]
    for method in ["base", "SFT", "GRPO", "OPSD"] + variants:
        row: dict[str, Any] = {}
        for b in bs:
            if method == "base":
                rec, step = base_src, 0 if base_src and base_src.eval_at(b, 0) else None
            else:
                rec = records.get(method)
                step = rec.selected_accuracy(b, select)[0] if rec else None
            row |= _checkpoint_cells(f"ours: {b}", rec, b, step)
        for i, b in enumerate(pbench):
            row[f"paper {pmodel}: {b}"] = float(section[pmodel][method][i]) if method in section[pmodel] else None
        rows[method] = row
    by_references: dict[str, list[str]] = {}  # the data-variant rows, grouped by their references
    for name in variants:
        by_references.setdefault(references_label(records[name].config), []).append(name)
    first = records["OPSD"].first_eval()
    return _frame(rows, "method", (
        f"ours = CPU edition: {model_label(records['OPSD'].config)}, {eval_label(first)}, accuracy in %, "
        f"{selection_label(select)} (base = step 0 of the {base_src.name if base_src else '?'} run); "
        f"{_interval_note(first)}. "
        + "".join(f"{' / '.join(names)}: trained on {label}, evaluated on the same held-out problems; the "
                  "paper has no such rows. "
                  for label, names in by_references.items())
        + f"paper = arXiv 2601.18734 v3 Table 2, {pmodel}, Avg@12 (%), thinking on, {', '.join(bench_label(b) for b in pbench)}. "
        "Paper scale vs CPU edition: different model, data and budget, so the absolute values are not "
        "comparable; compare the ordering of the methods."
    ), select=select)


def table3_benchmark(what: str, records: Mapping[str, RunRecord], benchmarks: Sequence[str]) -> str | None:
    """Table 3's benchmark: aime25 (the paper's) when every run of TABLE3_RUNS has evals of it, else the
    first benchmark they all have; None, with a printed note, when there is none."""
    if not (bs := need_evals(what, records, TABLE3_RUNS, benchmarks)):
        return None
    return "aime25" if "aime25" in bs else bs[0]


def table3(records: Mapping[str, RunRecord], benchmarks: Sequence[str], paper: Mapping | None = None,
           select: str = DEFAULT_SELECTION):
    """Table 3: accuracy (%) at each evaluated step for forward KL / reverse KL / JSD(0.5), the paper's beside.

    Ours: runs OPSD, OPSD-reverse-KL, OPSD-JSD on the first benchmark of ``benchmarks`` (aime25, the
    paper's, when present), at every evaluated step, then the checkpoint ``select`` picks (``best``
    or ``last``) in ``ours: <select>`` with its step in ``ours: <select> step``; row labels come from
    each run's ``beta``.
    Paper: ``paper_results.yaml`` table3 (Qwen3-1.7B, AIME25, steps 0 / 50 / 100).
    """
    names = TABLE3_RUNS
    _check_select(select)
    if (bench := table3_benchmark("Table 3", records, benchmarks)) is None:
        return None
    paper = paper if paper is not None else load_paper_results()
    section = paper["table3"]
    steps = sorted({s for n in names for s in records[n].curve(bench)[0]})
    rows = {}
    for n in names:
        rec, label = records[n], objective_label(records[n].config)
        curve = dict(zip(*rec.curve(bench)))
        row = {}
        for s in steps:
            row |= _accuracy_cells(f"ours: step {s}", curve.get(s), rec.proportion_at(bench, s))
        row |= _checkpoint_cells(f"ours: {select}", rec, bench, rec.selected_accuracy(bench, select)[0])
        for i, s in enumerate(section["steps"]):
            row[f"paper: step {s}"] = float(section[label][i]) if label in section else None
        rows[f"{label} ({n})"] = row
    opsd = records["OPSD"]
    return _frame(rows, "objective", (
        f"ours = CPU edition: {model_label(opsd.config)}, {train_label(opsd.config, 'opsd')}, "
        f"{clip_label(opsd.config)}; {eval_label(opsd.eval_at(bench, steps[0]) or opsd.first_eval())}, %; "
        f"'ours: {select}' = {selection_label(select)}; {_interval_note(opsd.first_eval())}. "
        "paper = arXiv 2601.18734 v3 Table 3, Qwen3-1.7B, AIME25 Avg@12 (%) at steps 0 / 50 / 100. "
        "Paper scale vs CPU edition: not comparable in absolute value; compare how each objective moves from step 0."
    ), benchmark=bench, select=select)


def _category_means(rec: RunRecord, steps: Sequence[int] | None = None) -> dict[str, float]:
    """Mean ``kl_<category>`` over logged steps (weighted by ``count_<category>`` when logged)."""
    out = {}
    for c in CATEGORIES:
        total = weight = 0.0
        for r in rec.metrics:
            if steps is not None and r.get("step") not in steps:
                continue
            v = r.get(f"kl_{c}")
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            w = float(r.get(f"count_{c}") or 1.0)
            total += w * float(v)
            weight += w
        out[c] = total / weight if weight else float("nan")
    return out


def category_counts(rec: RunRecord, steps: Sequence[int] | None = None) -> str:
    """``tokens: style 12, math 3,104, other 1,480``: the rollout tokens behind each category's mean
    (``count_<category>`` summed over the steps); empty when the run logged no counts."""
    counts = {c: sum(float(r.get(f"count_{c}") or 0) for r in rec.metrics if steps is None or r.get("step") in steps)
              for c in CATEGORIES}
    if not any(counts.values()):
        return "token counts not logged"
    return "tokens: " + ", ".join(f"{c} {int(n):,}" for c, n in counts.items())


def table5(records: Mapping[str, RunRecord], paper: Mapping | None = None, run: str = "OPSD"):
    """Table 5: mean per-token divergence by token category (style / math / other).

    Ours, from the ``run``'s metrics (``kl_style`` ... = mean unclipped D[n] of its objective, forward
    KL for OPSD): at the first logged step (the base model, before any update) and averaged over all
    steps (token-count weighted). Paper: ``paper_results.yaml`` table5, one row per model.
    """
    what = "Table 5"
    if not need_runs(what, records, (run,)):
        return None
    rec = records[run]
    # a category is logged only at steps whose rollouts had tokens of it (short rollouts may have no
    # style word): the steps are those where any category was logged, a category never seen is NaN (--)
    steps = sorted({s for c in CATEGORIES for s in rec.metric(f"kl_{c}")[0]})
    if not steps:
        _skip(what, f"run {run!r} logged no kl_style / kl_math / kl_other")
        return None
    model, objective = model_label(rec.config), objective_label(rec.config)
    rows = {
        f"ours: {model}, {objective}, step {steps[0]} (base model; {category_counts(rec, [steps[0]])})":
            _category_means(rec, [steps[0]]),
        f"ours: {model}, {objective}, mean over steps {steps[0]}-{steps[-1]} ({category_counts(rec)})":
            _category_means(rec),
        **{f"paper: {m}": values for m, values in table5_by_model(paper).items()},
    }
    return _frame(rows, "source", (
        f"Mean per-token divergence by token category (keyword lists of opsd.divergence.token_category). "
        f"ours = CPU edition run {run!r}: {train_label(rec.config, rec.kind)}, {clip_label(rec.config)}, unclipped D[n] "
        "on its training rollouts. paper = arXiv 2601.18734 v3 Table 5. Not comparable in absolute value "
        "(different model, vocabulary and data); compare the ordering of the categories."
    ), columns=list(CATEGORIES))


def _markdown_with_note(df, digits: int) -> str:
    note = df.attrs.get("note")
    return (f"{note}\n\n" if note else "") + markdown_table(df, digits=digits) + "\n"


def save_table(df, name: str, figures_dir: str | Path = "figures", *, digits: int = 1) -> list[Path]:
    """Write ``<name>.csv`` and ``<name>.md`` (the Markdown with ``df.attrs["note"]`` above the table);
    returns the paths ([] when ``df`` is None)."""
    if df is None:
        return []
    out = resolve_figures_dir(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / f"{name}.csv", out / f"{name}.md"
    df.to_csv(csv, float_format="%.4f")
    md.write_text(_markdown_with_note(df, digits))
    return [csv, md]


def print_table(df, *, digits: int = 1) -> None:
    """Print what ``save_table`` writes to ``<name>.md`` (the notebook shows the DataFrame as well)."""
    if df is not None:
        print(_markdown_with_note(df, digits), end="")
