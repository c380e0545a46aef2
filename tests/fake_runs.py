"""Run directories made by hand, as the trainers and evaluate_run write them (config.yaml, metrics.jsonl,
eval JSON), for the tests of opsd.paper.records, opsd.paper.tables and opsd.paper.figures."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

BENCH = "synthetic"

OPSD_CONFIG = {
    "model_name": "smollm2-135m-instruct", "dataset": "synthetic", "beta": 0.0, "clip": None, "clip_mode": "pointwise",
    "teacher_mode": "fixed",
    "max_completion_length": 48, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "num_generations": 1,
    "use_lora": True, "lora_r": 16, "learning_rate": 3e-4, "max_steps": 4, "temperature": 1.0,
}
GRPO_CONFIG = {
    "model_name": "smollm2-135m-instruct", "reward_functions": ["boxed_answer"], "num_generations": 4,
    "max_completion_length": 48, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "use_lora": True,
    "lora_r": 16, "learning_rate": 3e-4, "max_steps": 4, "temperature": 1.2, "beta": 0.0,
}
SFT_CONFIG = {"model_name": "smollm2-135m-instruct", "dataset": "synthetic", "per_device_train_batch_size": 8,
              "use_lora": True, "lora_r": 16,
                  "learning_rate": 3e-4, "max_steps": 4, "completion_only_loss": None}


def eval_json(step: int, avg: float, benchmark: str = BENCH, k: int = 1) -> dict:
    return {
        "benchmark": benchmark, "step": step, "k": k, "checkpoint": None if step == 0 else f"checkpoint-{step}",
        "settings": {"k": k, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 96, "thinking": False,
                     "backend": "hf", "seed": 0, "n_problems": 64, "model": "smollm2-135m-instruct", "batch_size": 32},
        "summary": {"avg_at_k": avg, "pass_at_k": {"1": avg}, "boxed_rate": 1.0, "mean_completion_tokens": 30.0,
                    "n_problems": 64, "k": k},
        "records": [{"problem_id": "0", "sample_index": 0, "correct": True}],
    }


def write_run(path: Path, config: dict | None, metrics: list[dict] | None = None,
              evals: dict[int, float] | None = None, benchmark: str = BENCH) -> Path:
    """A run directory as the trainers and evaluate_run write it."""
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics:
        (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    for step, avg in (evals or {}).items():
        p = path / "eval" / benchmark / f"step-{step}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(eval_json(step, avg, benchmark)))
    return path


def opsd_metrics(n: int = 4, clipped: float = 0.0, length: float = 30.0) -> list[dict]:
    return [{"step": s, "loss": 0.5 / s, "divergence_mean": 0.5 / s, "clipped_fraction": clipped,
             "negative_token_fraction": 0.0, "rollout_length_mean": length, "tokens_generated": 240 * s,
             "kl_style": 1.0 * s, "kl_math": 0.1, "kl_other": 0.3, "count_style": float(s), "count_math": 10.0,
             "count_other": 5.0, "run_kind": "opsd"} for s in range(1, n + 1)]


def grpo_metrics(n: int = 4) -> list[dict]:
    return [{"step": s, "loss": 0.0, "reward_mean": 0.25, "reward_std_zero_fraction": 1.0 - 0.25 * (s % 2),
             "tokens_generated": 300 * s, "run_kind": "grpo"} for s in range(1, n + 1)]


def make_full_runs(tmp_path: Path) -> Path:
    """Every run of the campaign under ``tmp_path / "runs"``, 4 steps, evaluated at 0, 2, 4 (the tests'
    ``full_runs`` fixture)."""
    root = tmp_path / "runs"
    write_run(root / "OPSD", OPSD_CONFIG, opsd_metrics(), {0: 0.25, 2: 0.5, 4: 0.75})
    write_run(root / "OPSD-clip", {**OPSD_CONFIG, "clip": 0.05, "clip_mode": "pointwise"},
              opsd_metrics(clipped=0.01), {0: 0.25, 2: 0.3, 4: 0.25})
    write_run(root / "OPSD-reverse-KL", {**OPSD_CONFIG, "beta": 1.0}, opsd_metrics(), {0: 0.25, 2: 0.4, 4: 0.45})
    write_run(root / "OPSD-JSD", {**OPSD_CONFIG, "beta": 0.5}, opsd_metrics(), {0: 0.25, 2: 0.35, 4: 0.5})
    write_run(root / "OPSD-long", {**OPSD_CONFIG, "max_completion_length": 96}, opsd_metrics(length=60.0),
              {0: 0.25, 2: 0.55, 4: 0.6})
    write_run(root / "SFT", SFT_CONFIG, [{"step": s, "loss": 1.0 / s, "run_kind": "sft"} for s in (1, 2, 3, 4)],
              {0: 0.25, 2: 0.2, 4: 0.125})
    write_run(root / "GRPO", GRPO_CONFIG, grpo_metrics(), {0: 0.25, 2: 0.25, 4: 0.375})
    write_run(root / "OPSD-terse", {**OPSD_CONFIG, "dataset": "synthetic-terse"}, opsd_metrics(),
              {0: 0.25, 2: 0.375, 4: 0.5})
    write_run(root / "SFT-terse", {**SFT_CONFIG, "dataset": "synthetic-terse"},
              [{"step": s, "loss": 1.0 / s, "run_kind": "sft"} for s in (1, 2, 3, 4)], {0: 0.25, 2: 0.125, 4: 0.0})
    # long-winded references: OPSD rises, SFT falls to 0 (its completions run past the answer budget)
    write_run(root / "OPSD-verbose", {**OPSD_CONFIG, "dataset": "synthetic-verbose"}, opsd_metrics(),
              {0: 0.25, 2: 0.5, 4: 0.625})
    write_run(root / "SFT-verbose", {**SFT_CONFIG, "dataset": "synthetic-verbose"},
              [{"step": s, "loss": 1.0 / s, "run_kind": "sft"} for s in (1, 2, 3, 4)], {0: 0.25, 2: 0.0, 4: 0.0})
    return root

