"""Evaluation results on disk: a run directory's checkpoints and its ``eval/`` files, written and read back.

Layout: ``<run>/checkpoint-<N>/`` (a LoRA adapter or a full model) and ``<run>/config.yaml`` (with
``model_name``); results ``<run>/eval/<benchmark>/step-<N>.json`` (step 0 = the base model), each
``{benchmark, step, k, checkpoint, settings, summary, records, created}`` with ``records`` one graded
sample each and ``summary`` from ``opsd.grading.summarize``. ``summary_table`` turns them into a table.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

from opsd.eval_generation import DEFAULT_EVAL_PROMPT

# ---------------------------------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------------------------------

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def find_checkpoints(run_dir: str | os.PathLike) -> dict[int, Path]:
    """step -> ``run_dir/checkpoint-<step>`` for every checkpoint directory, by step."""
    run_dir = Path(run_dir)
    found = {}
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            m = _CHECKPOINT.match(child.name)
            if m and child.is_dir():
                found[int(m.group(1))] = child
    return dict(sorted(found.items()))


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """``run_dir/config.yaml`` as a dict (``yaml.safe_load``)."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run directory?")
    with open(path) as f:
        return yaml.safe_load(f) or {}


def find_latest_run(runs_root: str | os.PathLike = "runs", profile: str | None = "cpu-tiny") -> Path | None:
    """The most recently modified run directory under ``runs_root`` whose config.yaml has
    ``profile`` (any when None) and at least one checkpoint; None when there is none."""
    import yaml

    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        return None
    candidates = []
    for cfg in runs_root.glob("*/config.yaml"):
        run = cfg.parent
        if not find_checkpoints(run):
            continue
        if profile is not None:
            try:
                conf = read_run_config(run)
            except (OSError, ValueError, yaml.YAMLError):
                continue  # an unreadable config is not a run to evaluate
            if conf.get("profile") != profile:
                continue
        candidates.append((cfg.stat().st_mtime, run))
    return max(candidates)[1] if candidates else None


def is_lora_checkpoint(path: Path) -> bool:
    """Whether a checkpoint folder holds a LoRA adapter (``adapter_config.json``) rather than a full model."""
    return (path / "adapter_config.json").is_file()


# ---------------------------------------------------------------------------------------------------
# Result files
# ---------------------------------------------------------------------------------------------------


def eval_path(run_dir: str | os.PathLike, benchmark: str, step: int) -> Path:
    """``run_dir/eval/<benchmark>/step-<step>.json`` (benchmark names that are paths use the stem)."""
    return Path(run_dir) / "eval" / benchmark_slug(benchmark) / f"step-{int(step)}.json"


def benchmark_slug(benchmark: str) -> str:
    """A benchmark's folder name: a name of ``opsd.data.BENCHMARKS`` itself, a local file's stem, else the
    name with every run of other characters than ``A-Za-z0-9_.-`` replaced by ``_``."""
    from opsd.data import BENCHMARKS

    if benchmark in BENCHMARKS:
        return benchmark
    is_local = os.path.exists(os.path.expanduser(str(benchmark)))
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(benchmark)).stem if is_local else benchmark)


def eval_settings(
    *, k, temperature, top_p, max_new_tokens, thinking, backend, seed, n_problems, model, batch_size,
    prompt=DEFAULT_EVAL_PROMPT, context_length=None,
) -> dict:
    """The ``settings`` of a result file (``context_length`` only when set)."""
    extra = {} if context_length is None else {"context_length": int(context_length)}
    return extra | {
        "prompt": str(prompt),
        "k": int(k),
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_new_tokens": int(max_new_tokens),
        "thinking": bool(thinking),
        "backend": backend,
        "seed": int(seed),
        "n_problems": int(n_problems),
        "model": str(model),
        "batch_size": int(batch_size),
    }


def same_eval_settings(a: dict, b: dict) -> bool:
    """Whether two ``settings`` give the same evaluation (``batch_size`` does not count)."""
    ignore = {"batch_size"}
    return {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}


def write_eval_json(
    path: str | os.PathLike,
    *,
    benchmark: str,
    step: int | None,
    settings: dict,
    records: list[dict],
    summary: dict,
    checkpoint: str | None = None,
) -> dict:
    """Write one evaluation (schema of the run-directory contract) atomically; returns the dict."""
    payload = {
        "benchmark": benchmark,
        "step": step,
        "k": settings["k"],
        "checkpoint": checkpoint,
        "settings": settings,
        "summary": summary,
        "records": records,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)
    return payload


def load_eval_results(run_dir: str | os.PathLike) -> list[dict]:
    """Every ``run_dir/eval/<benchmark>/step-<N>.json``, ordered by benchmark then step. Each dict
    gets ``path``."""
    results = []
    for path in Path(run_dir).glob("eval/*/step-*.json"):
        with open(path) as f:
            res = json.load(f)
        res["path"] = str(path)
        results.append(res)
    return sorted(
        results, key=lambda r: (str(r.get("benchmark")), r.get("step") if r.get("step") is not None else -1)
    )


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

