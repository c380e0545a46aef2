"""Fast no-grad CPU passes: every linear layer through oneDNN with its weight packed once.

On CPU, ``torch.nn.functional.linear`` calls the torch wheel's BLAS (MKL), which on this kit's 2-core AMD
machine multiplies the small matrices of decoding at a fraction of the memory bandwidth: ``[8, 576] x
[576, 1536]`` takes 364 us, against 153 us with oneDNN on a weight packed in its blocked layout
(``benchmarks/README.md``). ``packed_linears(model)`` routes every linear layer of ``model`` through
``torch.ops.mkldnn._linear_pointwise`` (the kernel ``torch.compile`` uses for frozen CPU linears) while no
gradient is recorded (rollouts, the teacher pass, evaluation) and for the frozen weights of the student
pass; LoRA's own factors keep the standard path.

A peft LoRA layer is packed merged, ``W + scaling * B @ A`` (``W`` alone when its adapters are disabled:
the fixed teacher), into the packed copy only: the model's own tensors are never written. A copy that
involves a trainable tensor (the LoRA factors) is rebuilt at every ``packed_linears`` block, as optimizers
change weights in place (fused AdamW without even moving the version counters); copies of frozen weights
are cached on the layer and rebuilt when the tensor object or its version changes (``load_state_dict``).

Whether packing pays depends on the machine and its load (``python -m benchmarks.kernels``,
``benchmarks/README.md``): on the kit's idle AMD machine the packed kernel wins 1.3-2.9x at decoding's
8 rows, while at the 256 rows of the teacher and student passes the two are close (0.9-1.3x, the winner
changing between runs); beside busy processes both slow down 2-21x, unevenly.
``OPSD_KERNEL_PLAN=measured`` puts each weight shape and call kind on the packed kernel unless
``kernel_plan`` measured the standard kernel clearly faster on this machine (a few seconds, once per machine and set of shapes, then read
from the kit's cache folder, ``$OPSD_CACHE``); ``packed`` (the default, what every committed run computed with) and
``standard`` put every call on one side.

Same computation, other rounding (the sum is blocked differently): ``tests/test_packed_linear.py`` checks the
tiny test model's logits within 1e-5 of the standard path and the starting model's log-probabilities of the
sampled tokens within 1e-4, and the same sampled and greedy tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from opsd.models import cache_root

#: Rows per call the packed layout is tuned for (decoding a batch of 8); any row count is computed.
PACK_ROWS_HINT = 8
#: No-grad calls with at most this many rows count as decoding (one new token per sequence).
DECODE_ROWS = 64
#: Call kinds: no-grad decoding, no-grad scoring (prompts, the teacher pass), gradient-recording (student).
KINDS = ("decode", "score", "train")
#: Rows the plan times each kind at (a decoding batch of 8; a scoring / training block).
PLAN_ROWS = {"decode": 8, "score": 256, "train": 256}
#: Output features the plan times at most: a wider layer (the output projection) is timed on a slice.
PLAN_MAX_OUT = 8192
#: The standard kernel is chosen only where it was this much faster: ties and timing noise keep the packed
#: kernel (the one the kit's committed results were computed with), so that a plan does not flip between
#: measurements on one machine.
PLAN_MARGIN = 0.05
PLAN_ENV = "OPSD_KERNEL_PLAN"
#: Sibling layers of one module that read the same input (attention's q, k, v; the MLP's gate and up): their
#: no-grad packed calls are one multiply by the weights packed side by side, which sums every output column
#: exactly as the separate calls do (bitwise the same outputs, tests/test_packed_linear.py).
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
#: ``packed`` until the committed results are re-measured with the measured plan (benchmarks/README.md):
#: every committed run computed with packed kernels everywhere, and the plan changes the float rounding.
DEFAULT_PLAN = "packed"


@dataclass(frozen=True)
class KernelPlan:
    """Where the packed kernel runs: ``packed[(kind, out, in)]`` False where ``F.linear`` beat it on this
    machine by more than ``PLAN_MARGIN``; ``seconds[(kind, out, in)] = (standard, packed)``, the median
    over repetitions of seconds per call (the ``train`` kind: forward + the input gradient)."""

    packed: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    default: bool = True  # for shapes the plan has not timed

    def use(self, kind: str, shape: tuple[int, int]) -> bool:
        return self.packed.get((kind, *shape), self.default)

    def table(self) -> list[str]:
        """One line per (kind, shape): the two timings and the choice."""
        return [f"{kind:6s} [{o}, {i}] x {PLAN_ROWS[kind]} rows: standard {std * 1e3:7.3f} ms, packed "
                f"{new * 1e3:7.3f} ms -> {'packed' if self.packed[(kind, o, i)] else 'standard'}"
                for (kind, o, i), (std, new) in sorted(self.seconds.items())]


def seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call of ``fn``, timed over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def measure_plan(shapes, reps: int = 5, budget_s: float = 0.01) -> KernelPlan:
    """Time ``F.linear`` against the packed kernel for each (kind, [out, in] shape) on random weights
    (time does not depend on values; layers wider than ``PLAN_MAX_OUT`` on a slice of that width),
    interleaved, ``reps`` repetitions of about ``budget_s`` seconds each; packed unless the standard
    kernel's median is more than ``PLAN_MARGIN`` lower."""
    packed, seconds = {}, {}
    for out_f, in_f in sorted(set(shapes)):
        weight = torch.randn(min(out_f, PLAN_MAX_OUT), in_f)
        pw = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS_HINT)
        pt = torch.ops.mkldnn._reorder_linear_weight(weight.t().contiguous(), PACK_ROWS_HINT)
        for kind in KINDS:
            x, dy = torch.randn(PLAN_ROWS[kind], in_f), torch.randn(PLAN_ROWS[kind], weight.shape[0])
            paths = _timed_calls(kind, x, dy, weight, pw, pt)
            once = [seconds_per_call(fn, 1) for fn in paths]  # warm-up, and the calls one repetition needs
            calls = max(1, int(budget_s / max(min(once), 1e-6)))
            times: list[list[float]] = [[], []]
            for rep in range(reps):
                for i in ((0, 1) if rep % 2 == 0 else (1, 0)):
                    times[i].append(seconds_per_call(paths[i], calls))
            std, new = statistics.median(times[0]), statistics.median(times[1])
            packed[(kind, out_f, in_f)] = std >= new * (1 - PLAN_MARGIN)
            seconds[(kind, out_f, in_f)] = (std, new)
    return KernelPlan(packed, seconds)


