"""One OPSD step and one held-out evaluation on the default CPU profile: reference path against fast path.

    python -m benchmarks.step                 # cpu-tiny, 5 interleaved repetitions (make benchmark-step)
    python -m benchmarks.step --reps 7 --eval-problems 200 --kernel-plan measured

Both paths compute the same thing (tests/test_packed_linear.py):

  reference  transformers' generate with the LoRA layers unmerged and the whole vocabulary sorted for
             top-p; the teacher pass through the same layers; evaluation in batches of 32 (make demo's
             setting before the fast path).
  fast       ``fast_inference=True`` (the default): no-grad linear layers on packed oneDNN weights with
             LoRA merged into the packed copy, top-p from the top 1,024 candidates, a static KV cache
             (``opsd.packed_linear``, ``opsd.rollout``); evaluation in batches of 64. Every linear layer
             packed (``--kernel-plan measured``: per shape and call kind, whichever kernel
             ``opsd.packed_linear.kernel_plan`` times faster here; the plan is printed).

One step is ``OPSDTrainer.training_step`` on 8 training problems of ``cpu-tiny`` (rollout <= 64 tokens,
teacher pass, student forward + backward, the trainer's per-step metrics), then AdamW; every repetition
starts from the same weights and seed, so both paths sample the same tokens. The LoRA B matrices are
drawn N(0, 0.02) first so that the adapters are not zero, as after training. Evaluation is
``opsd.eval.evaluate.evaluate`` on the first ``--eval-problems`` held-out problems, greedy, 64 new tokens,
from the starting weights, and checks that both paths give the same answers.

Reported, since the gains depend on the machine: the CPU (vendor, ISA flags torch and oneDNN use, whether
MKL takes its Intel code path), threads and the CPUs they ran on, the load average before and after,
oneDNN's kernel for each call kind, and per component (rollout, teacher pass, student forward, backward,
metrics, optimizer, the rest) wall and CPU time (process time of all threads; CPU / wall near the thread
count means both cores worked, far below it means waiting), minimum and median over ``--reps``
repetitions with the two paths interleaved (the order alternates), and every component that was slower
on the fast path in some repetition. The estimated limit: at batch 8 a decoding step
reads every weight once, so tokens/s <= 8 x bandwidth / weight bytes, bandwidth measured here by summing
a 512 MiB tensor. The last line is ``step speedup: A.AAx (rollout B.BBx, eval C.CCx)``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

PATHS = ("reference", "fast")
EVAL_BATCH = {"reference": 32, "fast": 64}
COMPONENTS = ("rollout", "teacher", "student", "backward", "metrics", "optimizer", "other")
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def read_bandwidth_gbs(mib: int = 512) -> float:
    """Best of 5 sums over a ``mib`` MiB float32 tensor, in GB/s (a lower bound on read bandwidth)."""
    x = torch.ones(mib * 2**20 // 4)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best / 1e9


# ----------------------------------------------------------------------------------------- the machine

def cpu_report() -> list[str]:
    """CPU vendor and model, the ISA flags that decide the kernels, and what torch's libraries make of them."""
    from opsd.packed_linear import cpu_info

    info = cpu_info()
    flags = set(info.get("flags", "").split())
    model = info.get("model name", platform.processor() or platform.machine())
    isa = ", ".join(f for f in ISA_FLAGS if f in flags) or "none of " + ", ".join(ISA_FLAGS)
    return [(f"cpu: {info.get('vendor_id', '?')} {model} (family {info.get('cpu family', '?')}, model "
             f"{info.get('model', '?')}), {os.cpu_count()} logical CPUs; flags: {isa}"),
            (f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
             f"MKL takes its Intel code path: {mkl_sees_intel()}")]


def mkl_sees_intel() -> str:
    """MKL's own check (``mkl_serv_intel_cpu_true``): on other CPUs it dispatches to generic kernels."""
    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        return "yes" if ctypes.CDLL(lib).mkl_serv_intel_cpu_true() else "no (generic kernels)"
    except (OSError, AttributeError):
        return "unknown (symbol not exported)"


def thread_report() -> list[str]:
    """Threads torch uses, the CPUs this process may run on, the affinity variables, and where the threads
    of one multiply ran (``/proc/self/task/*/stat``: last CPU, CPU seconds)."""
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES",
                                      "GOMP_CPU_AFFINITY", "KMP_AFFINITY") if k in os.environ}
    a = torch.randn(2048, 2048)
    for _ in range(5):
        a @ a
    placed = []
    for tid in sorted(os.listdir("/proc/self/task"), key=int) if os.path.isdir("/proc/self/task") else []:
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            if seconds > 0.01:
                placed.append(f"{tid} on CPU {fields[36]} ({seconds:.2f} s)")
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return [(f"threads: {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op; "
             f"allowed CPUs {affinity}; env {env or 'none set'}; load average {os.getloadavg()[0]:.2f}"),
            f"threads that worked (tid, last CPU, CPU time): {'; '.join(placed) or '?'}"]


