"""The evaluations of a run directory: which run is evaluated, where each result goes, when one is reused.

    eval/<benchmark>/step-<N>.json   one evaluation (step 0: the base model; `write_eval_json`)
    eval/<benchmark>/replaced/       results cut by a crash or written with other settings, moved aside

An evaluation file cut by a crash, or written with other settings, is moved aside and redone (`reusable_eval`).
`eval_target` resolves what ``python -m opsd eval`` and ``reproduce/eval.ipynb`` evaluate and where results go.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from opsd.runs.atomic_io import write_text_atomic
from opsd.runs.checkpoints import find_checkpoints
from opsd.runs.layout import CONFIG_FILE, EVAL_DIR, read_run_config, unused_path
from opsd.validation import InputError, MissingInputError

logger = logging.getLogger(__name__)


def check_eval_run_dir(run_dir: str | Path) -> None:
    """Raise a clear error unless `run_dir` is a training run directory (it has config.yaml)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise MissingInputError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is a file, not a run directory")
    if (run_dir / CONFIG_FILE).is_file():
        return
    runs = sorted(p.name for p in run_dir.iterdir() if (p / CONFIG_FILE).is_file())
    if runs:
        raise InputError(f"{run_dir} is not a training run directory (no config.yaml) but holds runs {runs}: "
                         f"pass one of them, e.g. {run_dir / runs[0]}")
    raise InputError(f"{run_dir} is not a training run directory (no config.yaml): pass the output_dir of a "
                     "`python -m opsd train|sft|grpo` run, or evaluate a model with --model")


def find_latest_run(runs_root: str | Path = "runs", profile: str | None = "cpu-tiny") -> Path | None:
    """The most recently modified run directory under ``runs_root`` whose config.yaml has
    ``profile`` (any when None) and at least one checkpoint; None when there is none."""
    candidates = []
    for config in Path(runs_root).glob(f"*/{CONFIG_FILE}"):
        run = config.parent
        if not find_checkpoints(run):
            continue
        if profile is not None:
            try:
                if read_run_config(run).get("profile") != profile:
                    continue
            except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
                continue  # an unreadable config is not a run to evaluate
        candidates.append((config.stat().st_mtime, run))
    return max(candidates)[1] if candidates else None


@dataclass(frozen=True)
class EvalTarget:
    """What one evaluation evaluates (`eval_target`): a training run (``run_dir``: its step 0 and every
    checkpoint) or one model (``model``, as step 0). ``out_dir`` holds its ``eval/`` folder; ``run_config`` is
    what its settings follow (the run's config.yaml, a profile's values, or None); ``note`` says how it was
    chosen when nothing was named."""

    run_dir: Path | None
    model: str | None
    out_dir: Path
    run_config: dict | None = None
    note: str | None = None

    def describe(self) -> str:
        """What is evaluated, a line each: the note, then the run (profile, model, checkpoint steps) or the model
        and where its results go."""
        lines = [self.note] if self.note else []
        if self.run_dir is None:
            lines.append(f"model {self.model} -> {self.out_dir}/{EVAL_DIR}/")
        else:
            config = self.run_config or {}
            lines.append(f"run {self.run_dir} (profile {config.get('profile')}, model {config.get('model_name')})")
            lines.append(f"checkpoints: {sorted(find_checkpoints(self.run_dir))}")
        return "\n".join(lines)


def model_eval_dir(model: str, runs_root: str | Path = "runs") -> Path:
    """``runs_root/eval-<model>``: where one model's evaluations go, every run of characters other than
    ``A-Za-z0-9_.-`` in its name replaced by ``_``."""
    return Path(runs_root) / ("eval-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", str(model)))


