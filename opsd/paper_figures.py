"""The paper's figures and tables (arXiv 2601.18734 v3), rebuilt from run directories.

Input: a mapping of run names to run directories. Only the files runs write are read
(``config.yaml``, ``metrics.jsonl``, ``eval/<benchmark>/step-<N>.json``). The names the figures use:

    OPSD              forward KL (beta 0); in the CPU edition without clipping (the cpu-tiny default)
    OPSD-clip         the same with the paper's point-wise clip 0.05            (Fig 4)
    OPSD-reverse-KL   beta 1;  OPSD-JSD  beta 0.5                                (Table 3)
    OPSD-long         a longer generation length (max_completion_length)         (Fig 5)
    SFT, GRPO         the baselines                                              (Fig 3, Table 2)
    OPSD-terse,       OPSD and SFT trained on references without a derivation   (imitation vs
    SFT-terse         (dataset synthetic-terse)                                  self-distillation)
    base              optional: a directory holding the base model's step-0 eval (Table 2; else
                      the OPSD run's step-0 eval, which is the base model too)

Each builder takes the loaded runs (``load_runs``) and returns a ``matplotlib`` Figure or a
``pandas.DataFrame``; when the runs it needs are missing it prints ``skipped Fig 4: missing runs
['OPSD-clip']`` and returns None (nothing is ever drawn from made-up numbers). ``save_figure`` /
``save_table`` write PNG + PDF / CSV + Markdown into a figures directory. The paper's numbers come
from ``reproduce/paper_results.yaml``; they are printed beside ours, never mixed into our curves.

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
                                                             OPSD, SFT, OPSD-terse, SFT-terse (eval)

Every accuracy in the tables comes with its 95% Wilson score interval (``opsd.stats``), printed as
``61.5 [54.6, 68.0]``: k correct answers out of n = problems x samples per problem (Avg@1, greedy: one
sample per problem, so n is the number of problems). The DataFrames keep the bounds in columns
``<column> 95% lo`` / ``<column> 95% hi``; ``markdown_table`` folds them into the value's cell.

Tables 2 and 3 report, per benchmark, the checkpoint ``select`` picks: ``best`` (default, the paper's
rule: the best evaluated checkpoint of the run, e.g. its 1.7B AIME25 value 43.9 is step 50, not step
100) or ``last``; the chosen step is printed beside each value and the note names the rule.

``python -m opsd.paper_figures --runs runs/figures --figures-dir figures`` builds them all (the
notebook ``reproduce/figures.ipynb`` does the same, one cell per figure).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import yaml

from opsd.config import REPO_ROOT

__all__ = [
    "DEFAULT_RUNS_ROOT",
    "DEFAULT_SELECTION",
    "FIGURES",
    "OPSD_FAMILY",
    "PAPER_RESULTS_PATH",
    "RUN_NAMES",
    "SELECTION_RULES",
    "STYLE_PATH",
    "RunRecord",
    "build_all",
    "campaign_runs",
    "clip_label",
    "diagnostics",
    "eval_label",
    "eval_proportion",
    "fig3_avg_vs_step",
    "fig3_avg_vs_tokens",
    "fig3_grpo_zero_std",
    "fig4_clipping",
    "fig5_generation_length",
    "generation_label",
    "imitation_vs_self_distillation",
    "imitation_vs_self_distillation_table",
    "load_paper_results",
    "load_runs",
    "markdown_table",
    "model_label",
    "objective_label",
    "problems_per_step",
    "read_run",
    "references_label",
    "resolve_figures_dir",
    "resolve_runs",
    "run_kind",
    "runs_overview",
    "save_figure",
    "save_table",
    "select_benchmarks",
    "selection_label",
    "table2",
    "table3",
    "table3_figure",
    "table5",
    "table5_figure",
    "train_label",
    "use_style",
]

RUN_NAMES = ("OPSD", "OPSD-clip", "OPSD-reverse-KL", "OPSD-JSD", "OPSD-long", "SFT", "GRPO", "OPSD-terse",
             "SFT-terse", "base")
OPSD_FAMILY = ("OPSD", "OPSD-clip", "OPSD-reverse-KL", "OPSD-JSD", "OPSD-long", "OPSD-terse")
#: The imitation-vs-self-distillation comparison: (references, (self-distillation run, imitation run)).
IMITATION_PANELS = (("worked", ("OPSD", "SFT")), ("terse", ("OPSD-terse", "SFT-terse")))
#: Suffixes of the columns holding an accuracy column's 95% interval bounds (in %).
CI_LO, CI_HI = " 95% lo", " 95% hi"
DEFAULT_RUNS_ROOT = REPO_ROOT / "runs" / "figures"
PAPER_RESULTS_PATH = REPO_ROOT / "reproduce" / "paper_results.yaml"
STYLE_PATH = REPO_ROOT / "reproduce" / "opsd.mplstyle"
DEFAULT_PAPER_MODEL = "Qwen3-1.7B"
DIAGNOSTIC_KEYS = ("loss", "clipped_fraction", "negative_token_fraction", "rollout_length_mean")
CATEGORIES = ("style", "math", "other")
#: Which checkpoint of a run a table reports. ``best``: the paper's rule, the highest accuracy over the
#: run's evaluated checkpoints, per benchmark; ``last``: the latest evaluated checkpoint.
SELECTION_RULES = ("best", "last")
DEFAULT_SELECTION = "best"

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
    "diagnostics": "training diagnostics: loss, clipped fraction, negative-token fraction, rollout length",
    "fig_imitation_vs_self_distillation": "held-out accuracy vs training, OPSD and SFT on worked references "
                                          "beside OPSD and SFT on terse references, 95% bands, starting model",
}

_BENCH_NAMES = {"aime24": "AIME24", "aime25": "AIME25", "hmmt25": "HMMT25", "math500": "MATH-500",
                "amc23": "AMC23", "synthetic": "synthetic held-out"}


def _check_select(select: str) -> None:
    if select not in SELECTION_RULES:
        raise ValueError(f"unknown checkpoint selection {select!r}; valid: {list(SELECTION_RULES)}")


def selection_label(select: str) -> str:
    """How a table picked its checkpoints, in words (goes into the tables' notes)."""
    _check_select(select)
    if select == "best":
        return ("best evaluated checkpoint per benchmark (the paper's rule; its step beside each value, "
                "chosen on the same evaluation it reports)")
    return "last evaluated checkpoint (its step beside each value)"


def _skip(what: str, reason: str) -> None:
    print(f"skipped {what}: {reason}")


# ------------------------------------------------------------------------------------------ reading runs


@dataclass
class RunRecord:
    """What one run directory holds: its config, its metrics and its eval summaries.

    ``config``: ``config.yaml`` ({} when absent); ``metrics``: ``metrics.jsonl`` records in step order;
    ``evals``: the ``eval/<benchmark>/step-<N>.json`` dicts without their per-sample ``records``.
    """

    name: str
    path: Path
    config: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return run_kind(self.config, self.metrics)

    def benchmarks(self) -> list[str]:
        return sorted({str(e.get("benchmark")) for e in self.evals if e.get("benchmark") is not None})

    def eval_at(self, benchmark: str, step: int) -> dict | None:
        for e in self.evals:
            if str(e.get("benchmark")) == benchmark and e.get("step") == step:
                return e
        return None

    def curve(self, benchmark: str, metric: str = "avg_at_k") -> tuple[list[int], list[float]]:
        """(steps, accuracy in %) of one benchmark, ascending step; ``metric`` is a key of the summary."""
        points = []
        for e in self.evals:
            if str(e.get("benchmark")) != benchmark or e.get("step") is None:
                continue
            value = (e.get("summary") or {}).get(metric)
            if value is not None:
                points.append((int(e["step"]), 100.0 * float(value)))
        points.sort()
        return [p[0] for p in points], [p[1] for p in points]

    def proportion_at(self, benchmark: str, step: int | None):
        """The accuracy at ``step`` as an ``opsd.stats.Proportion`` (k correct of n, 95% Wilson interval),
        or None when that step was not evaluated (see ``eval_proportion``)."""
        if step is None:
            return None
        e = self.eval_at(benchmark, step)
        return eval_proportion(e) if e else None

    def final_accuracy(self, benchmark: str, metric: str = "avg_at_k") -> tuple[int | None, float | None]:
        steps, values = self.curve(benchmark, metric)
        return (steps[-1], values[-1]) if steps else (None, None)

    def selected_accuracy(self, benchmark: str, select: str = DEFAULT_SELECTION,
                          metric: str = "avg_at_k") -> tuple[int | None, float | None]:
        """(step, accuracy in %) of the checkpoint a table reports for ``benchmark``.

        ``last``: the latest evaluated step. ``best``: argmax of the accuracy over the evaluated
        checkpoints (steps > 0; step 0 is the base model, used only when nothing else was evaluated),
        the earliest step on ties. (None, None) without evaluations.
        """
        _check_select(select)
        if select == "last":
            return self.final_accuracy(benchmark, metric)
        points = list(zip(*self.curve(benchmark, metric)))
        trained = [p for p in points if p[0] > 0] or points
        if not trained:
            return None, None
        return max(trained, key=lambda p: (p[1], -p[0]))

    def metric(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one ``metrics.jsonl`` key, skipping records without it (or NaN)."""
        steps, values = [], []
        for r in self.metrics:
            v = r.get(key)
            if v is None or r.get("step") is None or (isinstance(v, float) and math.isnan(v)):
                continue
            steps.append(int(r["step"]))
            values.append(float(v))
        return steps, values

    def first_eval(self) -> dict | None:
        return self.evals[0] if self.evals else None


def eval_proportion(evaluation: Mapping):
    """An eval JSON's accuracy as ``opsd.stats.Proportion``: k correct answers of n = problems x samples
    (``summary.n_samples``, else ``n_problems`` x ``k``), k = Avg@k x n, with its 95% Wilson interval.
    For Avg@1 (one sample per problem) that is exactly the binomial interval of the problem set; with
    several samples per problem, they are not independent and the interval is too narrow. None when the
    summary lacks the numbers."""
    from opsd.stats import proportion

    s = evaluation.get("summary") or {}
    avg = s.get("avg_at_k")
    n = s.get("n_samples")
    if n is None and s.get("n_problems") is not None:
        n = int(s["n_problems"]) * int(s.get("k") or evaluation.get("k") or 1)
    if avg is None or not n:
        return None
    return proportion(round(float(avg) * int(n)), int(n))


def _add_interval(row: dict, column: str, prop) -> None:
    """``row[column + CI_LO]`` / ``CI_HI``: the 95% interval bounds in % (None without a proportion)."""
    row[column + CI_LO] = None if prop is None else 100.0 * prop.lo
    row[column + CI_HI] = None if prop is None else 100.0 * prop.hi


def _interval_note(evaluation: Mapping | None) -> str:
    k = ((evaluation or {}).get("settings") or {}).get("k", (evaluation or {}).get("k", 1))
    note = ("[lo, hi] after each accuracy: its 95% Wilson score interval (opsd.stats), k correct of "
            "n = problems x samples")
    if k == 1:
        return note + " (Avg@1: one sample per problem, so n = problems)"
    return note + f" ({k} samples per problem are not independent: the true interval is wider)"


def read_run(name: str, run_dir: str | Path) -> RunRecord:
    """Read one run directory (raises ``FileNotFoundError`` when it does not exist)."""
    from opsd.evaluate import load_eval_results
    from opsd.runlog import read_metrics

    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run {name!r}: no directory {path}")
    config = {}
    if (path / "config.yaml").is_file():
        with open(path / "config.yaml") as f:
            config = yaml.safe_load(f) or {}
    evals = []
    for e in load_eval_results(path):
        e = dict(e)
        e.pop("records", None)
        evals.append(e)
    return RunRecord(name=name, path=path, config=config, metrics=read_metrics(path), evals=evals)


def _resolve_path(p: str | Path) -> Path:
    """A relative path is taken from the current directory when it exists there, else from the repo root."""
    path = Path(p).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / path


def campaign_runs(root: str | Path = DEFAULT_RUNS_ROOT) -> dict[str, Path]:
    """{name: directory} for every run directory directly under ``root`` (name = folder name)."""
    root = _resolve_path(root)
    if not root.is_dir():
        return {}
    found = {}
    for child in sorted(root.iterdir()):
        if child.is_dir() and ((child / "config.yaml").is_file() or (child / "metrics.jsonl").is_file()
                               or (child / "eval").is_dir()):
            found[child.name] = child
    order = {n: i for i, n in enumerate(RUN_NAMES)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def resolve_runs(runs: Mapping[str, Any] | str | Path | None = None) -> dict[str, Path | None]:
    """The notebook's ``runs`` parameter -> {name: directory}.

    None: the CPU campaign's directories under ``runs/figures/`` (``python -m opsd.figure_runs``);
    a mapping {name: directory}; a JSON / YAML string of such a mapping (``papermill -p runs '{...}'``);
    or a directory whose sub-folders are named runs. Relative paths: from the current directory if
    they exist there, else from the repository root.
    """
    if runs is None:
        found = campaign_runs(DEFAULT_RUNS_ROOT)
        if not found:
            print(f"no runs given and {DEFAULT_RUNS_ROOT} holds none: run `make figures` (or "
                  "`python -m opsd.figure_runs`), or pass runs={'OPSD': 'path/to/run', ...}")
        return dict(found)
    if isinstance(runs, (str, Path)):
        text = str(runs).strip()
        parsed = None
        if text.startswith("{"):
            parsed = yaml.safe_load(text)
        if isinstance(parsed, Mapping):
            runs = parsed
        else:
            root = _resolve_path(text)
            if not root.is_dir():
                raise ValueError(f"runs={text!r} is neither a mapping {{name: run directory}} nor a directory")
            return dict(campaign_runs(root))
    if not isinstance(runs, Mapping):
        raise TypeError(f"runs must be a mapping {{name: run directory}}, got {type(runs).__name__}")
    return {str(k): (None if v is None else _resolve_path(v)) for k, v in runs.items()}


def load_runs(runs: Mapping[str, Any] | str | Path | None = None) -> dict[str, RunRecord]:
    """Resolve ``runs`` (see ``resolve_runs``) and read each directory; a missing one is left out
    with a printed note, so the figures that need it are skipped."""
    records = {}
    for name, path in resolve_runs(runs).items():
        if path is None or not Path(path).is_dir():
            print(f"run {name!r}: no run directory at {path}; figures that need it are skipped")
            continue
        records[name] = read_run(name, path)
        if name not in RUN_NAMES:
            print(f"run {name!r} is not one of the names the figures use {list(RUN_NAMES)}; it is only listed")
    return records


def load_paper_results(path: str | Path = PAPER_RESULTS_PATH) -> dict:
    """``reproduce/paper_results.yaml``: the paper's Table 2, 3 and 5 numbers."""
    with open(path) as f:
        return yaml.safe_load(f)


def select_benchmarks(records: Mapping[str, RunRecord], benchmark: str | Sequence[str] | None = None) -> list[str]:
    """The benchmarks to draw: ``benchmark`` (a name, comma-separated names or a list) or, when None,
    every benchmark any run was evaluated on."""
    if benchmark is None:
        return sorted({b for r in records.values() for b in r.benchmarks()})
    names = benchmark.split(",") if isinstance(benchmark, str) else list(benchmark)
    return [str(b).strip() for b in names if str(b).strip()]


def resolve_figures_dir(figures_dir: str | Path) -> Path:
    """A relative figures directory is taken from the repository root."""
    path = Path(figures_dir).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


# ------------------------------------------------------------------------------------------ labels


def run_kind(config: Mapping, metrics: Sequence[Mapping] = ()) -> str:
    """``opsd`` | ``sft`` | ``grpo`` | ``unknown``: from metrics' ``run_kind``, else the config's fields."""
    for r in metrics:
        if r.get("run_kind"):
            return str(r["run_kind"])
    if "reward_functions" in config or "reward_weights" in config:
        return "grpo"
    if "teacher_mode" in config:
        return "opsd"
    if "completion_only_loss" in config or "packing" in config:
        return "sft"
    return "unknown"


def model_label(config: Mapping) -> str:
    name = str(config.get("model_name") or "unknown model")
    return name.rstrip("/").split("/")[-1]


def objective_label(config: Mapping) -> str:
    """forward KL (beta 0) | reverse KL (beta 1) | JSD(beta)."""
    beta = float(config.get("beta", 0.0) or 0.0)
    if beta == 0.0:
        return "forward KL"
    if beta == 1.0:
        return "reverse KL"
    return f"JSD({beta:g})"


def clip_label(config: Mapping) -> str:
    """``point-wise clip 0.05``, ``token clip 0.05`` or ``no clip``."""
    clip, mode = config.get("clip"), str(config.get("clip_mode", "pointwise"))
    if clip is None or mode == "none":
        return "no clip"
    return f"{'point-wise' if mode == 'pointwise' else mode} clip {float(clip):g}"


def generation_label(config: Mapping) -> str:
    return f"generation length {config.get('max_completion_length', '?')}"


def train_label(config: Mapping, kind: str | None = None) -> str:
    """What one optimizer step sees, e.g. ``8 problems x <=48 tokens/step, LoRA r16, lr 3e-4, 20 steps``."""
    kind = kind or run_kind(config)
    bs = int(config.get("per_device_train_batch_size", 0) or 0) * int(config.get("gradient_accumulation_steps", 1) or 1)
    gen = int(config.get("num_generations", 1) or 1)
    tokens = config.get("max_completion_length")
    if kind == "grpo":
        batch = f"{bs // max(gen, 1)} prompts x {gen} samples x <={tokens} tokens/step"
    elif kind == "sft":
        batch = f"{bs} solutions/step"
    else:
        batch = f"{bs} problems" + (f" x {gen}" if gen > 1 else "") + f" x <={tokens} tokens/step"
    parts = [batch]
    if config.get("use_lora"):
        parts.append(f"LoRA r{config.get('lora_r')}")
    if config.get("learning_rate") is not None:
        parts.append(f"lr {float(config['learning_rate']):g}")
    if config.get("max_steps") and int(config["max_steps"]) > 0:
        parts.append(f"{config['max_steps']} steps")
    return ", ".join(parts)


def eval_label(evaluation: Mapping | None) -> str:
    """The evaluation protocol of one eval JSON, e.g. ``synthetic held-out, 64 problems, greedy, <=96 tokens, Avg@1``."""
    if not evaluation:
        return "no evaluation"
    s = evaluation.get("settings") or {}
    bench = _BENCH_NAMES.get(str(evaluation.get("benchmark")), str(evaluation.get("benchmark")))
    temperature = float(s.get("temperature", 1.0))
    sampling = "greedy" if temperature <= 0 else f"T={temperature:g}, top-p {float(s.get('top_p', 1.0)):g}"
    k = s.get("k", evaluation.get("k", "?"))
    parts = [bench]
    if s.get("n_problems") is not None:
        parts.append(f"{s['n_problems']} problems")
    parts += [sampling, f"<={s.get('max_new_tokens', '?')} tokens", f"Avg@{k}"]
    return ", ".join(parts)


def _bench(b: str) -> str:
    return _BENCH_NAMES.get(b, b)


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


def runs_overview(records: Mapping[str, RunRecord]):
    """A DataFrame, one row per run: kind, model, objective, clip, generation length, steps trained,
    evaluated steps per benchmark, directory."""
    import pandas as pd

    rows = []
    for name, r in records.items():
        steps = [int(m["step"]) for m in r.metrics if m.get("step") is not None]
        rows.append({
            "run": name, "kind": r.kind, "model": model_label(r.config) if r.config else None,
            "objective": objective_label(r.config) if r.kind == "opsd" else None,
            "clip": clip_label(r.config) if r.kind == "opsd" else None,
            "max_completion_length": r.config.get("max_completion_length"),
            "steps_logged": max(steps) if steps else 0,
            "evaluated": "; ".join(f"{b}: {r.curve(b)[0]}" for b in r.benchmarks()) or "none",
            "directory": str(r.path),
        })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ drawing


def use_style() -> None:
    """Apply ``reproduce/opsd.mplstyle`` globally (as ``opsd.viz.use_style`` does)."""
    plt.style.use(str(STYLE_PATH))


def _styled():
    return plt.style.context(str(STYLE_PATH))


_LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _integer_steps(ax) -> None:
    """Training steps are integers: no 0.25-step ticks on short runs."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _accuracy_limits(ax, values: Sequence[float]) -> None:
    """Accuracy axes start at 0 % (flat zero curves sit on the axis, not mid-plot)."""
    top = max(5.0, max(values, default=0.0) * 1.15 + 1.0)
    ax.set_ylim(-0.03 * top, top)


def _missing(records: Mapping[str, RunRecord], names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in records]


def _need_runs(what: str, records: Mapping[str, RunRecord], names: Sequence[str]) -> bool:
    missing = _missing(records, names)
    if missing:
        _skip(what, f"missing runs {missing}")
        return False
    return True


def _need_evals(what: str, records: Mapping[str, RunRecord], names: Sequence[str], benchmarks: Sequence[str]) -> list[str]:
    """The benchmarks every named run has eval results for; prints a skip note and returns [] when a
    run is missing or no benchmark is usable."""
    if not _need_runs(what, records, names):
        return []
    if not benchmarks:
        _skip(what, "no benchmark with eval results")
        return []
    usable = [b for b in benchmarks if all(records[n].curve(b)[0] for n in names)]
    if not usable:
        lacking = [n for n in names if not any(records[n].curve(b)[0] for b in benchmarks)]
        _skip(what, f"no {list(benchmarks)} eval results in runs {lacking or list(names)} "
                    "(evaluate them with opsd.evaluate.evaluate_run)")
        return []
    dropped = [b for b in benchmarks if b not in usable]
    if dropped:
        print(f"{what}: benchmarks {dropped} left out (not evaluated in every run of {list(names)})")
    return usable


#: Summary keys drawn under the accuracy row when every run has them: at CPU scale the accuracy can sit
#: at zero while the format the teacher demonstrates (a final ``\\boxed{}``) is being learned.
SECONDARY_METRICS = {"boxed_rate": "boxed answers (%)"}


def _accuracy_panels(lines: Sequence[tuple[str, RunRecord]], benchmarks: Sequence[str], title: str,
                     styles: Sequence[dict] | None = None):
    """One column per benchmark, one line per (label, run): accuracy (%) vs training step in the first
    row; one more row per ``SECONDARY_METRICS`` key that every run's evaluations report."""
    rows = [("avg_at_k", _accuracy_label([rec for _, rec in lines]))]
    rows += [(key, label) for key, label in SECONDARY_METRICS.items()
             if all(rec.curve(b, key)[0] for _, rec in lines for b in benchmarks)]
    with _styled():
        n = len(benchmarks)
        fig, axes = plt.subplots(len(rows), n, figsize=(4.6 * n if n > 1 else 6.4, 3.8 + 2.6 * (len(rows) - 1)),
                                 squeeze=False, sharex="col")
        for r, (metric, ylabel) in enumerate(rows):
            for ax, b in zip(axes[r], benchmarks):
                shown = []
                for i, (label, rec) in enumerate(lines):
                    steps, values = rec.curve(b, metric)
                    style = {"marker": _MARKERS[i % len(_MARKERS)], **(styles[i] if styles else {})}
                    ax.plot(steps, values, label=label, **style)
                    shown += values
                _integer_steps(ax)
                _accuracy_limits(ax, shown)
                if r == 0:
                    ax.set_title(_bench(b))
                if r == len(rows) - 1:
                    ax.set_xlabel("training step")
                ax.set_ylabel(ylabel)
        axes[0][0].legend(loc="best")
        fig.suptitle(title)
        fig.tight_layout()
    return fig


def fig3_avg_vs_step(records: Mapping[str, RunRecord], benchmarks: Sequence[str]):
    """Fig 3 (left): Avg@k vs training step for OPSD and GRPO, one panel per benchmark."""
    what = "Fig 3 (Avg@k vs step)"
    names = ("OPSD", "GRPO")
    if not (bs := _need_evals(what, records, names, benchmarks)):
        return None
    lines = [(f"{n}: {train_label(records[n].config, records[n].kind)}", records[n]) for n in names]
    return _accuracy_panels(lines, bs, _title("Fig 3 analogue: accuracy vs training step", [records[n] for n in names]))


def _tokens_at(rec: RunRecord, step: int) -> float | None:
    """Cumulative tokens generated by the end of ``step`` (0 at step 0), from metrics.jsonl."""
    if step == 0:
        return 0.0
    steps, values = rec.metric("tokens_generated")
    before = [v for s, v in zip(steps, values) if s <= step]
    return before[-1] if before else None


def fig3_avg_vs_tokens(records: Mapping[str, RunRecord], benchmarks: Sequence[str]):
    """Fig 3 (middle): accuracy averaged over benchmarks vs cumulative tokens generated in training."""
    what = "Fig 3 (accuracy vs tokens generated)"
    names = ("OPSD", "GRPO")
    if not (bs := _need_evals(what, records, names, benchmarks)):
        return None
    lacking = [n for n in names if not records[n].metric("tokens_generated")[0]]
    if lacking:
        _skip(what, f"runs {lacking} logged no tokens_generated in metrics.jsonl")
        return None
    with _styled():
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        shown = []
        for i, n in enumerate(names):
            rec = records[n]
            curves = [dict(zip(*rec.curve(b))) for b in bs]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            xs, ys = [], []
            for s in steps:
                tokens = _tokens_at(rec, s)
                if tokens is not None:
                    xs.append(tokens)
                    ys.append(sum(c[s] for c in curves) / len(curves))
            ax.plot(xs, ys, marker=_MARKERS[i], label=f"{n}: {train_label(rec.config, rec.kind)}")
            shown += ys
        _accuracy_limits(ax, shown)
        ax.set_xlabel("tokens generated during training (cumulative)")
        label = _accuracy_label([records[n] for n in names])
        ax.set_ylabel(label if len(bs) == 1 else f"mean {label} over {len(bs)} benchmarks")
        ax.legend(loc="best")
        fig.suptitle(_title("Fig 3 analogue: accuracy vs generated tokens", [records[n] for n in names]))
        fig.tight_layout()
    return fig


def fig3_grpo_zero_std(records: Mapping[str, RunRecord]):
    """Fig 3 (right): fraction of GRPO prompt groups whose rewards all agree (zero std, no gradient) vs step."""
    what = "Fig 3 (GRPO zero reward std)"
    if not _need_runs(what, records, ("GRPO",)):
        return None
    rec = records["GRPO"]
    steps, values = rec.metric("reward_std_zero_fraction")
    if not steps:
        _skip(what, "the GRPO run logged no reward_std_zero_fraction")
        return None
    with _styled():
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        ax.plot(steps, values, marker="o", color="#d62728", label="groups with zero reward std (no learning signal)")
        mean = sum(values) / len(values)
        ax.axhline(mean, color="black", lw=0.8, ls="--", label=f"mean {mean:.2f}")
        r_steps, rewards = rec.metric("reward_mean")
        if r_steps:
            ax.plot(r_steps, rewards, marker="s", color="#2ca02c", ls=":", label="mean reward (fraction correct)")
        ax.set_ylim(-0.03, 1.03)
        _integer_steps(ax)
        ax.set_xlabel("training step")
        ax.set_ylabel("fraction of prompt groups")
        ax.legend(loc="best")
        fig.suptitle(_title("Fig 3 analogue: GRPO groups with zero reward std", [rec], with_eval=False)
                     + f"\nGRPO: {train_label(rec.config, 'grpo')}, temperature {rec.config.get('temperature')}")
        fig.tight_layout()
    return fig


def fig4_clipping(records: Mapping[str, RunRecord], benchmarks: Sequence[str]):
    """Fig 4: accuracy vs step with the point-wise clip (OPSD-clip) and without (OPSD)."""
    what = "Fig 4"
    names = ("OPSD-clip", "OPSD")
    if not (bs := _need_evals(what, records, names, benchmarks)):
        return None
    lines = [(f"{clip_label(records[n].config)} ({n})", records[n]) for n in names]
    title = _title("Fig 4 analogue: point-wise clipping", [records[n] for n in names])
    title += f"\n{objective_label(records['OPSD'].config)}, {train_label(records['OPSD'].config, 'opsd')}"
    return _accuracy_panels(lines, bs, title, styles=[{"color": "#1f77b4"}, {"color": "#7f7f7f", "ls": "--"}])


def fig5_generation_length(records: Mapping[str, RunRecord], benchmarks: Sequence[str]):
    """Fig 5: accuracy vs step for two generation lengths (OPSD vs OPSD-long)."""
    what = "Fig 5"
    names = ("OPSD", "OPSD-long")
    if not (bs := _need_evals(what, records, names, benchmarks)):
        return None
    lines = [(f"{generation_label(records[n].config)} ({n})", records[n]) for n in names]
    title = _title("Fig 5 analogue: generation length", [records[n] for n in names])
    title += f"\n{objective_label(records['OPSD'].config)}, {clip_label(records['OPSD'].config)}"
    return _accuracy_panels(lines, bs, title)


def problems_per_step(config: Mapping, kind: str | None = None) -> int | None:
    """Training problems one optimizer step reads (per process): OPSD and SFT ``per_device_train_batch_size``
    x ``gradient_accumulation_steps``; GRPO the same divided by ``num_generations``. None when unknown."""
    kind = kind or run_kind(config)
    bs = int(config.get("per_device_train_batch_size", 0) or 0) * int(config.get("gradient_accumulation_steps", 1) or 1)
    if kind == "grpo":
        bs //= max(int(config.get("num_generations", 1) or 1), 1)
    return bs or None


def references_label(config: Mapping) -> str:
    """The reference solutions a run trained on, from its ``dataset``."""
    dataset = str(config.get("dataset") or "?")
    known = {"synthetic": "worked references", "synthetic-terse": "terse references (no derivation)"}
    return f"{known[dataset]} ({dataset})" if dataset in known else f"references of {dataset}"


def _imitation_runs(what: str, records: Mapping[str, RunRecord], benchmarks: Sequence[str]) -> str | None:
    """The benchmark the imitation comparison uses (the first with evals in all four runs), or None."""
    names = [n for _, pair in IMITATION_PANELS for n in pair]
    bs = _need_evals(what, records, names, benchmarks)
    if not bs:
        return None
    if len(bs) > 1:
        print(f"{what}: drawn for {bs[0]} (the first of {bs})")
    return bs[0]


def imitation_vs_self_distillation_table(records: Mapping[str, RunRecord], benchmarks: Sequence[str]):
    """The data of ``fig_imitation_vs_self_distillation``: one row per evaluated checkpoint of OPSD, SFT,
    OPSD-terse and SFT-terse, with the references the run trained on, the method, the step, the
    training problems seen by then (step x ``problems_per_step``), the accuracy (%) with its 95% Wilson
    interval, k correct of n, and the change from the starting model (step 0) in points. None (with a
    printed note) when a run or its evaluations are missing."""
    import pandas as pd

    what = "imitation vs self-distillation"
    bench = _imitation_runs(what, records, benchmarks)
    if bench is None:
        return None
    rows = []
    for references, pair in IMITATION_PANELS:
        for name in pair:
            rec = records[name]
            per_step = problems_per_step(rec.config, rec.kind)
            start = rec.proportion_at(bench, 0)
            for step in rec.curve(bench)[0]:
                prop = rec.proportion_at(bench, step)
                row = {"run": name, "references": references,
                       "method": "self-distillation (OPSD)" if rec.kind == "opsd" else f"imitation ({rec.kind.upper()})",
                       "step": step, "problems seen": None if per_step is None else step * per_step,
                       "accuracy": None if prop is None else 100.0 * prop.value}
                _add_interval(row, "accuracy", prop)
                row["correct"] = None if prop is None else prop.k
                row["n"] = None if prop is None else prop.n
                row["vs start (points)"] = (None if prop is None or start is None
                                            else 100.0 * (prop.value - start.value))
                rows.append(row)
    df = pd.DataFrame(rows).set_index("run")
    first = records["OPSD"].first_eval()
    df.attrs["note"] = (
        f"Imitation (SFT) vs self-distillation (OPSD) on two kinds of reference solutions: "
        f"{references_label(records['OPSD'].config)} and {references_label(records['OPSD-terse'].config)}. "
        f"Every run starts from {model_label(records['OPSD'].config)} (step 0) and is evaluated on the same "
        f"held-out problems: {eval_label(records['OPSD'].eval_at(bench, 0) or first)}, accuracy in %; "
        f"{_interval_note(first)}. 'problems seen': training problems read by that step "
        "(step x problems per step)."
    )
    df.attrs["benchmark"] = bench
    return df


def imitation_vs_self_distillation(records: Mapping[str, RunRecord], benchmarks: Sequence[str]):
    """Held-out accuracy vs training for OPSD and SFT on worked references (left) beside OPSD and SFT
    on terse references (right): 95% Wilson interval bands, the starting model's accuracy (step 0) as a
    dotted line with its band. x: training problems seen (step x problems per step), so SFT's smaller,
    cheaper steps line up with OPSD's; the training step when a run does not record its batch size."""
    df = imitation_vs_self_distillation_table(records, benchmarks)
    if df is None:
        return None
    bench = df.attrs["benchmark"]
    by_seen = df["problems seen"].notna().all()
    base = _base_eval_source(records, [bench])
    start = eval_proportion(base.eval_at(bench, 0)) if base else None
    colors = {"opsd": "#1f77b4", "sft": "#ff7f0e"}
    with _styled():
        fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.4), sharey=True, squeeze=False)
        shown = []
        for ax, (references, pair) in zip(axes[0], IMITATION_PANELS):
            if start is not None:
                ax.axhline(100 * start.value, color="black", ls=":", lw=1.0, label=f"starting model: {start}")
                ax.axhspan(100 * start.lo, 100 * start.hi, color="0.5", alpha=0.12, lw=0)
                shown.append(100 * start.hi)
            for i, name in enumerate(pair):
                rec = records[name]
                part = df.loc[[name]].sort_values("step")
                xs = part["problems seen" if by_seen else "step"].astype(float).tolist()
                ys, lo, hi = (part[c].astype(float).tolist() for c in ("accuracy", "accuracy" + CI_LO, "accuracy" + CI_HI))
                color = colors.get(rec.kind, f"C{i + 2}")
                method = "OPSD" if rec.kind == "opsd" else rec.kind.upper()
                ax.plot(xs, ys, marker=_MARKERS[i], color=color, label=f"{method} ({name})")
                ax.fill_between(xs, lo, hi, color=color, alpha=0.18, lw=0)
                shown += hi
            ax.set_title(references_label(records[pair[0]].config))
            ax.set_xlabel("training problems seen (steps x problems per step)" if by_seen else "training step")
            _integer_steps(ax)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=1)
        _accuracy_limits(axes[0][0], shown)
        axes[0][0].set_ylabel(_accuracy_label([records[n] for _, pair in IMITATION_PANELS for n in pair]))
        opsd, sft = (records[n] for n in IMITATION_PANELS[0][1])
        fig.suptitle(_title("Imitation (SFT) vs self-distillation (OPSD)",
                            [records[n] for _, pair in IMITATION_PANELS for n in pair])
                     + f"\nOPSD: {train_label(opsd.config, opsd.kind)}; SFT: {train_label(sft.config, sft.kind)}"
                     + "\nbands: 95% Wilson intervals; dotted: the starting model (step 0)")
        fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ tables


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


