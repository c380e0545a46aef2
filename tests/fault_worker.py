"""`python tests/fault_worker.py train|sft|grpo ARGS...`: the `python -m opsd` command line, which SIGKILLs
its own process at one chosen point when $OPSD_FAULT_KILL names one (tests/contracts/test_faults.py).

    OPSD_FAULT_KILL=PHASE:STEP

Phases, in the order they happen within step STEP:

    rollout-cut     while rollouts.jsonl receives a line: half the line written, then killed
    step            after the optimizer step, before the step is logged or saved
    metrics-cut     while metrics.jsonl receives the step's line: half of it written, then killed
    logged          after the step's metrics line is written, before the checkpoint is saved
    save-start      the checkpoint folder holds only a config.json (a kill as the save begins)
    save-optimizer  weights written; killed before the optimizer state
    save-cut-optimizer  optimizer.pt half written, then killed
    save-cut-state  trainer_state.json (the Trainer's last file) half written, then killed

With no $OPSD_FAULT_KILL it is exactly `python -m opsd ...`. The kill is a real SIGKILL of this process:
no exception handler, `finally` block or atexit hook runs.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

PHASES = ("rollout-cut", "step", "metrics-cut", "logged", "save-start", "save-optimizer",
          "save-cut-optimizer", "save-cut-state")
SAVE_PHASES = PHASES[4:]


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _cut_file(path: Path) -> None:
    """Leave the first half of a file, as a kill during its write would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def install(phase: str, step: int) -> None:
    import transformers
    from transformers import TrainerCallback
    from transformers.trainer_callback import TrainerState

    from opsd import trainer as opsd_trainer
    from opsd.runs import runlog

    print(f"[fault_worker] will SIGKILL at {phase}:{step}", flush=True)
    current = {"step": 0}

    def at(s: int) -> bool:
        return s == step

    def append_cut(original, target_name: str, step_of):
        def append(path, record):
            if Path(path).name == target_name and at(step_of(record)):
                line = __import__("json").dumps(record) + "\n"
                with open(path, "a") as f:
                    f.write(line[: len(line) // 2])
                _die()
            return original(path, record)

        return append

    if phase == "rollout-cut":
        opsd_trainer.append_jsonl = append_cut(opsd_trainer.append_jsonl, "rollouts.jsonl", lambda r: r.get("step"))
    if phase == "metrics-cut":
        runlog.append_jsonl = append_cut(runlog.append_jsonl, "metrics.jsonl", lambda r: r.get("step"))

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            current["step"] = state.global_step
            if phase == "step" and at(state.global_step):
                _die()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if phase == "logged" and at(state.global_step) and logs and "loss" in logs:
                _die()

    original_init = transformers.Trainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(Kill())  # after the run directory callback: metrics are written first

    transformers.Trainer.__init__ = init

    original_save_model = transformers.Trainer.save_model

    def save_model(self, output_dir=None, _internal_call=False):
        if phase == "save-start" and _internal_call and at(self.state.global_step):
            folder = Path(output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text('{"model_type": "qwen3"}')
            _die()
        return original_save_model(self, output_dir, _internal_call=_internal_call)

    transformers.Trainer.save_model = save_model

    original_save_optimizer = transformers.Trainer._save_optimizer_and_scheduler

    def save_optimizer(self, output_dir):
        if phase == "save-optimizer" and at(self.state.global_step):
            _die()
        original_save_optimizer(self, output_dir)
        if phase == "save-cut-optimizer" and at(self.state.global_step):
            _cut_file(Path(output_dir) / "optimizer.pt")
            _die()

    transformers.Trainer._save_optimizer_and_scheduler = save_optimizer

    original_save_json = TrainerState.save_to_json

    def save_to_json(self, json_path):
        if phase == "save-cut-state" and at(self.global_step) and Path(json_path).parent.name.startswith("checkpoint-"):
            original_save_json(self, json_path)
            _cut_file(Path(json_path))
            _die()
        return original_save_json(self, json_path)

    TrainerState.save_to_json = save_to_json


def main() -> int:
    plan = os.environ.get("OPSD_FAULT_KILL")
    if plan:
        phase, step = plan.split(":")
        if phase not in PHASES:
            raise SystemExit(f"unknown phase {phase!r}; phases: {PHASES}")
        install(phase, int(step))
    from opsd.__main__ import main as opsd_main

    return opsd_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
