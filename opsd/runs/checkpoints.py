"""The checkpoints of a run directory: which are complete, where a resume continues, the final model.

    checkpoint-<N>/    the Trainer's checkpoints (LoRA adapters when LoRA is on) and the trainer's own state
    incomplete/        checkpoints a crash left half-written, moved aside on resume

A checkpoint counts only when complete (`checkpoint_problem`): its `trainer_state.json` (the Trainer writes
it after the weights, optimizer and RNG state) parses and names the folder's step, its files are whole
(`opsd.runs.file_integrity`), and the trainer's own state files (`required`) exist. A resume moves incomplete
ones aside with a warning (`resume_checkpoint`) and continues from the last complete one; an evaluation
skips checkpoints whose weights are cut (`usable_checkpoints`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from opsd.runs.file_integrity import file_problem, weights_problem
from opsd.runs.layout import unused_path
from opsd.validation import InputError

logger = logging.getLogger(__name__)

TRAINER_STATE_FILE = "trainer_state.json"
INCOMPLETE_DIR = "incomplete"
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """``run_dir/checkpoint-<step>``."""
    return Path(run_dir) / f"checkpoint-{int(step)}"


def checkpoint_problem(path: str | Path, required: Sequence[str] = (), *, purpose: str = "resume") -> str | None:
    """Why a checkpoint folder cannot be used, or None when it is complete.

    `purpose="resume"`: everything a resume needs: whole weights, a `trainer_state.json` that parses
    and names the folder's step (the Trainer writes it after the weights, optimizer and RNG state, so
    its presence means those are complete), whole torch / safetensors / JSON files, and the files in
    `required` (state the trainer adds, e.g. ``opsd_state.pt``). `purpose="weights"`: whole weights
    only (what an evaluation loads).
    """
    folder = Path(path)
    try:
        if not folder.is_dir():
            return "the folder does not exist"
        problem = weights_problem(folder)
        if problem or purpose == "weights":
            return problem
        state_file = folder / TRAINER_STATE_FILE
        if not state_file.is_file():
            return f"no {TRAINER_STATE_FILE} (the save did not finish)"
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return f"{TRAINER_STATE_FILE} is cut off (the save did not finish)"
        match = _CHECKPOINT_NAME.fullmatch(folder.name)
        step = state.get("global_step") if isinstance(state, dict) else None
        if match and step != int(match.group(1)):
            return f"{TRAINER_STATE_FILE} says global_step {step}, the folder name {match.group(1)}"
        missing = [name for name in required if not (folder / name).is_file()]
        if missing:
            return f"missing {missing} (the save did not finish)"
        for child in sorted(folder.iterdir()):
            if child.is_file() and (problem := file_problem(child)):
                return problem
    except OSError as err:  # e.g. moved aside by another process while we looked
        return f"unreadable ({err})"
    return None


def find_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """step -> ``run_dir/checkpoint-<step>`` for every checkpoint folder (complete or not), by step."""
    run_dir = Path(run_dir)
    found = {}
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            match = _CHECKPOINT_NAME.fullmatch(path.name)
            if match and path.is_dir():
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def checkpoint_steps(run_dir: str | Path, *, complete: bool = False, required: Sequence[str] = ()) -> list[int]:
    """Steps of the checkpoint folders in a run directory, ascending (`complete`: only complete ones)."""
    return [step for step, path in find_checkpoints(run_dir).items()
            if not complete or checkpoint_problem(path, required) is None]


def last_checkpoint(run_dir: str | Path, required: Sequence[str] = ()) -> Path | None:
    """The last complete checkpoint of a run directory (None when there is none). Changes nothing."""
    for path in reversed(find_checkpoints(run_dir).values()):
        if checkpoint_problem(path, required) is None:
            return path
    return None


def is_lora_checkpoint(path: Path) -> bool:
    """Whether a checkpoint folder holds a LoRA adapter (``adapter_config.json``) rather than a full model."""
    return (path / "adapter_config.json").is_file()


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def set_aside_incomplete(run_dir: str | Path, required: Sequence[str] = ()) -> list[Path]:
    """Move incomplete checkpoint folders to ``run_dir/incomplete/`` with a warning; returns their new
    paths. Only the main process moves (others skip incomplete folders when choosing)."""
    moved = []
    for path in find_checkpoints(run_dir).values():
        problem = checkpoint_problem(path, required)
        if problem is None or not _is_main_process():
            continue
        target = unused_path(Path(run_dir) / INCOMPLETE_DIR, f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)
        except OSError as err:
            logger.warning("%s is incomplete (%s) and could not be moved aside (%s); it is skipped", path, problem, err)
            continue
        logger.warning("%s is incomplete (%s): a crash during its save? Moved aside to %s; resuming from the "
                       "last complete checkpoint", path, problem, target)
        moved.append(target)
    return moved


def resume_checkpoint(run_dir: str | Path, required: Sequence[str] = ()) -> Path | None:
    """The checkpoint a resume continues from: incomplete ones are moved aside (with a warning), then the
    last complete one is returned (None: start from scratch)."""
    set_aside_incomplete(run_dir, required)
    found = last_checkpoint(run_dir, required)
    if found is not None:
        logger.warning("resuming from %s", found)
    return found


def check_resume_path(checkpoint: str | Path, required: Sequence[str] = ()) -> Path:
    """An explicitly named checkpoint: returned when complete, else an error saying what is wrong."""
    problem = checkpoint_problem(checkpoint, required)
    if problem:
        complete = last_checkpoint(Path(checkpoint).parent, required)
        raise InputError(
            f"cannot resume from {checkpoint}: {problem}. "
            + (f"The last complete checkpoint there is {complete}." if complete else "There is no complete checkpoint.")
        )
    return Path(checkpoint)


def resume_point(run_dir: str | Path, resume: bool | str | Path | None, required: Sequence[str] = ()) -> Path | None:
    """The checkpoint a training run continues from. `resume` True / ``"auto"``: the last complete one in
    `run_dir` (`resume_checkpoint`; None when there is none); a path: that checkpoint (an error when
    incomplete); False / None: none. `required`: the trainer's own state files a complete checkpoint holds."""
    if not resume:
        return None
    if resume is True or resume == "auto":
        return resume_checkpoint(run_dir, required)
    return check_resume_path(resume, required)


