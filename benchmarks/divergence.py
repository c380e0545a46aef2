"""Wall time and peak memory of the OPSD objective: plain path against the memory-efficient paths.

Paths (forward + backward of `opsd.divergence`, every rollout position masked in):
  plain         objective.loss(student_logits, teacher_logits, mask)                  inputs: logits
  chunked       chunked_loss(..., objective, chunk_size=N)                            inputs: logits
  plain-hidden  logits = hidden @ W.T, then the plain path                            inputs: hidden states
  fused         loss_from_hidden(student_hidden, teacher_hidden, W, mask, objective, chunk_size=N)

with objective = DivergenceSpec(...) of the command line's options.

Every (path, batch, length) runs in a fresh subprocess so that measurements do not contaminate each
other. Peak memory is measured above the state right after the inputs were allocated: on CPU the
resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs before each repetition) minus
the RSS after allocation; on CUDA torch.cuda.max_memory_allocated minus memory_allocated after
allocation. Ratios compare chunked with plain and fused with plain-hidden.

    python -m benchmarks.divergence                                    # CPU, float32 (see README.md)
    python -m benchmarks.divergence --device cuda --dtype bfloat16 --lengths 256,1024,4096 --hidden 2048
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

PATHS = ("plain", "chunked", "plain-hidden", "fused")
BASELINE = {"chunked": "plain", "fused": "plain-hidden"}
# Memory model used to skip configurations that cannot fit: peak above the inputs is about
# UNITS[path] x (B x T x V values) + 1 GiB. The plain paths' units are replaced by the measured value
# (x 1.15) once they ran; chunked holds one gradient buffer shaped like the logits, fused none.
UNITS = {"plain": 9.0, "chunked": 1.0, "plain-hidden": 10.0, "fused": 0.0}
DISTINCT_ROWS = 64  # random rows generated, then tiled (cost does not depend on the values)


# --------------------------------------------------------------------------------------------------
# Worker: one configuration in its own process
# --------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class _CpuMemory:
    """Peak RSS above a baseline, using the kernel's resettable high-water mark (VmHWM).

    Where /proc/self/clear_refs cannot be written the mark cannot be reset, and the peak is the
    process's lifetime high-water mark (still right for the first repetition).
    """

    def __init__(self) -> None:
        self.baseline = _status_kib("VmRSS") * 1024

    def reset(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def peak(self) -> int:
        return _status_kib("VmHWM") * 1024 - self.baseline


class _CudaMemory:
    def __init__(self, torch) -> None:
        self.torch = torch
        torch.cuda.synchronize()
        self.baseline = torch.cuda.memory_allocated()

    def reset(self) -> None:
        self.torch.cuda.synchronize()
        self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        self.torch.cuda.synchronize()
        return self.torch.cuda.max_memory_allocated() - self.baseline


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _random(torch, shape, dtype, device, seed):
    """Gaussian values (std 2) of `shape`: DISTINCT_ROWS random rows tiled along the first dimension."""
    generator = torch.Generator().manual_seed(seed)
    rows, width = math.prod(shape[:-1]), shape[-1]
    block = torch.randn(min(rows, DISTINCT_ROWS), width, generator=generator).mul_(2.0).to(dtype)
    out = torch.empty(rows, width, dtype=dtype, device=device)
    for start in range(0, rows, block.shape[0]):
        out[start : start + block.shape[0]] = block[: rows - start].to(device)
    return out.view(*shape)


def run_worker(args) -> dict:
    import torch

    from opsd.divergence import DivergenceSpec
    from opsd.divergence_chunked import chunked_loss, loss_from_hidden

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
        if args.memory_limit_bytes:
            limit = _status_kib("VmSize") * 1024 + args.memory_limit_bytes
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    batch, length, vocab, hidden = args.batch, args.length, args.vocab, args.hidden
    objective = DivergenceSpec(beta=args.beta, temperature=args.temperature, teacher_top_k=args.teacher_top_k,
                               clip=args.clip, clip_mode=args.clip_mode)
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    if args.path in ("plain", "chunked"):
        student = _random(torch, (batch, length, vocab), dtype, device, 0).requires_grad_(True)
        teacher = _random(torch, (batch, length, vocab), dtype, device, 1)
        leaves = [student]
    else:
        student = _random(torch, (batch, length, hidden), dtype, device, 0).requires_grad_(True)
        teacher = _random(torch, (batch, length, hidden), dtype, device, 1)
        weight = (_random(torch, (vocab, hidden), dtype, device, 2) / hidden**0.5).requires_grad_(
            args.head_grad
        )
        leaves = [student, weight] if args.head_grad else [student]

    def step():
        if args.path == "plain":
            loss = objective.loss(student, teacher, mask)
        elif args.path == "chunked":
            loss = chunked_loss(student, teacher, mask, objective, args.chunk_size)
        elif args.path == "plain-hidden":
            with torch.no_grad():
                teacher_logits = teacher @ weight.T
            loss = objective.loss(student @ weight.T, teacher_logits, mask)
            del teacher_logits
        else:
            loss = loss_from_hidden(student, teacher, weight, mask, objective, chunk_size=args.fused_chunk_size)
        loss.backward()
        return float(loss.detach())

    memory = _CpuMemory() if args.device == "cpu" else _CudaMemory(torch)
    times, cpu, peaks = [], [], []
    for _ in range(args.repeats):
        for leaf in leaves:
            leaf.grad = None
        memory.reset()
        if args.device == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        loss = step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu.append(_cpu_seconds() - cpu_start)
        peaks.append(memory.peak())
    return {
        "status": "ok",
        "time_s": statistics.median(times),
        "cpu_s": statistics.median(cpu),
        "peak_bytes": max(peaks),
        "loss": loss,
    }


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise KeyError("MemAvailable")


def _itemsize(dtype: str) -> int:
    return {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}[dtype]


def _spawn(args, path, batch, length, repeats, memory_limit):
    command = [
        sys.executable,
        "-m",
        "benchmarks.divergence",
        "--worker",
        "--path",
        path,
        "--batch",
        str(batch),
        "--length",
        str(length),
        "--repeats",
        str(repeats),
        "--memory-limit-bytes",
        str(memory_limit),
    ] + _shared_flags(args)
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, cwd=root, timeout=args.worker_timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {args.worker_timeout_s:.0f} s"}
    for line in reversed(done.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (done.stderr or "").strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
    return {"status": f"did not fit / failed ({tail[0][:100]})"}


def _shared_flags(args) -> list[str]:
    flags = [
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--vocab",
        str(args.vocab),
        "--hidden",
        str(args.hidden),
        "--beta",
        str(args.beta),
        "--temperature",
        str(args.temperature),
        "--clip-mode",
        args.clip_mode,
        "--chunk-size",
        str(args.chunk_size),
        "--fused-chunk-size",
        str(args.fused_chunk_size),
        "--threads",
        str(args.threads),
    ]
    flags += ["--clip", "none" if args.clip is None else str(args.clip)]
    if args.teacher_top_k is not None:
        flags += ["--teacher-top-k", str(args.teacher_top_k)]
    if args.head_grad:
        flags += ["--head-grad"]
    return flags


def _predicted_bytes(args, path, batch, length, units) -> int:
    item = _itemsize(args.dtype)
    inputs = 2 * batch * length * (args.vocab if path in ("plain", "chunked") else args.hidden) * item
    return int(inputs + units[path] * batch * length * args.vocab * item + (1 << 30))


def run_driver(args) -> None:
    import torch

    from opsd.divergence_chunked import CUDA_CHUNK_ELEMENTS, FUSED_BLOCK_ELEMENTS, suggest_chunk_size

    if args.chunk_size is None:
        args.chunk_size = suggest_chunk_size(args.vocab, device=args.device)
    if args.fused_chunk_size is None:  # the defaults of loss_from_hidden, made explicit
        block = CUDA_CHUNK_ELEMENTS if args.device == "cuda" else FUSED_BLOCK_ELEMENTS
        args.fused_chunk_size = suggest_chunk_size(args.vocab, block)
    paths = _names(args.paths)
    for path in paths:
        if path not in PATHS:
            raise SystemExit(f"unknown path {path!r}; choose from {PATHS}")
    configs = [(b, n) for b in _ints(args.batches) for n in _ints(args.lengths)]
    key = tuple(_ints(args.key)) if args.key else None
    print(_machine(args, torch))
    print(
        f"objective: beta={args.beta} temperature={args.temperature} teacher_top_k={args.teacher_top_k} "
        f"clip={args.clip}"
        + (f" ({args.clip_mode})" if args.clip is not None else " (no clipping)")
        + f"; vocab {args.vocab}; hidden {args.hidden}; chunk {args.chunk_size} positions "
        f"(fused: blocks of {args.fused_chunk_size}); "
        f"lm_head grad {args.head_grad}; forward + backward, all positions masked in",
        flush=True,
    )
    units = dict(UNITS)
    results = {}
    started = time.perf_counter()
    # The key configuration first (it is exempt from the time budget), then by size.
    for batch, length in sorted(configs, key=lambda c: (c != key, c[0] * c[1])):
        order = list(paths)
        if (batch, length) == key:  # interleave the repetitions so that load changes hit both paths
            order += [p for p in _names(args.key_paths) if p in paths] * (args.key_repeats - 1)
        runs = {path: [] for path in paths}
        for path in order:
            budget = (
                min(args.memory_limit_gb * 2**30, 0.8 * _available_bytes()) if args.device == "cpu" else None
            )
            predicted = _predicted_bytes(args, path, batch, length, units)
            if budget is not None and predicted > budget:
                runs[path].append({"status": f"did not fit (needs ~{predicted / 2**30:.0f} GiB)"})
                _print_progress(path, batch, length, runs[path][-1])
                continue
            if (batch, length) != key and time.perf_counter() - started > args.time_budget_s:
                runs[path].append({"status": "skipped (time budget)"})
                continue
            limit = int(budget) if budget is not None else 0
            result = _spawn(args, path, batch, length, 1, limit)
            runs[path].append(result)
            if result["status"] == "ok" and path.startswith("plain"):
                item = _itemsize(args.dtype)
                measured = result["peak_bytes"] / (batch * length * args.vocab * item)
                units[path] = 1.15 * measured  # predictions for larger sizes scale from this one
            _print_progress(path, batch, length, result)
        for path in paths:
            results[(path, batch, length)] = _merge(runs[path])
    print()
    print(_table(results, paths, configs, key))
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")


def _merge(runs: list[dict]) -> dict:
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return runs[0] if runs else {"status": "not run"}
    return {
        "status": "ok",
        "time_s": statistics.median(r["time_s"] for r in ok),
        "times_s": [r["time_s"] for r in ok],
        "cpu_s": statistics.median(r["cpu_s"] for r in ok),
        "peak_bytes": max(r["peak_bytes"] for r in ok),
        "loss": ok[0]["loss"],
    }


def _print_progress(path, batch, length, result) -> None:
    if result["status"] == "ok":
        print(
            f"  {path:>12} B={batch} T={length}: {result['time_s']:.2f} s ({result['cpu_s']:.1f} s CPU), "
            f"{result['peak_bytes'] / 2**20:.0f} MiB, loss {result['loss']:.6f}",
            flush=True,
        )
    else:
        print(f"  {path:>12} B={batch} T={length}: {result['status']}", flush=True)


def _table(results, paths, configs, key) -> str:
    header = "| B | T | path | wall time (s) | CPU time (s) | peak memory (MiB) | time ratio | memory ratio |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for batch, length in configs:
        for path in paths:
            r = results[(path, batch, length)]
            runs = f" (median of {len(r['times_s'])})" if r.get("times_s") and len(r["times_s"]) > 1 else ""
            if r["status"] != "ok":
                lines.append(f"| {batch} | {length} | {path} | {r['status']} | | | | |")
                continue
            base = results.get((BASELINE.get(path), batch, length))
            time_ratio = memory_ratio = ""
            if base and base["status"] == "ok":
                time_ratio = f"{r['time_s'] / base['time_s']:.2f}"
                memory_ratio = f"{r['peak_bytes'] / max(base['peak_bytes'], 1):.3f}"
            mark = " **key**" if (batch, length) == key else ""
            lines.append(
                f"| {batch} | {length} | {path}{mark} | {r['time_s']:.2f}{runs} | {r['cpu_s']:.1f} | "
                f"{r['peak_bytes'] / 2**20:.0f} | {time_ratio} | {memory_ratio} |"
            )
    return "\n".join(lines)


def _machine(args, torch) -> str:
    if args.device == "cuda":
        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
        return f"device: {name}; torch {torch.__version__}; dtype {args.dtype}"
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"device: CPU {model}, {os.cpu_count()} cores visible, {args.threads} torch threads, "
        f"{total:.1f} GiB RAM; torch {torch.__version__}; dtype {args.dtype}"
    )


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace("x", ",").split(",") if x]


def _clip(text: str) -> float | None:
    """--clip value: a threshold, or none / null for no clipping (clip=None, the only no-clip spelling)."""
    return None if text.strip().lower() in ("none", "null") else float(text)


def parse_args(argv=None):
    from opsd.divergence import CLIP_MODES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--vocab", type=int, default=151_936, help="vocabulary size (Qwen3: 151,936)")
    p.add_argument(
        "--hidden",
        type=int,
        default=256,
        help="hidden size for the hidden-state paths "
        "(Qwen3-1.7B: 2048; the CPU default is small to keep the matmuls affordable)",
    )
    p.add_argument("--batches", default="1,2,4")
    p.add_argument("--lengths", default="256,1024,2048")
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--key", default="2,1024", help="B,T of the key configuration ('' for none)")
    p.add_argument("--key-repeats", type=int, default=3)
    p.add_argument("--key-paths", default="plain,chunked", help="paths repeated at the key configuration")
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--teacher-top-k", type=int, default=None, help="the teacher's top-k support (default: all)"
    )
    p.add_argument("--clip", type=_clip, default=0.05, help="clip threshold c, or 'none' for no clipping")
    p.add_argument(
        "--clip-mode", default="pointwise", choices=list(CLIP_MODES), help="how to clip when --clip is set"
    )
    p.add_argument(
        "--chunk-size", type=int, default=None, help="positions per chunk (default: suggest_chunk_size)"
    )
    p.add_argument(
        "--fused-chunk-size",
        type=int,
        default=None,
        help="positions per projection block of the fused path (default: the module's)",
    )
    p.add_argument("--head-grad", action="store_true", help="also train the output projection")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    p.add_argument(
        "--memory-limit-gb", type=float, default=20.0, help="skip configurations predicted above this"
    )
    p.add_argument(
        "--time-budget-s", type=float, default=840.0, help="skip configurations started after this"
    )
    p.add_argument("--worker-timeout-s", type=float, default=600.0)
    # Internal: one measurement in a subprocess.
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", default="plain", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--memory-limit-bytes", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.worker:
        run_driver(args)
        return
    try:
        result = run_worker(args)
    except (MemoryError, RuntimeError) as error:  # allocation failures (CPU allocator, CUDA OOM)
        message = str(error).splitlines()[0][:120]
        result = {"status": f"did not fit ({type(error).__name__}: {message})"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
