"""Checks of everything a user hands in, done before any model is loaded, with errors that say what to fix.

- Config values (`coerce_config_values`, `check_config_values`): parsed to their field's type
  (``learning_rate=1e-4`` from the command line arrives as the string ``"1e-4"``), then range-checked.
- Data files (`check_data_files`): empty files, text that is not UTF-8, JSON that does not parse (a cut
  last line included), rows that are not objects.
- Rows (`validate_rows`): problems, solutions and answers must be non-empty strings (numbers are
  converted, and said so); bad rows are an error, or with ``on_invalid="drop"`` dropped and counted.

Every such error is an `InputError` (a ``ValueError``) naming the key, file, line, row or column; the
command line prints it as one line, ``error: ...``, and exits with code 2 (`cli_errors`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opsd.contexts import PROMPT_PROFILES

logger = logging.getLogger(__name__)

INVALID_ROW_POLICIES = ("error", "drop")
EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """A bad input (config value, data file or row, run directory): the message says what to fix."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or directory the input names does not exist."""


def cli_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a command-line `main`: an `InputError` becomes ``error: <message>`` on stderr and exit
    code 2 (no traceback); everything else propagates unchanged."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            return EXIT_BAD_INPUT

    return wrapper


# ------------------------------------------------------------------------------------------ config types


@functools.cache
def _type_hints(config_class) -> dict[str, Any]:
    try:
        return typing.get_type_hints(config_class)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: leave those values alone
        return {}


_NO_MATCH = object()
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _to_bool(value):
    if isinstance(value, str):
        value = _BOOL_WORDS.get(value.strip().lower(), value)
    return bool(value) if isinstance(value, int) and value in (0, 1) else _NO_MATCH


def _to_int(value):
    if (isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value)) or (
            isinstance(value, float) and value.is_integer()):
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else _NO_MATCH


def _to_float(value):
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return _NO_MATCH
    return value if _is_number(value) and not _is_nan(value) else _NO_MATCH  # an int stays an int


def _to_str(value):
    return str(value) if _is_number(value) else value if isinstance(value, str) else _NO_MATCH


def _to_list(value):
    return list(value) if isinstance(value, (list, tuple)) else _NO_MATCH


def _to_dict(value):
    return dict(value) if isinstance(value, Mapping) else _NO_MATCH


#: How a value is parsed to each plain type (a value that cannot be: _NO_MATCH).
_PARSERS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str, list: _to_list, tuple: _to_list,
            Sequence: _to_list, dict: _to_dict, Mapping: _to_dict}
_TYPE_NAMES = {bool: "a boolean (true/false)", int: "an integer (int)", float: "a number (float)", str: "a string",
               list: "a list, e.g. [a, b]", dict: "a mapping, e.g. {key: value}", type(None): "null"}


def _options(hint) -> list:
    """The types of a union (``int | None`` -> [int, NoneType]); [hint] for any other hint."""
    return list(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]


def _has_type(value, option) -> bool:
    """`value` already is an `option` (None, bool, int, float or str): kept as it is, whatever the order of a union."""
    if option is type(None):
        return value is None
    if option in (bool, int, str):
        return isinstance(value, option) and not (option is int and isinstance(value, bool))
    return option is float and _is_number(value) and not _is_nan(value)


def _parse(value, hint):
    """`value` parsed to type `hint` (one option of a union), or _NO_MATCH."""
    if hint is Any or hint is object:
        return value
    if hint is type(None):
        return None if value is None or (isinstance(value, str) and value.lower() in ("none", "null")) else _NO_MATCH
    if typing.get_origin(hint) is typing.Literal:
        return value if value in typing.get_args(hint) else _NO_MATCH
    base = typing.get_origin(hint) or hint
    if base in _PARSERS:
        return _PARSERS[base](value)
    if isinstance(base, type):  # any other class; a str-valued enum also takes its values as strings
        return value if isinstance(value, base) or (issubclass(base, str) and isinstance(value, str)) else _NO_MATCH
    return value  # an annotation we do not understand: leave the value to the config class


