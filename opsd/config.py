"""Run configuration: dataclasses loaded from YAML profiles, overridden by papermill parameters or the CLI.

A profile (`reproduce/configs/NAME.yaml`) is a flat mapping of config fields, plus an optional `kind`
(`train`, `sft`, `grpo`). `load_config(kind, profile, overrides)` builds the entry point's dataclass;
an unknown key is an error that lists the valid ones, every value is parsed to its field's type and
range-checked (`opsd.validation`) before the config is built. YAML is read with `yaml.safe_load` only.
Bad input raises `opsd.validation.InputError` (a ValueError) naming the key, the value and what is expected.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from transformers import HfArgumentParser, TrainingArguments

from opsd.collapse import COLLAPSE_MODES, CollapseWatch
from opsd.contexts import POSITION_LAYOUTS, PROMPT_PROFILES, check_teacher_wording, read_wording
from opsd.divergence import DivergenceSpec
from opsd.models import LORA_TARGETS, LoRASettings
from opsd.privileged import TEACHER_CONTEXTS
from opsd.rollout import SamplingParams
from opsd.runs.atomic_io import write_text_atomic
from opsd.teacher import TEACHER_MODES
from opsd.validation import (
    INVALID_ROW_POLICIES,
    POSITIVE,
    POSITIVE_INT,
    TORCH_DTYPES,
    TRAINING_ARGUMENT_CHECKS,
    UNIT_HALF_OPEN,
    UNIT_OPEN_CLOSED,
    InputError,
    MissingInputError,
    Range,
    check_config,
    check_config_values,
    coerce_config_values,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "reproduce" / "configs"
DEFAULT_PROFILE = "cpu-tiny"
# Keys whose values must never reach a run directory, a log or a notebook output.
SECRET_KEYS = ("hub_token", "push_to_hub_token", "token", "wandb_api_key", "api_key")


@dataclass
class RunFields:
    """Fields every entry point shares: model, data, prompts, LoRA. Mixed into the TrainingArguments
    subclasses (`OPSDConfig`, `SFTRunConfig`, `GRPORunConfig`)."""

    #: what each field accepts (`opsd.validation.check_config_values`): the fields below, and the
    #: `TrainingArguments` fields every run config inherits (defined in transformers)
    FIELD_CHECKS: ClassVar[dict] = {
        **TRAINING_ARGUMENT_CHECKS,
        "torch_dtype": TORCH_DTYPES,
        "dataset_size": Range(lambda v: v > 0, "a positive number of rows or null (all)"),
        "prompt_profile": tuple(sorted(PROMPT_PROFILES)),
        "max_length": Range(lambda v: v > 0, "a positive number of tokens"),
        "on_overflow": ("error", "drop"),
        "on_invalid_row": INVALID_ROW_POLICIES,
        "lora_r": POSITIVE_INT,
        "lora_alpha": POSITIVE,
        "lora_dropout": UNIT_HALF_OPEN,
    }

    profile: str = field(default="custom", metadata={"help": "Name of the run profile this config came from."})
    model_name: str = field(default="smollm2-135m-instruct", metadata={"help": "Model alias, local path or Hub id."})
    torch_dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16 for the weights."})
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. flash_attention_2, sdpa, eager."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Off unless a profile sets it."})
    dataset: str = field(default="synthetic", metadata={"help": "'synthetic', a Hub id or a local file/folder."})
    dataset_split: str | None = field(default=None, metadata={"help": "Split to load (synthetic: train)."})
    dataset_size: int | None = field(default=None, metadata={"help": "Use only the first N rows (None: all)."})
    prompt_profile: str = field(default="paper", metadata={"help": "Prompt wording: paper | simple."})
    student_chat_kwargs: dict = field(default_factory=lambda: {"enable_thinking": False}, metadata={"help": "Keyword arguments of the student prompt's chat template."})
    teacher_chat_kwargs: dict = field(default_factory=lambda: {"enable_thinking": True}, metadata={"help": "Keyword arguments of the teacher prompt's chat template."})
    max_length: int = field(default=2048, metadata={"help": "Prompt + completion tokens per sequence."})
    on_overflow: str = field(default="error", metadata={"help": "Over-long prompt: error | drop (logged)."})
    on_invalid_row: str = field(default="error", metadata={"help": "Data row with a null / empty problem, solution or answer: error | drop (counted)."})
    use_lora: bool = field(default=True, metadata={"help": "Train LoRA adapters (False: every weight)."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank r."})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA scale alpha (the update is alpha / r * B A)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS), metadata={"help": "Module names LoRA adapts."})
    accelerate_config: str = field(default="ddp", metadata={"help": "reproduce/accelerate/<name>.yaml for multi-process runs."})

    def lora_settings(self) -> LoRASettings | None:
        if not self.use_lora:
            return None
        return LoRASettings(
            r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
            target_modules=tuple(self.lora_target_modules),
        )


@dataclass
class OPSDConfig(RunFields, TrainingArguments):
    """Every knob of the OPSD method on top of `TrainingArguments`.

    Defaults are the reference run's where it has one (beta 0, clip 0.05 point-wise, fixed teacher,
    temperature 1.1, top_p 0.95, top_k 20, 1024 completion tokens); profiles override them.
    """

    # objective
    beta: float = field(default=0.0, metadata={"help": "Generalized JSD weight: 0 forward KL(T||S), 1 reverse KL."})
    loss_temperature: float | None = field(default=None, metadata={"help": "Temperature on both logits (None: sampling temperature)."})
    teacher_top_k: int | None = field(default=None, metadata={"help": "Restrict the divergence to the teacher's top-k entries (None: the whole vocabulary; `top_k` is the sampling one)."})
    clip: float | None = field(default=0.05, metadata={"help": "Clip threshold c (None: no clipping, the only way to turn it off)."})
    clip_mode: str = field(default="pointwise", metadata={"help": "How to clip when clip is set: pointwise | token."})
    loss_type: str = field(default="full", metadata={"help": "full (vocabulary divergence) | sampled_token."})
    objective_dtype: str = field(default="float32", metadata={"help": "Precision of the divergence: float32 (bf16 logits upcast) | bfloat16 (on bf16 logits, no upcast: the reference's)."})
    divergence_chunk_size: int | None = field(default=None, metadata={"help": "Positions per chunk (None: automatic when vocab > 65,536, else unchunked; 0: never chunk)."})
    fused_hidden_loss: bool = field(default=False, metadata={"help": "Compute student logits chunk by chunk from hidden states."})
    # teacher
    teacher_mode: str = field(default="fixed", metadata={"help": "fixed (adapters off) | ema | dynamic."})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA teacher: weight of the old teacher per step, in [0, 1)."})
    legacy_mismatch: bool = field(default=False, metadata={"help": "Student prompt without chat template (earlier reference code)."})
    teacher_think_opener: bool = field(default=False, metadata={"help": "Append '<think>\\n' to the teacher prompt (thinking teacher, non-thinking student)."})
    teacher_transition: str | None = field(default=None, metadata={"help": "The paragraph after the reference block of the paper/plain teacher prompt: the text, or file:PATH (relative to the repository root; one trailing newline dropped). None: the kit's wording (opsd.contexts.PAPER_TRANSITION)."})
    teacher_instruction: str | None = field(default=None, metadata={"help": "The closing instruction of the paper/plain teacher prompt: the text or file:PATH. None: opsd.contexts.BOXED_INSTRUCTION."})
    teacher_context: str = field(default="reference", metadata={"help": "What the teacher reads besides the problem: reference (the row's reference solution) | none (the teacher prompt without it) | other (another training row's reference, a fixed draw from seed) | wrong (the row's reference with its final answer changed); opsd.privileged."})
    position_layout: str = field(default="kit", metadata={"help": "How [prompt][rollout] is scored: kit (left padding, positions over attended tokens) | reference (right padding per micro-batch, no position ids, as the reference trainer); opsd.contexts."})
    # rollout
    rollout_backend: str = field(default="hf", metadata={"help": "hf | vllm."})
    temperature: float = field(default=1.1, metadata={"help": "Sampling temperature of the rollouts (> 0)."})
    top_p: float = field(default=0.95, metadata={"help": "Sampling nucleus, in (0, 1]."})
    top_k: int = field(default=20, metadata={"help": "Sampling top-k (0: off); the divergence's teacher support is teacher_top_k."})
    max_completion_length: int = field(default=1024, metadata={"help": "Rollout tokens per sequence (below max_length)."})
    num_generations: int = field(default=1, metadata={"help": "Rollouts per problem."})
    vllm_gpu_memory_utilization: float = field(default=0.6, metadata={"help": "vLLM: fraction of GPU memory it may take, in (0, 1]."})
    vllm_sleep: bool = field(default=False, metadata={"help": "vLLM: free its memory between rollouts (sleep mode)."})
    fast_inference: bool = field(default=True, metadata={"help": "CPU: rollouts, teacher and student passes on packed oneDNN weights, top-p without a full sort (opsd.packed_linear; same results up to float rounding). False: the reference path."})
    # schedule
    lr_schedule_horizon: int | None = field(default=None, metadata={"help": "Optimizer steps over which lr_scheduler_type runs (warm-up included), while training stops at max_steps; None: max_steps. The reference decays linearly over 30 epochs: 27600 steps in its profiles."})
    # collapse watch (opsd.collapse)
    collapse_watch: str = field(default="off", metadata={"help": "Watch the signals that precede collapse (rollout length, boxed rate, student entropy, repetition): off | warn | stop (warn, then end training)."})
    collapse_bounds: dict = field(default_factory=dict, metadata={"help": "Per-signal bounds overriding opsd.collapse.DEFAULT_COLLAPSE_BOUNDS, e.g. {boxed_rate: [drop, 0.2]}."})
    collapse_baseline_steps: int = field(default=5, metadata={"help": "Steps whose median is each signal's baseline."})
    collapse_patience: int = field(default=3, metadata={"help": "Consecutive steps outside a bound before the watch warns."})
    # logging
    log_rollouts_every: int = field(default=10, metadata={"help": "Write sample rollouts every N steps (0: never)."})
    num_logged_rollouts: int = field(default=2, metadata={"help": "Rollouts written each time rollouts are logged."})

    #: what each field above accepts (`opsd.validation.check_config_values`)
    FIELD_CHECKS: ClassVar[dict] = {
        "divergence_chunk_size": Range(lambda v: v >= 0, "0 (never chunk), a positive integer or null (automatic)"),
        "ema_decay": UNIT_HALF_OPEN,
        "rollout_backend": ("hf", "vllm"),
        "temperature": Range(lambda v: v > 0, "a positive number (the sampling temperature; 0 would divide the logits by 0)"),
        "top_p": UNIT_OPEN_CLOSED,
        "top_k": Range(lambda v: v >= 0, "0 (off) or a positive integer (sampling)"),
        "max_completion_length": Range(lambda v: v > 0, "a positive number of tokens"),
        "num_generations": POSITIVE_INT,
        "vllm_gpu_memory_utilization": UNIT_OPEN_CLOSED,
        "log_rollouts_every": Range(lambda v: v >= 0, "0 (never) or a positive integer"),
        "num_logged_rollouts": Range(lambda v: v >= 0, "0 or a positive integer"),
        "position_layout": POSITION_LAYOUTS,
        "teacher_context": TEACHER_CONTEXTS,
        "collapse_watch": COLLAPSE_MODES,
        "collapse_baseline_steps": POSITIVE_INT,
        "collapse_patience": POSITIVE_INT,
    }

    def __post_init__(self):
        check_config(self)  # types and ranges, before TrainingArguments sees the values
        # the objective's options, checked once here: opsd_loss and the diagnostics read this one value
        self.objective = DivergenceSpec(
            beta=self.beta, temperature=self.effective_loss_temperature, teacher_top_k=self.teacher_top_k,
            clip=self.clip, clip_mode=self.clip_mode, loss_type=self.loss_type, dtype=self.objective_dtype,
        )
        try:
            self.collapse_watcher()  # the bounds, checked once
        except ValueError as err:
            raise InputError(str(err)) from None
        self.remove_unused_columns = False
        self.dataloader_pin_memory = False  # batches are problem texts, tokenized in the step: nothing to pin
        super().__post_init__()
        if self.teacher_mode not in TEACHER_MODES:
            raise InputError(f"teacher_mode must be one of {TEACHER_MODES}, got {self.teacher_mode!r}")
        if self.teacher_mode == "fixed" and not self.use_lora:
            raise InputError(
                "teacher_mode='fixed' is the base model with LoRA adapters disabled, so it needs use_lora=True; "
                "use teacher_mode='dynamic' or 'ema' for full fine-tuning"
            )
        check_opsd_settings(self)
        if self.max_completion_length >= self.max_length:
            raise InputError(
                f"max_completion_length ({self.max_completion_length}) must be below max_length ({self.max_length}) "
                "to leave room for the prompt"
            )

    @property
    def effective_loss_temperature(self) -> float:
        return self.loss_temperature if self.loss_temperature is not None else self.temperature

    @property
    def max_prompt_length(self) -> int:
        return self.max_length - self.max_completion_length

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            max_new_tokens=self.max_completion_length, n=self.num_generations,
        )

    def collapse_watcher(self) -> CollapseWatch:
        """A fresh `opsd.collapse.CollapseWatch` with this config's bounds, baseline and patience."""
        return CollapseWatch(self.collapse_bounds, self.collapse_baseline_steps, self.collapse_patience)

    def context_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `opsd.contexts.build_dual_contexts` this config sets."""
        return {
            "profile": self.prompt_profile, "student_chat_kwargs": self.student_chat_kwargs,
            "teacher_chat_kwargs": self.teacher_chat_kwargs, "max_prompt_length": self.max_prompt_length,
            "legacy_mismatch": self.legacy_mismatch, "on_overflow": self.on_overflow,
            "teacher_think_opener": self.teacher_think_opener, "position_layout": self.position_layout,
            "teacher_transition": read_wording(self.teacher_transition, REPO_ROOT),
            "teacher_instruction": read_wording(self.teacher_instruction, REPO_ROOT),
        }

    @property
    def lr_schedule_steps(self) -> int:
        """The schedule's length in optimizer steps: `lr_schedule_horizon`, else `max_steps`."""
        return self.lr_schedule_horizon if self.lr_schedule_horizon is not None else self.max_steps


