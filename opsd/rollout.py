"""On-policy rollouts: the student samples its own completions.

One interface, two backends: `HFRollout` (transformers `generate`, CPU or GPU) and `VLLMRollout`
(vLLM in colocate mode on the training GPUs). Both return a `Rollout`:

    completion_ids  [R, N]  sampled token ids, R = B * n (rollout i*n + j belongs to prompt i)
    completion_mask [R, N]  True up to and including the first eos, False after it

The mask is computed from the first eos, never from the pad id (SmolLM2 pads with its eos token).

`HFRollout(fast=True)` (the default) samples the same tokens faster on CPU: linear layers on packed
oneDNN weights with LoRA merged into the packed copy (`opsd.packed_linear`), nucleus (top-p) filtering
that sorts only the top candidates (`SamplingWarper`) instead of the whole vocabulary, and a static KV
cache (written in place instead of concatenated at every step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from opsd.packed_linear import packed_linears


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of the student (reference run: temperature 1.1, top_p 0.95, top_k 20)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    n: int = 1
    greedy: bool = False
    seed: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.n < 1:
            raise ValueError("max_new_tokens and n must be >= 1")
        if not self.greedy and self.temperature <= 0:
            raise ValueError("temperature must be > 0 for sampling (use greedy=True for argmax decoding)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Rollout:
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    prompt_index: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Tokens per rollout (eos included): [R]."""
        return self.completion_mask.sum(-1)


class RolloutBackend(Protocol):
    def generate(self, prompt_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams) -> Rollout: ...

    def sync_weights(self, model) -> None: ...


def eos_token_ids(tokenizer, model=None) -> list[int]:
    """All ids that end a completion: the tokenizer's eos plus the generation config's (Qwen3 has two)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif extra is not None:
        ids.update(int(i) for i in extra)
    if not ids:
        raise ValueError("no eos token id found on the tokenizer or the model's generation config")
    return sorted(ids)


def completion_mask_from_eos(completion_ids: torch.Tensor, eos_ids: Iterable[int]) -> torch.Tensor:
    """[R, N] bool: True up to and including the first eos of each row, False after it."""
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_ids), device=completion_ids.device))
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()  # eos tokens strictly before each position
    return eos_before == 0


def pad_completions(token_lists: Sequence[Sequence[int]], pad_id: int, eos_ids: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad variable-length completions to [R, N]; mask = up to the first eos and within length."""
    width = max(1, max((len(t) for t in token_lists), default=1))
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    within = torch.zeros((len(token_lists), width), dtype=torch.bool)
    for i, toks in enumerate(token_lists):
        if len(toks):
            ids[i, : len(toks)] = torch.tensor(list(toks), dtype=torch.long)
            within[i, : len(toks)] = True
    return ids, within & completion_mask_from_eos(ids, eos_ids)


@contextlib.contextmanager
def generation_mode(model):
    """Eval mode with the KV cache on for sampling; restores training mode and `use_cache` afterwards
    (gradient checkpointing needs the cache off while training)."""
    was_training = model.training
    config = getattr(model, "config", None)
    old_cache = getattr(config, "use_cache", None)
    model.eval()
    if config is not None:
        config.use_cache = True
    try:
        with torch.no_grad():
            yield model
    finally:
        if config is not None and old_cache is not None:
            config.use_cache = old_cache
        model.train(was_training)


