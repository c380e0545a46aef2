"""`python -m opsd COMMAND ...` (also the `opsd` console script; works under `accelerate launch`).

`python -m opsd --help` lists the commands with what each does, and the profiles of reproduce/configs by kind.
"""

from __future__ import annotations

import importlib
import sys

from opsd.validation import cli_errors

#: command -> (the module whose `main(argv)` runs it, what it does); `sft` and `grpo` run
#: `opsd.baselines.train.main(command, argv)`, `preflight` gets the baselines' config classes (`_preflight`).
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("opsd.trainer", "train with OPSD from a training profile (kind: train)"),
    "sft": ("opsd.baselines.train", "the SFT baseline from an sft profile"),
    "grpo": ("opsd.baselines.train", "the GRPO baseline from a grpo profile"),
    "eval": ("opsd.eval.cli", "Avg@k / pass@k of a run's checkpoints or of one model (--profile eval-...)"),
    "gap": ("opsd.eval.gap", "student vs self-teacher accuracy before training (the privilege gap)"),
    "audit-lengths": ("opsd.audit", "prompt lengths of a training profile's whole dataset against max_length"),
    "compare": ("opsd.eval.compare", "two evaluations' Avg@k: the paired difference with its interval"),
    "preflight": ("opsd.runs.preflight", ("what a profile needs here (GPUs, packages, cached model and data, disk): "
                                         "every gap at once, exit code 2 if any")),
}
#: The order profiles are listed in `usage`: the `kind` each profile declares.
PROFILE_KINDS = ("train", "sft", "grpo", "eval")


def usage() -> str:
    """The commands, one a line with what it does, then the profiles of reproduce/configs grouped by kind."""
    from opsd.config import available_profiles, read_profile  # here: opsd.config imports transformers

    width = max(map(len, COMMANDS))
    lines = ["usage: python -m opsd COMMAND [--config PROFILE] [key=value ...]   (COMMAND --help for its flags)",
             "", "commands:"]
    lines += [f"  {name:{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    by_kind: dict[str, list[str]] = {}
    for name in available_profiles():
        by_kind.setdefault(str(read_profile(name).get("kind", "train")), []).append(name)
    lines += ["", "profiles (reproduce/configs/NAME.yaml, or a path to a YAML file):"]
    for kind in [*PROFILE_KINDS, *sorted(set(by_kind) - set(PROFILE_KINDS))]:
        if kind in by_kind:
            lines.append(f"  {kind + ':':7} {', '.join(by_kind[kind])}")
    lines += ["", "e.g. python -m opsd preflight --config qwen3-1.7b-4xh100 --num-processes 4",
              "     python -m opsd train --config cpu-tiny max_steps=3"]
    return "\n".join(lines)


def _preflight(argv: list[str]) -> int:
    """`python -m opsd preflight`: sft / grpo profiles are parsed with their config classes where TRL imports."""
    from opsd.runs.preflight import main as preflight_main  # here: it imports opsd.config, hence transformers

    try:
        from opsd.baselines.train import CONFIG_CLASSES  # here: it imports TRL, absent on some GPU images
    except ImportError:
        CONFIG_CLASSES = {}  # sft / grpo values are then read unparsed; the missing trl is listed
    return preflight_main(argv, config_classes=CONFIG_CLASSES)


@cli_errors  # bad input (opsd.validation.InputError): "error: ..." on stderr, exit code 2, no traceback
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        asked = bool(argv) and argv[0] in ("-h", "--help", "help")
        if argv and not asked:
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
        print(usage(), file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    command, rest = argv[0], argv[1:]
    if command == "preflight":
        return _preflight(rest)
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(command, rest) if command in ("sft", "grpo") else module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
