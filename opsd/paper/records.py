"""What the paper's figures and tables read: our run directories, the labels drawn from their configs,
and the paper's own numbers (one copy, ``reproduce/paper_results.yaml``, read by ``load_paper_results``).

Only the files runs write are read (``config.yaml``, ``metrics.jsonl``, ``eval/<benchmark>/step-<N>.json``)
into one ``RunRecord`` per run. The names the figures and tables use:

    OPSD              forward KL (beta 0); in the CPU edition without clipping (the cpu-tiny default)
    OPSD-clip         the same with the paper's point-wise clip 0.05            (Fig 4)
    OPSD-reverse-KL   beta 1;  OPSD-JSD  beta 0.5                                (Table 3)
    OPSD-long         a longer generation length (max_completion_length)         (Fig 5)
    SFT, GRPO         the baselines                                              (Fig 3, Table 2)
    OPSD-terse,       OPSD and SFT trained on references without a derivation   (imitation vs
    SFT-terse         (dataset synthetic-terse)                                  self-distillation,
    OPSD-verbose,     OPSD and SFT trained on long-winded references, longer     Table 2)
    SFT-verbose       than the answer budget (dataset synthetic-verbose)
    base              optional: a directory holding the base model's step-0 eval (Table 2; else
                      the OPSD run's step-0 eval, which is the base model too)

A table reports, per benchmark, the checkpoint ``select`` picks (``SELECTION_RULES``): ``best``
(default, the paper's rule: the best evaluated checkpoint of the run, e.g. its 1.7B AIME25 value 43.9 is
step 50, not step 100) or ``last``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from opsd.config import REPO_ROOT
from opsd.divergence import DivergenceSpec
from opsd.eval.stats import proportion
from opsd.runs.eval_results import load_eval_results
from opsd.runs.layout import is_run_dir, read_metrics, read_run_config
from opsd.viz.series import CATEGORIES, eval_curves, metric_series

RUN_NAMES = ("OPSD", "OPSD-clip", "OPSD-reverse-KL", "OPSD-JSD", "OPSD-long", "SFT", "GRPO", "OPSD-terse",
             "SFT-terse", "OPSD-verbose", "SFT-verbose", "OPSD-context-none", "OPSD-context-other",
             "OPSD-context-wrong", "OPSD-layout-reference", "OPSD-clip-layout-reference", "OPSD-150", "GRPO-48",
             "base")
OPSD_FAMILY = ("OPSD", "OPSD-clip", "OPSD-reverse-KL", "OPSD-JSD", "OPSD-long", "OPSD-terse", "OPSD-verbose")
DEFAULT_RUNS_ROOT = REPO_ROOT / "runs" / "figures"
#: Which checkpoint of a run a table reports. ``best``: the paper's rule, the highest accuracy over the
#: run's evaluated checkpoints, per benchmark; ``last``: the latest evaluated checkpoint.
SELECTION_RULES = ("best", "last")
DEFAULT_SELECTION = "best"

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


def need_runs(what: str, records: Mapping[str, RunRecord], names: Sequence[str]) -> bool:
    """True when every named run is there; else prints ``skipped <what>: missing runs [...]``."""
    if missing := [n for n in names if n not in records]:
        _skip(what, f"missing runs {missing}")
    return not missing


def need_evals(what: str, records: Mapping[str, RunRecord], names: Sequence[str], benchmarks: Sequence[str]) -> list[str]:
    """The benchmarks every named run has eval results for; prints a skip note and returns [] when a
    run is missing or no benchmark is usable."""
    if not need_runs(what, records, names):
        return []
    if not benchmarks:
        _skip(what, "no benchmark with eval results")
        return []
    usable = [b for b in benchmarks if all(records[n].curve(b)[0] for n in names)]
    if not usable:
        lacking = [n for n in names if not any(records[n].curve(b)[0] for b in benchmarks)]
        _skip(what, f"no {list(benchmarks)} eval results in runs {lacking or list(names)} "
                    "(evaluate them with opsd.eval.evaluate.evaluate_run)")
        return []
    dropped = [b for b in benchmarks if b not in usable]
    if dropped:
        print(f"{what}: benchmarks {dropped} left out (not evaluated in every run of {list(names)})")
    return usable


# ------------------------------------------------------------------------------------------ the paper's numbers

PAPER_RESULTS_PATH = REPO_ROOT / "reproduce" / "paper_results.yaml"


def load_paper_results(path: str | Path = PAPER_RESULTS_PATH) -> dict:
    """``reproduce/paper_results.yaml``: the paper's Table 2, 3 and 5 numbers."""
    with open(path) as f:
        return yaml.safe_load(f)


def table5_by_model(paper: dict | None = None) -> dict[str, dict[str, float]]:
    """Table 5 of ``paper`` (default: the file) as {model: {category: mean per-token KL}}."""
    section = (paper if paper is not None else load_paper_results())["table5"]
    categories = section.get("categories", CATEGORIES)
    return {m: {c: float(v) for c, v in zip(categories, values)} for m, values in section.items() if m != "categories"}


#: Mean per-token KL by token category, the paper's Table 5 (style / math / other), from the file.
PAPER_TABLE5 = table5_by_model()


# ------------------------------------------------------------------------------------------ reading runs