def _timed_calls(kind, x, dy, weight, pw, pt) -> tuple[Callable, Callable]:
    """The standard and the packed call of one kind; ``train``: forward, then dx = dy W (as autograd's mm
    and ``_FrozenPackedLinear`` compute it)."""
    def packed(rows, w):
        return torch.ops.mkldnn._linear_pointwise(rows, w, None, "none", [], "")
    if kind == "train":
        return (lambda: (torch.nn.functional.linear(x, weight), dy @ weight),
                lambda: (packed(x, pw), packed(dy, pt)))
    return lambda: torch.nn.functional.linear(x, weight), lambda: packed(x, pw)


_PLANS: dict = {}


def plan_cache_path(shapes, threads: int) -> Path:
    """Where the plan for ``shapes`` at ``threads`` threads on this machine is kept: one file per CPU model,
    ISA, torch version, thread count and set of shapes, in the kit's cache folder (``cache_root()``)."""
    info = cpu_info()
    key = repr(([info.get(k) for k in ("vendor_id", "model name", "flags")] if info else platform.processor(),
                torch.__version__, threads, tuple(shapes)))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / f"kernel-plan-{digest}.json"


def cpu_info() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (``vendor_id``, ``model name``, ``flags``, ...); {} where
    there is none."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f.read().split("\n\n")[0].splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    return info


def _saved_plan(path: Path) -> KernelPlan | None:
    try:
        rows = json.loads(path.read_text())["plan"]
        return KernelPlan({(k, o, i): bool(p) for k, o, i, p, _, _ in rows},
                          {(k, o, i): (float(a), float(b)) for k, o, i, _, a, b in rows})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: measured again and rewritten


