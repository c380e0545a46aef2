"""Where a rollout's time goes: one ``cpu-tiny`` rollout profiled on the reference and the fast path.

    python -m benchmarks.decode_profile            # cpu-tiny, 8 rows, <= 64 new tokens, both paths
    python -m benchmarks.decode_profile --top 25   # also the 25 operators with the most self time

Each path samples one warm-up rollout, then the same rollout (same weights, same seed) under
``torch.profiler``. Every operator's *self* time (time inside it, not in the operators it calls) is put in
one category; the time outside every operator (Python: ``generate``'s loop, the logits processors, the
module calls) is the wall time minus their sum. Reported per decoding position (the rollout's wall time
divided by its number of token positions, the prompt's prefill included), in ms, with operator calls per
position: where the fast path spends the 1/tokens-per-second of ``python -m benchmarks.step``, and what
a change could remove. The bandwidth bound of ``benchmarks.step`` (every weight read once per position)
is printed beside it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from benchmarks.step import PATHS, build, read_bandwidth_gbs

#: Operator (profiler event) name -> category; the rest is "other operators".
CATEGORIES = {
    "linear layers": ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "aten::bmm"),
    "sampling (full vocabulary)": ("aten::exponential_", "aten::multinomial", "aten::sort", "aten::topk",
                                   "aten::argmax", "aten::cumsum", "aten::_softmax", "aten::softmax"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                  "aten::_softmax_backward_data"),
    "KV cache writes": ("aten::index_copy_", "aten::index_copy"),
    "weight packing": ("mkldnn::_reorder_linear_weight",),
}
OTHER, OUTSIDE = "other operators", "outside operators (Python)"


def categorize(self_seconds: dict[str, float], calls: dict[str, int], wall: float) -> dict[str, tuple[float, int]]:
    """``{category: (seconds, operator calls)}`` from per-operator self seconds and call counts, plus the
    time outside every operator (``wall`` minus their sum, no calls); categories in ``CATEGORIES``' order."""
    of = {name: category for category, names in CATEGORIES.items() for name in names}
    out: dict[str, list] = {category: [0.0, 0] for category in (*CATEGORIES, OTHER)}
    for name, seconds in self_seconds.items():
        entry = out[of.get(name, OTHER)]
        entry[0] += seconds
        entry[1] += calls.get(name, 0)
    out[OUTSIDE] = [max(wall - sum(self_seconds.values()), 0.0), 0]
    return {category: (seconds, n) for category, (seconds, n) in out.items()}


def profiled(fn: Callable[[], object]) -> tuple[object, float, dict[str, float], dict[str, int]]:
    """``fn()`` under the CPU profiler: (its result, wall seconds, {operator: self seconds}, {operator: calls})."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - start
    rows = prof.key_averages()
    return (result, wall, {r.key: r.self_cpu_time_total / 1e6 for r in rows},
            {r.key: r.count for r in rows})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cpu-tiny")
    p.add_argument("--top", type=int, default=0, help="also list this many operators by self time, per path")
    args = p.parse_args(argv)

    from opsd.contexts import build_dual_contexts

    config, trainer, batch, _ = build(args.profile)
    contexts = build_dual_contexts(trainer.tokenizer, batch["problem"], batch["solution"], row_ids=batch["row_id"],
                                   **trainer.args.context_kwargs())
    weight_bytes = sum(p.numel() * p.element_size() for n, p in trainer.model.named_parameters() if "lora_" not in n)
    bound_ms = weight_bytes / (read_bandwidth_gbs() * 1e9) * 1e3

    def rollout():
        torch.manual_seed(0)
        return trainer._sample(trainer.model, contexts)

    results, sampled = {}, {}
    for path in PATHS:
        trainer.args.fast_inference = trainer.rollout_backend.fast = path == "fast"
        rollout()  # warm-up: packed copies, static cache, allocator
        out, wall, self_seconds, calls = profiled(rollout)
        positions = out.completion_ids.shape[1]
        sampled[path] = out.completion_ids
        results[path] = (wall, positions, categorize(self_seconds, calls, wall))
        if args.top:
            print(f"--- {path}: the {args.top} operators with the most self time (ms per position, calls per position)")
            for name in sorted(self_seconds, key=self_seconds.get, reverse=True)[:args.top]:
                print(f"  {name:55s}{self_seconds[name] / positions * 1e3:8.2f}{calls[name] / positions:8.1f}")

    rows = next(iter(results.values()))[2]
    print(f"\nms per decoding position ({config.per_device_train_batch_size * config.num_generations} rows, "
          f"prefill included; operator calls per position)")
    print(f"{'':30s}" + "".join(f"{path:>20s}" for path in PATHS))
    for category in rows:
        cells = "".join(f"{r[2][category][0] / r[1] * 1e3:12.2f} ({r[2][category][1] / r[1]:5.0f})"
                        for r in results.values())
        print(f"{category:30s}{cells}")
    print(f"{'total (wall)':30s}" + "".join(f"{r[0] / r[1] * 1e3:12.2f} {'':7s}" for r in results.values()))
    print(f"{'positions':30s}" + "".join(f"{r[1]:12d} {'':7s}" for r in results.values()))
    print(f"bandwidth bound: {bound_ms:.2f} ms per position (every weight read once, {weight_bytes / 1e6:.0f} MB)")
    same = all(torch.equal(sampled[PATHS[0]], s) for s in sampled.values())
    print(f"sampled tokens identical on the two paths: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
