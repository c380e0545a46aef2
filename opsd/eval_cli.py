"""``python -m opsd eval``: evaluation profiles (``reproduce/configs/eval-*.yaml``) and the command line.

``main`` evaluates a run directory (``--run``: the base model and every checkpoint) or one model
(``--model``, as step 0) with ``opsd.evaluate``, then prints ``summary_table`` (also read by
``reproduce/eval.ipynb`` from the files ``opsd.rundir.load_eval_results`` returns).
A profile's values are the defaults of the flags; flags given explicitly override them.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from opsd.eval_generation import DEFAULT_EVAL_PROMPT, EVAL_PROMPTS
from opsd.evaluate import evaluate_model, evaluate_run


@dataclass
class EvalProfile:
    """One evaluation setting, from ``reproduce/configs/<name>.yaml`` (``kind: eval``).

    ``eval-paper`` is the paper's thinking evaluation; ``eval-nonthinking`` the reference's
    non-thinking one. ``context_length``, when set, caps prompt + completion tokens per sample
    (each sample may generate ``min(max_new_tokens, context_length - prompt tokens)``).
    """

    profile: str = "custom"
    benchmarks: str = "aime24,aime25,hmmt25"
    k: int = 12
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 38912
    context_length: int | None = None
    thinking: bool = True
    prompt: str = "reference"
    backend: str = "vllm"

    def __post_init__(self):
        if self.prompt not in EVAL_PROMPTS:
            raise ValueError(f"unknown evaluation prompt {self.prompt!r}: use one of {list(EVAL_PROMPTS)}")
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"backend must be 'hf' or 'vllm', got {self.backend!r}")

    def settings(self) -> dict:
        """The keyword arguments of ``evaluate_run`` / ``evaluate_model`` (benchmarks and name left out)."""
        out = asdict(self)
        out.pop("profile")
        out.pop("benchmarks")
        return out


#: Evaluation profile names (files ``reproduce/configs/<name>.yaml``).
EVAL_PROFILES: tuple[str, ...] = ("eval-paper", "eval-nonthinking")


def load_eval_profile(name: str, overrides: dict | None = None) -> EvalProfile:
    """An ``EvalProfile`` from a profile name (``eval-nonthinking``) or a YAML path, then
    ``overrides``. The file must say ``kind: eval``; unknown keys are an error listing the valid ones."""
    from opsd.config import check_keys, read_profile

    values = read_profile(name)
    kind = values.pop("kind", None)
    if kind != "eval":
        raise ValueError(f"profile {name!r} is a {kind!r} profile, not an evaluation profile (kind: eval)")
    check_keys(EvalProfile, values, "evaluation profile")
    check_keys(EvalProfile, dict(overrides or {}), "override")
    return EvalProfile(**{**values, **dict(overrides or {})})


def summary_table(results: Sequence[dict]):
    """A ``pandas.DataFrame``, one row per (benchmark, step): n_problems, k, avg@k, maj@k, pass@1..k,
    boxed_rate, mean_tokens, truncated_rate (rates are fractions, exactly as in the JSON)."""
    import pandas as pd

    rows = []
    for r in results:
        s = r["summary"]
        row = {
            "benchmark": r.get("benchmark"),
            "step": r.get("step"),
            "checkpoint": r.get("checkpoint") or "base",
            "n_problems": s.get("n_problems"),
            "k": r.get("k", s.get("k")),
            "avg@k": s["avg_at_k"],
            "maj@k": s.get("maj_at_k"),  # None in files written before maj@k was recorded
            "avg@k 95% lo": (s.get("avg_at_k_interval") or [None, None])[0],  # absent in older files
            "avg@k 95% hi": (s.get("avg_at_k_interval") or [None, None])[1],
        }
        for kk, v in sorted(s.get("pass_at_k", {}).items(), key=lambda kv: int(kv[0])):
            row[f"pass@{kk}"] = v
        row["boxed_rate"] = s.get("boxed_rate")
        row["mean_tokens"] = s.get("mean_completion_tokens")
        row["truncated_rate"] = s.get("truncated_rate")
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        tail = ["boxed_rate", "mean_tokens", "truncated_rate"]
        df = df[[c for c in df.columns if c not in tail] + tail]
        df = df.sort_values(["benchmark", "step"], kind="stable").reset_index(drop=True)
    return df


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m opsd eval`` flags, with the CPU defaults."""
    from opsd.data import BENCHMARKS

    p = argparse.ArgumentParser(
        prog="python -m opsd eval",
        description="Sample k answers per problem, grade the last \\boxed{} with math-verify, report Avg@k, "
        "maj@k and pass@k. Writes <run or output>/eval/<benchmark>/step-<N>.json.",
        epilog="Paper settings: --profile eval-paper (k 12, 38,912 new tokens, temperature 1.0, top_p 0.95, "
        "thinking, vllm, aime24,aime25,hmmt25); the reference's non-thinking setting: --profile "
        "eval-nonthinking. Flags given explicitly override the profile.",
    )
    p.add_argument(
        "--profile",
        default=None,
        help=f"evaluation profile ({', '.join(EVAL_PROFILES)} or a YAML path with kind: eval): its values "
        "become the defaults of the flags below",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="training run directory: evaluates the base model and every checkpoint")
    src.add_argument("--model", help="one model (embedded name, local path or Hub id), evaluated as step 0")
    p.add_argument(
        "--benchmarks",
        default="synthetic",
        help=f"comma-separated: {', '.join(BENCHMARKS)} or local files (default: synthetic)",
    )
    p.add_argument("--k", type=int, default=4, help="samples per problem (paper: 12)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="paper: 38912")
    p.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="cap on prompt + completion tokens per sample (non-thinking setting: 32768); default none",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument(
        "--thinking",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="chat template enable_thinking (Qwen3; paper: on)",
    )
    p.add_argument(
        "--prompt",
        choices=EVAL_PROMPTS,
        default=DEFAULT_EVAL_PROMPT,
        help="evaluation prompt: reference = the problem, a blank line, the instruction (the reference "
        "evaluation; default); student = the training student prompt with its 'Problem: ' prefix",
    )
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    p.add_argument("--batch-size", type=int, default=8, help="problems per generate call (hf backend)")
    p.add_argument("--steps", default=None, help="comma-separated checkpoint steps (0 = base); default all")
    p.add_argument("--no-base", action="store_true", help="with --run: skip step 0 (the base model)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N problems of each benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="hf backend device (default: cuda when available)")
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="vllm backend")
    p.add_argument(
        "--output",
        default=None,
        help="output directory (default: the run directory; with --model runs/eval-<model>)",
    )
    p.add_argument("--overwrite", action="store_true", help="re-evaluate steps whose JSON already exists")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--profile``'s values as the defaults of the flags not given."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.profile is not None:
        profile = load_eval_profile(first.profile)
        parser.set_defaults(**profile.settings(), benchmarks=profile.benchmarks)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m opsd eval``: evaluate a run directory or a model and print the summary table."""
    args = parse_args(argv)
    from opsd.data import benchmark_names

    try:
        benchmarks = benchmark_names(args.benchmarks)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    try:
        steps = None if args.steps is None else [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        print(f"error: --steps must be comma-separated checkpoint steps such as 0,25,50; got {args.steps!r}")
        return 2
    if steps is not None and any(s < 0 for s in steps):
        print(f"error: --steps must be >= 0; got {args.steps!r}")
        return 2
    vllm_kwargs = None
    if args.gpu_memory_utilization is not None:
        vllm_kwargs = {"gpu_memory_utilization": args.gpu_memory_utilization}
    common = {"k": args.k, "temperature": args.temperature, "top_p": args.top_p,
              "max_new_tokens": args.max_new_tokens, "context_length": args.context_length,
              "thinking": args.thinking, "prompt": args.prompt, "backend": args.backend,
              "batch_size": args.batch_size, "seed": args.seed, "n_problems": args.limit, "device": args.device,
              "overwrite": args.overwrite, "vllm_kwargs": vllm_kwargs}
    if args.run:
        if args.output:
            print("note: --output is ignored with --run (results go to the run directory)")
        results = evaluate_run(args.run, benchmarks, steps=steps, include_base=not args.no_base, **common)
    else:
        output = args.output or os.path.join("runs", "eval-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", args.model))
        results = evaluate_model(args.model, benchmarks, output, **common)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(summary_table(results).to_string(index=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