def _base_eval_source(records: Mapping[str, RunRecord], benchmarks: Sequence[str]) -> RunRecord | None:
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

    Ours: per benchmark the checkpoint ``select`` picks (``best``, the paper's rule: the highest
    accuracy over the run's evaluated checkpoints; ``last``: the latest), with its step in the column
    ``ours: <benchmark> step`` beside the value and its 95% Wilson interval in ``ours: <benchmark> 95% lo``
    / ``95% hi`` (``eval_proportion``); base: the step-0 evaluation of ``base`` (else of OPSD). The runs
    trained on terse references (``SFT-terse``, ``OPSD-terse``) get rows of their own when present (the
    paper has none: --). Paper: ``paper_results.yaml`` table2 for ``paper_model``
    (default: the run's model if the paper has it, else Qwen3-1.7B). A method without a run shows --.
    ``df.attrs["note"]`` says what the columns are.
    """
    import pandas as pd

    what = "Table 2"
    _check_select(select)
    if not (bs := _need_evals(what, records, ("OPSD",), benchmarks)):
        return None
    paper = paper if paper is not None else load_paper_results()
    section = paper["table2"]
    pmodel = _paper_model(records, section, paper_model)
    pbench = list(section["benchmarks"])
    missing = [n for n in ("SFT", "GRPO") if n not in records]
    if missing:
        print(f"Table 2: no runs {missing}; their rows show -- for the CPU edition")
    base_src = _base_eval_source(records, bs)
    rows = {}
    methods = ["base", "SFT", "GRPO", "OPSD"] + [n for n in ("SFT-terse", "OPSD-terse") if n in records]
    for method in methods:
        row: dict[str, Any] = {}
        for b in bs:
            step, value, prop = None, None, None
            if method == "base":
                e = base_src.eval_at(b, 0) if base_src else None
                if e:
                    step, value, prop = 0, 100.0 * e["summary"]["avg_at_k"], eval_proportion(e)
            elif method in records:
                step, value = records[method].selected_accuracy(b, select)
                prop = records[method].proportion_at(b, step)
            row[f"ours: {b}"] = value
            _add_interval(row, f"ours: {b}", prop)
            row[f"ours: {b} step"] = step
        for i, b in enumerate(pbench):
            row[f"paper {pmodel}: {b}"] = float(section[pmodel][method][i]) if method in section[pmodel] else None
        rows[method] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "method"
    first = records["OPSD"].first_eval()
    df.attrs["note"] = (
        f"ours = CPU edition: {model_label(records['OPSD'].config)}, {eval_label(first)}, accuracy in %, "
        f"{selection_label(select)} (base = step 0 of the {base_src.name if base_src else '?'} run); "
        f"{_interval_note(first)}. "
        + ("SFT-terse / OPSD-terse: trained on references without a derivation (synthetic-terse), evaluated on "
           "the same held-out problems; the paper has no such rows. " if len(methods) > 4 else "")
        + f"paper = arXiv 2601.18734 v3 Table 2, {pmodel}, Avg@12 (%), thinking on, {', '.join(_bench(b) for b in pbench)}. "
        "Paper scale vs CPU edition: different model, data and budget, so the absolute values are not "
        "comparable; compare the ordering of the methods."
    )
    df.attrs["select"] = select
    return df


def table3(records: Mapping[str, RunRecord], benchmarks: Sequence[str], paper: Mapping | None = None,
           select: str = DEFAULT_SELECTION):
    """Table 3: accuracy (%) at each evaluated step for forward KL / reverse KL / JSD(0.5), the paper's beside.

    Ours: runs OPSD, OPSD-reverse-KL, OPSD-JSD on the first benchmark of ``benchmarks`` (aime25, the
    paper's, when present), at every evaluated step, then the checkpoint ``select`` picks (``best``
    or ``last``) in ``ours: <select>`` with its step in ``ours: <select> step``; row labels come from
    each run's ``beta``.
    Paper: ``paper_results.yaml`` table3 (Qwen3-1.7B, AIME25, steps 0 / 50 / 100).
    """
    import pandas as pd

    what = "Table 3"
    names = ("OPSD", "OPSD-reverse-KL", "OPSD-JSD")
    _check_select(select)
    if not (bs := _need_evals(what, records, names, benchmarks)):
        return None
    bench = "aime25" if "aime25" in bs else bs[0]
    paper = paper if paper is not None else load_paper_results()
    section = paper["table3"]
    steps = sorted({s for n in names for s in records[n].curve(bench)[0]})
    rows = {}
    for n in names:
        label = objective_label(records[n].config)
        curve = dict(zip(*records[n].curve(bench)))
        row = {}
        for s in steps:
            row[f"ours: step {s}"] = curve.get(s)
            _add_interval(row, f"ours: step {s}", records[n].proportion_at(bench, s if s in curve else None))
        chosen_step, chosen = records[n].selected_accuracy(bench, select)
        row[f"ours: {select}"] = chosen
        _add_interval(row, f"ours: {select}", records[n].proportion_at(bench, chosen_step))
        row[f"ours: {select} step"] = chosen_step
        for i, s in enumerate(section["steps"]):
            row[f"paper: step {s}"] = float(section[label][i]) if label in section else None
        rows[f"{label} ({n})"] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "objective"
    first = records["OPSD"].first_eval()
    df.attrs["note"] = (
        f"ours = CPU edition: {model_label(records['OPSD'].config)}, {train_label(records['OPSD'].config, 'opsd')}, "
        f"{clip_label(records['OPSD'].config)}; {eval_label(records['OPSD'].eval_at(bench, steps[0]) or first)}, %; "
        f"'ours: {select}' = {selection_label(select)}; {_interval_note(first)}. "
        "paper = arXiv 2601.18734 v3 Table 3, Qwen3-1.7B, AIME25 Avg@12 (%) at steps 0 / 50 / 100. "
        "Paper scale vs CPU edition: not comparable in absolute value; compare how each objective moves from step 0."
    )
    df.attrs["benchmark"] = bench
    df.attrs["select"] = select
    return df


def table3_figure(records: Mapping[str, RunRecord], benchmarks: Sequence[str], paper: Mapping | None = None):
    """Table 3 as curves: ours (left) and the paper's (right), accuracy vs step per objective."""
    what = "Table 3 figure"
    names = ("OPSD", "OPSD-reverse-KL", "OPSD-JSD")
    if not (bs := _need_evals(what, records, names, benchmarks)):
        return None
    bench = "aime25" if "aime25" in bs else bs[0]
    paper = paper if paper is not None else load_paper_results()
    section = paper["table3"]
    with _styled():
        fig, (ax, axp) = plt.subplots(1, 2, figsize=(10.0, 3.8))
        shown = []
        for i, n in enumerate(names):
            steps, values = records[n].curve(bench)
            ax.plot(steps, values, marker=_MARKERS[i], label=f"{objective_label(records[n].config)} ({n})")
            shown += values
        _integer_steps(ax)
        _accuracy_limits(ax, shown)
        ax.set_title(f"CPU edition: {_bench(bench)}")
        ax.set_xlabel("training step")
        ax.set_ylabel(_accuracy_label([records[n] for n in names]))
        ax.legend(loc="best")
        for key in (k for k in section if k != "steps"):
            axp.plot(section["steps"], section[key], marker="s", ls="--", label=key)
        axp.set_title("paper (Qwen3-1.7B, AIME25 Avg@12, v3 Table 3)")
        axp.set_xlabel("training step")
        axp.set_ylabel("Avg@12 (%)")
        axp.legend(loc="best")
        fig.suptitle(_title("Table 3 analogue: divergence objective", [records[n] for n in names])
                     + f"\n{clip_label(records['OPSD'].config)}; left and right are not comparable in absolute value")
        fig.tight_layout()
    return fig


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


def table5(records: Mapping[str, RunRecord], paper: Mapping | None = None, run: str = "OPSD"):
    """Table 5: mean per-token divergence by token category (style / math / other).

    Ours, from the ``run``'s metrics (``kl_style`` ... = mean unclipped D[n] of its objective, forward
    KL for OPSD): at the first logged step (the base model, before any update) and averaged over all
    steps (token-count weighted). Paper: ``paper_results.yaml`` table5, one row per model.
    """
    import pandas as pd

    what = "Table 5"
    if not _need_runs(what, records, (run,)):
        return None
    rec = records[run]
    # a category is logged only at steps whose rollouts had tokens of it (short rollouts may have no
    # style word): the steps are those where any category was logged, a category never seen is NaN (--)
    steps = sorted({s for c in CATEGORIES for s in rec.metric(f"kl_{c}")[0]})
    if not steps:
        _skip(what, f"run {run!r} logged no kl_style / kl_math / kl_other")
        return None
    paper = paper if paper is not None else load_paper_results()
    section = paper["table5"]
    cats = list(section.get("categories", CATEGORIES))
    model, objective = model_label(rec.config), objective_label(rec.config)
    rows = {
        f"ours: {model}, {objective}, step {steps[0]} (base model)": _category_means(rec, [steps[0]]),
        f"ours: {model}, {objective}, mean over steps {steps[0]}-{steps[-1]}": _category_means(rec),
    }
    for m, values in section.items():
        if m == "categories":
            continue
        rows[f"paper: {m}"] = {c: float(v) for c, v in zip(cats, values)}
    df = pd.DataFrame.from_dict(rows, orient="index")[list(CATEGORIES)]
    df.index.name = "source"
    df.attrs["note"] = (
        f"Mean per-token divergence by token category (keyword lists of opsd.divergence.token_category). "
        f"ours = CPU edition run {run!r}: {train_label(rec.config, rec.kind)}, {clip_label(rec.config)}, unclipped D[n] "
        "on its training rollouts. paper = arXiv 2601.18734 v3 Table 5. Not comparable in absolute value "
        "(different model, vocabulary and data); compare the ordering of the categories."
    )
    return df


def table5_figure(records: Mapping[str, RunRecord], paper: Mapping | None = None, run: str = "OPSD"):
    """Table 5 as grouped bars (``opsd.viz.plot_kl_by_category``): ours (mean over training) and the paper's."""
    from opsd.viz import plot_kl_by_category

    df = table5(records, paper, run)
    if df is None:
        return None
    paper = paper if paper is not None else load_paper_results()
    cats = list(paper["table5"].get("categories", CATEGORIES))
    paper_values = {m: dict(zip(cats, v)) for m, v in paper["table5"].items() if m != "categories"}
    rec = records[run]
    measured = df.iloc[1].to_dict()
    with _styled():
        fig = plot_kl_by_category(measured, paper_values, measured_label=f"ours ({model_label(rec.config)}, CPU)",
                                  title=_title("Table 5 analogue: divergence by token category", [rec], with_eval=False)
                                  + f"\n{objective_label(rec.config)}, mean over training; paper: v3 Table 5")
        fig.set_size_inches(7.2, 4.0)
        fig.tight_layout()
    return fig


def diagnostics(records: Mapping[str, RunRecord], keys: Sequence[str] = DIAGNOSTIC_KEYS):
    """Training diagnostics of the OPSD-family runs overlaid: loss, clipped fraction, negative-token
    fraction, rollout length vs step (``opsd.viz.plot_runs`` per panel)."""
    from opsd.viz import plot_runs

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
    with _styled():
        cols = 2
        rows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(10.0, 3.2 * rows), squeeze=False)
        for ax, key in zip(axes.ravel(), keys):
            plot_runs(labels, key, ax=ax, title=key)
            if ax.get_legend():
                ax.get_legend().remove()
            # runs often coincide (clipped fraction 0, same rollout length): vary style so none hides another
            for i, line in enumerate(l for l in ax.get_lines() if l.get_label() in labels):
                line.set_linestyle(_LINESTYLES[i % len(_LINESTYLES)])
                line.set_marker(_MARKERS[i % len(_MARKERS)])
            _integer_steps(ax)
        for ax in axes.ravel()[len(keys):]:
            fig.delaxes(ax)
        handles, names = axes.ravel()[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncols=2, bbox_to_anchor=(0.5, -0.02 - 0.03 * math.ceil(len(names) / 2)))
        first = records[present[0]]
        fig.suptitle(_title("Training diagnostics", [records[n] for n in present], with_eval=False)
                     + f"\n{train_label(first.config, 'opsd')}")
        fig.tight_layout()
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
    with _styled():
        for p in paths:
            # no creation date, so regenerating unchanged figures leaves the files unchanged
            meta = {"Creator": "opsd-kit", "CreationDate": None} if p.suffix == ".pdf" else {"Software": "opsd-kit"}
            fig.savefig(p, metadata=meta)
    return paths


def save_table(df, name: str, figures_dir: str | Path = "figures", *, digits: int = 1) -> list[Path]:
    """Write ``<name>.csv`` and ``<name>.md`` (the Markdown with ``df.attrs["note"]`` above the table);
    returns the paths ([] when ``df`` is None)."""
    if df is None:
        return []
    out = resolve_figures_dir(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / f"{name}.csv", out / f"{name}.md"
    df.to_csv(csv, float_format="%.4f")
    note = df.attrs.get("note")
    text = (f"{note}\n\n" if note else "") + markdown_table(df, digits=digits) + "\n"
    md.write_text(text)
    return [csv, md]


def print_table(df, *, digits: int = 1) -> None:
    """Print a table's note and its Markdown (the notebook shows the DataFrame as well)."""
    if df is None:
        return
    if df.attrs.get("note"):
        print(df.attrs["note"], end="\n\n")
    print(markdown_table(df, digits=digits))


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
        written[name] = save_figure(f, name, figures_dir)
        if f is not None:
            plt.close(f)

    fig("fig3_avg_vs_step", fig3_avg_vs_step(records, benchmarks))
    fig("fig3_avg_vs_tokens", fig3_avg_vs_tokens(records, benchmarks))
    fig("fig3_grpo_zero_std", fig3_grpo_zero_std(records))
    fig("fig4_clipping", fig4_clipping(records, benchmarks))
    fig("fig5_generation_length", fig5_generation_length(records, benchmarks))
    t2 = table2(records, benchmarks, paper, paper_model, select)
    print_table(t2)
    written["table2"] = save_table(t2, "table2", figures_dir)
    t3 = table3(records, benchmarks, paper, select)
    print_table(t3)
    written["table3"] = save_table(t3, "table3", figures_dir)
    fig("table3_objectives", table3_figure(records, benchmarks, paper))
    t5 = table5(records, paper)
    print_table(t5, digits=3)
    written["table5_kl_by_category"] = save_table(t5, "table5_kl_by_category", figures_dir, digits=3)
    t5f = table5_figure(records, paper)
    written["table5_kl_by_category"] += save_figure(t5f, "table5_kl_by_category", figures_dir)
    if t5f is not None:
        plt.close(t5f)
    fig("diagnostics", diagnostics(records))
    ti = imitation_vs_self_distillation_table(records, benchmarks)
    print_table(ti)
    fig("fig_imitation_vs_self_distillation", imitation_vs_self_distillation(records, benchmarks) if ti is not None else None)
    written["fig_imitation_vs_self_distillation"] += save_table(ti, "fig_imitation_vs_self_distillation", figures_dir)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m opsd.paper_figures [--runs DIR|JSON] [--figures-dir DIR] [--benchmark NAMES]``."""
    p = argparse.ArgumentParser(prog="python -m opsd.paper_figures", description=main.__doc__)
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