class SamplingWarper:
    """transformers' temperature, top-k and top-p warpers, in their order, with a top-p that sorts
    only the ``candidates`` highest scores instead of the whole vocabulary. scores [R, V] -> [R, V].

    transformers' ``TopPLogitsWarper`` sorts all V scores (16 ms per decoding step for 8 x 49,152 on 2 CPU
    cores). It keeps, per row, the tokens whose higher-ranked tokens hold less than ``top_p`` of the
    probability (at least ``min_tokens_to_keep``); that set almost always lies in the top few hundred, so
    ``topk`` over ``candidates`` finds it, and a batch whose candidates hold less than ``top_p`` in some row
    falls back to the full sort. Same set up to float rounding at the boundary (tested). Given to
    ``generate`` as its only warper (custom processors run *before* transformers' own warpers).
    """

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, *,
                 min_tokens_to_keep: int = 1, candidates: int = 1024):
        if temperature <= 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError(f"need temperature > 0, top_k >= 0, top_p in (0, 1]; got {temperature}, {top_k}, {top_p}")
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.min_tokens_to_keep, self.candidates = int(min_tokens_to_keep), int(candidates)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k:
            kth = scores.topk(min(max(self.top_k, self.min_tokens_to_keep), scores.shape[-1]), dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        return self._top_p(input_ids, scores) if self.top_p < 1 else scores

    def _top_p(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        values, indices = scores.topk(min(self.candidates, scores.shape[-1]), dim=-1)  # descending
        probs = (values - scores.logsumexp(-1, keepdim=True)).exp()
        before = probs.cumsum(-1) - probs  # probability of the tokens ranked above each candidate
        if not bool((before[:, -1] + probs[:, -1] >= self.top_p).all()):
            from transformers.generation.logits_process import TopPLogitsWarper

            return TopPLogitsWarper(self.top_p, min_tokens_to_keep=self.min_tokens_to_keep)(input_ids, scores)
        keep = before < self.top_p
        keep[:, : self.min_tokens_to_keep] = True
        drop = torch.ones_like(scores, dtype=torch.bool).scatter_(1, indices, ~keep)
        return scores.masked_fill(drop, float("-inf"))


class HFRollout:
    """Sampling with transformers `generate` from left-padded prompts (works with peft / LoRA models).

    ``fast=True``: the same sampling on packed CPU weights and with ``SamplingWarper`` (module docstring);
    ``fast=False``: plain `generate`, the reference path (``benchmarks/step.py`` compares the two)."""

    def __init__(self, model, tokenizer, *, fast: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.fast = fast
        self.eos_ids = eos_token_ids(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def sync_weights(self, model) -> None:
        """HF generation samples from the training model itself: nothing to copy."""
        self.model = model

    def generate(self, prompt_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams) -> Rollout:
        """prompt_ids, attention_mask: [B, P] left-padded -> Rollout with R = B * params.n rows."""
        if attention_mask[:, -1].min() == 0:
            raise ValueError("prompts must be left-padded (the last column is padding in some row)")
        model = self.model
        device = next(model.parameters()).device
        kwargs = {"max_new_tokens": params.max_new_tokens, "num_return_sequences": params.n,
                  "pad_token_id": self.pad_id, "eos_token_id": self.eos_ids, "use_cache": True}
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
            if self.fast and params.top_p < 1:
                from transformers import LogitsProcessorList

                warper = SamplingWarper(params.temperature, params.top_k, params.top_p)
                kwargs.update(temperature=1.0, top_k=None, top_p=1.0, logits_processor=LogitsProcessorList([warper]))
        if params.seed is not None:
            torch.manual_seed(params.seed)

        if self.fast and device.type == "cpu":
            kwargs["cache_implementation"] = "static"  # keys/values written in place, not concatenated per step
        with generation_mode(model), packed_linears(model, enabled=self.fast):
            out = model.generate(input_ids=prompt_ids.to(device), attention_mask=attention_mask.to(device), **kwargs)
        completion = out[:, prompt_ids.shape[1]:]
        if completion.shape[1] == 0:
            completion = torch.full((out.shape[0], 1), self.pad_id, dtype=torch.long, device=out.device)
        mask = completion_mask_from_eos(completion, self.eos_ids)
        index = torch.arange(prompt_ids.shape[0], device=completion.device).repeat_interleave(params.n)
        return Rollout(completion, mask, index)


# ----------------------------------------------------------------------------------------- vLLM backend

def vllm_weight_name(name: str) -> str | None:
    """Map a (peft-wrapped, merged) HF parameter name to the plain name vLLM's `load_weights` expects.

    'base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight' -> 'model.layers.0.self_attn.q_proj.weight';
    LoRA factors ('lora_A', 'lora_B', ...) and peft bookkeeping return None (they are merged, not loaded).
    """
    if "lora_" in name or ("modules_to_save" in name and "original_module" in name):
        return None
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


def vllm_sampling_kwargs(params: SamplingParams) -> dict:
    """Our SamplingParams -> keyword arguments of `vllm.SamplingParams` (top_k -1 disables it there)."""
    common = {"n": params.n, "max_tokens": params.max_new_tokens, "seed": params.seed}
    if params.greedy:
        return {**common, "temperature": 0.0}
    return {**common, "temperature": params.temperature, "top_p": params.top_p,
            "top_k": params.top_k if params.top_k and params.top_k > 0 else -1}


def rollout_from_vllm_outputs(outputs, pad_id: int, eos_ids: Iterable[int]) -> Rollout:
    """vLLM `RequestOutput`s (one per prompt, each with `.outputs[j].token_ids`) -> Rollout."""
    token_lists, index = [], []
    for i, request in enumerate(outputs):
        for sample in request.outputs:
            token_lists.append(list(sample.token_ids))
            index.append(i)
    ids, mask = pad_completions(token_lists, pad_id, eos_ids)
    return Rollout(ids, mask, torch.tensor(index, dtype=torch.long))


class VLLMRollout:
    """vLLM in colocate mode: the engine shares the training GPU and receives the student's weights
    after every optimizer step (LoRA merged into the base weights for the copy, then unmerged).

    `gpu_memory_utilization` is the engine's share of the GPU (reference: 0.6). With `sleep=True` the
    engine releases its memory between rollouts (`llm.sleep()` / `llm.wake_up()`).
    """

    def __init__(self, model, tokenizer, *, model_name: str, gpu_memory_utilization: float = 0.6,
                 max_model_len: int | None = None, dtype: str = "bfloat16", sleep: bool = False,
                 tensor_parallel_size: int = 1, seed: int = 0, enforce_eager: bool = False):
        try:
            import vllm  # noqa: F401
        except ImportError as err:  # pragma: no cover - exercised only where vllm is missing
            raise ImportError(
                "rollout_backend='vllm' needs vLLM on a CUDA machine: pip install 'opsd-kit[gpu]'"
            ) from err
        from vllm import LLM

        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_token_ids(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.sleep = sleep
        self.llm = LLM(
            model=model_name,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            distributed_executor_backend="external_launcher" if tensor_parallel_size == 1 else None,
            seed=seed,
            enable_sleep_mode=sleep,
            enforce_eager=enforce_eager,
        )
        if sleep:
            self.llm.sleep(level=1)
        self._synced = False

    def _load_weights(self, items: list[tuple[str, torch.Tensor]]) -> None:
        engine = self.llm.llm_engine
        executor = getattr(engine, "model_executor", None)
        worker = getattr(getattr(executor, "driver_worker", None), "worker", None)
        if worker is not None:  # vLLM v0-style single-process engine
            worker.model_runner.model.load_weights(items)
            return
        # vLLM v1: run load_weights inside the worker process(es)
        self.llm.collective_rpc(lambda self_, w=items: self_.model_runner.model.load_weights(w))

    def sync_weights(self, model) -> None:
        """Copy the current student weights into the engine (LoRA merged for the copy, then unmerged)."""
        self.model = model
        is_peft = hasattr(model, "merge_adapter")
        if self.sleep:
            self.llm.wake_up()
        if is_peft:
            model.merge_adapter()
        try:
            items = []
            for name, tensor in model.state_dict().items():
                mapped = vllm_weight_name(name)
                if mapped is not None:
                    items.append((mapped, tensor.detach()))
            self._load_weights(items)
        finally:
            if is_peft:
                model.unmerge_adapter()
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()
        self._synced = True

    def generate(self, prompt_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams) -> Rollout:
        from vllm import SamplingParams as VSamplingParams

        if not self._synced:
            self.sync_weights(self.model)
        if self.sleep:
            self.llm.wake_up()
        prompts = [
            {"prompt_token_ids": ids[mask.bool()].tolist()} for ids, mask in zip(prompt_ids.cpu(), attention_mask.cpu())
        ]
        outputs = self.llm.generate(prompts, VSamplingParams(**vllm_sampling_kwargs(params)), use_tqdm=False)
        if self.sleep:
            self.llm.sleep(level=1)
        return rollout_from_vllm_outputs(outputs, self.pad_id, self.eos_ids)


def make_rollout_backend(name: str, model, tokenizer, *, fast: bool = True, **kwargs) -> RolloutBackend:
    """'hf' -> HFRollout(fast=fast); 'vllm' -> VLLMRollout(**kwargs)."""
    if name == "hf":
        return HFRollout(model, tokenizer, fast=fast)
    if name == "vllm":
        return VLLMRollout(model, tokenizer, **kwargs)
    raise ValueError(f"unknown rollout backend {name!r}; valid: ['hf', 'vllm']")