def check_opsd_settings(config: OPSDConfig) -> None:
    """InputError for a teacher wording or schedule horizon that cannot be used."""
    try:
        check_teacher_wording(config.prompt_profile, read_wording(config.teacher_transition, REPO_ROOT),
                              read_wording(config.teacher_instruction, REPO_ROOT))
    except ValueError as err:
        raise InputError(str(err)) from None
    horizon = config.lr_schedule_horizon
    if horizon is not None and (horizon < 1 or (config.max_steps > 0 and horizon < config.max_steps)):
        raise InputError(f"lr_schedule_horizon={horizon} is out of range: it must be a number of optimizer steps "
                         f">= max_steps ({config.max_steps}), or null (the schedule ends at max_steps)")


#: The `kind` a profile declares for each config class (`kind: train` profiles build an OPSDConfig).
CONFIG_KINDS = {"OPSDConfig": "train", "SFTRunConfig": "sft", "GRPORunConfig": "grpo"}


def profile_path(profile: str | Path) -> Path:
    """A profile name (`cpu-tiny`) or a path to a YAML file -> the YAML path (error lists valid names)."""
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = CONFIG_DIR / f"{profile}.yaml"
    if candidate.exists():
        return candidate
    if path.suffix in (".yaml", ".yml"):
        raise MissingInputError(f"profile file {str(profile)!r} does not exist; valid profile names: {available_profiles()}")
    raise InputError(f"unknown profile {str(profile)!r}; valid profiles: {available_profiles()}")


