"""The run directory: every file name a run writes, and the one reader and writer of each.

    config.yaml            resolved config (with the run's `kind`: train | sft | grpo), secrets removed
    metrics.jsonl          one JSON object per logged step ({"step": N, "loss": ..., ...})
    rollouts.jsonl         sample rollouts with per-token divergence (OPSD runs)
    checkpoint-<N>/        Trainer checkpoints (LoRA adapters when LoRA is on) and the trainer's own state
    incomplete/            checkpoints a crash left half-written, moved aside on resume
    train_summary.json     the Trainer's runtime numbers
    run_info.json          the final step, tokens generated (`write_run_info`)
    eval/<benchmark>/step-<N>.json   one evaluation (step 0: the base model; `write_eval_json`)

The final model (adapters or weights, tokenizer) is saved at the top level. While training,
`opsd.runs.runlog.RunDirectoryCallback` writes config.yaml, metrics.jsonl and train_summary.json.

Crash safety. Every reader accepts what a kill leaves behind (files: `opsd.runs.atomic_io`):

- a checkpoint counts only when complete (`checkpoint_problem`): its `trainer_state.json` (the Trainer
  writes it after the weights, optimizer and RNG state) parses and names the folder's step, its files
  are whole (`opsd.runs.file_integrity`), and the trainer's own state files (`required`) exist. A resume
  moves incomplete ones aside with a warning (`resume_checkpoint`) and continues from the last complete one;
- an evaluation file cut by a crash, or written with other settings, is moved aside and redone (`reusable_eval`).
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

import yaml

from opsd.runs.atomic_io import read_jsonl, write_json_atomic, write_text_atomic
from opsd.runs.file_integrity import file_problem, weights_problem

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
SUMMARY_FILE = "train_summary.json"
RUN_INFO_FILE = "run_info.json"
TRAINER_STATE_FILE = "trainer_state.json"
INCOMPLETE_DIR = "incomplete"
EVAL_DIR = "eval"
#: The logs a resume cuts back to its checkpoint's step.
LOG_FILES = (METRICS_FILE, ROLLOUTS_FILE)
#: metrics.jsonl's `run_kind` -> the `kind` of profiles and config.yaml.
RUN_KINDS = {"opsd": "train", "train": "train", "sft": "sft", "grpo": "grpo"}
#: One key per quantity in metrics.jsonl: keys older OPSD runs also logged (old -> the key kept). `objective`
#: was the step's loss again (the Trainer logs it as `loss`, averaged over micro-batches and processes);
#: `divergence` a copy of `divergence_mean`. `read_metrics` maps them, so old runs read like new ones.
METRIC_ALIASES = {"objective": "loss", "divergence": "divergence_mean"}
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """``run_dir/checkpoint-<step>``."""
    return Path(run_dir) / f"checkpoint-{int(step)}"


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` holds a run: a config.yaml, a metrics.jsonl or evaluations."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() or (path / METRICS_FILE).is_file() or (path / EVAL_DIR).is_dir()


def _unused_path(folder: Path, name: str, suffix: str = "") -> Path:
    """``folder/<name><suffix>``, else ``<name>-2<suffix>``, ``-3``, ... (the first that does not exist)."""
    target, n = folder / f"{name}{suffix}", 1
    while target.exists():
        n += 1
        target = folder / f"{name}-{n}{suffix}"
    return target


# ------------------------------------------------------------------------------------------ config, kind, metrics


def read_run_config(run_dir: str | Path, *, missing_ok: bool = False) -> dict:
    """``config.yaml`` as a dict. No file: {} when `missing_ok`, else FileNotFoundError."""
    from opsd.validation import InputError

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        if missing_ok:
            return {}
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run directory?")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise InputError(f"{path} holds a YAML {type(data).__name__}, not a mapping of config keys")
    return data


def run_kind(run_dir: str | Path) -> str | None:
    """`train` | `sft` | `grpo` for a run directory (config.yaml's `kind`, else metrics' `run_kind`), None
    when it holds no run."""
    try:
        kind = read_run_config(run_dir, missing_ok=True).get("kind")
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        kind = None
    if kind in RUN_KINDS:
        return RUN_KINDS[kind]
    for record in read_jsonl(Path(run_dir) / METRICS_FILE)[:1]:
        if record.get("run_kind") in RUN_KINDS:
            return RUN_KINDS[record["run_kind"]]
    return None


def check_run_kind(run_dir: str | Path, kind: str) -> None:
    """Raise if `run_dir` already holds a run of another kind (an SFT run continued as OPSD, ...)."""
    from opsd.validation import InputError

    found, wanted = run_kind(run_dir), RUN_KINDS.get(kind, kind)
    if found is not None and found != wanted:
        raise InputError(
            f"output_dir {run_dir} holds a {found!r} run, not a {wanted!r} run: training here "
            f"would mix the two. Use another output_dir, or continue it with `python -m opsd {found}`."
        )


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
    records = (canonical_metrics(r) for r in read_jsonl(Path(run_dir) / METRICS_FILE))
    return sorted(records, key=lambda r: r.get("step", 0))


def read_rollouts(run_dir: str | Path) -> list[dict]:
    """The sample rollouts an OPSD run logged, in the order written: ``{step, prompt, teacher_prompt,
    completion, tokens, divergence}`` each (``divergence``: one number per token)."""
    return read_jsonl(Path(run_dir) / ROLLOUTS_FILE)


def write_run_info(run_dir: str | Path, *, global_step: int, **extra) -> None:
    """``run_info.json`` at the end of a run: ``{"global_step": N, **extra}`` (``tokens_generated`` when the
    trainer counts them, ``resumed_from``, ...). Call it from the main process only."""
    write_json_atomic(Path(run_dir) / RUN_INFO_FILE, {"global_step": int(global_step), **extra})


# ------------------------------------------------------------------------------------------ checkpoints


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
        target = _unused_path(Path(run_dir) / INCOMPLETE_DIR, f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}")
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


# ------------------------------------------------------------------------------------------ evaluations


def check_eval_run_dir(run_dir: str | Path) -> None:
    """Raise a clear error unless `run_dir` is a training run directory (it has config.yaml)."""
    from opsd.validation import InputError, MissingInputError

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise MissingInputError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is a file, not a run directory")
    if (run_dir / CONFIG_FILE).is_file():
        return
    runs = sorted(p.name for p in run_dir.iterdir() if (p / CONFIG_FILE).is_file())
    if runs:
        raise InputError(f"{run_dir} is not a training run directory (no config.yaml) but holds runs {runs}: "
                         f"pass one of them, e.g. {run_dir / runs[0]}")
    raise InputError(f"{run_dir} is not a training run directory (no config.yaml): pass the output_dir of a "
                     "`python -m opsd train|sft|grpo` run, or evaluate a model with --model")


def find_latest_run(runs_root: str | Path = "runs", profile: str | None = "cpu-tiny") -> Path | None:
    """The most recently modified run directory under ``runs_root`` whose config.yaml has
    ``profile`` (any when None) and at least one checkpoint; None when there is none."""
    candidates = []
    for config in Path(runs_root).glob(f"*/{CONFIG_FILE}"):
        run = config.parent
        if not find_checkpoints(run):
            continue
        if profile is not None:
            try:
                if read_run_config(run).get("profile") != profile:
                    continue
            except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
                continue  # an unreadable config is not a run to evaluate
        candidates.append((config.stat().st_mtime, run))
    return max(candidates)[1] if candidates else None


def benchmark_slug(benchmark: str) -> str:
    """A benchmark's folder name: a name of ``opsd.data.BENCHMARKS`` itself, a local file's stem, else the
    name with every run of other characters than ``A-Za-z0-9_.-`` replaced by ``_``."""
    from opsd.data import BENCHMARKS

    if benchmark in BENCHMARKS:
        return benchmark
    is_local = os.path.exists(os.path.expanduser(str(benchmark)))
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(benchmark)).stem if is_local else benchmark)


def eval_path(run_dir: str | Path, benchmark: str, step: int) -> Path:
    """``run_dir/eval/<benchmark>/step-<step>.json`` (benchmark names that are paths use the stem)."""
    return Path(run_dir) / EVAL_DIR / benchmark_slug(benchmark) / f"step-{int(step)}.json"


def write_eval_json(run_dir: str | Path, benchmark: str, step: int, *, settings: dict, records: list[dict],
                    summary: dict, checkpoint: str | None = None) -> dict:
    """Write one evaluation to `eval_path` atomically and return it: ``{benchmark, step, k, checkpoint,
    settings, summary, records, created}``, ``records`` one graded sample each, ``summary`` from
    ``opsd.eval.grading.summarize``, ``checkpoint`` the folder name (None: the base model)."""
    payload = {
        "benchmark": benchmark, "step": step, "k": settings["k"], "checkpoint": checkpoint, "settings": settings,
        "summary": summary, "records": records, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_text_atomic(eval_path(run_dir, benchmark, step), json.dumps(payload, indent=1, ensure_ascii=False))
    return payload


def load_eval_results(run_dir: str | Path) -> list[dict]:
    """Every ``run_dir/eval/<benchmark>/step-<N>.json``, ordered by benchmark then step; each dict gets ``path``."""
    results = []
    for path in Path(run_dir).glob(f"{EVAL_DIR}/*/step-*.json"):
        results.append({**json.loads(path.read_text(encoding="utf-8")), "path": str(path)})
    return sorted(results, key=lambda r: (str(r.get("benchmark")), -1 if r.get("step") is None else r["step"]))


def same_eval_settings(a: dict, b: dict) -> bool:
    """Whether two evaluations' ``settings`` give the same evaluation (``batch_size`` does not count)."""
    return {k: v for k, v in a.items() if k != "batch_size"} == {k: v for k, v in b.items() if k != "batch_size"}


def move_aside(path: str | Path, why: str) -> Path:
    """Move a file that cannot be used to ``<its folder>/replaced/<name>.<time>`` with a warning."""
    path = Path(path)
    target = _unused_path(path.parent / "replaced", f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}", path.suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    logger.warning("%s %s; moved aside to %s", path, why, target)
    return target


def reusable_eval(path: str | Path, settings: dict) -> bool:
    """True when an evaluation file exists and holds the same `settings` (`same_eval_settings`). A file cut
    by a crash, or holding other settings, is moved aside with a warning saying which settings differ."""
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
    if same_eval_settings(recorded, settings):
        return True
    differ = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k) and k != "batch_size")
    changes = ", ".join(f"{k}: {recorded.get(k)!r} -> {settings.get(k)!r}" for k in differ)
    move_aside(path, f"was evaluated with other settings ({changes}); it is evaluated again with the new ones")
    return False