def eval_target(run_dir: str | Path | None = None, model: str | None = None, output_dir: str | Path | None = None,
                *, runs_root: str | Path = "runs", latest_profile: str = "cpu-tiny") -> EvalTarget:
    """The one resolution of what an evaluation evaluates, for ``python -m opsd eval`` and ``reproduce/eval.ipynb``.

    A `run_dir` must be a training run (`check_eval_run_dir`) and holds its own results (an `output_dir`
    elsewhere is an error); a `model`'s results go to `output_dir`, default `model_eval_dir`. Neither given:
    the latest `latest_profile` run with checkpoints under `runs_root` (`find_latest_run`), else that
    profile's starting model, its settings following the profile's values. Both given: an error.
    """
    if run_dir is not None and model is not None:
        raise InputError(f"give either a run directory ({run_dir}) or a model ({model}) to evaluate, not both")
    run_config, note = None, None
    if run_dir is None and model is None:
        run_dir = find_latest_run(runs_root, profile=latest_profile)
        if run_dir is None:
            from opsd.config import read_profile  # here: opsd.config imports transformers

            run_config = read_profile(latest_profile)
            model = run_config["model_name"]
            note = (f"no {latest_profile} run with checkpoints under {runs_root}: evaluating its starting "
                    f"model {model} only")
    if model is not None:
        out_dir = Path(output_dir) if output_dir is not None else model_eval_dir(model, runs_root)
        return EvalTarget(None, str(model), out_dir, run_config, note)
    run_dir = Path(run_dir)
    check_eval_run_dir(run_dir)
    if output_dir is not None and Path(output_dir).resolve() != run_dir.resolve():
        raise InputError(f"the evaluations of run {run_dir} are written into it, not to {output_dir}: "
                         "leave the output directory out")
    return EvalTarget(run_dir, None, run_dir, read_run_config(run_dir), note)


def benchmark_slug(benchmark: str) -> str:
    """A benchmark's folder name: a name of ``opsd.data.BENCHMARKS`` itself, a local file's stem, else the
    name with every run of other characters than ``A-Za-z0-9_.-`` replaced by ``_``."""
    from opsd.data import BENCHMARKS  # here: opsd.data imports datasets

    if benchmark in BENCHMARKS:
        return benchmark
    is_local = os.path.exists(os.path.expanduser(str(benchmark)))
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(benchmark)).stem if is_local else benchmark)


def eval_path(run_dir: str | Path, benchmark: str, step: int) -> Path:
    """``run_dir/eval/<benchmark>/step-<step>.json`` (benchmark names that are paths use the stem)."""
    return Path(run_dir) / EVAL_DIR / benchmark_slug(benchmark) / f"step-{int(step)}.json"


def write_eval_json(run_dir: str | Path, benchmark: str, step: int, *, settings: dict, records: list[dict],
                    summary: dict, checkpoint: str | None = None) -> dict:
    """Write one evaluation to `eval_path` atomically and return it: ``{benchmark, step, k, checkpoint,
    settings, summary, records, created}``, ``records`` one graded sample each, ``summary`` from
    ``opsd.eval.grading.summarize``, ``checkpoint`` the folder name (None: the base model)."""
    payload = {
        "benchmark": benchmark, "step": step, "k": settings["k"], "checkpoint": checkpoint, "settings": settings,
        "summary": summary, "records": records, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_text_atomic(eval_path(run_dir, benchmark, step), json.dumps(payload, indent=1, ensure_ascii=False))
    return payload


def load_eval_results(run_dir: str | Path) -> list[dict]:
    """Every ``run_dir/eval/<benchmark>/step-<N>.json``, ordered by benchmark then step; each dict gets ``path``."""
    results = []
    for path in Path(run_dir).glob(f"{EVAL_DIR}/*/step-*.json"):
        results.append({**json.loads(path.read_text(encoding="utf-8")), "path": str(path)})
    return sorted(results, key=lambda r: (str(r.get("benchmark")), -1 if r.get("step") is None else r["step"]))


def same_eval_settings(a: dict, b: dict) -> bool:
    """Whether two evaluations' ``settings`` give the same evaluation (``batch_size`` does not count)."""
    return {k: v for k, v in a.items() if k != "batch_size"} == {k: v for k, v in b.items() if k != "batch_size"}


def move_aside(path: str | Path, why: str) -> Path:
    """Move a file that cannot be used to ``<its folder>/replaced/<name>.<time>`` with a warning."""
    path = Path(path)
    target = unused_path(path.parent / "replaced", f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}", path.suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    logger.warning("%s %s; moved aside to %s", path, why, target)
    return target


def reusable_eval(path: str | Path, settings: dict) -> bool:
    """True when an evaluation file exists and holds the same `settings` (`same_eval_settings`). A file cut
    by a crash, or holding other settings, is moved aside with a warning saying which settings differ."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        recorded = data.get("settings", {}) if isinstance(data, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        move_aside(path, "is cut off or unreadable (a crash while it was written?); it is evaluated again")
        return False
    if not isinstance(recorded, dict):
        move_aside(path, "holds no evaluation settings; it is evaluated again")
        return False
    if same_eval_settings(recorded, settings):
        return True
    differ = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k) and k != "batch_size")
    changes = ", ".join(f"{k}: {recorded.get(k)!r} -> {settings.get(k)!r}" for k in differ)
    move_aside(path, f"was evaluated with other settings ({changes}); it is evaluated again with the new ones")
    return False