def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def read_profile(profile: str | Path) -> dict[str, Any]:
    """The profile's mapping (safe_load), `kind` included."""
    path = profile_path(profile)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise InputError(f"profile {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"profile {str(path)!r} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise InputError(f"profile {str(profile)!r} must be a mapping of config keys, got {type(data).__name__}")
    data.setdefault("profile", Path(profile).stem)
    return data


def field_names(config_class) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(config_class) if f.init)


def fields_help(config_class, width: int = 100) -> str:
    """Every field of `config_class` as ``key=VALUE  meaning (default: ...)``, one entry per field, in the
    order `transformers.HfArgumentParser` reads them (its help texts, choices and defaults)."""
    names = set(field_names(config_class))
    entries = []
    for action in HfArgumentParser(config_class)._actions:  # the parser's per-field arguments
        if action.dest not in names or any(o.startswith("--no_") for o in action.option_strings):
            continue  # the parser's extra --no_<flag> of a boolean that defaults to true
        default = action.default if action.default is not dataclasses.MISSING else "required"
        choices = f" One of {list(action.choices)}." if action.choices else ""
        text = f"{(action.help or '').replace('%%', '%')}{choices} (default: {default!r})".strip()
        entries.append(f"  {action.dest}=\n" + textwrap.fill(text, width, initial_indent=" " * 6,
                                                             subsequent_indent=" " * 6))
    return "\n".join(entries)


