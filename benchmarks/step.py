"""One OPSD step and one held-out evaluation on the default CPU profile: reference path against fast path.

    python -m benchmarks.step                 # cpu-tiny, 3 interleaved repetitions (make benchmark-step)
    python -m benchmarks.step --reps 5 --eval-problems 200

Both paths compute the same thing (tests/test_packed_linear.py):

  reference  transformers' generate with the LoRA layers unmerged and the whole vocabulary sorted for
             top-p; the teacher pass through the same layers; evaluation in batches of 32 (make demo's
             setting before the fast path).
  fast       ``fast_inference=True`` (the default): no-grad linear layers on packed oneDNN weights with
             LoRA merged into the packed copy, top-p from the top 1,024 candidates, a static KV cache
             (``opsd.packed_linear``, ``opsd.rollout``); evaluation in batches of 64.

One step is ``OPSDTrainer.training_step`` on 8 training problems of ``cpu-tiny`` (rollout <= 64 tokens,
teacher pass, student forward + backward, the trainer's per-step metrics), then AdamW; every repetition
starts from the same weights and seed, so both paths sample the same tokens. The LoRA B matrices are
drawn N(0, 0.02) first so that the adapters are not zero, as after training. Evaluation is
``opsd.eval.evaluate.evaluate`` on the first ``--eval-problems`` held-out problems, greedy, 64 new tokens,
from the starting weights, and checks that both paths give the same answers. Speeds are medians over ``--reps`` repetitions with
the two paths interleaved (the order alternates). The estimated limit: at batch 8 a decoding step
reads every weight once, so tokens/s <= 8 x bandwidth / weight bytes, bandwidth measured here by summing
a 512 MiB tensor. The last line is ``step speedup: A.AAx (rollout B.BBx, eval C.CCx)``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

PATHS = ("reference", "fast")
EVAL_BATCH = {"reference": 32, "fast": 64}


def read_bandwidth_gbs(mib: int = 512) -> float:
    """Best of 5 sums over a ``mib`` MiB float32 tensor, in GB/s (a lower bound on read bandwidth)."""
    x = torch.ones(mib * 2**20 // 4)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best / 1e9


def build(profile: str):
    """The cpu-tiny trainer, its first batch and the starting trainable weights."""
    from opsd.config import OPSDConfig, load_config
    from opsd.trainer import build_trainer

    config = load_config(OPSDConfig, profile, {"output_dir": "runs/benchmark-step", "report_to": "none"})
    trainer = build_trainer(config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop, which this bypasses
    return config, trainer, batch, start


def restore(model, start: dict) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in start:
                p.copy_(start[n])


def timed_step(trainer, batch, start: dict, path: str, seed: int) -> dict:
    """One optimizer step from ``start`` on ``path``: seconds per part and tokens sampled."""
    fast = path == "fast"
    trainer.args.fast_inference = fast
    trainer.rollout_backend.fast = fast
    model = trainer.model
    restore(model, start)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=trainer.args.learning_rate)
    tokens_before = trainer.tokens_generated
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    trainer.training_step(model, batch)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    total = time.perf_counter() - t0
    metrics = trainer._metrics
    rollout, teacher = metrics["time_rollout_s"][-1], metrics["time_teacher_s"][-1]
    metrics.clear()
    return {"step": total, "rollout": rollout, "teacher": teacher, "student": total - rollout - teacher,
            "tokens": trainer.tokens_generated - tokens_before}


def timed_eval(model, tokenizer, dataset, path: str) -> tuple[float, list[str], float]:
    from opsd.eval.evaluate import evaluate

    start = time.perf_counter()
    records, summary = evaluate(model, tokenizer, dataset, k=1, temperature=0.0, max_new_tokens=64,
                                batch_size=EVAL_BATCH[path], progress=False, fast=path == "fast")
    return time.perf_counter() - start, [r["completion"] for r in records], summary["avg_at_k"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cpu-tiny")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--eval-problems", type=int, default=128)
    args = p.parse_args(argv)
    if args.reps < 1 or args.eval_problems < 1:
        p.error("--reps and --eval-problems must be >= 1")

    from opsd.data import load_benchmark
    from opsd.packed_linear import available

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    config, trainer, batch, start = build(args.profile)
    model, tokenizer = trainer.model, trainer.tokenizer
    if not available(model):
        print("the packed path does not apply here (needs oneDNN and float32 weights on the CPU): nothing to compare")
        return 1
    dataset = load_benchmark("synthetic", n=args.eval_problems)
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" not in n)
    bandwidth = read_bandwidth_gbs()
    rows = config.per_device_train_batch_size * config.num_generations
    limit = rows * bandwidth * 1e9 / weight_bytes
    print(f"weights read per decoding step: {weight_bytes / 1e6:.0f} MB; read bandwidth {bandwidth:.1f} GB/s -> "
          f"at most {limit:.0f} tokens/s at batch {rows}")

    results: dict[str, list[dict]] = {path: [] for path in PATHS}
    answers: dict[str, list[str]] = {}
    for rep in range(args.reps):
        for path in (PATHS if rep % 2 == 0 else PATHS[::-1]):
            step = timed_step(trainer, batch, start, path, seed=rep)
            restore(model, start)
            seconds, completions, accuracy = timed_eval(model, tokenizer, dataset, path)
            step.update(eval=seconds, accuracy=accuracy)
            results[path].append(step)
            answers.setdefault(path, completions)
            print(f"rep {rep + 1} {path:9s}  step {step['step']:6.2f} s (rollout {step['rollout']:5.2f}, teacher "
                  f"{step['teacher']:5.2f}, student {step['student']:5.2f}), {step['tokens']} tokens = "
                  f"{step['tokens'] / step['rollout']:5.1f} tokens/s; eval {seconds:6.1f} s, accuracy {accuracy:.3f}",
                  flush=True)

    def median(path: str, key: str) -> float:
        return statistics.median(r[key] for r in results[path])

    def speed(path: str) -> float:
        return statistics.median(r["tokens"] / r["rollout"] for r in results[path])

    print()
    print(f"{'':24s}{'reference':>12s}{'fast':>12s}{'speedup':>10s}")
    for key, label in (("step", "step s"), ("rollout", "rollout s"), ("teacher", "teacher s"),
                       ("student", "student s"), ("eval", f"eval s ({args.eval_problems} problems)")):
        ref, new = median("reference", key), median("fast", key)
        print(f"{label:24s}{ref:12.2f}{new:12.2f}{ref / new:9.2f}x")
    print(f"{'rollout tokens/s':24s}{speed('reference'):12.1f}{speed('fast'):12.1f}"
          f"{speed('fast') / speed('reference'):9.2f}x   (estimated limit {limit:.0f})")
    same = sum(a == b for a, b in zip(answers["reference"], answers["fast"]))
    print(f"greedy evaluation: {same}/{len(answers['reference'])} completions identical on the two paths")
    step_x = median("reference", "step") / median("fast", "step")
    rollout_x = speed("fast") / speed("reference")
    eval_x = median("reference", "eval") / median("fast", "eval")
    print(f"step speedup: {step_x:.2f}x (rollout {rollout_x:.2f}x, eval {eval_x:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