def captured_stdout(fn) -> str:
    """What ``fn()`` writes to file descriptor 1 (oneDNN's verbose lines come from C, not ``sys.stdout``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as f:
        os.dup2(f.fileno(), 1)
        try:
            fn()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        return f.read()


def onednn_kernels(in_features: int, out_features: int) -> list[str]:
    """oneDNN's implementation for the packed kernel at decoding, scoring and backward sizes."""
    from opsd.packed_linear import PACK_ROWS_HINT, PLAN_ROWS

    weight = torch.randn(out_features, in_features)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS_HINT)
    packed_t = torch.ops.mkldnn._reorder_linear_weight(weight.t().contiguous(), PACK_ROWS_HINT)
    calls = {"decode": (torch.randn(PLAN_ROWS["decode"], in_features), packed),
             "score": (torch.randn(PLAN_ROWS["score"], in_features), packed),
             "backward dx": (torch.randn(PLAN_ROWS["train"], out_features), packed_t)}
    lines = []
    for kind, (x, w) in calls.items():
        def call(x=x, w=w):
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
        execs = [ln.split(",") for ln in captured_stdout(call).splitlines() if ",exec," in ln]
        impl = execs[-1][6] if execs and len(execs[-1]) > 6 else "? (no verbose output)"
        width_in, width_out = (out_features, in_features) if kind == "backward dx" else (in_features, out_features)
        lines.append(f"oneDNN kernel, {kind} [{x.shape[0]}, {width_in}] -> [{x.shape[0]}, {width_out}]: {impl}")
    return lines


# ------------------------------------------------------------------------------------- the measurement