def command_parser(prog: str, config_class, default_profile: str, description: str) -> argparse.ArgumentParser:
    """The parser of a command run from a profile: ``--config PROFILE``, ``--no-resume``, ``key=value ...``;
    its ``--help`` lists every field of `config_class` (`fields_help`)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"configuration fields (set them in the profile, or as key=value after the options):\n"
               f"{fields_help(config_class)}")
    parser.add_argument("--config", default=default_profile, help=f"profile name or YAML path (default: {default_profile})")
    parser.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints exist")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of configuration fields (below)")
    return parser


def check_keys(config_class, keys, where: str) -> None:
    """Raise InputError (a ValueError) for keys that are not fields of `config_class`, listing the valid ones."""
    valid = field_names(config_class)
    unknown = [k for k in keys if k not in valid]
    if unknown:
        hints = {k: difflib.get_close_matches(k, valid, n=1) for k in unknown}
        hint = "; ".join(f"{k!r}: did you mean {v[0]!r}?" for k, v in hints.items() if v)
        raise InputError(
            f"unknown {where} key(s) {unknown} for {config_class.__name__}. "
            + (hint + ". " if hint else "")
            + f"Valid keys: {valid}"
        )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """['lr=1e-4', 'clip=null'] -> {'lr': '1e-4', 'clip': None}; values are parsed as YAML (flow) values,
    then `load_config` parses each to its field's type ('1e-4' -> 0.0001 for a float field)."""
    out = {}
    for pair in pairs:
        if "=" not in pair or not pair.split("=", 1)[0].strip():
            raise InputError(f"override {pair!r} must look like key=value")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise InputError(f"override {pair!r}: the value is not valid YAML ({problem}); quote it or fix it") from None
    return out


