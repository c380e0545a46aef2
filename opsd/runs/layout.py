"""The run directory: its file names, and the one reader and writer of each top-level file.

    config.yaml            resolved config (with the run's `kind`: train | sft | grpo), secrets removed
    metrics.jsonl          one JSON object per logged step ({"step": N, "loss": ..., ...})
    rollouts.jsonl         sample rollouts with per-token divergence (OPSD runs)
    train_summary.json     the Trainer's runtime numbers
    run_info.json          the final step, tokens generated (`write_run_info`)
    heldout_accuracy.json  reproduce/train.ipynb's held-out accuracy before and after training
                           (`write_heldout_accuracy`; written by `opsd.eval.heldout.heldout_before_after`)
    checkpoint-<N>/, incomplete/   checkpoints and resume: `opsd.runs.checkpoints`
    eval/<benchmark>/step-<N>.json evaluations: `opsd.runs.eval_results`

The final model (adapters or weights, tokenizer) is saved at the top level. While training,
`opsd.runs.runlog.RunDirectoryCallback` writes config.yaml, metrics.jsonl and train_summary.json. Every reader
accepts what a kill leaves behind, every writer is atomic (`opsd.runs.atomic_io`).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from opsd.runs.atomic_io import read_jsonl, write_json_atomic, write_text_atomic
from opsd.validation import InputError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
SUMMARY_FILE = "train_summary.json"
RUN_INFO_FILE = "run_info.json"
HELDOUT_FILE = "heldout_accuracy.json"
EVAL_DIR = "eval"
#: The logs a resume cuts back to its checkpoint's step.
LOG_FILES = (METRICS_FILE, ROLLOUTS_FILE)
#: metrics.jsonl's `run_kind` -> the `kind` of profiles and config.yaml.
RUN_KINDS = {"opsd": "train", "train": "train", "sft": "sft", "grpo": "grpo"}


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` holds a run: a config.yaml, a metrics.jsonl or evaluations."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() or (path / METRICS_FILE).is_file() or (path / EVAL_DIR).is_dir()


def unused_path(folder: Path, name: str, suffix: str = "") -> Path:
    """``folder/<name><suffix>``, else ``<name>-2<suffix>``, ``-3``, ... (the first that does not exist)."""
    target, n = folder / f"{name}{suffix}", 1
    while target.exists():
        n += 1
        target = folder / f"{name}-{n}{suffix}"
    return target


# ------------------------------------------------------------------------------------------ config, kind, metrics


def read_run_config(run_dir: str | Path, *, missing_ok: bool = False) -> dict:
    """``config.yaml`` as a dict. No file: {} when `missing_ok`, else FileNotFoundError."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        if missing_ok:
            return {}
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run directory?")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise InputError(f"{path} holds a YAML {type(data).__name__}, not a mapping of config keys")
    return data


def run_kind(run_dir: str | Path) -> str | None:
    """`train` | `sft` | `grpo` for a run directory (config.yaml's `kind`, else metrics' `run_kind`), None
    when it holds no run."""
    try:
        kind = read_run_config(run_dir, missing_ok=True).get("kind")
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        kind = None
    if kind in RUN_KINDS:
        return RUN_KINDS[kind]
    for record in read_jsonl(Path(run_dir) / METRICS_FILE)[:1]:
        if record.get("run_kind") in RUN_KINDS:
            return RUN_KINDS[record["run_kind"]]
    return None


def check_run_kind(run_dir: str | Path, kind: str) -> None:
    """Raise if `run_dir` already holds a run of another kind (an SFT run continued as OPSD, ...)."""
    found, wanted = run_kind(run_dir), RUN_KINDS.get(kind, kind)
    if found is not None and found != wanted:
        raise InputError(
            f"output_dir {run_dir} holds a {found!r} run, not a {wanted!r} run: training here "
            f"would mix the two. Use another output_dir, or continue it with `python -m opsd {found}`."
        )


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The metrics of a run, one dict per logged step, in step order (empty list when none)."""
    return sorted(read_jsonl(Path(run_dir) / METRICS_FILE), key=lambda r: r.get("step", 0))


def read_rollouts(run_dir: str | Path) -> list[dict]:
    """The sample rollouts an OPSD run logged, in the order written: ``{step, prompt, teacher_prompt,
    completion, tokens, divergence}`` each (``divergence``: one number per token)."""
    return read_jsonl(Path(run_dir) / ROLLOUTS_FILE)


def write_run_info(run_dir: str | Path, *, global_step: int, **extra) -> None:
    """``run_info.json`` at the end of a run: ``{"global_step": N, **extra}`` (``tokens_generated`` when the
    trainer counts them, ``resumed_from``, ...). Call it from the main process only."""
    write_json_atomic(Path(run_dir) / RUN_INFO_FILE, {"global_step": int(global_step), **extra})


def write_heldout_accuracy(run_dir: str | Path, summary: dict) -> Path:
    """``heldout_accuracy.json``: `summary` as JSON, indent 2, values JSON cannot hold as their ``str``; returns
    the path. `summary`: ``{profile, model_name, steps, train_seconds, gap, before, after}``, ``before`` /
    ``after`` one ``opsd.eval.evaluate.heldout_accuracy`` result per benchmark (``opsd.eval.heldout``)."""
    path = Path(run_dir) / HELDOUT_FILE
    write_text_atomic(path, json.dumps(summary, indent=2, default=str))
    return path


def read_heldout_accuracy(run_dir: str | Path) -> dict | None:
    """``heldout_accuracy.json`` as written by `write_heldout_accuracy`; None when the run has none."""
    path = Path(run_dir) / HELDOUT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
