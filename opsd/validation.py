"""Checks of everything a user hands in, done before any model is loaded, with errors that say what to fix.

- Config values (`coerce_config_values`, `check_config_values`): parsed to their field's type
  (``learning_rate=1e-4`` from the command line arrives as the string ``"1e-4"``), then checked against
  the `FIELD_CHECKS` each config class lists beside its fields.
- Data files and rows are checked where they are loaded (`opsd.data_checks`).

Every such error is an `InputError` (a ``ValueError``) naming the key, file, line, row or column; the
command line prints it as one line, ``error: ...``, and exits with code 2 (`cli_errors`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

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


def is_number(value) -> bool:
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
    return value if is_number(value) and not _is_nan(value) else _NO_MATCH  # an int stays an int


def _to_str(value):
    return str(value) if is_number(value) else value if isinstance(value, str) else _NO_MATCH


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
    return option is float and is_number(value) and not _is_nan(value)


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


@dataclass(frozen=True)
class Range:
    """What a numeric field accepts: ``ok(value)``, and the words an error uses for it ("a positive integer").

    Each config class lists its fields' checks in ``FIELD_CHECKS``, beside the fields (a `Range`, or a tuple of
    the values a field may take), with those of the fields it inherits from transformers / TRL. None passes
    wherever a field allows it."""

    ok: Callable[[Any], bool]
    valid: str


POSITIVE_INT = Range(lambda v: v > 0, "a positive integer")
POSITIVE = Range(lambda v: v > 0, "a positive number")
NON_NEGATIVE = Range(lambda v: v >= 0, "0 or a positive number")
UNIT_OPEN_CLOSED = Range(lambda v: 0 < v <= 1, "in (0, 1]")
UNIT_HALF_OPEN = Range(lambda v: 0 <= v < 1, "in [0, 1)")
TORCH_DTYPES = ("float32", "bfloat16", "float16", "auto")
INVALID_ROW_POLICIES = ("error", "drop")

#: `TrainingArguments` fields every run config inherits, with their checks (their definitions live in transformers).
TRAINING_ARGUMENT_CHECKS: dict[str, Range | tuple] = {
    "per_device_train_batch_size": POSITIVE_INT,
    "gradient_accumulation_steps": POSITIVE_INT,
    "learning_rate": Range(lambda v: v > 0, "a positive number, e.g. 1e-4"),
    "logging_steps": POSITIVE,
    "save_steps": POSITIVE,
    "num_train_epochs": POSITIVE,
    "max_grad_norm": Range(lambda v: v >= 0, "0 (no clipping) or a positive number"),
    "weight_decay": NON_NEGATIVE,
    "warmup_steps": NON_NEGATIVE,
    "save_total_limit": Range(lambda v: v > 0, "a positive integer or null (keep all)"),
    "seed": Range(lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "max_steps": Range(lambda v: v >= -1 and v != 0,
                       "a positive number of optimizer steps, or -1 to train for num_train_epochs"),
}


@functools.cache
def field_checks(config_class) -> dict[str, Range | tuple]:
    """field -> its check: ``FIELD_CHECKS`` of the class and its bases (a subclass's entry wins: SFT alone may
    truncate over-long rows)."""
    checks: dict[str, Range | tuple] = {}
    for cls in reversed(config_class.__mro__):
        checks.update(vars(cls).get("FIELD_CHECKS", {}))
    return checks


def check_config_values(config_class, values: Mapping[str, Any]) -> None:
    """Raise InputError for the first value its field's check refuses (`field_checks`)."""
    checks = field_checks(config_class)
    for key, value in values.items():
        check = checks.get(key)
        if isinstance(check, Range) and is_number(value):
            if not check.ok(value) or _is_nan(value):
                raise InputError(f"{key}={value!r} is out of range: {key} must be {check.valid}")
        elif isinstance(check, tuple) and value is not None and value not in check:
            raise InputError(f"{key}={value!r}: must be one of {list(check)}")


def check_config(config) -> None:
    """`check_config_values` on a config instance (called from the config classes' __post_init__)."""
    fields = [f.name for f in dataclasses.fields(config) if f.init]
    check_config_values(type(config), {name: getattr(config, name) for name in fields if hasattr(config, name)})
