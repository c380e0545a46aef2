"""`python -m opsd train|eval|sft|grpo ...` (also the `opsd` console script; works under `accelerate launch`)."""

from __future__ import annotations

import sys

from opsd.validation import cli_errors

COMMANDS = ("train", "eval", "sft", "grpo", "gap", "audit-lengths")


@cli_errors  # bad input (opsd.validation.InputError): "error: ..." on stderr, exit code 2, no traceback
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: python -m opsd {{{'|'.join(COMMANDS)}}} [--config reproduce/configs/NAME.yaml] [key=value ...]")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from opsd.trainer import main as train_main

        return train_main(rest)
    if command == "eval":
        from opsd.evaluate import main as eval_main

        return eval_main(rest)
    if command == "gap":  # student vs self-teacher before training (opsd.gap)
        from opsd.gap import main as gap_main

        return gap_main(rest)
    if command == "audit-lengths":  # prompt-length audit of a training profile's whole dataset
        from opsd.audit import main as audit_main

        return audit_main(rest)
    from opsd.baselines import main as baseline_main

    return baseline_main(command, rest)


if __name__ == "__main__":
    sys.exit(main())
