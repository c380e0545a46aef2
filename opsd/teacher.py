"""Teacher modes: which weights θ' score the teacher context p_T(· | x, y*, ŷ_<n).

- ``dynamic``: θ' = θ, the current student weights (the context changes nothing).
- ``fixed``:   θ' = θ_0, the base model: LoRA adapters disabled through peft for the teacher pass.
- ``ema``:     θ' = an exponential moving average of θ, swapped into the trainable parameters for the
  teacher pass and swapped back afterwards, also when the pass raises.

    with torch.no_grad(), teacher_context(model, cfg.teacher_mode, ema=ema):
        teacher_logits = model(**teacher_batch).logits
    ...
    optimizer.step(); ema.update(model)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

TEACHER_MODES = ("fixed", "ema", "dynamic")


def _unwrap(model):
    """The model inside DistributedDataParallel-style wrappers (``.module``)."""
    while isinstance(model, torch.nn.parallel.DistributedDataParallel) or (
        type(model).__name__ in {"DistributedDataParallel", "DataParallel", "DeepSpeedEngine"}
        and hasattr(model, "module")
    ):
        model = model.module
    return model


def has_lora_adapters(model) -> bool:
    """True if ``model`` contains peft tuner layers (e.g. LoRA ``lora_A`` / ``lora_B``)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in _unwrap(model).modules())


@contextlib.contextmanager
def adapters_disabled(model) -> Iterator:
    """Run ``model`` as its base model: LoRA adapters off inside, back on afterwards (even on errors)."""
    inner = _unwrap(model)
    if not has_lora_adapters(inner):
        raise ValueError(
            "teacher mode 'fixed' needs a model with LoRA adapters (the fixed teacher is the base model "
            "with adapters disabled); set lora in the config or use teacher_mode='dynamic'"
        )
    if hasattr(inner, "disable_adapter"):  # peft.PeftModel
        with inner.disable_adapter():
            yield model
        return
    # Adapters injected without a PeftModel wrapper: toggle each tuner layer.
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in inner.modules() if isinstance(m, BaseTunerLayer)]
    was_disabled = [m.disable_adapters for m in layers]
    try:
        for m in layers:
            m.enable_adapters(False)
        yield model
    finally:
        for m, off in zip(layers, was_disabled):
            m.enable_adapters(not off)


class EMATeacher:
    """An exponential moving average of the trainable parameters, kept in float32.

    ``update(model)``: shadow ← decay · shadow + (1 − decay) · θ, for every trainable θ (after each
    optimizer step). ``swapped_in(model)``: the parameters hold the shadow values inside the context
    and their own values again afterwards. With LoRA only the adapter weights are tracked, so the
    EMA teacher is base weights + averaged adapters.
    """

    def __init__(self, model, decay: float = 0.999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        with torch.no_grad():
            self.shadow: dict[str, torch.Tensor] = {
                name: p.detach().to(torch.float32, copy=True) for name, p in self._params(model).items()
            }
        if not self.shadow:
            raise ValueError("EMATeacher: the model has no trainable parameters to average")

    @staticmethod
    def _params(model) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in _unwrap(model).named_parameters() if p.requires_grad}

    def _matched(self, model) -> dict[str, torch.nn.Parameter]:
        params = self._params(model)
        if params.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - params.keys())[:5]
            extra = sorted(params.keys() - self.shadow.keys())[:5]
            raise KeyError(f"EMATeacher: trainable parameters changed since creation "
                           f"(missing {missing}, new {extra})")
        return params

    @torch.no_grad()
    def update(self, model) -> None:
        """shadow ← decay · shadow + (1 − decay) · θ."""
        for name, p in self._matched(model).items():
            s = self.shadow[name]
            s.mul_(self.decay).add_(p.detach().to(device=s.device, dtype=torch.float32), alpha=1.0 - self.decay)
        self.num_updates += 1

    @contextlib.contextmanager
    def swapped_in(self, model) -> Iterator:
        """Inside: trainable parameters hold the EMA values. Afterwards (even on errors): their own."""
        params = self._matched(model)
        backup: dict[str, torch.Tensor] = {}
        try:
            with torch.no_grad():
                for name, p in params.items():
                    backup[name] = p.detach().clone()
                    p.copy_(self.shadow[name].to(device=p.device, dtype=p.dtype))
            yield model
        finally:
            with torch.no_grad():
                for name, saved in backup.items():
                    params[name].copy_(saved)

    def state_dict(self) -> dict:
        """For checkpoints: ``{"decay", "num_updates", "shadow": {name: float32 tensor}}``."""
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["shadow"].keys() != self.shadow.keys():
            raise KeyError("EMATeacher.load_state_dict: parameter names differ from this model's")
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)

    def to(self, device) -> EMATeacher:
        """Move the shadow copy (e.g. to CPU to save accelerator memory)."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self


@contextlib.contextmanager
def teacher_context(model, mode: str, ema: EMATeacher | None = None) -> Iterator:
    """Context in which ``model`` computes the teacher of ``mode`` (``fixed`` / ``ema`` / ``dynamic``).

    Yields the model. Only parameter values or adapter switches change, never the autograd graph:
    run the teacher forward under ``torch.no_grad()``; everything is restored on exit.
    """
    if mode == "dynamic":
        yield model
    elif mode == "fixed":
        with adapters_disabled(model):
            yield model
    elif mode == "ema":
        if ema is None:
            raise ValueError("teacher mode 'ema' needs an EMATeacher: teacher_context(model, 'ema', ema=EMATeacher(model))")
        with ema.swapped_in(model):
            yield model
    else:
        raise ValueError(f"unknown teacher mode {mode!r}; choose one of {TEACHER_MODES}")
