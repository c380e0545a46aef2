"""Compare two evaluations' Avg@k, telling a real difference from the noise of the problem set.

`python -m opsd compare A B [--benchmark NAME] [--step N]`: A and B are evaluation files
(``run_dir/eval/<benchmark>/step-<N>.json``, written by ``python -m opsd eval``) or run directories (then
``--benchmark``, needed when a run holds several, and ``--step``, default the last evaluated one, pick the
file). Prints each Avg@k with its 95% percentile bootstrap interval over problems, and B - A with the paired
bootstrap interval over the problems both evaluated (``opsd.eval.stats.paired_difference``), and whether that
interval excludes 0. Bad input: ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path

from opsd.eval.grading import problem_scores
from opsd.eval.stats import paired_difference, problem_bootstrap_interval
from opsd.runs.eval_results import benchmark_slug, eval_path, same_eval_settings
from opsd.runs.layout import EVAL_DIR
from opsd.validation import InputError, MissingInputError, cli_errors

_STEP_FILE = re.compile(r"step-(\d+)\.json")


def find_eval_file(run_dir: Path, benchmark: str | None = None, step: int | None = None) -> Path:
    """``run_dir``'s evaluation file of ``benchmark`` (None: the only one) at ``step`` (None: the last)."""
    found: dict[str, list[int]] = {}
    for f in (run_dir / EVAL_DIR).glob("*/step-*.json"):
        if m := _STEP_FILE.fullmatch(f.name):
            found.setdefault(f.parent.name, []).append(int(m.group(1)))
    if not found:
        raise InputError(f"{run_dir} holds no evaluations ({EVAL_DIR}/<benchmark>/step-<N>.json): "
                         "run `python -m opsd eval` on it first, or pass an evaluation file")
    if benchmark is None:
        if len(found) > 1:
            raise InputError(f"{run_dir} holds evaluations on several benchmarks {sorted(found)}: "
                             "choose one with --benchmark")
        slug = next(iter(found))
    else:
        slug = benchmark_slug(benchmark)   # the folder name `python -m opsd eval` wrote it under
        if slug not in found:
            raise InputError(f"{run_dir} holds no evaluation on benchmark {benchmark!r}; "
                             f"it has {sorted(found)}")
    steps = sorted(found[slug])
    if step is not None and step not in steps:
        raise InputError(f"{run_dir} has no evaluation of {slug} at step {step}; evaluated steps: {steps}")
    return eval_path(run_dir, slug, steps[-1] if step is None else step)


def load_evaluation(source: str | Path, benchmark: str | None = None, step: int | None = None) -> dict:
    """An evaluation file's contents, with ``path`` and ``scores`` (problem id -> its fraction correct)."""
    path = Path(source)
    if not path.exists():
        raise MissingInputError(f"{path} does not exist (pass an evaluation JSON file or a run directory)")
    if path.is_dir():
        path = find_eval_file(path, benchmark, step)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not a readable evaluation JSON file ({err})") from None
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list) or not records:
        raise InputError(f"{path} holds no records (an evaluation file of `python -m opsd eval` has a "
                         "'records' list)")
    if not all(isinstance(r, dict) and "problem_id" in r and "correct" in r for r in records):
        raise InputError(f"{path}: every record needs 'problem_id' and 'correct'")
    return {**data, "path": str(path), "scores": dict(problem_scores(records))}


def _describe(label: str, ev: dict, n_resamples: int, seed: int) -> str:
    scores = list(ev["scores"].values())
    lo, hi = problem_bootstrap_interval(scores, n_resamples=n_resamples, seed=seed)
    k = ev.get("k", "k")
    return (f"{label}: {ev['path']} ({ev.get('benchmark', '?')}, step {ev.get('step', '?')})\n"
            f"   Avg@{k} = {100 * sum(scores) / len(scores):.1f}%  95% interval over problems "
            f"[{100 * lo:.1f}, {100 * hi:.1f}]  ({len(scores)} problems)")


def compare_text(a: dict, b: dict, *, n_resamples: int = 10_000, seed: int = 0) -> str:
    """The report ``python -m opsd compare`` prints for two ``load_evaluation`` results."""
    try:
        d = paired_difference(a["scores"], b["scores"], n_resamples=n_resamples, seed=seed)
    except ValueError as err:
        raise InputError(str(err)) from None
    lo, hi = d["interval"]
    lines = [_describe("A", a, n_resamples, seed), _describe("B", b, n_resamples, seed)]
    lines.append(f"B - A = {100 * d['difference']:+.1f} points  "
                 f"95% paired interval [{100 * lo:+.1f}, {100 * hi:+.1f}]  "
                 f"(over {d['n']} common problems, {n_resamples} bootstrap resamples, seed {seed})")
    if lo > 0 or hi < 0:
        higher = "B" if lo > 0 else "A"
        lines.append(f"the interval excludes 0: {higher} is higher beyond the noise of the problem set")
    else:
        lines.append("the interval includes 0: the difference is within the noise of the problem set")
    if d["only_a"] or d["only_b"]:
        lines.append(f"note: {len(d['only_a'])} problems only in A and {len(d['only_b'])} only in B "
                     "are left out of the difference")
    sa, sb = a.get("settings"), b.get("settings")
    if isinstance(sa, dict) and isinstance(sb, dict) and not same_eval_settings(sa, sb):
        differ = sorted(k for k in set(sa) | set(sb) if k != "batch_size" and sa.get(k) != sb.get(k))
        changes = ", ".join(f"{k}: {sa.get(k)!r} vs {sb.get(k)!r}" for k in differ)
        lines.append(f"note: the evaluations' settings differ: {changes}")
    return "\n".join(lines)


@cli_errors
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m opsd compare A B [--benchmark NAME] [--step N] [--resamples R] [--seed S]`."""
    parser = argparse.ArgumentParser(prog="python -m opsd compare", description=__doc__.splitlines()[0])
    parser.add_argument("a", help="evaluation JSON file or run directory (the baseline)")
    parser.add_argument("b", help="evaluation JSON file or run directory (compared with A: B - A)")
    parser.add_argument("--benchmark", default=None, help="for run directories (needed if several)")
    parser.add_argument("--step", type=int, default=None, help="for run directories (default: the last)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    ns = parser.parse_args(argv)
    if ns.resamples < 1:
        parser.error(f"--resamples must be >= 1, got {ns.resamples}")
    a = load_evaluation(ns.a, ns.benchmark, ns.step)
    b = load_evaluation(ns.b, ns.benchmark, ns.step)
    print(compare_text(a, b, n_resamples=ns.resamples, seed=ns.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
