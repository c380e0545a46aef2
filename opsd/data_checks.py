"""Checks of data files and rows, run by the loaders (`opsd.data`) before any model loads.

- Files (`check_data_files`): empty files, text that is not UTF-8, JSON that does not parse (a cut last line
  included), rows that are not objects.
- Rows (`validate_rows`): problems, solutions and answers must be non-empty strings (numbers are converted,
  and said so); bad rows are an error naming row and column, or with ``on_invalid="drop"`` dropped and counted.
Every error is an `opsd.validation.InputError` naming the file, line, row or column.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import datasets

from opsd.validation import INVALID_ROW_POLICIES, InputError, is_number

logger = logging.getLogger(__name__)


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
    if is_number(value):
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
            elif i not in bad and is_number(value):
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
