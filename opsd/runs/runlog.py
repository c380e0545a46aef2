"""`RunDirectoryCallback`: what every trainer (OPSD, SFT, GRPO) writes into its run directory while it trains.

At the start config.yaml (with the run's `kind`); each log one line of metrics.jsonl; the Trainer's
closing log train_summary.json. File names and readers: `opsd.runs.layout`.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from opsd.config import save_config
from opsd.runs.atomic_io import append_jsonl, json_safe, truncate_jsonl, write_json_atomic
from opsd.runs.layout import CONFIG_FILE, LOG_FILES, METRICS_FILE, RUN_KINDS, SUMMARY_FILE

#: Keys of the Trainer's closing log, which goes to train_summary.json instead of metrics.jsonl.
SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos")


class RunDirectoryCallback(TrainerCallback):
    """Writes config.yaml at the start, every log to metrics.jsonl, the summary to train_summary.json.

    `extra` goes into every metrics line (``{"run_kind": "opsd"}``). On resume, metrics.jsonl and
    rollouts.jsonl are cut back to the checkpoint's step so the files continue without duplicates; a
    fresh start removes them. Only the main process writes.
    """

    def __init__(self, extra: dict | None = None):
        self.extra = dict(extra or {})

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        kind = RUN_KINDS.get(self.extra.get("run_kind", ""))
        save_config(args, out / CONFIG_FILE, extra={"kind": kind} if kind else None)
        for name in LOG_FILES:
            path = out / name
            if state.global_step > 0:
                truncate_jsonl(path, state.global_step)
            elif path.exists():
                path.unlink()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        out = Path(args.output_dir)
        if any(k in logs for k in SUMMARY_KEYS):
            summary = {k: json_safe(v) for k, v in {**logs, "step": state.global_step}.items()}
            write_json_atomic(out / SUMMARY_FILE, summary)
            return
        append_jsonl(out / METRICS_FILE, {"step": state.global_step, "epoch": state.epoch, **self.extra, **logs})
