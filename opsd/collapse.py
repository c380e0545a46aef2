"""The signals that precede collapse, per step, and a watch that warns (or stops the run) when they drift.

Per step, over the student's sampled rollouts (mask [B, N] over the N rollout columns):

    rollout_length_mean    mean tokens per rollout (logged by the trainer)
    boxed_rate             share of rollouts with a complete \\boxed{...}
    student_entropy        mean entropy H(p_S) = -sum_v p_S(v) log p_S(v) of the student's next-token
                           distribution at the rollout's positions (the loss temperature), in nats
    repetition             mean over rollouts of 1 - distinct / total 4-grams of its tokens (0: no
                           4-gram repeats; rollouts of fewer than 4 tokens count 0)

`CollapseWatch` compares each step's signals with their median over the first `baseline_steps` steps and
flags a signal that stays outside its bound for `patience` consecutive steps. The bounds
(`DEFAULT_COLLAPSE_BOUNDS`, overridable key by key) are relative for length and entropy (a factor either
way) and absolute for the two rates. Setting `collapse_watch`: off (default) | warn | stop.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from opsd.eval.grading import extract_boxed
from opsd.runs.atomic_io import append_jsonl
from opsd.runs.layout import read_metrics

logger = logging.getLogger(__name__)
WATCH_FILE = "collapse_watch.jsonl"

COLLAPSE_MODES = ("off", "warn", "stop")
COLLAPSE_SIGNALS = ("rollout_length_mean", "boxed_rate", "student_entropy", "repetition")

#: signal -> (kind, bound): "factor" flags a value outside [baseline / f, baseline * f]; "drop" a value
#: below baseline - d; "rise" a value above baseline + d.
DEFAULT_COLLAPSE_BOUNDS: dict[str, tuple[str, float]] = {
    "rollout_length_mean": ("factor", 1.5),
    "student_entropy": ("factor", 2.0),
    "boxed_rate": ("drop", 0.3),
    "repetition": ("rise", 0.2),
}


def repetition_rate(tokens: Sequence[int], n: int = 4) -> float:
    """1 - distinct n-grams / n-grams of one token sequence (0.0 with fewer than n tokens)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def mean_entropy(logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean over masked-in positions of H(softmax(logits / temperature)); logits [B, N, V], mask bool [B, N]."""
    if not bool(mask.any()):
        return float("nan")
    with torch.no_grad():
        logp = torch.log_softmax(logits[mask].float() / temperature, dim=-1)
        return float(-(logp.exp() * logp).sum(-1).mean())


def rollout_signals(completion_ids: torch.Tensor, mask: torch.Tensor, texts: Sequence[str]) -> dict[str, float]:
    """boxed_rate and repetition of one batch of rollouts (ids [B, N], mask bool [B, N], decoded texts)."""
    rows = [completion_ids[r][mask[r]].tolist() for r in range(mask.shape[0])]
    return {
        "boxed_rate": sum(extract_boxed(t) is not None for t in texts) / max(len(texts), 1),
        "repetition": sum(repetition_rate(r) for r in rows) / max(len(rows), 1),
    }


@dataclass
class CollapseWatch:
    """Feed it each step's metrics (`update`); it returns the warnings of that step and sets `tripped`.

    bounds: signal -> (kind, bound) as `DEFAULT_COLLAPSE_BOUNDS` (missing keys take the defaults).
    """

    bounds: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    baseline_steps: int = 5
    patience: int = 3
    history: dict[str, list[float]] = field(default_factory=dict)
    outside: dict[str, int] = field(default_factory=dict)
    tripped: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self):
        bounds = dict(DEFAULT_COLLAPSE_BOUNDS)
        for key, value in dict(self.bounds).items():
            if key not in DEFAULT_COLLAPSE_BOUNDS:
                raise ValueError(f"collapse_bounds: unknown signal {key!r}; signals: {list(DEFAULT_COLLAPSE_BOUNDS)}")
            kind, bound = value if isinstance(value, (tuple, list)) else (DEFAULT_COLLAPSE_BOUNDS[key][0], value)
            if kind not in ("factor", "drop", "rise") or not isinstance(bound, (int, float)) or bound <= 0:
                raise ValueError(f"collapse_bounds[{key!r}] must be (factor|drop|rise, a positive number), got {value!r}")
            if kind == "factor" and bound <= 1:
                raise ValueError(f"collapse_bounds[{key!r}]: a factor must be > 1, got {bound}")
            bounds[key] = (kind, float(bound))
        self.bounds = bounds
        if self.baseline_steps < 1 or self.patience < 1:
            raise ValueError("collapse watch: baseline_steps and patience must be >= 1")

    def baseline(self, signal: str) -> float | None:
        values = self.history.get(signal, [])
        return statistics.median(values[: self.baseline_steps]) if len(values) >= self.baseline_steps else None

    def outside_bound(self, signal: str, value: float) -> bool:
        base = self.baseline(signal)
        if base is None:
            return False
        kind, bound = self.bounds[signal]
        if kind == "factor":
            return value > base * bound or value < base / bound
        return value < base - bound if kind == "drop" else value > base + bound

    def update(self, step: int, metrics: Mapping[str, float]) -> list[str]:
        """Warnings for this step: one per signal that has now been outside its bound `patience` steps."""
        warnings = []
        for signal in self.bounds:
            value = metrics.get(signal)
            if value is None or math.isnan(value):
                continue
            judged = len(self.history.get(signal, [])) >= self.baseline_steps
            self.history.setdefault(signal, []).append(float(value))
            if not judged:
                continue
            self.outside[signal] = self.outside.get(signal, 0) + 1 if self.outside_bound(signal, value) else 0
            if self.outside[signal] == self.patience:
                kind, bound = self.bounds[signal]
                rule = {"factor": f"x{bound:g} either way", "drop": f"a drop of {bound:g}", "rise": f"a rise of {bound:g}"}[kind]
                warnings.append(f"step {step}: {signal} = {value:.4g} has been outside its bound ({rule} from the "
                                f"baseline {self.baseline(signal):.4g}, median of steps 1-{self.baseline_steps}) "
                                f"for {self.patience} steps: the run may be collapsing")
                self.tripped.append((step, signal))
        return warnings


class CollapseWatchCallback(TrainerCallback):
    """`CollapseWatch` on the Trainer's logged metrics: each warning is logged, printed and appended to
    `collapse_watch.jsonl` in the run directory; mode ``stop`` also ends training at that step (the run
    is saved as at any end of training)."""

    def __init__(self, watch: CollapseWatch, mode: str = "warn"):
        if mode not in COLLAPSE_MODES[1:]:
            raise ValueError(f"collapse_watch must be one of {COLLAPSE_MODES[1:]} to watch, got {mode!r}")
        self.watch, self.mode = watch, mode

    def on_train_begin(self, args, state, control, **kwargs):
        """On resume, the steps already run form the baseline again (from metrics.jsonl; no new warnings)."""
        if state.global_step > 0:
            for metrics in read_metrics(args.output_dir):
                if "loss" in metrics and metrics.get("step", 0) <= state.global_step:
                    self.watch.update(metrics["step"], metrics)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        warnings = self.watch.update(state.global_step, logs)
        for text in warnings:
            logger.warning(text)
            if state.is_world_process_zero:
                append_jsonl(Path(args.output_dir) / WATCH_FILE, {"step": state.global_step, "warning": text,
                                                                  "action": self.mode})
        if warnings and self.mode == "stop":
            control.should_training_stop = True
