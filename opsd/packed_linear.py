"""Fast no-grad CPU passes: every linear layer through oneDNN with its weight packed once.

On CPU, ``torch.nn.functional.linear`` calls the torch wheel's BLAS (MKL), which on this kit's 2-core AMD
machine multiplies the small matrices of decoding at a fraction of the memory bandwidth: ``[8, 576] x
[576, 1536]`` takes 364 us, against 153 us with oneDNN on a weight packed in its blocked layout
(``benchmarks/README.md``). ``packed_linears(model)`` routes every linear layer of ``model`` through
``torch.ops.mkldnn._linear_pointwise`` (the kernel ``torch.compile`` uses for frozen CPU linears) while no
gradient is recorded: rollouts, the teacher pass and evaluation. The training pass keeps the standard path.

A peft LoRA layer is packed merged, ``W + scaling * B @ A`` (``W`` alone when its adapters are disabled:
the fixed teacher), into the packed copy only: the model's own tensors are never written. A copy that
involves a trainable tensor (the LoRA factors) is rebuilt at every ``packed_linears`` block, as optimizers
change weights in place (fused AdamW without even moving the version counters); copies of frozen weights
are cached on the layer and rebuilt when the tensor object or its version changes (``load_state_dict``).

Same computation, other rounding (the sum is blocked differently): log-probabilities differ from the
standard path by ~1e-6 (``tests/test_packed_linear.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: Rows per call the packed layout is tuned for (decoding a batch of 8); any row count is computed.
PACK_ROWS_HINT = 8


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


def _packed_forward(module, original):
    """The layer's forward for one ``packed_linears`` block: each adapter state (enabled / disabled) is
    checked against the weights once, at its first call in the block; later calls go straight to the kernel.

    No-grad calls: LoRA layers merged, plain layers as they are. Gradient-recording calls: a LoRA layer runs
    peft's forward (its base layer is patched too); a plain layer with a frozen weight runs
    ``_FrozenPackedLinear``; one with a trainable weight its own forward."""
    lora = _is_lora(module)
    ready: dict = {}

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or x.dtype != torch.float32:
            return original(x, *args, **kwargs)
        grad = torch.is_grad_enabled()
        if grad and (lora or module.weight.requires_grad or (module.bias is not None and module.bias.requires_grad)):
            return original(x, *args, **kwargs)
        disabled = module.disable_adapters if lora else False
        hit = ready.get(disabled)
        if hit is None:
            hit = ready[disabled] = _packed(module)
        rows = x.reshape(-1, x.shape[-1])
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
    the block: do not change them (an optimizer step) inside it."""
    if not enabled or not available(model):
        yield model
        return
    patched = []
    for module in _linear_layers(model):
        patched.append((module, module.__dict__.get("forward")))
        module.forward = _packed_forward(module, module.forward)
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
