"""``python -m opsd eval``: evaluation profiles (``reproduce/configs/eval-*.yaml``) and the command line.

``main`` evaluates a run directory (``--run``: the base model and every checkpoint) or one model
(``--model``, as step 0) with ``opsd.eval.evaluate``, then prints ``summary_table`` (also read by
``reproduce/eval.ipynb`` from the files ``opsd.runs.eval_results.load_eval_results`` returns). What is
evaluated and where the results go is ``opsd.runs.eval_results.eval_target``'s, shared with the notebook too.
The defaults of the flags are ``eval_request``'s, the one resolution shared with the notebook: the CPU
defaults, then the run's config.yaml (its token budget and chat setting; a run trained on synthetic data gets
the demo's greedy held-out protocol), then a profile's values; flags given explicitly override them all.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from opsd.config import check_keys, read_profile
from opsd.data import BENCHMARKS, benchmark_names
from opsd.eval.evaluate import evaluate_model, evaluate_run
from opsd.eval.generation import DEFAULT_EVAL_PROMPT, EVAL_PROMPTS
from opsd.eval.grading import GRADING_RULES
from opsd.runs.eval_results import eval_target
from opsd.runs.layout import read_run_config
from opsd.runs.preflight import require_eval_ready


@dataclass
class EvalProfile:
    """One evaluation setting, from ``reproduce/configs/<name>.yaml`` (``kind: eval``).

    ``eval-paper`` is the paper's thinking evaluation; ``eval-nonthinking`` the reference's
    non-thinking one. ``context_length``, when set, caps prompt + completion tokens per sample
    (each sample may generate ``min(max_new_tokens, context_length - prompt tokens)``). ``grading``:
    ``kit`` or ``reference`` (the reference evaluation's extraction, grading and maj@k grouping;
    ``opsd.eval.grading.GRADING_RULES``), ``reference`` in both paper profiles.
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
    grading: str = "kit"

    def __post_init__(self):
        _check_choices(self.prompt, self.backend, self.grading)

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
    values = read_profile(name)
    kind = values.pop("kind", None)
    if kind != "eval":
        raise ValueError(f"profile {name!r} is a {kind!r} profile, not an evaluation profile (kind: eval)")
    check_keys(EvalProfile, values, "evaluation profile")
    check_keys(EvalProfile, dict(overrides or {}), "override")
    return EvalProfile(**{**values, **dict(overrides or {})})


#: What an evaluation uses where neither the run, an evaluation profile nor the caller says otherwise
#: (the command line's CPU defaults; ``n_problems`` None: every problem of each benchmark).
EVAL_DEFAULTS: dict[str, Any] = {
    "benchmarks": "synthetic", "k": 4, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 1024,
    "context_length": None, "thinking": False, "prompt": DEFAULT_EVAL_PROMPT, "grading": "kit", "backend": "hf",
    "n_problems": None, "batch_size": 8, "seed": 0,
}
#: The held-out check of ``reproduce/train.ipynb`` (``opsd.eval.evaluate.heldout_accuracy``, what ``make demo``
#: reports): greedy, one answer per problem, the first 200 held-out problems in the training wording and
#: paraphrased, batches of 64 as the notebook's. A run trained on synthetic data is evaluated with it.
SYNTHETIC_PROTOCOL: dict[str, Any] = {
    "benchmarks": "synthetic,synthetic-paraphrased", "k": 1, "temperature": 0.0, "top_p": 1.0,
    "n_problems": 200, "batch_size": 64,
}
#: The keys that make the protocol greedy or sampled: given a k above 1 or a temperature above 0, the
#: caller asks for sampling, and the run's greedy protocol gives none of them.
_SAMPLING_KEYS = ("k", "temperature", "top_p")


@dataclass(frozen=True)
class EvalRequest:
    """The settings of one evaluation (``eval_request``): ``benchmarks`` (comma-separated) and the keyword
    arguments of ``evaluate_run`` / ``evaluate_model`` (``settings``); ``sources`` says, per field, where
    its value came from (``default``, ``run config.yaml``, ``profile <name>``, ``given``)."""

    benchmarks: str
    k: int
    temperature: float
    top_p: float
    max_new_tokens: int
    context_length: int | None
    thinking: bool
    prompt: str
    grading: str
    backend: str
    n_problems: int | None
    batch_size: int
    seed: int
    sources: dict = field(default_factory=dict, compare=False)

    def settings(self) -> dict:
        """The keyword arguments of ``evaluate_run`` / ``evaluate_model`` (benchmarks and sources left out)."""
        out = {f: getattr(self, f) for f in EVAL_DEFAULTS}
        out.pop("benchmarks")
        return out

    def describe(self) -> str:
        """One line per field: its value and where it came from."""
        return "\n".join(f"  {f:15s} {getattr(self, f)!s:32s} ({self.sources.get(f, 'default')})"
                         for f in EVAL_DEFAULTS)


