"""Run directories: what every run writes and what evaluation and figures read back.

    run_dir/config.yaml       resolved config (with the run's `kind`: train | sft | grpo), secrets removed
    run_dir/metrics.jsonl     one JSON object per logged step ({"step": N, "loss": ..., ...})
    run_dir/rollouts.jsonl    sample rollouts with per-token divergence (OPSD runs)
    run_dir/checkpoint-N/     transformers Trainer checkpoints (LoRA adapters when LoRA is on)
    run_dir/train_summary.json  runtime and final numbers
    run_dir/incomplete/       checkpoints a crash left half-written, moved aside on resume

Crash safety. A process can be killed at any instruction (SIGKILL, out of memory, a lost node), so
every reader here accepts what a kill leaves behind:

- a checkpoint counts only when complete (`checkpoint_problem`): its `trainer_state.json` (which the
  Trainer writes after the weights, optimizer and RNG state) parses and names the folder's step, its
  weights files are whole (safetensors header and size, torch zip directory), and the files the
  trainer adds (`required`) exist. A resume moves incomplete ones aside with a warning
  (`resume_checkpoint`) and continues from the last complete one.
- `read_jsonl` drops a line cut by a crash with a warning instead of failing; `append_jsonl` starts
  a new line when the file ends in a cut one; on resume `metrics.jsonl` and `rollouts.jsonl` are cut
  back to the checkpoint's step, so no step is logged twice.
- small JSON / YAML files are written to a temporary name and renamed (`write_json_atomic`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from opsd.config import save_config

logger = logging.getLogger(__name__)

SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos")
TRAINER_STATE_FILE = "trainer_state.json"
INCOMPLETE_DIR = "incomplete"
LOG_FILES = ("metrics.jsonl", "rollouts.jsonl")
#: metrics.jsonl's `run_kind` -> the `kind` of profiles and config.yaml.
RUN_KINDS = {"opsd": "train", "train": "train", "sft": "sft", "grpo": "grpo"}
#: One key per quantity in metrics.jsonl: keys older OPSD runs also logged (old -> the key kept). `objective`
#: was the step's loss again (the Trainer logs it as `loss`, averaged over micro-batches and processes);
#: `divergence` a copy of `divergence_mean`. `read_metrics` maps them, so old runs read like new ones.
METRIC_ALIASES = {"objective": "loss", "divergence": "divergence_mean"}
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_MODEL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_MODEL_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _json_safe(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (math.inf if value > 0 else -math.inf)
    return value


# ------------------------------------------------------------------------------------------ files


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def _ends_in_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line. A file that ends in a line cut by a crash gets a newline first, so the
    new record stays readable (the cut line is dropped on read)."""
    path = Path(path)
    line = json.dumps({k: _json_safe(v) for k, v in record.items()}) + "\n"
    if path.exists() and path.stat().st_size > 0 and not _ends_in_newline(path):
        line = "\n" + line
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a .jsonl file (empty list when it does not exist).

    A line that does not parse (a crash cut it while it was written) is dropped with a warning
    naming the file and the line; it is never a parse error.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            last = number == len(lines) or all(not rest.strip() for rest in lines[number:])
            cut = "cut off by a crash while it was written" if last else "not valid JSON"
            logger.warning("%s: line %d is %s; dropped (%r)", path, number, cut, line[:80].decode("utf-8", "replace"))
            continue
        if not isinstance(record, dict):
            logger.warning("%s: line %d is a JSON %s, not an object; dropped", path, number, type(record).__name__)
            continue
        records.append(record)
    return records


def canonical_metrics(record: dict) -> dict:
    """One metrics.jsonl record with the old keys of `METRIC_ALIASES` renamed to the kept ones (a kept key
    already there wins; it holds the same quantity)."""
    if not any(old in record for old in METRIC_ALIASES):
        return record
    out = {k: v for k, v in record.items() if k not in METRIC_ALIASES}
    for old, new in METRIC_ALIASES.items():
        if old in record and out.get(new) is None:
            out[new] = record[old]
    return out


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The metrics of a run, one dict per logged step, in step order (empty list when none); keys of older
    runs are mapped to today's (`METRIC_ALIASES`)."""
    records = (canonical_metrics(r) for r in read_jsonl(Path(run_dir) / "metrics.jsonl"))
    return sorted(records, key=lambda r: r.get("step", 0))


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Keep only records with step <= max_step, rewriting the file atomically (a resumed run continues
    the file from its checkpoint; a line cut by a crash goes too)."""
    path = Path(path)
    if not path.exists():
        return
    records = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


truncate_metrics = truncate_jsonl  # the name earlier versions used


# ------------------------------------------------------------------------------------------ checkpoints


def _safetensors_problem(path: Path) -> str | None:
    """None if the safetensors file has a readable header and the size the header promises."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is cut off ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path.name} is cut off (header of {n} bytes, file of {size})"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if size != 8 + n + end:
            return f"{path.name} is cut off ({size} bytes, {8 + n + end} expected)"
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        return f"{path.name} is unreadable ({err})"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """None if a torch.save file is a whole zip archive (its central directory is at the end)."""
    try:
        if zipfile.is_zipfile(path):
            return None
        return f"{path.name} is cut off or not a torch file ({path.stat().st_size} bytes)"
    except OSError as err:
        return f"{path.name} is unreadable ({err})"


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{path.name} is cut off or unreadable ({err.__class__.__name__})"
    return None