class Clock:
    """Wall and process CPU seconds per component, summed over the calls inside one step."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.active: str | None = None

    def reset(self) -> None:
        self.wall, self.cpu = {}, {}

    @contextlib.contextmanager
    def part(self, name: str):
        if self.active is not None:  # nested (a component inside another): counted once, in the outer one
            yield
            return
        self.active, wall, cpu = name, time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu
            self.active = None

    def wrap(self, name: str, fn, when=lambda *a, **k: True):
        def timed(*args, **kwargs):
            if not when(*args, **kwargs):
                return fn(*args, **kwargs)
            with self.part(name):
                return fn(*args, **kwargs)
        return timed


def instrument(trainer, clock: Clock) -> None:
    """Time the step's components in place: the trainer's sampling, metrics and backward, and the teacher
    and student passes of ``opsd.step`` (which ``opsd_loss`` looks up at each call)."""
    import opsd.step

    trainer._sample = clock.wrap("rollout", trainer._sample)
    trainer._record = clock.wrap("metrics", trainer._record)
    trainer.accelerator.backward = clock.wrap("backward", trainer.accelerator.backward)
    opsd.step.teacher_scores = clock.wrap("teacher", opsd.step.teacher_scores)
    opsd.step.score_rollout = clock.wrap("student", opsd.step.score_rollout,
                                         when=lambda model, batch, role, **k: role == "student")


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


def timed_step(trainer, batch, start: dict, path: str, seed: int, clock: Clock) -> dict:
    """One optimizer step from ``start`` on ``path``: wall and CPU seconds per component, tokens sampled."""
    fast = path == "fast"
    trainer.args.fast_inference = fast
    trainer.rollout_backend.fast = fast
    model = trainer.model
    restore(model, start)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=trainer.args.learning_rate)
    tokens_before = trainer.tokens_generated
    torch.manual_seed(seed)
    clock.reset()
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.training_step(model, batch)
    with clock.part("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    trainer._metrics.clear()
    row = {"step": wall, "step cpu": cpu, "tokens": trainer.tokens_generated - tokens_before}
    for name in COMPONENTS[:-1]:
        row[name], row[name + " cpu"] = clock.wall.get(name, 0.0), clock.cpu.get(name, 0.0)
    row["other"] = wall - sum(clock.wall.values())
    row["other cpu"] = cpu - sum(clock.cpu.values())
    return row


def timed_eval(model, tokenizer, dataset, path: str) -> tuple[float, float, list[str], float]:
    from opsd.eval.evaluate import evaluate

    wall, cpu = time.perf_counter(), time.process_time()
    records, summary = evaluate(model, tokenizer, dataset, k=1, temperature=0.0, max_new_tokens=64,
                                batch_size=EVAL_BATCH[path], progress=False, fast=path == "fast")
    return time.perf_counter() - wall, time.process_time() - cpu, [r["completion"] for r in records], summary["avg_at_k"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cpu-tiny")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--eval-problems", type=int, default=128)
    p.add_argument("--kernel-plan", choices=("packed", "measured", "standard"), default=None,
                   help="the fast path's kernels (OPSD_KERNEL_PLAN; default: its value, else packed)")
    args = p.parse_args(argv)
    if args.kernel_plan:
        os.environ["OPSD_KERNEL_PLAN"] = args.kernel_plan
    if args.reps < 1 or args.eval_problems < 1:
        p.error("--reps and --eval-problems must be >= 1")

    from opsd.data import load_benchmark
    from opsd.packed_linear import DEFAULT_PLAN, available, kernel_plan

    for line in cpu_report() + thread_report():
        print(line)
    config, trainer, batch, start = build(args.profile)
    model, tokenizer = trainer.model, trainer.tokenizer
    if not available(model):
        print("the packed path does not apply here (needs oneDNN and float32 weights on the CPU): nothing to compare")
        return 1
    hidden = model.config.hidden_size
    for line in onednn_kernels(hidden, model.config.intermediate_size):
        print(line)
    seconds = time.perf_counter()
    plan = kernel_plan(model)
    print(f"kernel plan: {os.environ.get('OPSD_KERNEL_PLAN', DEFAULT_PLAN)} ({time.perf_counter() - seconds:.1f} s)"
          + ("" if plan.seconds else f", every call {'packed' if plan.default else 'standard'}"))
    for line in plan.table():
        print("  " + line)
    dataset = load_benchmark("synthetic", n=args.eval_problems)
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" not in n)
    bandwidth = read_bandwidth_gbs()
    rows = config.per_device_train_batch_size * config.num_generations
    limit = rows * bandwidth * 1e9 / weight_bytes
    print(f"weights read per decoding step: {weight_bytes / 1e6:.0f} MB; read bandwidth {bandwidth:.1f} GB/s -> "
          f"at most {limit:.0f} tokens/s at batch {rows}")

    clock = Clock()
    instrument(trainer, clock)
    results: dict[str, list[dict]] = {path: [] for path in PATHS}
    answers: dict[str, list[str]] = {}
    for rep in range(args.reps):
        for path in (PATHS if rep % 2 == 0 else PATHS[::-1]):
            step = timed_step(trainer, batch, start, path, seed=rep, clock=clock)
            restore(model, start)
            wall, cpu, completions, accuracy = timed_eval(model, tokenizer, dataset, path)
            step.update({"eval": wall, "eval cpu": cpu, "accuracy": accuracy})
            results[path].append(step)
            answers.setdefault(path, completions)
            parts = ", ".join(f"{name} {step[name]:.2f}" for name in COMPONENTS)
            print(f"rep {rep + 1} {path:9s}  step {step['step']:6.2f} s ({parts}), {step['tokens']} tokens = "
                  f"{step['tokens'] / step['rollout']:5.1f} tokens/s; eval {wall:6.1f} s, accuracy {accuracy:.3f}; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)

    def stat(path: str, key: str, fn=statistics.median) -> float:
        return fn(r[key] for r in results[path])

    def speed(path: str) -> float:
        return statistics.median(r["tokens"] / r["rollout"] for r in results[path])

    print(f"\nmedian (min) over {args.reps} repetitions; CPU = process time of all threads")
    print(f"{'':22s}{'reference wall':>18s}{'fast wall':>18s}{'speedup':>9s}{'ref CPU':>9s}{'fast CPU':>9s}")
    for key in ("step",) + COMPONENTS + ("eval",):
        label = f"eval ({args.eval_problems} problems)" if key == "eval" else key
        ref, new = stat("reference", key), stat("fast", key)
        print(f"{label:22s}{ref:10.2f} ({stat('reference', key, min):5.2f}){new:10.2f} ({stat('fast', key, min):5.2f})"
              f"{ref / new if new > 0 else float('nan'):8.2f}x{stat('reference', key + ' cpu'):9.2f}"
              f"{stat('fast', key + ' cpu'):9.2f}")
    print(f"{'rollout tokens/s':22s}{speed('reference'):18.1f}{speed('fast'):18.1f}"
          f"{speed('fast') / speed('reference'):8.2f}x   (estimated limit {limit:.0f})")
    slower = [f"{key} in rep {i + 1} ({ref[key]:.2f} -> {new[key]:.2f} s)"
              for i, (ref, new) in enumerate(zip(results["reference"], results["fast"]))
              for key in ("rollout", "teacher", "student", "backward", "eval") if new[key] > ref[key]]
    print(f"slower on the fast path in some repetition: {'; '.join(slower) or 'nothing'}")
    same = sum(a == b for a, b in zip(answers["reference"], answers["fast"]))
    print(f"greedy evaluation: {same}/{len(answers['reference'])} completions identical on the two paths")
    step_x = stat("reference", "step") / stat("fast", "step")
    rollout_x = speed("fast") / speed("reference")
    eval_x = stat("reference", "eval") / stat("fast", "eval")
    print(f"step speedup: {step_x:.2f}x (rollout {rollout_x:.2f}x, eval {eval_x:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