def run_eval_defaults(run_config: Mapping | None) -> dict[str, Any]:
    """What a training run's ``config.yaml`` (or a training profile's values) says about its evaluation:
    the token budget (``max_completion_length``), the student's chat setting (``student_chat_kwargs``'
    ``enable_thinking``) and, for a run trained on synthetic data (``dataset: synthetic...``), the
    demo's greedy held-out protocol ``SYNTHETIC_PROTOCOL``. {} without a config."""
    config = dict(run_config or {})
    out: dict[str, Any] = {}
    if config.get("max_completion_length") is not None:
        out["max_new_tokens"] = int(config["max_completion_length"])
    chat = config.get("student_chat_kwargs")
    if isinstance(chat, Mapping) and "enable_thinking" in chat:
        out["thinking"] = bool(chat["enable_thinking"])
    if str(config.get("dataset") or "").startswith("synthetic"):
        out.update(SYNTHETIC_PROTOCOL)
    return out


def eval_request(run_config: Mapping | None = None, *, profile: str | None = None, **given) -> EvalRequest:
    """The evaluation request for a run: ``EVAL_DEFAULTS``, then what the run's config says
    (``run_eval_defaults``: a cpu-tiny run gets the demo's protocol, greedy, k 1, its
    ``max_completion_length`` new tokens, 200 problems of ``synthetic`` and ``synthetic-paraphrased``),
    then the evaluation ``profile`` (``eval-paper``, ``eval-nonthinking`` or a YAML path: every field it
    holds), then ``given`` (the caller's explicit values; None means "not given"). ``n_problems="all"``
    asks for every problem. A given k above 1 or temperature above 0 asks for sampling: the run's greedy
    k / temperature / top_p are then not used (the defaults or the profile's are).

    Used by ``python -m opsd eval`` (``parse_args``: the flags not given) and ``reproduce/eval.ipynb``.
    """
    unknown = sorted(set(given) - set(EVAL_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown evaluation setting(s) {unknown}; valid: {list(EVAL_DEFAULTS)}")
    given = {key: value for key, value in given.items() if value is not None}
    values, sources = dict(EVAL_DEFAULTS), dict.fromkeys(EVAL_DEFAULTS, "default")
    from_run = run_eval_defaults(run_config)
    if (int(given.get("k", 1)) > 1 or float(given.get("temperature", 0.0)) > 0) and from_run.get("k") == 1:
        from_run = {key: value for key, value in from_run.items() if key not in _SAMPLING_KEYS}
    layers = [("run config.yaml", from_run)]
    if profile is not None:
        chosen = load_eval_profile(profile)
        layers.append((f"profile {profile}", {**chosen.settings(), "benchmarks": chosen.benchmarks}))
    layers.append(("given", given))
    for source, layer in layers:
        values.update(layer)
        sources.update(dict.fromkeys(layer, source))
    if values["n_problems"] == "all":
        values["n_problems"] = None
    if values["n_problems"] is not None:
        values["n_problems"] = int(values["n_problems"])
    _check_choices(values["prompt"], values["backend"], values["grading"])
    return EvalRequest(**values, sources=sources)


def _check_choices(prompt: str, backend: str, grading: str) -> None:
    """``ValueError`` naming the setting, unless prompt, backend and grading rules are known names."""
    if prompt not in EVAL_PROMPTS:
        raise ValueError(f"unknown evaluation prompt {prompt!r}: use one of {list(EVAL_PROMPTS)}")
    if backend not in ("hf", "vllm"):
        raise ValueError(f"backend must be 'hf' or 'vllm', got {backend!r}")
    if grading not in GRADING_RULES:
        raise ValueError(f"unknown grading rules {grading!r}: use one of {list(GRADING_RULES)}")


def summary_table(results: Sequence[dict]):
    """A ``pandas.DataFrame``, one row per (benchmark, step): n_problems, k, avg@k, maj@k, the 95% intervals
    of avg@k (Wilson over samples; percentile bootstrap over problems), pass@1..k,
    boxed_rate, mean_tokens, truncated_rate (rates are fractions, exactly as in the JSON)."""
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
            # the bootstrap over problems (files written before it was recorded: None)
            "avg@k problems 95% lo": (s.get("avg_at_k_problem_interval") or [None, None])[0],
            "avg@k problems 95% hi": (s.get("avg_at_k_problem_interval") or [None, None])[1],
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


def _limit(text: str) -> int | None:
    """``--limit``: a number of problems, or ``all``."""
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of problems or 'all', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m opsd eval`` flags, with the CPU defaults."""
    p = argparse.ArgumentParser(
        prog="python -m opsd eval",
        description="Sample k answers per problem, grade the last \\boxed{} with math-verify, report Avg@k, "
        "maj@k and pass@k. Writes <run or output>/eval/<benchmark>/step-<N>.json.",
        epilog="With --run, the flags not given follow the run (opsd.eval.cli.eval_request): its "
        "max_completion_length and chat setting, and for a run trained on synthetic data the demo's greedy "
        "held-out protocol (k 1, temperature 0, 200 problems of synthetic and synthetic-paraphrased). "
        "Paper settings: --profile eval-paper (k 12, 38,912 new tokens, temperature 1.0, top_p 0.95, "
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
        default=EVAL_DEFAULTS["benchmarks"],
        help=f"comma-separated: {', '.join(BENCHMARKS)} or local files (default: synthetic; "
        "synthetic,synthetic-paraphrased for a run trained on synthetic data)",
    )
    p.add_argument("--k", type=int, default=EVAL_DEFAULTS["k"],
                   help="samples per problem (default 4; 1 for a run trained on synthetic data; paper: 12)")
    p.add_argument("--max-new-tokens", type=int, default=EVAL_DEFAULTS["max_new_tokens"],
                   help="default: the run's max_completion_length (1024 without a run); paper: 38912")
    p.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="cap on prompt + completion tokens per sample (non-thinking setting: 32768); default none",
    )
    p.add_argument("--temperature", type=float, default=EVAL_DEFAULTS["temperature"],
                   help="0 = greedy (default 1.0; 0 for a run trained on synthetic data)")
    p.add_argument("--top-p", type=float, default=EVAL_DEFAULTS["top_p"])
    p.add_argument(
        "--thinking",
        action=argparse.BooleanOptionalAction,
        default=EVAL_DEFAULTS["thinking"],
        help="chat template enable_thinking (Qwen3; paper: on; default: the run's student_chat_kwargs, else off)",
    )
    p.add_argument(
        "--prompt",
        choices=EVAL_PROMPTS,
        default=EVAL_DEFAULTS["prompt"],
        help="evaluation prompt: reference = the problem, a blank line, the instruction (the reference "
        "evaluation; default); student = the training student prompt with its 'Problem: ' prefix",
    )
    p.add_argument(
        "--grading",
        choices=GRADING_RULES,
        default=EVAL_DEFAULTS["grading"],
        help="kit = the kit's rules (last complete \\boxed{}, math-verify with a textual fallback, maj@k over "
        "math-verify-equal answers; default); reference = the reference evaluation's (last \\boxed, none if "
        "unterminated, math-verify alone, maj@k over exact strings; the eval-paper / eval-nonthinking profiles)",
    )
    p.add_argument("--backend", choices=("hf", "vllm"), default=EVAL_DEFAULTS["backend"])
    p.add_argument("--batch-size", type=int, default=EVAL_DEFAULTS["batch_size"],
                   help="problems per generate call (hf backend; default 8, 64 for a run trained on synthetic data)")
    p.add_argument("--steps", default=None, help="comma-separated checkpoint steps (0 = base); default all")
    p.add_argument("--no-base", action="store_true", help="with --run: skip step 0 (the base model)")
    p.add_argument("--limit", type=_limit, default=None,
                   help="evaluate the first N problems of each benchmark ('all': every problem; default: all, "
                   "200 for a run trained on synthetic data)")
    p.add_argument("--seed", type=int, default=EVAL_DEFAULTS["seed"])
    p.add_argument("--device", default=None, help="hf backend device (default: cuda when available)")
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="vllm backend")
    p.add_argument(
        "--output",
        default=None,
        help="with --model: the output directory (default runs/eval-<model>); a run's results go into it",
    )
    p.add_argument("--overwrite", action="store_true", help="re-evaluate steps whose JSON already exists")
    return p


_NOT_GIVEN = object()


def _run_config_or_none(run: str | None) -> dict | None:
    """``--run``'s config.yaml, or None (no --run, no readable config: ``evaluate_run`` reports why)."""
    if run is None:
        return None
    try:
        return read_run_config(run, missing_ok=True)
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; the flags not given take ``eval_request``'s values: the run's protocol (``--run``:
    its config.yaml), then ``--profile``'s values."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    # the settings flags given explicitly: parsed once more with a default that no flag can produce
    dests = {name: ("limit" if name == "n_problems" else name) for name in EVAL_DEFAULTS}
    probe = build_parser()
    probe.set_defaults(**dict.fromkeys(dests.values(), _NOT_GIVEN))
    seen, _ = probe.parse_known_args(argv)
    given = {name: getattr(seen, dest) for name, dest in dests.items() if getattr(seen, dest) is not _NOT_GIVEN}
    if "n_problems" in given and given["n_problems"] is None:
        given["n_problems"] = "all"  # --limit all
    request = eval_request(_run_config_or_none(first.run), profile=first.profile, **given)
    defaults = request.settings()
    limit = defaults.pop("n_problems")
    parser.set_defaults(**defaults, limit=limit, benchmarks=request.benchmarks)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m opsd eval``: evaluate a run directory or a model and print the summary table."""
    args = parse_args(argv)
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
              "thinking": args.thinking, "prompt": args.prompt, "grading": args.grading, "backend": args.backend,
              "batch_size": args.batch_size, "seed": args.seed, "n_problems": args.limit, "device": args.device,
              "overwrite": args.overwrite, "vllm_kwargs": vllm_kwargs}
    target = eval_target(run_dir=args.run, model=args.model, output_dir=args.output)
    require_eval_ready(args.backend, benchmarks, target.model or (target.run_config or {}).get("model_name"))
    if target.model is None:
        results = evaluate_run(target.run_dir, benchmarks, steps=steps, include_base=not args.no_base, **common)
    else:
        results = evaluate_model(target.model, benchmarks, target.out_dir, **common)
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(summary_table(results).to_string(index=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
