"""Prompt-length audit of a whole training set: ``python -m opsd audit-lengths --config PROFILE``.

With ``on_overflow: error`` the first over-long teacher prompt stops a run, possibly hours in. The audit
measures every row up front, with the prompts training builds (prompt profile, each role's chat-template
kwargs, the teacher's think opener), and reports per role the distribution of prompt tokens (min, mean,
p50, p90, p99, p99.9, max); the rows over the budget ``max_prompt_length = max_length -
max_completion_length`` (those that would stop the run, or be dropped with ``on_overflow: drop``); and
``required_max_length``, the smallest ``max_length`` with which no row overflows (longest prompt of either
role + ``max_completion_length``). Only the tokenizer is loaded: 29,434 rows take minutes on one CPU core.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from opsd.config import OPSDConfig, parse_overrides, read_profile
from opsd.contexts import role_texts
from opsd.data import load_problems
from opsd.models import model_path, prepare_tokenizer

#: Profile keys the audit reads (all others, e.g. learning rates, are ignored); overrides must be one of them.
AUDIT_KEYS = (
    "model_name", "trust_remote_code", "dataset", "dataset_split", "dataset_size", "seed", "prompt_profile",
    "student_chat_kwargs", "teacher_chat_kwargs", "legacy_mismatch", "teacher_think_opener", "max_length",
    "max_completion_length", "on_overflow",
)
ROLES = ("student", "teacher")
PERCENTILES = (50, 90, 99, 99.9)


def length_stats(lengths: Sequence[int]) -> dict:
    """Summary of token counts: n, min, mean, p50, p90, p99, p99.9 (nearest rank), max. Empty -> n 0."""
    values = sorted(int(v) for v in lengths)
    if not values:
        return {"n": 0}
    out = {"n": len(values), "min": values[0], "mean": sum(values) / len(values)}
    for p in PERCENTILES:
        rank = max(1, math.ceil(p / 100 * len(values)))  # nearest-rank percentile: a value that occurs
        out[f"p{p:g}"] = values[rank - 1]
    out["max"] = values[-1]
    return out


@dataclass
class LengthAudit:
    """The audit of one dataset under one prompt budget.

    ``student``, ``teacher``: ``length_stats`` of each role's prompt tokens; ``over``: one dict per
    row over the budget, ``{"row", "student_tokens", "teacher_tokens"}`` (``row``: the row id).
    """

    n_rows: int
    max_prompt_length: int | None
    max_completion_length: int | None
    student: dict
    teacher: dict
    over: list[dict] = field(default_factory=list)
    longest: list[dict] = field(default_factory=list)

    @property
    def n_over(self) -> int:
        return len(self.over)

    @property
    def required_max_length(self) -> int:
        """The smallest max_length with which no row overflows: longest prompt + completion tokens."""
        longest = max(self.student.get("max", 0), self.teacher.get("max", 0))
        return longest + int(self.max_completion_length or 0)

    def to_dict(self) -> dict:
        return asdict(self) | {"n_over": self.n_over, "required_max_length": self.required_max_length}

    def report(self, show: int = 10) -> str:
        """A plain-text report: both distributions, the budget, the rows over it (first ``show``)."""
        cols = ["min", "mean", *(f"p{p:g}" for p in PERCENTILES), "max"]
        lines = [f"{self.n_rows} rows; prompt tokens per role:",
                 f"  {'role':8s}" + "".join(f"{c:>9s}" for c in cols)]
        for role in ROLES:
            stats = getattr(self, role)
            cells = "".join(f"{stats.get(c, float('nan')):>9.1f}" if c == "mean" else f"{stats.get(c, '-'):>9}"
                            for c in cols)
            lines.append(f"  {role:8s}{cells}")
        if self.max_prompt_length is None:
            lines.append("no prompt budget given")
        else:
            lines.append(f"prompt budget: max_length {self.max_prompt_length + int(self.max_completion_length or 0)} - "
                         f"max_completion_length {int(self.max_completion_length or 0)} = {self.max_prompt_length} tokens")
            lines.append(f"rows over the budget: {self.n_over} of {self.n_rows}")
            for r in self.over[:show]:
                lines.append(f"  row {r['row']!r}: student {r['student_tokens']}, teacher {r['teacher_tokens']} tokens")
            if self.n_over > show:
                lines.append(f"  ... and {self.n_over - show} more")
        lines.append(f"smallest max_length with no overflow on this dataset: {self.required_max_length}")
        return "\n".join(lines)


def prompt_lengths(tokenizer, problems: Sequence[str], solutions: Sequence[str], *, chunk: int = 512,
                   **context_kwargs) -> tuple[list[int], list[int]]:
    """Token counts of each row's student and teacher prompt, as ``opsd.contexts.role_texts`` builds
    them (``context_kwargs``: profile, student_chat_kwargs, teacher_chat_kwargs, legacy_mismatch,
    teacher_think_opener), tokenized ``chunk`` rows at a time."""

    if len(problems) != len(solutions):
        raise ValueError(f"got {len(problems)} problems but {len(solutions)} solutions")
    student, teacher = [], []
    for start in range(0, len(problems), chunk):
        s_texts, t_texts = role_texts(tokenizer, problems[start:start + chunk], solutions[start:start + chunk],
                                      **context_kwargs)
        student += [len(ids) for ids in tokenizer(s_texts, add_special_tokens=False)["input_ids"]]
        teacher += [len(ids) for ids in tokenizer(t_texts, add_special_tokens=False)["input_ids"]]
    return student, teacher


def audit_lengths(tokenizer, problems: Sequence[str], solutions: Sequence[str], *,
                  max_prompt_length: int | None = None, max_completion_length: int | None = None,
                  row_ids: Sequence | None = None, longest: int = 5, chunk: int = 512,
                  **context_kwargs) -> LengthAudit:
    """Measure both roles' prompts of every row and list the rows longer than ``max_prompt_length``
    (a row is over when either role's prompt is). ``longest``: how many of the longest rows (by teacher
    prompt) to keep in ``LengthAudit.longest``."""
    problems, solutions = list(problems), list(solutions)
    student, teacher = prompt_lengths(tokenizer, problems, solutions, chunk=chunk, **context_kwargs)
    ids = list(row_ids) if row_ids is not None else list(range(len(problems)))
    rows = [{"row": i, "student_tokens": s, "teacher_tokens": t} for i, s, t in zip(ids, student, teacher)]
    over = [] if max_prompt_length is None else [
        r for r in rows if max(r["student_tokens"], r["teacher_tokens"]) > max_prompt_length
    ]
    top = sorted(rows, key=lambda r: -r["teacher_tokens"])[:longest]
    return LengthAudit(len(rows), max_prompt_length, max_completion_length, length_stats(student),
                       length_stats(teacher), over, top)


# ------------------------------------------------------------------------------------------ profiles


def _profile_values(profile: str, overrides: dict | None) -> dict:
    """The keys of ``AUDIT_KEYS`` from a training profile (``kind: train``), with defaults and overrides."""

    values = read_profile(profile)
    kind = values.get("kind", "train")
    if kind != "train":
        raise ValueError(f"profile {profile!r} is a {kind!r} profile; audit-lengths measures OPSD training "
                         "profiles (kind: train), whose teacher prompt carries the reference solution")
    unknown = sorted(set(overrides or {}) - set(AUDIT_KEYS))
    if unknown:
        raise ValueError(f"unknown audit override(s) {unknown}; valid keys: {list(AUDIT_KEYS)}")
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(OPSDConfig) if f.name in AUDIT_KEYS}
    out = {k: values[k] for k in AUDIT_KEYS if k in values}
    return defaults | out | dict(overrides or {})


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer alone (the embedded alias resolves to its converted folder), prepared as training
    prepares it."""
    from transformers import AutoTokenizer


    path = model_path(name)
    return prepare_tokenizer(AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))