def _file_problem(path: Path) -> str | None:
    if path.suffix == ".safetensors":
        return _safetensors_problem(path)
    if path.suffix in (".pt", ".pth", ".bin"):
        return _torch_file_problem(path)
    if path.suffix == ".json":
        return _json_problem(path)
    return None


def _weights_problem(folder: Path) -> str | None:
    """None if the folder holds whole model weights: a LoRA adapter or a full model (maybe sharded)."""
    for config, weights in (("adapter_config.json", _ADAPTER_WEIGHTS), ("config.json", _MODEL_WEIGHTS)):
        if not (folder / config).is_file():
            continue
        found = [folder / w for w in weights if (folder / w).is_file()]
        for index in _MODEL_INDEXES if config == "config.json" else ():
            if (folder / index).is_file():
                try:
                    shards = set(json.loads((folder / index).read_text())["weight_map"].values())
                except (OSError, ValueError, KeyError, TypeError):
                    return f"{index} is cut off or unreadable"
                missing = sorted(s for s in shards if not (folder / s).is_file())
                if missing:
                    return f"weight shards {missing} are missing"
                found += [folder / s for s in sorted(shards)]
        if not found:
            return f"{config} is there but no weights file ({', '.join(weights)})"
        for path in [folder / config, *found]:
            problem = _file_problem(path)
            if problem:
                return problem
        return None
    if any(p.is_dir() and p.name.startswith("global_step") for p in folder.iterdir()):
        return None  # a DeepSpeed checkpoint: its weights are in global_stepN/
    return "no model weights (adapter_model.* or model.* with their config)"


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
        problem = _weights_problem(folder)
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
            if child.is_file():
                problem = _file_problem(child)
                if problem:
                    return problem
    except OSError as err:  # e.g. moved aside by another process while we looked
        return f"unreadable ({err})"
    return None


def _checkpoint_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def checkpoint_steps(run_dir: str | Path, *, complete: bool = False, required: Sequence[str] = ()) -> list[int]:
    """Steps of the checkpoint folders in a run directory, ascending (`complete`: only complete ones)."""
    return [step for step, path in _checkpoint_dirs(run_dir)
            if not complete or checkpoint_problem(path, required) is None]


