"""Progress a user can read in a terminal (`make demo` streams the notebook's output): one line per
training step and per evaluation batch, with the time left, and nothing that needs a widget."""

from __future__ import annotations

import sys
import time

from transformers import TrainerCallback


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class StepPrinter(TrainerCallback):
    """Prints ``step 7/30  loss 0.0812  kl 0.091  11.8 s/step  ~4m43s left`` after every logged step."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.start = None
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs or self.start is None:
            return
        done = state.global_step - self.first_step
        per_step = (time.perf_counter() - self.start) / max(done, 1)
        left = per_step * max(state.max_steps - state.global_step, 0)
        kl = logs.get("divergence_mean")
        parts = [f"step {state.global_step}/{state.max_steps}", f"loss {logs['loss']:.4f}"]
        if kl is not None:
            parts.append(f"kl {kl:.3f}")
        parts += [f"{per_step:.1f} s/step", f"~{_clock(left)} left"]
        print("  ".join(parts), file=self.stream, flush=True)


def batch_printer(label: str, stream=None):
    """A ``progress(done, total)`` callable printing ``label: 64/200 problems  (12s, ~25s left)``."""
    stream = stream or sys.stdout
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        spent = time.perf_counter() - start
        left = spent / max(done, 1) * (total - done)
        print(f"{label}: {done}/{total} problems  ({_clock(spent)}, ~{_clock(left)} left)", file=stream, flush=True)

    return report
