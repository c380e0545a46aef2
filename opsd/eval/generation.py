"""Sampling k completions per evaluation problem: the chat prompts, the token budgets, two backends.

- ``eval_prompts``: problems -> chat-formatted prompts (the evaluation prompt of ``opsd.contexts``).
- ``generate_hf``: prompts -> per prompt k tuples ``(text, completion_tokens, truncated)``, with
  ``opsd.rollout.HFRollout`` (transformers, CPU or GPU).
- ``generate_vllm``: a dataset -> graded records (``opsd.eval.grading.make_record``), with a ``vllm.LLM``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import torch

from opsd.contexts import DEFAULT_EVAL_PROMPT, EVAL_PROMPT_PROFILES, apply_chat, build_eval_messages
from opsd.eval.grading import check_grading, make_record
from opsd.rollout import HFRollout, SamplingParams, eos_token_ids

#: The names of the evaluation prompts (``opsd.contexts.EVAL_PROMPT_PROFILES``); the default is ``DEFAULT_EVAL_PROMPT``.
EVAL_PROMPTS: tuple[str, ...] = tuple(EVAL_PROMPT_PROFILES)


def eval_prompts(
    tokenizer,
    problems: Sequence[str],
    *,
    thinking: bool,
    chat_kwargs: dict | None = None,
    prompt: str = DEFAULT_EVAL_PROMPT,
) -> list[str]:
    """Chat-formatted eval prompts (``opsd.contexts.build_eval_messages`` with the evaluation prompt
    ``prompt``: by default the reference form, the problem text, a blank line, the step-by-step /
    boxed instruction), with ``enable_thinking=thinking`` for the template (``chat_kwargs``, when
    given, replaces that)."""
    kwargs = {"enable_thinking": thinking} if chat_kwargs is None else dict(chat_kwargs)
    return [apply_chat(tokenizer, build_eval_messages(p, prompt), kwargs) for p in problems]


def completion_budgets(prompt_lengths: Sequence[int], max_new_tokens: int, context_length: int) -> list[int]:
    """Per prompt, the tokens it may generate: ``min(max_new_tokens, context_length - prompt tokens)``.

    Raises ``ValueError`` naming the first prompt that leaves no room in the context.
    """
    budgets = [min(int(max_new_tokens), int(context_length) - int(n)) for n in prompt_lengths]
    for i, b in enumerate(budgets):
        if b < 1:
            raise ValueError(
                f"prompt {i} has {prompt_lengths[i]} tokens: no room left to generate in a "
                f"{context_length}-token context"
            )
    return budgets


def _model_device(model):
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return "cpu"


def generate_hf(model, tokenizer, prompts: list[str], *, k, temperature, top_p, max_new_tokens,
                context_length=None, fast: bool = True):
    """k completions per prompt with ``opsd.rollout.HFRollout`` (``fast``: its packed CPU path). With ``context_length`` the batch
    generates at most ``context_length`` minus its longest prompt (one budget per generate call).

    Returns per prompt a list of k tuples (text, completion_tokens, truncated); completion_tokens
    counts the generated tokens up to and including the first eos.
    """
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    if context_length is not None:
        max_new_tokens = completion_budgets([int(enc["attention_mask"].sum(-1).max())], max_new_tokens,
                                            context_length)[0]
    device = _model_device(model)
    greedy = temperature is None or temperature <= 0
    params = SamplingParams(
        temperature=1.0 if greedy else float(temperature),
        top_p=float(top_p),
        max_new_tokens=int(max_new_tokens),
        n=1 if greedy else int(k),  # greedy samples are all the same: decode once, repeat below
        greedy=greedy,
    )
    with torch.no_grad():
        rollout = HFRollout(model, tokenizer, fast=fast).generate(
            enc["input_ids"].to(device), enc["attention_mask"].to(device), params
        )
    ids, mask = rollout.completion_ids.cpu(), rollout.completion_mask.cpu().bool()
    prompt_index = rollout.prompt_index.cpu().tolist()
    out: list[list[tuple[str, int, bool]]] = [[] for _ in prompts]
    eos = set(eos_token_ids(tokenizer, model))
    for row, p in enumerate(prompt_index):
        toks = ids[row][mask[row]].tolist()
        ended = len(toks) > 0 and toks[-1] in eos
        text = tokenizer.decode(toks, skip_special_tokens=True)
        out[p].append((text, len(toks), not ended and len(toks) >= max_new_tokens))
    if greedy:
        out = [samples * int(k) for samples in out]
    return out


def records_from_vllm(
    outputs, problem_ids: Sequence, answers: Sequence[str], max_new_tokens: int | Sequence[int], grading: str = "kit"
) -> list[dict]:
    """Records from ``vllm.LLM.generate`` outputs (one ``RequestOutput`` per prompt, in order, each
    with ``.outputs``: k ``CompletionOutput`` with ``.text``, ``.token_ids``, ``.finish_reason``).
    ``max_new_tokens``: one budget for all prompts or one per prompt; ``grading``: ``make_record``'s rules."""
    records = []
    if isinstance(max_new_tokens, int):
        max_new_tokens = [max_new_tokens] * len(outputs)
    for req, pid, ans, budget in zip(outputs, problem_ids, answers, max_new_tokens, strict=True):
        for j, comp in enumerate(req.outputs):
            n_tok = len(comp.token_ids)
            truncated = getattr(comp, "finish_reason", None) == "length" or (
                getattr(comp, "finish_reason", None) is None and n_tok >= budget
            )
            records.append(make_record(pid, j, comp.text, ans, n_tok, truncated, grading))
    return records