def kernel_plan(model: torch.nn.Module) -> KernelPlan:
    """The kernels ``packed_linears`` uses for ``model``. ``OPSD_KERNEL_PLAN=measured``: measured
    (``measure_plan``) once per machine, set of shapes and thread count and kept on disk
    (``plan_cache_path``), so that every run on a machine computes with the same kernels (delete the file
    to measure again); ``packed`` (``DEFAULT_PLAN``) / ``standard``: every call on that side, nothing measured."""
    forced = os.environ.get(PLAN_ENV, DEFAULT_PLAN)
    if forced not in ("measured", "packed", "standard"):
        raise ValueError(f"{PLAN_ENV}={forced!r}: expected measured, packed or standard")
    if forced != "measured":
        return KernelPlan(default=forced == "packed")
    shapes = tuple(sorted({_weight_shape(m) for m in _linear_layers(model)}))
    key = (shapes, torch.get_num_threads())
    if key not in _PLANS:
        path = plan_cache_path(*key)
        plan = _saved_plan(path)
        if plan is None:
            plan = measure_plan(shapes)
            rows = [[k, o, i, plan.packed[(k, o, i)], *plan.seconds[(k, o, i)]] for k, o, i in sorted(plan.packed)]
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"plan": rows}, indent=0))
                tmp.replace(path)
        _PLANS[key] = plan
    return _PLANS[key]


def _weight_shape(module) -> tuple[int, int]:
    weight = module.base_layer.weight if _is_lora(module) else module.weight
    return tuple(weight.shape)


