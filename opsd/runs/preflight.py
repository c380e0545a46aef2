"""Preflight: what a profile needs on this machine, checked before any model loads, every gap listed at once.

    python -m opsd preflight --config qwen3-1.7b-4xh100 --num-processes 4     # exit code 0 ready, 2 not

`profile_problems(profile, overrides, num_processes=N)` returns a list of `Problem` (what is missing, what
to do about it) for a training profile (`kind: train`, `sft`, `grpo`) or an evaluation profile (`kind:
eval`); `eval_problems` checks resolved evaluation settings. What is checked, where the profile needs it:

- CUDA devices: at least one (bf16 / fp16 mixed precision, flash-attn, vLLM, a GPU accelerate config with
  N > 1 processes), and N of them for N processes; bf16 support (compute capability 8.0 or newer);
- flash-attn (``attn_implementation: flash_attention_2``), vLLM (``rollout_backend: vllm``, ``use_vllm``,
  ``backend: vllm``), DeepSpeed (an accelerate config of type DEEPSPEED with N > 1), TRL (every trainer):
  importable;
- with ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set: the Hub model and dataset in the local caches
  (a local path must exist, the kit's embedded model must be installed, whether offline or not);
- free disk under ``output_dir`` for the checkpoints (`checkpoint_bytes`, an estimate).

`require_ready` raises `PreflightError` (an `InputError`: the command line prints it and exits with code 2).
Profile values are parsed and range-checked first, as `opsd.config.load_config` does, so a bad value is
reported as such; the config object itself is not built (`TrainingArguments` would set up devices).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
import yaml

from opsd.config import OPSDConfig, parse_overrides, parsed_values, read_profile
from opsd.data import BENCHMARKS, SYNTHETIC_SOURCES, local_benchmark_dir, looks_like_hub_dataset_id
from opsd.models import (
    EMBEDDED_MODEL,
    START_MODEL,
    cache_root,
    embedded_gguf_path,
    hub_cached_model,
    hub_offline,
    looks_like_hub_id,
)
from opsd.runs.launch import ACCELERATE_DIR
from opsd.validation import InputError

GIB = 2**30
#: Checkpoints assumed when the step count is not known before the data loads (epoch-based SFT).
UNKNOWN_CHECKPOINTS = 10
#: Share of a model's parameters that LoRA r=64 on every projection trains (Qwen3-1.7B: 70M of 1.7B).
LORA_R64_SHARE = 0.04


@dataclass(frozen=True)
class Problem:
    """One missing piece: `missing` says what and why the profile needs it, `fix` what to do."""

    missing: str
    fix: str


class PreflightError(InputError):
    """The machine lacks what the profile needs; the message lists every `Problem`."""

    def __init__(self, title: str, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__(format_problems(title, self.problems))


def format_problems(title: str, problems: Sequence[Problem]) -> str:
    """`title`: ready, or one numbered line per problem with its fix below it."""
    if not problems:
        return f"preflight {title}: ready"
    lines = [f"preflight {title}: {len(problems)} missing piece(s), nothing was loaded"]
    for i, p in enumerate(problems, 1):
        lines += [f"  {i}. {p.missing}", f"     -> {p.fix}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ machine probes


def cuda_devices() -> int:
    """CUDA devices visible to torch (0 on a CPU build)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def bf16_capable(device: int) -> bool:
    """Whether CUDA device `device` runs bf16 (compute capability 8.0 or newer)."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def import_problem(module: str) -> str | None:
    """None if `module` imports, else why not (not installed, or the import's error)."""
    if find_spec(module) is None:
        return "not installed"
    try:
        import_module(module)
    except Exception as err:  # noqa: BLE001 - a broken wheel fails in many ways; say how
        return f"installed but fails to import ({type(err).__name__}: {str(err).splitlines()[0][:160]})"
    return None


def free_bytes(path: str | Path) -> int:
    """Free bytes on the disk that holds `path` (its nearest existing folder)."""
    folder = Path(path).expanduser().absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def launched_processes() -> int:
    """Processes of this launch (``WORLD_SIZE`` under accelerate / torchrun; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE") or 1)


def hub_cached(repo_id: str, repo_type: str) -> bool:
    """Whether the local caches hold `repo_id`: a model's config.json; a dataset's Hub snapshot or its
    `datasets` cache folder."""
    from huggingface_hub import constants

    if repo_type == "model":
        return hub_cached_model(repo_id)
    snapshots = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "snapshots"
    if snapshots.is_dir() and any(snapshots.iterdir()):
        return True
    import datasets.config  # only here: the datasets cache location

    return (Path(datasets.config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")).is_dir()


# ------------------------------------------------------------------------------------------ checks


def _cuda_problems(reasons: list[str], needed: int, cpu_fix: str) -> list[Problem]:
    if not reasons:
        return []
    found = cuda_devices()
    why = "; ".join(reasons)
    if found == 0:
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        return [Problem(f"CUDA devices: none found ({build}); the profile needs {needed} ({why})",
                        f"run on a machine with {needed} NVIDIA GPU(s) and a CUDA build of torch, or {cpu_fix}")]
    if found < needed:
        return [Problem(f"CUDA devices: {found} found, {needed} needed ({why})",
                        f"run on a machine with {needed} GPUs, or lower num_processes to {found} (the batch per "
                        "optimizer step shrinks with it)")]
    return []


def model_problems(name: str) -> list[Problem]:
    """The model `name` (a kit alias, a local folder, a Hub id) is there, or (online) can be fetched."""
    if str(name).lower() in (EMBEDDED_MODEL, START_MODEL):
        if (cache_root() / EMBEDDED_MODEL).is_dir():
            return []
        try:
            embedded_gguf_path()
        except FileNotFoundError as err:
            return [Problem(f"model {name!r}: the embedded model is not installed", str(err).splitlines()[-1].strip())]
        return []
    if Path(name).expanduser().exists():
        return []
    if not looks_like_hub_id(str(name)):
        return [Problem(f"model {name!r}: no such folder", "give model_name=<local folder> or a Hub id")]
    if hub_offline() and not hub_cached(str(name), "model"):
        return [Problem(f"model {name!r}: not in the local Hub cache, and the Hub is off (HF_HUB_OFFLINE)",
                        f"on a machine with network: huggingface-cli download {name} (then copy "
                        "~/.cache/huggingface/hub here), or give model_name=<local folder>")]
    return []


def dataset_problems(source: str) -> list[Problem]:
    """The training data `source` (synthetic, a local file or folder, a Hub id) is there, or can be fetched."""
    if str(source) in SYNTHETIC_SOURCES or Path(source).expanduser().exists():
        return []
    if not looks_like_hub_dataset_id(str(source)):
        return [Problem(f"dataset {source!r}: no such file or folder", "give dataset=<local file or folder> or a Hub id")]
    if hub_offline() and not hub_cached(str(source), "dataset"):
        return [Problem(f"dataset {source!r}: not in the local caches, and the Hub is off (HF_HUB_OFFLINE)",
                        f"on a machine with network: huggingface-cli download --repo-type dataset {source} "
                        "(then copy ~/.cache/huggingface here), or give dataset=<local parquet/jsonl folder>")]
    return []


def benchmark_problems(names: Sequence[str]) -> list[Problem]:
    """Each evaluation benchmark is synthetic, a local file, a local copy under ``$OPSD_DATA_DIR`` or
    (offline) in the Hub cache."""
    out = []
    for name in names:
        source = BENCHMARKS.get(name)
        if source is None:
            if name not in BENCHMARKS and not Path(name).expanduser().exists():
                out += dataset_problems(name)
            continue
        if local_benchmark_dir(name) is None and hub_offline() and not hub_cached(source.hub_id, "dataset"):
            out.append(Problem(f"benchmark {name!r} ({source.hub_id}): no local copy under $OPSD_DATA_DIR and "
                               "not in the Hub cache, and the Hub is off (HF_HUB_OFFLINE)",
                               f"put a copy in $OPSD_DATA_DIR/{source.local_name}/ (parquet or jsonl), or "
                               f"huggingface-cli download --repo-type dataset {source.hub_id} with network"))
    return out


def _package(module: str, why: str, fix: str) -> list[Problem]:
    reason = import_problem(module)
    return [] if reason is None else [Problem(f"{module}: {reason}; {why}", fix)]


def _accelerate_type(name: str) -> str | None:
    path = ACCELERATE_DIR / f"{name}.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("distributed_type") if path.is_file() else None


def model_parameters(name: str) -> float | None:
    """Parameters from a model name's size tag (``Qwen3-1.7B`` -> 1.7e9, ``smollm2-135m`` -> 1.35e8), or None."""
    found = re.findall(r"(\d+(?:\.\d+)?)([bm])(?![a-z])", Path(str(name)).name.lower())
    if not found:
        return None
    number, unit = found[-1]
    return float(number) * (1e9 if unit == "b" else 1e6)


def checkpoint_bytes(values: Mapping[str, Any]) -> tuple[int, int]:
    """(checkpoints kept, bytes per checkpoint), an estimate: LoRA keeps fp32 adapters and two Adam moments
    (12 bytes per trained parameter, ``LORA_R64_SHARE`` of the model at r 64, scaled with r); full
    fine-tuning 16 bytes per parameter. Unknown model size: 1e9 parameters."""
    params = model_parameters(values.get("model_name", "")) or 1e9
    if values.get("use_lora", True):
        per = 12 * params * LORA_R64_SHARE * float(values.get("lora_r") or 64) / 64
    else:
        per = 16 * params
    steps, every = int(values.get("max_steps") or -1), int(values.get("save_steps") or 500)
    count = math.ceil(steps / every) if steps > 0 and every >= 1 else UNKNOWN_CHECKPOINTS
    limit = values.get("save_total_limit")
    return (min(count, int(limit)) if limit else count), int(per)


def _disk_problems(values: Mapping[str, Any]) -> list[Problem]:
    out_dir = str(values.get("output_dir") or "runs")
    count, per = checkpoint_bytes(values)
    needed, free = (count + 1) * per + GIB, free_bytes(out_dir)  # + the final model, + 1 GiB of logs and slack
    if free >= needed:
        return []
    return [Problem(f"free disk: {free / GIB:.1f} GiB under {out_dir}, the run needs about {needed / GIB:.1f} GiB "
                    f"({count} checkpoints + the final model of ~{per / GIB:.2f} GiB each, estimated)",
                    "free space there, set output_dir=<a folder on a larger disk>, or save_total_limit=<fewer>")]


def training_problems(values: Mapping[str, Any], kind: str, num_processes: int = 1) -> list[Problem]:
    """Every problem of a training run (`kind` train / sft / grpo) with config `values` on `num_processes`."""
    reasons = []
    bf16, fp16 = bool(values.get("bf16")), bool(values.get("fp16"))
    if bf16:
        reasons.append("bf16: true")
    if fp16:
        reasons.append("fp16: true")
    attn = values.get("attn_implementation")
    if attn == "flash_attention_2":
        reasons.append("flash_attention_2")
    uses_vllm = values.get("rollout_backend") == "vllm" if kind == "train" else bool(values.get("use_vllm"))
    if uses_vllm:
        reasons.append("vLLM rollouts")
    accel = str(values.get("accelerate_config") or "ddp")
    accel_type = _accelerate_type(accel)
    if num_processes > 1 and not accel.startswith("cpu"):
        reasons.insert(0, f"{num_processes} processes with accelerate config {accel}, one GPU each")
    problems = _cuda_problems(reasons, max(1, num_processes), "use a CPU profile (cpu-tiny, sft-cpu-tiny, grpo-cpu-tiny)")
    found = cuda_devices()
    local = int(os.environ.get("LOCAL_RANK") or 0)
    if found > local and (bf16 or values.get("torch_dtype") == "bfloat16") and not bf16_capable(local):
        problems.append(Problem(f"bf16: CUDA device {local} ({torch.cuda.get_device_name(local)}) does not support it",
                                "run on an Ampere or newer GPU (A100, H100), or set bf16=false torch_dtype=float32"))
    elif bf16 and found == 0:
        problems.append(Problem("bf16: mixed precision needs a CUDA GPU with bf16 (this machine has none)",
                                "run on an Ampere or newer GPU, or set bf16=false torch_dtype=float32 for a CPU try"))
    if num_processes > 1 and accel_type is None:
        valid = sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml"))
        problems.append(Problem(f"accelerate config {accel!r}: no reproduce/accelerate/{accel}.yaml",
                                f"set accelerate_config to one of {valid}"))
    if attn == "flash_attention_2":
        problems += _package("flash_attn", "attn_implementation flash_attention_2 needs it",
                             "pip install flash-attn --no-build-isolation (on the CUDA machine), or attn_implementation=sdpa")
    if uses_vllm:
        switch = "rollout_backend=hf" if kind == "train" else "use_vllm=false"
        problems += _package("vllm", "the profile samples with vLLM",
                             f"pip install 'opsd-kit[gpu]' (vllm 0.27.1), or {switch} (slower rollouts)")
    if num_processes > 1 and accel_type == "DEEPSPEED":
        problems += _package("deepspeed", f"accelerate config {accel} is DeepSpeed",
                             "pip install deepspeed, or accelerate_config=ddp")
    problems += _package("trl", f"the {kind} trainer imports it" if kind != "train" else
                         "OPSDTrainer's rollout step imports trl.models.utils", "pip install trl==1.16.0")
    problems += model_problems(str(values.get("model_name") or EMBEDDED_MODEL))
    problems += dataset_problems(str(values.get("dataset") or "synthetic"))
    return problems + _disk_problems(values)


def eval_problems(backend: str, benchmarks: Sequence[str], model_name: str | None = None) -> list[Problem]:
    """Every problem of an evaluation with `backend` (hf / vllm) on `benchmarks` of `model_name` (None: not known
    yet, e.g. a profile checked on its own)."""
    problems = []
    if backend == "vllm":
        problems += _cuda_problems(["backend: vllm"], 1, "evaluate with --backend hf")
        problems += _package("vllm", "backend vllm needs it", "pip install 'opsd-kit[gpu]' (vllm 0.27.1), or --backend hf")
    if model_name is not None:
        problems += model_problems(str(model_name))
    return problems + benchmark_problems(list(benchmarks))


# ------------------------------------------------------------------------------------------ profiles


def _field_defaults(config_class) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def config_values(config_class, profile: str | Path, overrides: Mapping | None = None) -> dict[str, Any]:
    """The values `load_config(config_class, profile, overrides)` would build a config from, field defaults
    filled in, without building it (`opsd.config.parsed_values`: bad values raise its `InputError`s)."""
    return {**_field_defaults(config_class), **parsed_values(config_class, profile, overrides)}


def profile_problems(profile: str | Path, overrides: Mapping | None = None, *, num_processes: int = 1,
                     config_classes: Mapping[str, type] | None = None, model_name: str | None = None) -> list[Problem]:
    """Every problem of `profile` (+ `overrides`) on this machine with `num_processes` processes.

    `config_classes`: kind -> config class (``train``: `OPSDConfig` by default; ``sft`` / ``grpo`` come from
    `opsd.baselines.train`, which needs TRL: without them their profiles' values are read unparsed).
    `model_name`: for an evaluation profile, the model it will evaluate (None: not checked).
    """
    raw = read_profile(profile)
    kind = raw.get("kind", "train")
    if kind == "eval":
        values = {**raw, **dict(overrides or {})}
        names = [b.strip() for b in str(values.get("benchmarks") or "synthetic").split(",") if b.strip()]
        return eval_problems(str(values.get("backend") or "hf"), names, model_name)
    classes = {"train": OPSDConfig, **dict(config_classes or {})}
    if kind in classes:
        values = config_values(classes[kind], profile, overrides)
    else:
        values = {**raw, **dict(overrides or {})}
    return training_problems(values, kind, num_processes)


def require_ready(profile: str | Path, overrides: Mapping | None = None, *, num_processes: int = 1,
                  kind: str | None = None, config_class=None) -> None:
    """Raise `PreflightError` listing every problem of `profile` on this machine (see `profile_problems`).

    `kind`: the entry point's kind (train, sft, grpo): a profile of another kind is left to the entry point's
    own error. `config_class`: that kind's config class (sft / grpo)."""
    declared = read_profile(profile).get("kind", "train")
    if kind is not None and declared != kind:
        return
    classes = {declared: config_class} if config_class is not None else None
    problems = profile_problems(profile, overrides, num_processes=num_processes, config_classes=classes)
    if problems:
        raise PreflightError(f"{profile} (num_processes {num_processes})", problems)


def require_eval_ready(backend: str, benchmarks: Sequence[str], model_name: str | None = None) -> None:
    """Raise `PreflightError` listing every problem of an evaluation (see `eval_problems`)."""
    problems = eval_problems(backend, benchmarks, model_name)
    if problems:
        raise PreflightError(f"evaluation ({backend}, {', '.join(benchmarks)})", problems)


def main(argv: Sequence[str] | None = None, config_classes: Mapping[str, type] | None = None) -> int:
    """`python -m opsd preflight --config PROFILE [--num-processes N] [--model NAME] [key=value ...]`."""

    parser = argparse.ArgumentParser(prog="python -m opsd preflight", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="profile name (reproduce/configs/) or YAML path")
    parser.add_argument("--num-processes", type=int, default=1, help="processes (GPUs) the run will use")
    parser.add_argument("--model", default=None, help="evaluation profiles: the model to evaluate")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config fields")
    ns = parser.parse_args(list(argv or []))
    if ns.num_processes < 1:
        raise InputError(f"--num-processes must be >= 1, got {ns.num_processes}")
    problems = profile_problems(ns.config, parse_overrides(ns.overrides), num_processes=ns.num_processes,
                                config_classes=config_classes, model_name=ns.model)
    print(format_problems(f"{ns.config} (num_processes {ns.num_processes})", problems))
    return 2 if problems else 0

