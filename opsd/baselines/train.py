"""The baselines' entry point: `python -m opsd sft|grpo --config NAME [key=value ...]`.

    SFT   `opsd.baselines.sft`: student prompt -> reference solution (TRL SFTTrainer).
    GRPO  `opsd.baselines.grpo`: G sampled completions per prompt, a 0/1 boxed-answer reward (TRL GRPOTrainer).
Shared run plumbing (over-long rows, the held-out split, resume) is `opsd.baselines.common`. Both write
config.yaml, metrics.jsonl and checkpoint-N/ like an OPSD run, so `opsd.eval.evaluate.evaluate_run` and the
figures read them the same way.

    python -m opsd sft  --config sft-cpu-tiny  [key=value ...]
    python -m opsd grpo --config grpo-cpu-tiny [key=value ...]

Config field clashes between `RunFields` and TRL's configs (both mean the same, so one field serves):
`trust_remote_code` (both: allow remote model code) and, for SFT, `max_length` (both: prompt +
completion tokens per sequence; `RunFields`' default 2048 wins). Rows longer than it are measured first
and raise, are dropped (with a logged count) or, SFT only, cut by TRL (counted), per `on_overflow`. GRPO
has no prompt limit of its own: prompts longer than `max_length - max_completion_length` raise or are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from opsd.baselines.grpo import GRPORunConfig, train_grpo
from opsd.baselines.sft import SFTRunConfig, train_sft
from opsd.config import command_parser, load_config, parse_overrides, read_profile
from opsd.runs.preflight import launched_processes, require_ready
from opsd.validation import InputError

KINDS = ("sft", "grpo")
DEFAULT_PROFILES = {"sft": "sft-cpu-tiny", "grpo": "grpo-cpu-tiny"}
CONFIG_CLASSES = {"sft": SFTRunConfig, "grpo": GRPORunConfig}
TRAIN_FUNCTIONS = {"sft": train_sft, "grpo": train_grpo}


def load_baseline_config(kind: str, profile: str | Path | None = None, overrides: dict | None = None):
    """The config of a baseline `kind` ('sft' | 'grpo') from a profile (default `<kind>-cpu-tiny`) and
    overrides; a profile written for another kind is an error."""

    if kind not in KINDS:
        raise InputError(f"unknown baseline {kind!r}; valid: {list(KINDS)}")
    profile = profile or DEFAULT_PROFILES[kind]
    declared = read_profile(profile).get("kind")
    if declared is not None and declared != kind:
        raise InputError(f"profile {str(profile)!r} is a {declared!r} profile, not {kind!r}")
    return load_config(CONFIG_CLASSES[kind], profile, overrides)


def main(kind: str, argv: Sequence[str] | None = None) -> int:
    """`python -m opsd sft|grpo --config NAME [--no-resume] [key=value ...]`."""

    if kind not in KINDS:
        raise InputError(f"unknown baseline {kind!r}; valid: {list(KINDS)}")
    parser = command_parser(f"python -m opsd {kind}", CONFIG_CLASSES[kind], DEFAULT_PROFILES[kind],
                            f"{kind.upper()} baseline.")
    ns = parser.parse_args(list(argv or []))
    require_ready(ns.config, parse_overrides(ns.overrides), num_processes=launched_processes(), kind=kind,
                  config_class=CONFIG_CLASSES[kind])  # every missing piece of this machine, before any model loads
    config = load_baseline_config(kind, ns.config, parse_overrides(ns.overrides))
    out = TRAIN_FUNCTIONS[kind](config, resume=not ns.no_resume and "auto")
    print(f"run directory: {out}")
    return 0