@dataclass
class RunRecord:
    """What one run directory holds: its config, its metrics and its eval summaries.

    ``config``: ``config.yaml`` ({} when absent); ``metrics``: ``metrics.jsonl`` records in step order
    (``opsd.runs.layout.read_metrics``);
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
        return eval_curves(self.evals, metric).get(benchmark, ([], []))

    def band(self, benchmark: str) -> tuple[list[float], list[float]] | None:
        """The 95% interval (lo, hi in %) at each step of ``curve(benchmark)`` (``eval_proportion``), or
        None when an evaluation lacks the counts."""
        steps, _ = self.curve(benchmark)
        found = [self.proportion_at(benchmark, s) for s in steps]
        if not found or any(p is None for p in found):
            return None
        return [100 * p.lo for p in found], [100 * p.hi for p in found]

    def proportion_at(self, benchmark: str, step: int | None):
        """The accuracy at ``step`` as an ``opsd.eval.stats.Proportion`` (k correct of n, 95% Wilson interval),
        or None when that step was not evaluated (see ``eval_proportion``)."""
        e = None if step is None else self.eval_at(benchmark, step)
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
        return metric_series(self.metrics, key)

    def tokens_at(self, step: int) -> float | None:
        """Cumulative tokens generated by the end of ``step`` (0 at step 0), from metrics.jsonl."""
        if step == 0:
            return 0.0
        steps, values = self.metric("tokens_generated")
        before = [v for s, v in zip(steps, values) if s <= step]
        return before[-1] if before else None

    def first_eval(self) -> dict | None:
        return self.evals[0] if self.evals else None


def eval_proportion(evaluation: Mapping):
    """An eval JSON's accuracy as ``opsd.eval.stats.Proportion``: k correct answers of n = problems x samples
    (``summary.n_samples``, else ``n_problems`` x ``k``), k = Avg@k x n, with its 95% Wilson interval.
    For Avg@1 (one sample per problem) that is exactly the binomial interval of the problem set; with
    several samples per problem, they are not independent and the interval is too narrow. None when the
    summary lacks the numbers."""
    s = evaluation.get("summary") or {}
    avg = s.get("avg_at_k")
    n = s.get("n_samples")
    if n is None and s.get("n_problems") is not None:
        n = int(s["n_problems"]) * int(s.get("k") or evaluation.get("k") or 1)
    if avg is None or not n:
        return None
    return proportion(round(float(avg) * int(n)), int(n))


def read_run(name: str, run_dir: str | Path) -> RunRecord:
    """Read one run directory (raises ``FileNotFoundError`` when it does not exist)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run {name!r}: no directory {path}")
    evals = [{k: v for k, v in e.items() if k != "records"} for e in load_eval_results(path)]
    return RunRecord(name=name, path=path, config=read_run_config(path, missing_ok=True),
                     metrics=read_metrics(path), evals=evals)


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
        if child.is_dir() and is_run_dir(child):
            found[child.name] = child
    order = {n: i for i, n in enumerate(RUN_NAMES)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def resolve_runs(runs: Mapping[str, Any] | str | Path | None = None) -> dict[str, Path | None]:
    """The notebook's ``runs`` parameter -> {name: directory}.

    None: the CPU campaign's directories under ``runs/figures/`` (``python -m opsd.paper.campaign``);
    a mapping {name: directory}; a JSON / YAML string of such a mapping (``papermill -p runs '{...}'``);
    or a directory whose sub-folders are named runs. Relative paths: from the current directory if
    they exist there, else from the repository root.
    """
    if runs is None:
        found = campaign_runs(DEFAULT_RUNS_ROOT)
        if not found:
            print(f"no runs given and {DEFAULT_RUNS_ROOT} holds none: run `make figures` (or "
                  "`python -m opsd.paper.campaign`), or pass runs={'OPSD': 'path/to/run', ...}")
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
    """``point-wise clip 0.05``, ``token clip 0.05`` or ``no clip`` (clip null, or an older run's clip_mode none)."""
    clip, mode = config.get("clip"), str(config.get("clip_mode", DivergenceSpec.clip_mode))
    if clip is None or mode == "none":
        return "no clip"
    return f"{'point-wise' if mode == 'pointwise' else mode} clip {float(clip):g}"


def generation_label(config: Mapping) -> str:
    return f"generation length {config.get('max_completion_length', '?')}"


def train_label(config: Mapping, kind: str | None = None) -> str:
    """What one optimizer step sees, e.g. ``8 problems x <=48 tokens/step, LoRA r16, lr 3e-4, 20 steps``."""
    kind = kind or run_kind(config)
    per_step = problems_per_step(config, kind) or 0
    gen = int(config.get("num_generations", 1) or 1)
    tokens = config.get("max_completion_length")
    if kind == "grpo":
        batch = f"{per_step} prompts x {gen} samples x <={tokens} tokens/step"
    elif kind == "sft":
        batch = f"{per_step} solutions/step"
    else:
        batch = f"{per_step} problems" + (f" x {gen}" if gen > 1 else "") + f" x <={tokens} tokens/step"
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
    bench = bench_label(str(evaluation.get("benchmark")))
    temperature = float(s.get("temperature", 1.0))
    sampling = "greedy" if temperature <= 0 else f"T={temperature:g}, top-p {float(s.get('top_p', 1.0)):g}"
    k = s.get("k", evaluation.get("k", "?"))
    parts = [bench]
    if s.get("n_problems") is not None:
        parts.append(f"{s['n_problems']} problems")
    parts += [sampling, f"<={s.get('max_new_tokens', '?')} tokens", f"Avg@{k}"]
    return ", ".join(parts)


def bench_label(benchmark: str) -> str:
    """A benchmark's display name (``aime25`` -> ``AIME25``)."""
    return _BENCH_NAMES.get(benchmark, benchmark)


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
    known = {"synthetic": "worked references", "synthetic-terse": "terse references (no derivation)",
             "synthetic-verbose": "long-winded references"}
    return f"{known[dataset]} ({dataset})" if dataset in known else f"references of {dataset}"


def runs_overview(records: Mapping[str, RunRecord]):
    """A DataFrame, one row per run: kind, model, objective, clip, generation length, steps trained,
    evaluated steps per benchmark, directory."""
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