def load_config(config_class, profile: str | Path | None = DEFAULT_PROFILE, overrides: Mapping | None = None, **extra):
    """Build `config_class` from a profile, then `overrides` and `extra` (later wins): `parsed_values`."""
    return config_class(**parsed_values(config_class, profile, overrides, **extra))


def parsed_values(config_class, profile: str | Path | None = DEFAULT_PROFILE, overrides: Mapping | None = None,
                  **extra) -> dict[str, Any]:
    """The values a profile, then `overrides` and `extra` (later wins), set for `config_class`, checked.

    Per source, keys are checked (unknown: an error listing the valid ones) and values parsed to their
    fields' types; then ranges are checked. A profile of another kind (`kind: sft` for an OPSDConfig) is
    an error. All before any model is loaded; fields no source sets are left out (their defaults apply).
    """
    values: dict[str, Any] = {}
    if profile is not None:
        values.update(read_profile(profile))
    declared, expected = values.pop("kind", None), CONFIG_KINDS.get(config_class.__name__)
    if declared is not None and expected is not None and declared != expected:
        raise InputError(f"profile {str(profile)!r} is a {declared!r} profile, not {expected!r}: use "
                         f"`python -m opsd {declared} --config {profile}`, or a {expected!r} profile")
    check_keys(config_class, values, "profile")
    values = coerce_config_values(config_class, values, f"profile {Path(str(profile)).name}:")
    overrides = dict(overrides or {})
    overrides.update(extra)
    check_keys(config_class, overrides, "override")
    values.update(coerce_config_values(config_class, overrides, "override"))
    check_config_values(config_class, values)
    return values


def config_to_dict(config) -> dict[str, Any]:
    """Plain, YAML-safe dict of a config with secrets removed."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
    clean = {}
    for key, value in raw.items():
        if any(key == s or key.endswith("_" + s) for s in SECRET_KEYS):
            continue
        if isinstance(value, (list, tuple)):
            clean[key] = [_plain(v) for v in value]
        elif isinstance(value, dict):
            clean[key] = {str(k): _plain(v) for k, v in value.items()}
        else:
            clean[key] = _plain(value)
    return clean


def _plain(value):
    """A YAML scalar as it is; anything else as its str()."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def save_config(config, path: str | Path, extra: Mapping | None = None) -> None:
    """Write the config (secrets removed, `extra` keys added) as YAML, atomically (temporary file, rename)."""

    data = {**config_to_dict(config), **dict(extra or {})}
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=True))
