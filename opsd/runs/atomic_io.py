"""Files a kill cannot corrupt: atomic writes, and JSON-lines logs that survive a line cut by a crash.

A process can be killed at any instruction (SIGKILL, out of memory, a lost node), so:

- small files are written to a temporary name and renamed (`write_text_atomic`): readers see the old
  file or the new one, never half of one;
- `read_jsonl` drops a line cut by a crash with a warning instead of failing; `append_jsonl` starts a
  new line when the file ends in a cut one; `truncate_jsonl` cuts a log back to a step (a resume).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def json_safe(value: Any) -> Any:
    """A tensor / numpy scalar as a Python number; NaN as None (inf stays inf)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


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
    line = json.dumps({k: json_safe(v) for k, v in record.items()}) + "\n"
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
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            last = all(not rest.strip() for rest in lines[number:])
            cut = "cut off by a crash while it was written" if last else "not valid JSON"
            logger.warning("%s: line %d is %s; dropped (%r)", path, number, cut, line[:80].decode("utf-8", "replace"))
            continue
        if not isinstance(record, dict):
            logger.warning("%s: line %d is a JSON %s, not an object; dropped", path, number, type(record).__name__)
            continue
        records.append(record)
    return records


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Keep only records with step <= max_step, rewriting the file atomically (a resumed run continues
    the file from its checkpoint; a line cut by a crash goes too)."""
    path = Path(path)
    if not path.exists():
        return
    records = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