def last_checkpoint(run_dir: str | Path, required: Sequence[str] = ()) -> Path | None:
    """The last complete checkpoint of a run directory (None when there is none). Changes nothing."""
    for _, path in reversed(_checkpoint_dirs(run_dir)):
        if checkpoint_problem(path, required) is None:
            return path
    return None


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def set_aside_incomplete(run_dir: str | Path, required: Sequence[str] = ()) -> list[Path]:
    """Move incomplete checkpoint folders to ``run_dir/incomplete/`` with a warning; returns their new
    paths. Only the main process moves (others skip incomplete folders when choosing)."""
    moved = []
    for step, path in _checkpoint_dirs(run_dir):
        problem = checkpoint_problem(path, required)
        if problem is None:
            continue
        if not _is_main_process():
            continue
        target = Path(run_dir) / INCOMPLETE_DIR / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while target.exists():
            n += 1
            target = target.with_name(f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
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
    from opsd.validation import InputError

    problem = checkpoint_problem(checkpoint, required)
    if problem:
        complete = last_checkpoint(Path(checkpoint).parent, required)
        raise InputError(
            f"cannot resume from {checkpoint}: {problem}. "
            + (f"The last complete checkpoint there is {complete}." if complete else "There is no complete checkpoint.")
        )
    return Path(checkpoint)


# ------------------------------------------------------------------------------------------ run kind


def run_kind(run_dir: str | Path) -> str | None:
    """`train` | `sft` | `grpo` for a run directory (config.yaml's `kind`, else metrics' `run_kind`), None
    when it holds no run."""
    import yaml

    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if config.is_file():
        try:
            data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            data = {}
        if isinstance(data, dict) and data.get("kind") in RUN_KINDS:
            return RUN_KINDS[data["kind"]]
    for record in read_jsonl(run_dir / "metrics.jsonl")[:1]:
        if record.get("run_kind") in RUN_KINDS:
            return RUN_KINDS[record["run_kind"]]
    return None


def check_run_kind(run_dir: str | Path, kind: str) -> None:
    """Raise if `run_dir` already holds a run of another kind (an SFT run continued as OPSD, ...)."""
    from opsd.validation import InputError

    found = run_kind(run_dir)
    if found is not None and found != RUN_KINDS.get(kind, kind):
        raise InputError(
            f"output_dir {run_dir} holds a {found!r} run, not a {RUN_KINDS.get(kind, kind)!r} run: training here "
            f"would mix the two. Use another output_dir, or continue it with `python -m opsd {found}`."
        )


# ------------------------------------------------------------------------------------------ evaluation


def check_eval_run_dir(run_dir: str | Path) -> None:
    """Raise a clear error unless `run_dir` is a training run directory (it has config.yaml)."""
    from opsd.validation import InputError, MissingInputError

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise MissingInputError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is a file, not a run directory")
    if (run_dir / "config.yaml").is_file():
        return
    runs = sorted(p.name for p in run_dir.iterdir() if (p / "config.yaml").is_file())
    if runs:
        raise InputError(f"{run_dir} is not a training run directory (no config.yaml) but holds runs {runs}: "
                         f"pass one of them, e.g. {run_dir / runs[0]}")
    raise InputError(f"{run_dir} is not a training run directory (no config.yaml): pass the output_dir of a "
                     "`python -m opsd train|sft|grpo` run, or evaluate a model with --model")


def usable_checkpoints(checkpoints: dict[int, Path], requested: Iterable[int] | None = None) -> dict[int, Path]:
    """The checkpoints whose weights are whole. Others (a save cut by a crash, or one still being
    written by a running trainer) are skipped with a warning; left in place, as a trainer may be
    writing them. A `requested` step whose checkpoint is incomplete is an error saying why."""
    from opsd.validation import InputError

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


def move_aside(path: str | Path, why: str) -> Path:
    """Move a file that cannot be used to ``<its folder>/replaced/<name>.<time>`` with a warning."""
    path = Path(path)
    target = path.parent / "replaced" / f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}"
    n = 1
    while target.exists():
        n += 1
        target = target.with_name(f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}-{n}{path.suffix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    logger.warning("%s %s; moved aside to %s", path, why, target)
    return target


def reusable_eval(path: str | Path, settings: dict, same_settings) -> bool:
    """True when an evaluation file exists and holds `settings` (per `same_settings`). A file cut by a
    crash, or holding other settings, is moved aside with a warning saying which settings differ."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        recorded = data.get("settings", {}) if isinstance(data, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        move_aside(path, "is cut off or unreadable (a crash while it was written?); it is evaluated again")
        return False
    if not isinstance(recorded, dict):
        move_aside(path, "holds no evaluation settings; it is evaluated again")
        return False
    if same_settings(recorded, settings):
        return True
    differ = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k) and k != "batch_size")
    changes = ", ".join(f"{k}: {recorded.get(k)!r} -> {settings.get(k)!r}" for k in differ)
    move_aside(path, f"was evaluated with other settings ({changes}); it is evaluated again with the new ones")
    return False


# ------------------------------------------------------------------------------------------ callback


class RunDirectoryCallback(TrainerCallback):
    """Writes config.yaml at the start, every log to metrics.jsonl, the summary to train_summary.json.

    On resume, metrics.jsonl and rollouts.jsonl are cut back to the checkpoint's step so the files
    continue without duplicates; a fresh start removes them. Only the main process writes.
    """

    def __init__(self, extra: dict | None = None):
        self.extra = dict(extra or {})

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        kind = RUN_KINDS.get(self.extra.get("run_kind", ""))
        save_config(args, out / "config.yaml", extra={"kind": kind} if kind else None)
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
            summary = {k: _json_safe(v) for k, v in {**logs, "step": state.global_step}.items()}
            write_json_atomic(out / "train_summary.json", summary)
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