def finished_step(checkpoint: str | Path, max_steps: int) -> int | None:
    """The checkpoint's step if it already reached the run's end (`max_steps` > 0, else the step count
    its trainer_state.json recorded for an epoch-based run), else None: then training continues."""
    state_file = Path(checkpoint) / TRAINER_STATE_FILE
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text(encoding="utf-8"))
    target = max_steps if max_steps > 0 else state.get("max_steps", 0)
    step = int(state.get("global_step", 0))
    return step if target and step >= target else None


#: Files of a checkpoint that are training state, not the model (besides ``rng_state*`` and a trainer's own).
TRAINING_STATE_FILES = ("optimizer.pt", "scheduler.pt", TRAINER_STATE_FILE, "training_args.bin", "latest",
                        "zero_to_fp32.py")


def export_final_model(checkpoint: str | Path, run_dir: str | Path, state_files: Sequence[str] = ()) -> None:
    """Copy a checkpoint's model files (weights or adapters, config, tokenizer) to the top of `run_dir`, where
    the final model goes; training state stays behind (`TRAINING_STATE_FILES`, ``rng_state*``, `state_files`)."""
    skip = {*TRAINING_STATE_FILES, *state_files}
    for path in Path(checkpoint).iterdir():
        if path.is_file() and path.name not in skip and not path.name.startswith("rng_state"):
            shutil.copy2(path, Path(run_dir) / path.name)


def usable_checkpoints(checkpoints: dict[int, Path], requested: Iterable[int] | None = None) -> dict[int, Path]:
    """The checkpoints whose weights are whole. Others (a save cut by a crash, or one still being
    written by a running trainer) are skipped with a warning; left in place, as a trainer may be
    writing them. A `requested` step whose checkpoint is incomplete is an error saying why."""
    requested = set(requested or ())
    usable = {}
    for step, path in checkpoints.items():
        problem = checkpoint_problem(path, purpose="weights")
        if problem is None:
            usable[step] = path
        elif step in requested:
            raise InputError(f"cannot evaluate {path}: {problem} (a save cut by a crash, or still being written)")
        else:
            logger.warning("skipping %s: %s (a save cut by a crash, or still being written)", path, problem)
    return usable
