"""`python -m opsd train|eval|sft|grpo|gap|audit-lengths|compare ...` (also the `opsd` console script;
works under `accelerate launch`)."""

from __future__ import annotations

import importlib
import sys

from opsd.validation import cli_errors

#: command -> the module whose `main(argv)` runs it; `sft` and `grpo` run `opsd.baselines.train.main(command, argv)`.
COMMAND_MODULES = {
    "train": "opsd.trainer",
    "eval": "opsd.eval.evaluate",
    "gap": "opsd.eval.gap",  # student vs self-teacher before training
    "audit-lengths": "opsd.audit",  # prompt-length audit of a training profile's whole dataset
    "compare": "opsd.eval.compare",  # two evaluations' Avg@k: the paired difference with its interval
}
COMMANDS = ("train", "eval", "sft", "grpo", "gap", "audit-lengths", "compare")


@cli_errors  # bad input (opsd.validation.InputError): "error: ..." on stderr, exit code 2, no traceback
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m opsd {{{'|'.join(COMMANDS)}}} [--config reproduce/configs/NAME.yaml] [key=value ...]")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command in COMMAND_MODULES:
        return importlib.import_module(COMMAND_MODULES[command]).main(rest)
    from opsd.baselines.train import main as baseline_main

    return baseline_main(command, rest)


if __name__ == "__main__":
    sys.exit(main())