def available(model: torch.nn.Module) -> bool:
    """True where the packed path applies: oneDNN present, the model's weights float32 on the CPU."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    weight = next((p for p in model.parameters()), None)
    return weight is not None and weight.device.type == "cpu" and weight.dtype == torch.float32


def _is_lora(module: torch.nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "get_delta_weight")


def _active_adapters(layer) -> list[str]:
    """Adapters a peft LoRA layer adds in its forward now ([] when disabled or already merged)."""
    if layer.disable_adapters or layer.merged:
        return []
    return [a for a in layer.active_adapters if a in layer.lora_A]


def _state(module) -> tuple:
    """What the packed weight depends on: (adapter set, ((tensor, in-place version), ...))."""
    if not _is_lora(module):
        return (), ((module.weight, module.weight._version),)
    adapters = tuple(_active_adapters(module))
    tensors = [module.base_layer.weight] + [t for a in adapters for t in (module.lora_A[a].weight, module.lora_B[a].weight)]
    return adapters, tuple((t, t._version) for t in tensors)


def _same_state(a: tuple, b: tuple) -> bool:
    """Same adapter set and, entry by entry, the *same* tensor objects (``is``: a new tensor can reuse a
    freed one's ``id()``) at the same version."""
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(
        x is y and u == v for (x, u), (y, v) in zip(a[1], b[1]))


def _effective_weight(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[out, in] weight the layer applies now (LoRA merged into a new tensor) and its bias."""
    if not _is_lora(module):
        return module.weight.detach(), module.bias
    base = module.base_layer
    weight = base.weight.detach()
    for adapter in _active_adapters(module):
        weight = weight + module.get_delta_weight(adapter).detach()
    return weight, base.bias


def _packed(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's packed weight and bias for its current state: built afresh when a trainable tensor is
    involved (no cache can see every optimizer step), else cached on the layer."""
    state = _state(module)
    if any(t.requires_grad for t, _ in state[1]):
        return _pack(module)
    cache: dict = module.__dict__.setdefault("_opsd_packed", {})
    hit = cache.get(state[0])
    if hit is None or not _same_state(hit[0], state):
        hit = cache[state[0]] = (state, *_pack(module))
    return hit[1], hit[2]


def _pack(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight, bias = _effective_weight(module)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PACK_ROWS_HINT)
    return packed, None if bias is None else bias.detach()


def _plain_merge(module) -> bool:
    """False for LoRA layers whose forward is not ``base(x) + scaling * B(A(x))`` (DoRA and other
    variants, or dropout in training mode): those keep their own forward."""
    return not module.lora_variant and not (module.training and any(
        not isinstance(module.lora_dropout[a], torch.nn.Identity) for a in _active_adapters(module)))


class _FrozenPackedLinear(torch.autograd.Function):
    """y = x W^T + b with a frozen W: forward on packed W, backward dx = dy W on packed W^T (no dW, db)."""

    @staticmethod
    def forward(ctx, rows, packed, packed_t, bias):
        ctx.packed_t = packed_t
        return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad):
        dx = torch.ops.mkldnn._linear_pointwise(grad.contiguous(), ctx.packed_t, None, "none", [], "")
        return dx, None, None, None


def _transposed(module) -> torch.Tensor:
    """Packed W^T ([in, out] as a linear weight from out to in) of a plain linear layer, cached."""
    cache: dict = module.__dict__.setdefault("_opsd_packed", {})
    state = ((), ((module.weight, module.weight._version),))
    hit = cache.get("T")
    if hit is None or not _same_state(hit[0], state):
        hit = cache["T"] = (state, torch.ops.mkldnn._reorder_linear_weight(module.weight.detach().t().contiguous(),
                                                                           PACK_ROWS_HINT))
    return hit[1]


class _Siblings:
    """One ``SIBLINGS`` group of a module inside one ``packed_linears`` block: the first no-grad call of a
    member multiplies its input by the group's packed weights and keeps the others' outputs for their
    calls with that very tensor (``is``: the module passes one hidden-state tensor to each)."""

    def __init__(self, members: list[torch.nn.Module]):
        self.members = members
        self.sizes = [_weight_shape(m)[0] for m in members]
        self.ready: dict = {}   # adapters disabled? -> (packed [sum(out), in], bias), read once per block
        self.kept: tuple | None = None  # (input, adapters disabled?, {member index: output})

    def output(self, index: int, x: torch.Tensor, rows: torch.Tensor, disabled: bool) -> torch.Tensor:
        """Member ``index``'s output [rows, out] for input ``x`` (``rows``: x as [rows, in])."""
        kept = self.kept
        if kept is not None and kept[0] is x and kept[1] == disabled and index in kept[2]:
            out = kept[2].pop(index)
            if not kept[2]:
                self.kept = None
            return out
        hit = self.ready.get(disabled)
        if hit is None:
            hit = self.ready[disabled] = _packed_siblings(self.members)
        parts = torch.ops.mkldnn._linear_pointwise(rows, hit[0], hit[1], "none", [], "").split(self.sizes, -1)
        parts = [part.contiguous() for part in parts]
        self.kept = (x, disabled, {i: part for i, part in enumerate(parts) if i != index})
        return parts[index]


def _packed_siblings(members) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The members' effective weights packed as one [sum(out), in] weight, and their biases (zeros where a
    member has none); cached on the first member like ``_packed`` while every tensor involved is frozen."""
    states = [_state(m) for m in members]
    if any(t.requires_grad for state in states for t, _ in state[1]):
        return _pack_siblings(members)
    cache: dict = members[0].__dict__.setdefault("_opsd_packed", {})
    key = ("siblings", tuple(state[0] for state in states))
    hit = cache.get(key)
    if hit is None or not all(_same_state(a, b) for a, b in zip(hit[0], states)):
        hit = cache[key] = (states, *_pack_siblings(members))
    return hit[1], hit[2]


def _pack_siblings(members) -> tuple[torch.Tensor, torch.Tensor | None]:
    pairs = [_effective_weight(m) for m in members]
    weight = torch.cat([w for w, _ in pairs])
    biases = [b for _, b in pairs]
    bias = None if all(b is None for b in biases) else torch.cat(
        [b.detach() if b is not None else w.new_zeros(w.shape[0]) for w, b in pairs])
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PACK_ROWS_HINT), bias


def _siblings(model: torch.nn.Module, patched: set[int], plan: KernelPlan) -> dict[int, tuple[_Siblings, int]]:
    """{id(layer): (its group, its index)} for every ``SIBLINGS`` group of ``model`` whose members are all
    patched, read the same input width and go packed for both no-grad kinds in ``plan``."""
    out = {}
    for module in model.modules():
        for names in SIBLINGS:
            members = [getattr(module, name, None) for name in names]
            if not all(isinstance(m, torch.nn.Module) and id(m) in patched for m in members):
                continue
            shapes = [_weight_shape(m) for m in members]
            if len({i for _, i in shapes}) != 1 or not all(plan.use(k, sh) for k in ("decode", "score") for sh in shapes):
                continue
            group = _Siblings(members)
            out.update({id(m): (group, i) for i, m in enumerate(members)})
    return out


def _packed_forward(module, original, plan: KernelPlan, siblings: tuple[_Siblings, int] | None = None):
    """The layer's forward for one ``packed_linears`` block: each adapter state (enabled / disabled) is
    checked against the weights once, at its first call in the block; later calls go straight to the kernel.

    No-grad calls: LoRA layers merged, plain layers as they are. Gradient-recording calls: a LoRA layer runs
    peft's forward (its base layer is patched too); a plain layer with a frozen weight runs
    ``_FrozenPackedLinear``; one with a trainable weight its own forward. Calls of a kind ``plan`` keeps on
    the standard kernel for this layer's shape run the layer's own forward."""
    lora = _is_lora(module)
    ready: dict = {}
    use = {kind: plan.use(kind, _weight_shape(module)) for kind in KINDS}

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or x.dtype != torch.float32:
            return original(x, *args, **kwargs)
        grad = torch.is_grad_enabled()
        if grad and (lora or module.weight.requires_grad or (module.bias is not None and module.bias.requires_grad)):
            return original(x, *args, **kwargs)
        if not use["train" if grad else "decode" if x.numel() <= DECODE_ROWS * x.shape[-1] else "score"]:
            return original(x, *args, **kwargs)
        disabled = module.disable_adapters if lora else False
        rows = x.reshape(-1, x.shape[-1])
        if siblings is not None and not grad:
            out = siblings[0].output(siblings[1], x, rows, disabled)
            return out.reshape(*x.shape[:-1], out.shape[-1])
        hit = ready.get(disabled)
        if hit is None:
            hit = ready[disabled] = _packed(module)
        if grad:
            if "T" not in ready:
                ready["T"] = _transposed(module)
            out = _FrozenPackedLinear.apply(rows.contiguous(), hit[0], ready["T"], hit[1])
        else:
            out = torch.ops.mkldnn._linear_pointwise(rows, hit[0], hit[1], "none", [], "")
        return out.reshape(*x.shape[:-1], out.shape[-1])

    return forward


def _linear_layers(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """LoRA layers (plain merges only) and every ``nn.Linear``, LoRA base layers included."""
    for module in model.modules():
        if (_is_lora(module) and _plain_merge(module)) or isinstance(module, torch.nn.Linear):
            yield module


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module, enabled: bool = True):
    """Inside the block, every linear layer of ``model`` runs on packed weights (CPU, float32; elsewhere,
    or with ``enabled=False``, nothing changes): no-grad calls with LoRA merged; gradient-recording calls
    for the frozen weights only (LoRA's own factors, and any trainable layer, keep the standard path; the
    backward pass may run after the block). The weights are read at each adapter state's first call in
    the block: do not change them (an optimizer step) inside it. Which calls go packed: ``kernel_plan(model)``
    (by default every one); no-grad calls of ``SIBLINGS`` layers go as one multiply per group."""
    if not enabled or not available(model):
        yield model
        return
    plan = kernel_plan(model)
    layers = list(_linear_layers(model))
    groups = _siblings(model, {id(m) for m in layers}, plan)
    patched = []
    for module in layers:
        patched.append((module, module.__dict__.get("forward")))
        module.forward = _packed_forward(module, module.forward, plan, groups.get(id(module)))
    try:
        yield model
    finally:
        for module, own in reversed(patched):
            if own is None:
                del module.forward
            else:
                module.forward = own


@contextlib.contextmanager
def packed_forwards(model: torch.nn.Module, enabled: bool = True):
    """Inside the block, every call of ``model`` runs in a ``packed_linears(model)`` block of its own, so
    each forward pass (the teacher pass, the student pass) reads the weights and adapter state it is
    called with. This switches the packed path around a whole step (``opsd.step.opsd_loss``) without a
    flag in its signature; CPU float32 only, as ``packed_linears`` (elsewhere or with ``enabled=False``,
    nothing changes). Wrap the model the step calls (the unwrapped one under DDP: its wrapper calls it)."""
    if not enabled or not available(model):
        yield model
        return
    own, forward = model.__dict__.get("forward"), model.forward

    def packed_forward(*args, **kwargs):
        with packed_linears(model):
            return forward(*args, **kwargs)

    model.forward = packed_forward
    try:
        yield model
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own


def clear_packed(model: torch.nn.Module) -> None:
    """Drop the packed copies cached on ``model``'s layers (frees about one model's weights per state)."""
    for module in model.modules():
        module.__dict__.pop("_opsd_packed", None)