def audit_profile(profile: str, overrides: dict | None = None, *, limit: int | None = None, tokenizer=None,
                  longest: int = 5) -> tuple[LengthAudit, dict]:
    """Audit the dataset of a training profile with its prompt budget. ``limit``: the first N rows only
    (default: the whole dataset, or the profile's ``dataset_size``). Returns (audit, the values used)."""

    values = _profile_values(profile, overrides)
    n = limit if limit is not None else values.get("dataset_size")
    ds = load_problems(values["dataset"], values.get("dataset_split"), n=n, seed=values.get("seed", 0),
                       require=("problem", "solution"))
    tokenizer = tokenizer or load_tokenizer(values["model_name"], bool(values.get("trust_remote_code")))
    budget = int(values["max_length"]) - int(values["max_completion_length"])
    row_ids = ds["row_id"] if "row_id" in ds.column_names else None
    audit = audit_lengths(
        tokenizer, ds["problem"], ds["solution"], max_prompt_length=budget,
        max_completion_length=int(values["max_completion_length"]), row_ids=row_ids, longest=longest,
        profile=values["prompt_profile"], student_chat_kwargs=values["student_chat_kwargs"],
        teacher_chat_kwargs=values["teacher_chat_kwargs"], legacy_mismatch=bool(values["legacy_mismatch"]),
        teacher_think_opener=bool(values["teacher_think_opener"]),
    )
    return audit, values


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m opsd audit-lengths --config PROFILE [key=value ...] [--limit N] [--json PATH]``.

    Exit code 0 when no row overflows the profile's budget, 1 when some do (so a launch script can
    stop before training), 2 on bad arguments.
    """

    p = argparse.ArgumentParser(prog="python -m opsd audit-lengths", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training profile name or YAML path (kind: train)")
    p.add_argument("overrides", nargs="*", help=f"key=value, keys among {', '.join(AUDIT_KEYS)}")
    p.add_argument("--limit", type=int, default=None, help="audit the first N rows only")
    p.add_argument("--show", type=int, default=10, help="rows over the budget to list")
    p.add_argument("--json", default=None, help="also write the audit as JSON to this path")
    args = p.parse_args(argv)
    try:
        audit, values = audit_profile(args.config, parse_overrides(args.overrides), limit=args.limit)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    print(f"profile {values.get('profile', args.config)}: {values['model_name']}, dataset {values['dataset']}, "
          f"prompt profile {values['prompt_profile']}, think opener {bool(values['teacher_think_opener'])}")
    print(audit.report(show=args.show))
    if audit.n_over:
        print(f"with on_overflow={values.get('on_overflow', 'error')!r} these rows would "
              f"{'stop the run' if values.get('on_overflow', 'error') == 'error' else 'be dropped'}; "
              f"set max_length >= {audit.required_max_length}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(audit.to_dict() | {"profile": values}, indent=1, default=str))
    return 1 if audit.n_over else 0