def expected_type(hint) -> str:
    """``"an integer (int) or null"``: the types a value of `hint` may have, in words."""
    names = []
    for option in _options(hint):
        base = typing.get_origin(option) or option
        if base is typing.Literal:
            names.append(" or ".join(repr(a) for a in typing.get_args(option)))
        else:
            names.append(_TYPE_NAMES.get(base) or getattr(base, "__name__", str(base)))
    return " or ".join(dict.fromkeys(names))


def coerce_value(key: str, value, hint, where: str = "value"):
    """`value` parsed to `hint` (a field's type), or an InputError naming the key, the value and the type.
    A value that already has one of a union's types is kept; otherwise the first option that parses it wins."""
    options = _options(hint)
    if any(_has_type(value, option) for option in options):
        return value
    for option in options:
        out = _parse(value, option)
        if out is not _NO_MATCH:
            return out
    raise InputError(f"{where} {key}={value!r}: expected {expected_type(hint)}, got {type(value).__name__} {value!r}")


def coerce_config_values(config_class, values: Mapping[str, Any], where: str = "value") -> dict[str, Any]:
    """Every value parsed to its field's type (fields without a usable annotation are left alone)."""
    hints = _type_hints(config_class)
    return {key: (coerce_value(key, value, hints[key], where) if key in hints else value) for key, value in values.items()}


# ------------------------------------------------------------------------------------------ config ranges


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _unit_open_closed(v):
    return 0 < v <= 1


def _unit_half_open(v):
    return 0 <= v < 1


#: field -> (check, what a valid value is). None passes wherever a field allows it.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "per_device_train_batch_size": (_positive, "a positive integer"),
    "gradient_accumulation_steps": (_positive, "a positive integer"),
    "max_length": (_positive, "a positive number of tokens"),
    "max_completion_length": (_positive, "a positive number of tokens"),
    "num_generations": (_positive, "a positive integer"),
    "learning_rate": (_positive, "a positive number, e.g. 1e-4"),
    "temperature": (_positive, "a positive number (the sampling temperature; 0 would divide the logits by 0)"),
    "top_p": (_unit_open_closed, "in (0, 1]"),
    "top_k": (_non_negative, "0 (off) or a positive integer (sampling)"),
    "ema_decay": (_unit_half_open, "in [0, 1)"),
    "lora_r": (_positive, "a positive integer"),
    "lora_alpha": (_positive, "a positive number"),
    "lora_dropout": (_unit_half_open, "in [0, 1)"),
    "dataset_size": (_positive, "a positive number of rows or null (all)"),
    "logging_steps": (_positive, "a positive number"),
    "save_steps": (_positive, "a positive number"),
    "num_train_epochs": (_positive, "a positive number"),
    "log_rollouts_every": (_non_negative, "0 (never) or a positive integer"),
    "num_logged_rollouts": (_non_negative, "0 or a positive integer"),
    "divergence_chunk_size": (_non_negative, "0 (never chunk), a positive integer or null (automatic)"),
    "max_grad_norm": (_non_negative, "0 (no clipping) or a positive number"),
    "weight_decay": (_non_negative, "0 or a positive number"),
    "warmup_steps": (_non_negative, "0 or a positive number"),
    "vllm_gpu_memory_utilization": (_unit_open_closed, "in (0, 1]"),
    "save_total_limit": (_positive, "a positive integer or null (keep all)"),
    "seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "max_steps": (lambda v: v >= -1 and v != 0, "a positive number of optimizer steps, or -1 to train for num_train_epochs"),
    "heldout_fraction": (_unit_half_open, "in [0, 1) (0: no held-out split)"),
}
#: Per config class: the same name means another thing (GRPO's beta weighs a KL term; OPSD's objective options
#: are checked by `opsd.divergence.DivergenceSpec`, which OPSDConfig builds).
CLASS_RANGES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "GRPORunConfig": {"beta": (_non_negative, "0 (no KL term) or a positive number")},
}
CHOICES: dict[str, tuple[str, ...]] = {
    "torch_dtype": ("float32", "bfloat16", "float16", "auto"),
    "on_overflow": ("error", "drop"),
    "on_invalid_row": INVALID_ROW_POLICIES,
    "rollout_backend": ("hf", "vllm"),
}
#: Per config class: choices that only one entry point has (SFT alone can cut over-long rows).
CLASS_CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "SFTRunConfig": {"on_overflow": ("error", "drop", "truncate"), "loss_tokens": ("solution", "full_text")},
    "GRPORunConfig": {"grpo_prompt": ("student", "reference")},
}