def generate_vllm(
    model,
    tokenizer,
    dataset,
    *,
    k,
    temperature,
    top_p,
    max_new_tokens,
    thinking,
    seed,
    progress,
    lora_adapter=None,
    vllm_kwargs=None,
    chat_kwargs=None,
    prompt=DEFAULT_EVAL_PROMPT,
    context_length=None,
    grading="kit",
):
    """Graded records of k samples per row of ``dataset`` (``id``, ``problem``, ``answer``) with vLLM:
    ``model`` is a ``vllm.LLM`` or a model path/Hub id (an ``LLM`` is built). With ``context_length``,
    each prompt gets its own token budget (``completion_budgets``). ``grading``: ``make_record``'s rules."""
    import vllm  # optional (the gpu extra): imported only when the vllm backend runs

    check_grading(grading)

    llm = (
        model if isinstance(model, vllm.LLM) else vllm.LLM(model=str(model), seed=seed, **(vllm_kwargs or {}))
    )
    tokenizer = tokenizer or llm.get_tokenizer()
    prompts = eval_prompts(
        tokenizer, list(dataset["problem"]), thinking=thinking, chat_kwargs=chat_kwargs, prompt=prompt
    )
    greedy = temperature is None or temperature <= 0
    budgets = [int(max_new_tokens)] * len(prompts)
    if context_length is not None:
        lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        budgets = completion_budgets(lengths, max_new_tokens, context_length)

    def sampling(max_tokens: int):
        return vllm.SamplingParams(
            n=k,
            temperature=0.0 if greedy else float(temperature),
            top_p=1.0 if greedy else float(top_p),
            max_tokens=max_tokens,
            seed=seed,
        )

    params = sampling(budgets[0]) if len(set(budgets)) <= 1 else [sampling(b) for b in budgets]
    kwargs = {}
    if lora_adapter is not None:
        from vllm.lora.request import LoRARequest  # optional, as vllm above

        # a stable positive integer id per adapter path (vLLM caches adapters by id)
        lora_id = 1 + zlib.crc32(str(lora_adapter).encode()) % (2**31 - 2)
        kwargs["lora_request"] = LoRARequest(Path(lora_adapter).name, lora_id, str(lora_adapter))
    outputs = llm.generate(prompts, params, use_tqdm=progress, **kwargs)
    return records_from_vllm(outputs, list(dataset["id"]), [str(a) for a in dataset["answer"]], budgets, grading)
