"""Run directories: what every run writes and what evaluation and figures read back.

    run_dir/config.yaml       resolved config, secrets removed
    run_dir/metrics.jsonl     one JSON object per logged step ({"step": N, "loss": ..., ...})
    run_dir/rollouts.jsonl    sample rollouts with per-token divergence (OPSD runs)
    run_dir/checkpoint-N/     transformers Trainer checkpoints (LoRA adapters when LoRA is on)
    run_dir/train_summary.json  runtime and final numbers
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

from transformers import TrainerCallback

from opsd.config import save_config

SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos")


def _json_safe(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (math.inf if value > 0 else -math.inf)
    return value


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({k: _json_safe(v) for k, v in record.items()}) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The metrics of a run, one dict per logged step, in step order (empty list when none)."""
    return sorted(read_jsonl(Path(run_dir) / "metrics.jsonl"), key=lambda r: r.get("step", 0))


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """Steps of the checkpoints in a run directory, ascending."""
    steps = []
    for path in Path(run_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir():
            steps.append(int(match.group(1)))
    return sorted(steps)


def last_checkpoint(run_dir: str | Path) -> Path | None:
    steps = checkpoint_steps(run_dir)
    return Path(run_dir) / f"checkpoint-{steps[-1]}" if steps else None


def truncate_metrics(path: str | Path, max_step: int) -> None:
    """Keep only records with step <= max_step (a resumed run continues the file from its checkpoint)."""
    records = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


class RunDirectoryCallback(TrainerCallback):
    """Writes config.yaml at the start, every log to metrics.jsonl, the summary to train_summary.json.

    On resume, metrics.jsonl is cut back to the checkpoint's step so the file continues without
    duplicates. Only the main process writes.
    """

    def __init__(self, extra: dict | None = None):
        self.extra = dict(extra or {})

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_config(args, out / "config.yaml")
        metrics = out / "metrics.jsonl"
        if state.global_step > 0:
            truncate_metrics(metrics, state.global_step)
        elif metrics.exists():
            metrics.unlink()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        out = Path(args.output_dir)
        if any(k in logs for k in SUMMARY_KEYS):
            with open(out / "train_summary.json", "w") as f:
                json.dump({k: _json_safe(v) for k, v in {**logs, "step": state.global_step}.items()}, f, indent=2)
            return
        append_jsonl(out / "metrics.jsonl", {"step": state.global_step, "epoch": state.epoch, **self.extra, **logs})


def series(records: Iterable[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, skipping records without it."""
    steps, values = [], []
    for r in records:
        if key in r and r[key] is not None:
            steps.append(r["step"])
            values.append(r[key])
    return steps, values