def _prompt_profiles() -> list[str]:
    return sorted(PROMPT_PROFILES)


def check_config_values(config_class, values: Mapping[str, Any]) -> None:
    """Raise InputError for the first value out of its range (`RANGES`, `CLASS_RANGES`, `CHOICES`, `CLASS_CHOICES`)."""
    name = getattr(config_class, "__name__", type(config_class).__name__)
    ranges = {**RANGES, **CLASS_RANGES.get(name, {})}
    choices = {**CHOICES, **CLASS_CHOICES.get(name, {})}
    for key, value in values.items():
        if key in ranges and _is_number(value):
            ok, valid = ranges[key]
            if not ok(value) or _is_nan(value):
                raise InputError(f"{key}={value!r} is out of range: {key} must be {valid}")
        elif key in choices and value is not None and value not in choices[key]:
            raise InputError(f"{key}={value!r}: must be one of {list(choices[key])}")
    if "prompt_profile" in values and values["prompt_profile"] not in _prompt_profiles():
        raise InputError(f"prompt_profile={values['prompt_profile']!r}: must be one of {_prompt_profiles()}")


def check_config(config) -> None:
    """`check_config_values` on a config instance (called from the config classes' __post_init__)."""
    fields = [f.name for f in dataclasses.fields(config) if f.init]
    check_config_values(type(config), {name: getattr(config, name) for name in fields if hasattr(config, name)})


# ------------------------------------------------------------------------------------------ data files


def _line_of(text: bytes, position: int) -> int:
    return text.count(b"\n", 0, position) + 1


def check_data_files(files: Sequence[str | Path], source: str | None = None) -> None:
    """Errors naming the file (and line) for data files that cannot be read as rows: empty files, text
    that is not UTF-8, JSON that does not parse (a cut line included), rows that are not objects."""
    for file in files:
        path = Path(file)
        raw = path.read_bytes() if path.suffix in (".json", ".jsonl") else None
        if path.stat().st_size == 0 or (raw is not None and not raw.strip()):
            raise InputError(f"{path} is empty: no rows to read" + (f" (dataset {source!r})" if source and source != str(path) else ""))
        if raw is None:
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(
                f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} on line {_line_of(raw, err.start)}); "
                "save it as UTF-8"
            ) from None
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = None  # may be JSON lines with a .json name: checked line by line below
            else:
                rows = data if isinstance(data, list) else None
                if isinstance(data, dict):
                    lists = [v for v in data.values() if isinstance(v, list)]
                    rows = lists[0] if len(lists) == 1 and all(isinstance(r, dict) for r in lists[0]) else [data]
                if rows is None:
                    raise InputError(f"{path} holds a JSON {type(data).__name__}; expected a list of row objects")
                if not rows:
                    raise InputError(f"{path} holds no rows (an empty JSON list)")
                bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
                if bad is not None:
                    raise InputError(f"{path}: row {bad} is a JSON {type(rows[bad]).__name__}, expected an object "
                                     'like {"problem": ..., "solution": ...}')
                continue
        lines = text.split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                last = all(not rest.strip() for rest in lines[number:])
                what = "is cut off (truncated JSON)" if last and not text.endswith("\n") else "is not valid JSON"
                raise InputError(f"{path}: line {number} {what}: {err.msg} (column {err.colno})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}: line {number} is a JSON {type(row).__name__}, expected an object "
                                 'like {"problem": ..., "solution": ...}')


# ------------------------------------------------------------------------------------------ rows


def _as_text(value) -> str | None:
    """A cell as text: ``42`` -> ``"42"``, ``27.0`` -> ``"27"``; None stays None."""
    if value is None:
        return None
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def as_string_columns(dataset, columns: Sequence[str]):
    """`dataset` with `columns` cast to string features (values by `_as_text`)."""
    import datasets

    features = dataset.features.copy()
    for column in columns:
        features[column] = datasets.Value("string")
    return dataset.map(lambda row: {c: _as_text(row[c]) for c in columns}, features=features)


def _not_text(value) -> str | None:
    """Why a cell that must hold text does not (``"is null"``, ...); None for a non-empty string or a finite number."""
    if value is None:
        return "is null"
    if isinstance(value, (bool, list, dict)):
        return f"is a {type(value).__name__} ({str(value)[:40]}), not a string"
    if _is_number(value):
        return None if math.isfinite(value) else f"is {value}, not a string"
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a string"
    return None if value.strip() else "is an empty string"


def validate_rows(dataset, columns: Sequence[str], source: str, *, on_invalid: str = "error"):
    """Check that every row's `columns` hold non-empty strings; returns the dataset (numbers converted,
    invalid rows dropped with the drop policy).

    An empty dataset is an error naming `source`. A value that is None, empty or blank, or not a string
    or number, is an error naming the row (0-based, in source order) and the column; with
    ``on_invalid="drop"`` such rows are dropped and counted in a warning (all rows bad: an error).
    Numbers become strings (``42`` -> ``"42"``, ``27.0`` -> ``"27"``) with a warning. Duplicate
    problems are counted in a warning and kept.
    """
    import datasets

    if on_invalid not in INVALID_ROW_POLICIES:
        raise InputError(f"on_invalid_row={on_invalid!r}: must be one of {list(INVALID_ROW_POLICIES)}")
    if len(dataset) == 0:
        raise InputError(f"dataset {source!r} has no rows")
    bad: dict[int, str] = {}  # row -> what is wrong with it (its first bad column)
    convert: list[str] = []
    for column in [c for c in columns if c in dataset.column_names]:
        values = dataset[column]
        numbers = []
        for i, value in enumerate(values):
            if i not in bad and (what := _not_text(value)):
                bad[i] = f"row {i}, column {column!r} {what}"
            elif i not in bad and _is_number(value):
                numbers.append(i)
        if numbers:
            logger.warning("%s: column %r holds %d number(s) (first: row %d, %r); converted to strings",
                           source, column, len(numbers), numbers[0], values[numbers[0]])
        if numbers or dataset.features[column] != datasets.Value("string"):
            convert.append(column)
    if bad:
        first = bad[min(bad)]
        if on_invalid == "error":
            raise InputError(
                f"{source}: {first}; every row needs a non-empty string there ({len(bad)} of {len(dataset)} rows "
                "are bad). Fix the data, or set on_invalid_row=drop to skip such rows."
            )
        if len(bad) == len(dataset):
            raise InputError(f"{source}: all {len(dataset)} rows are bad (first: {first}); nothing left to train on")
        logger.warning("%s: dropped %d of %d rows with a null, empty or non-text value (first: %s; on_invalid_row=drop)",
                       source, len(bad), len(dataset), first)
        dataset = dataset.select([i for i in range(len(dataset)) if i not in bad])
    if convert:
        dataset = as_string_columns(dataset, convert)
    if "problem" in dataset.column_names:
        first_row: dict[str, int] = {}
        duplicates = [(first_row[p], i) for i, p in enumerate(dataset["problem"]) if first_row.setdefault(p, i) != i]
        if duplicates:
            a, b = duplicates[0]
            logger.warning("%s: %d duplicate row(s) (the same problem as an earlier row; first: row %d = row %d); kept",
                           source, len(duplicates), b, a)
    return dataset
