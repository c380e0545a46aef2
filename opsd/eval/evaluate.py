"""Evaluation: one model on one benchmark (``evaluate``), every checkpoint of a run (``evaluate_run``).

The protocol of the paper: prompt with the reference evaluation prompt (the problem text, a blank
line, the step-by-step / ``\\boxed{}`` instruction), sample k completions per problem (temperature
1.0, top_p 0.95), grade the last ``\\boxed{}`` of each against the gold answer with math-verify
(``opsd.eval.grading``), and report Avg@k = mean over problems of (correct samples / k), next to pass@k and
maj@k. The paper's settings are k=12, 38,912 new tokens, thinking on, vLLM; the CPU defaults are tiny.

- ``evaluate``: a model and a dataset (``id``, ``problem``, ``answer``; ``opsd.data.load_benchmark``) ->
  (records, summary); generation by ``opsd.eval.generation`` (backend ``hf`` or ``vllm``).
- ``heldout_accuracy``: greedy accuracy on held-out synthetic problems, with its Wilson interval.
- ``evaluate_run`` / ``evaluate_model``: a run's checkpoints (or one model as step 0) ->
  ``<run>/eval/<benchmark>/step-<N>.json`` (``opsd.runs.eval_results``: the files, written and read back).
- The command line ``python -m opsd eval`` is ``opsd.eval.cli``.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from peft import PeftModel
from tqdm import tqdm

from opsd.data import benchmark_names, load_benchmark
from opsd.data_checks import validate_rows
from opsd.eval.generation import DEFAULT_EVAL_PROMPT, EVAL_PROMPTS, eval_prompts, generate_hf, generate_vllm
from opsd.eval.grading import check_grading, make_record, summarize
from opsd.models import load_model_and_tokenizer
from opsd.runs.checkpoints import find_checkpoints, is_lora_checkpoint, usable_checkpoints
from opsd.runs.eval_results import check_eval_run_dir, eval_path, reusable_eval, write_eval_json
from opsd.runs.layout import read_run_config
from opsd.validation import InputError

# ---------------------------------------------------------------------------------------------------
# One model on one dataset
# ---------------------------------------------------------------------------------------------------


def evaluate(
    model,
    tokenizer,
    dataset,
    *,
    k: int,
    temperature: float = 1.0,
    top_p: float = 0.95,
    max_new_tokens: int,
    thinking: bool = False,
    backend: str = "hf",
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    lora_adapter: str | os.PathLike | None = None,
    vllm_kwargs: dict | None = None,
    chat_kwargs: dict | None = None,
    prompt: str = DEFAULT_EVAL_PROMPT,
    context_length: int | None = None,
    fast: bool = True,
    grading: str = "kit",
) -> tuple[list[dict], dict]:
    """Sample k completions per problem, grade them, and summarise.

    ``dataset``: rows with ``problem`` and ``answer`` (and ``id``; the row index otherwise), e.g.
    from ``load_benchmark``. ``temperature=0`` is greedy. ``backend="hf"`` generates with
    ``opsd.rollout.HFRollout`` in batches of ``batch_size`` problems (x k rows), seeded with
    ``torch.manual_seed(seed)``; ``backend="vllm"`` takes a ``vllm.LLM`` (or a model path) as
    ``model``, and optionally a peft adapter directory ``lora_adapter`` (the LLM needs
    ``enable_lora=True``). ``chat_kwargs`` (default ``{"enable_thinking": thinking}``) go to the chat
    template. ``prompt`` names the evaluation prompt (``reference``: the problem, a blank line, the
    instruction, as the reference evaluation; ``student``: the training student prompt).
    ``context_length`` (e.g. 32,768 in the non-thinking setting) caps prompt + completion tokens.
    ``fast`` (hf backend): ``HFRollout``'s packed CPU path; False: the reference path (same answers).
    ``grading`` (``opsd.eval.grading.GRADING_RULES``): ``kit`` or ``reference``, the extraction, grading and
    maj@k grouping of the records and the summary.

    Returns (records, summary): one record per (problem, sample) with ``problem_id``,
    ``sample_index``, ``completion``, ``extracted_answer``, ``answer``, ``correct``,
    ``completion_tokens``, ``truncated``; the summary of ``summarize``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if prompt not in EVAL_PROMPTS:
        raise ValueError(f"unknown evaluation prompt {prompt!r}: use one of {list(EVAL_PROMPTS)}")
    if backend not in ("hf", "vllm"):
        raise ValueError(f"unknown backend {backend!r}: use 'hf' or 'vllm'")
    check_grading(grading)
    if "problem" not in dataset.column_names or "answer" not in dataset.column_names:
        raise ValueError(f"dataset needs columns 'problem' and 'answer' (found {dataset.column_names})")
    ids = list(dataset["id"]) if "id" in dataset.column_names else [str(i) for i in range(len(dataset))]
    answers = [str(a) for a in dataset["answer"]]

    if backend == "vllm":
        if "id" not in dataset.column_names:
            dataset = dataset.add_column("id", ids)
        records = generate_vllm(
            model,
            tokenizer,
            dataset,
            k=k,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            thinking=thinking,
            seed=seed,
            progress=progress,
            lora_adapter=lora_adapter,
            vllm_kwargs=vllm_kwargs,
            chat_kwargs=chat_kwargs,
            prompt=prompt,
            context_length=context_length,
            grading=grading,
        )
        return records, summarize(records, k, grading)

    if lora_adapter is not None:
        raise ValueError("lora_adapter is for the vllm backend; with hf pass a PeftModel as model")
    torch.manual_seed(seed)
    was_training = getattr(model, "training", False)
    model.eval()
    problems = list(dataset["problem"])
    records: list[dict] = []
    report = progress if callable(progress) else None  # a callable gets (done, total) after each batch
    bar = tqdm(total=len(problems), desc="problems", unit="problem", disable=not progress or report is not None)
    try:
        for start in range(0, len(problems), batch_size):
            chunk = problems[start : start + batch_size]
            prompts = eval_prompts(tokenizer, chunk, thinking=thinking, chat_kwargs=chat_kwargs, prompt=prompt)
            samples = generate_hf(
                model,
                tokenizer,
                prompts,
                k=k,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                context_length=context_length,
                fast=fast,
            )
            for offset, per_prompt in enumerate(samples):
                i = start + offset
                for j, (text, n_tok, truncated) in enumerate(per_prompt):
                    records.append(make_record(ids[i], j, text, answers[i], n_tok, truncated, grading))
            bar.update(len(chunk))
            if report is not None:
                report(min(start + batch_size, len(problems)), len(problems))
    finally:
        bar.close()
        if was_training:
            model.train()
    return records, summarize(records, k, grading)


def heldout_accuracy(
    model,
    tokenizer,
    *,
    n: int = 64,
    max_new_tokens: int = 48,
    chat_kwargs: dict | None = None,
    batch_size: int = 16,
    seed: int = 0,
    prompt: str = DEFAULT_EVAL_PROMPT,
    benchmark: str = "synthetic",
    progress=False,
    fast: bool = True,
) -> dict:
    """Greedy accuracy of ``model`` on the first ``n`` held-out synthetic problems (one sample each):
    ``{"n", "correct", "accuracy", "interval", "boxed_rate", "mean_completion_tokens"}``, ``interval``
    the 95% Wilson interval ``[lo, hi]`` of the accuracy (``opsd.eval.stats``). ``benchmark``: ``synthetic``
    or ``synthetic-paraphrased`` (same problems, other wordings). ``progress``: a callable gets
    ``(done, total)`` after each batch; ``fast``: ``HFRollout``'s packed CPU path (False: the reference
    path, same answers; ``benchmarks/step.py``). The before/after check of
    ``reproduce/train.ipynb``; ``evaluate`` / ``evaluate_run`` give the full protocol."""
    dataset = load_benchmark(benchmark, n=n, seed=seed)
    records, summary = evaluate(
        model,
        tokenizer,
        dataset,
        k=1,
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        chat_kwargs=chat_kwargs,
        prompt=prompt,
        fast=fast,
    )
    correct = sum(bool(r["correct"]) for r in records)
    return {
        "n": len(records),
        "correct": correct,
        "accuracy": correct / max(len(records), 1),
        "interval": summary["avg_at_k_interval"],  # Avg@1 greedy: the accuracy's own Wilson interval
        "boxed_rate": summary["boxed_rate"],
        "mean_completion_tokens": summary["mean_completion_tokens"],
    }


# ---------------------------------------------------------------------------------------------------
# Every checkpoint of a run
# ---------------------------------------------------------------------------------------------------


def eval_settings(
    *, k, temperature, top_p, max_new_tokens, thinking, backend, seed, n_problems, model, batch_size,
    prompt=DEFAULT_EVAL_PROMPT, context_length=None, grading="kit",
) -> dict:
    """The ``settings`` of a result file (``context_length`` only when set, ``grading`` only when not the kit's,
    so that files graded by the kit's rules keep their settings): what decides whether an
    existing file is reused (``opsd.runs.eval_results.reusable_eval``; ``batch_size`` does not count)."""
    extra = {} if context_length is None else {"context_length": int(context_length)}
    if check_grading(grading) != "kit":
        extra["grading"] = grading
    return extra | {
        "prompt": str(prompt), "k": int(k), "temperature": float(temperature), "top_p": float(top_p),
        "max_new_tokens": int(max_new_tokens), "thinking": bool(thinking), "backend": backend, "seed": int(seed),
        "n_problems": int(n_problems), "model": str(model), "batch_size": int(batch_size),
    }


def evaluate_run(
    run_dir: str | os.PathLike,
    benchmarks: str | Sequence[str],
    *,
    steps: Sequence[int] | None = None,
    include_base: bool = True,
    overwrite: bool = False,
    k: int = 4,
    temperature: float = 1.0,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    thinking: bool = False,
    backend: str = "hf",
    batch_size: int = 8,
    seed: int = 0,
    n_problems: int | None = None,
    device: str | None = None,
    progress: bool = True,
    vllm_kwargs: dict | None = None,
    model_name: str | None = None,
    prompt: str = DEFAULT_EVAL_PROMPT,
    context_length: int | None = None,
    grading: str = "kit",
) -> list[dict]:
    """Evaluate every checkpoint of a training run on each benchmark.

    Reads the base model from ``run_dir/config.yaml`` (key ``model_name``; ``model_name`` overrides).
    Steps: ``steps`` (0 = the base model) or every ``checkpoint-<N>``, plus step 0 when
    ``include_base``. A LoRA checkpoint (``adapter_config.json``) is loaded onto the base with
    ``peft.PeftModel.from_pretrained`` and unloaded after; a full checkpoint (``config.json``) is
    loaded on its own. Writes ``run_dir/eval/<benchmark>/step-<N>.json`` and skips a file that
    already holds the same settings unless ``overwrite``. ``n_problems`` keeps the first N problems.
    ``grading``: ``evaluate``'s (``kit`` or ``reference``), checked before any model loads.
    Returns the result dicts (as written / read back), ordered by step then benchmark.
    """
    check_grading(grading)
    run_dir = Path(run_dir)
    benchmarks = benchmark_names(benchmarks)
    torch_dtype = None
    if model_name is None:
        check_eval_run_dir(run_dir)  # missing, or not a training run: a clear error before anything loads
        config = read_run_config(run_dir)
        model_name, torch_dtype = config.get("model_name"), config.get("torch_dtype")
        if not model_name:
            raise ValueError(f"{run_dir}/config.yaml has no `model_name`")
    # a checkpoint whose weights a crash cut (or a trainer is still writing) is skipped with a warning
    checkpoints = usable_checkpoints(find_checkpoints(run_dir), steps)
    chosen = sorted(checkpoints) if steps is None else sorted({int(s) for s in steps})
    if include_base and 0 not in chosen:
        chosen = [0] + chosen
    missing = [s for s in chosen if s != 0 and s not in checkpoints]
    if missing:
        raise InputError(f"no checkpoint for steps {missing} in {run_dir} (found {sorted(checkpoints)})")

    datasets_ = {b: load_benchmark(b, n=n_problems, seed=seed) for b in benchmarks}
    for b, ds in datasets_.items():  # every problem and gold answer a non-empty string (errors name the row)
        datasets_[b] = validate_rows(ds, ("problem", "answer"), b)
    gen = {"k": k, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
           "thinking": thinking, "backend": backend, "seed": seed, "prompt": prompt,
           "context_length": context_length, "grading": grading}
    settings = {
        b: eval_settings(**gen, n_problems=len(ds), model=model_name, batch_size=batch_size)
        for b, ds in datasets_.items()
    }
    # step -> the benchmarks to evaluate; a file cut by a crash, or from other settings, is moved aside and redone
    plan = {s: [b for b in benchmarks if overwrite or not reusable_eval(eval_path(run_dir, b, s), settings[b])]
            for s in chosen}
    plan = {s: todo for s, todo in plan.items() if todo}
    if plan:
        models = (_vllm_models(model_name, checkpoints, plan, seed, context_length, vllm_kwargs) if backend == "vllm"
                  else _hf_models(model_name, checkpoints, plan, device=device, torch_dtype=torch_dtype))
        for step, ckpt, model, tokenizer, adapter in models:
            for b in plan[step]:
                if progress:
                    print(f"[eval] {b} step {step} ({'base' if ckpt is None else ckpt.name})", flush=True)
                records, summary = evaluate(model, tokenizer, datasets_[b], batch_size=batch_size, progress=progress,
                                            lora_adapter=adapter, **gen)
                write_eval_json(run_dir, b, step, settings=settings[b], records=records, summary=summary,
                                checkpoint=None if ckpt is None else ckpt.name)
            del model, tokenizer  # so that the generator frees a checkpoint's model before loading the next
    return [json.loads(eval_path(run_dir, b, s).read_text()) for s in chosen for b in benchmarks]


def _hf_models(model_name, checkpoints, plan, *, device, torch_dtype=None):
    """(step, checkpoint or None, model, tokenizer, None) for each step of `plan`: the base model loaded once;
    a LoRA checkpoint put onto it and unloaded after, a full checkpoint loaded on its own."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(torch_dtype, str):
        dtype = getattr(torch, torch_dtype)
    else:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    base = tokenizer = None
    for step in plan:
        ckpt = checkpoints.get(step)
        if base is None:
            base, tokenizer = load_model_and_tokenizer(model_name, dtype=dtype, device=device)
        lora = ckpt is not None and is_lora_checkpoint(ckpt)
        if lora:
            model = PeftModel.from_pretrained(base, str(ckpt))
        elif ckpt is not None:
            model = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=dtype).to(device)
        else:
            model = base
        try:
            yield step, ckpt, model, tokenizer, None
        finally:
            if lora:
                base = model.unload()  # removes the LoRA layers, leaving the base weights untouched
            elif ckpt is not None:
                del model
                gc.collect()


def _vllm_models(model_name, checkpoints, plan, seed, context_length, vllm_kwargs):
    """(step, checkpoint or None, vllm.LLM, tokenizer, LoRA adapter path or None) for each step of `plan`:
    one engine for the base and every LoRA checkpoint (``enable_lora``), a fresh one per full checkpoint."""
    import vllm  # optional (the gpu extra): imported only when the vllm backend runs

    lora_steps = [s for s in plan if s in checkpoints and is_lora_checkpoint(checkpoints[s])]
    vllm_kwargs = dict(vllm_kwargs or {})
    if context_length is not None:  # the engine's context is the evaluation's
        vllm_kwargs.setdefault("max_model_len", int(context_length))
    kwargs = dict(vllm_kwargs)
    if lora_steps:
        ranks = [int(json.loads((checkpoints[s] / "adapter_config.json").read_text()).get("r", 16)) for s in lora_steps]
        kwargs.setdefault("enable_lora", True)
        kwargs.setdefault("max_lora_rank", max(ranks))
    shared = None
    for step in plan:
        ckpt = checkpoints.get(step)
        if ckpt is None or is_lora_checkpoint(ckpt):
            if shared is None:
                shared = vllm.LLM(model=model_name, seed=seed, **kwargs)
            yield step, ckpt, shared, shared.get_tokenizer(), None if ckpt is None else str(ckpt)
        else:
            llm = vllm.LLM(model=str(ckpt), seed=seed, **vllm_kwargs)
            yield step, ckpt, llm, llm.get_tokenizer(), None
            del llm
            gc.collect()


def evaluate_model(
    model_name: str,
    benchmarks: str | Sequence[str],
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    **kwargs,
) -> list[dict]:
    """Evaluate one model (name, path or Hub id) as step 0 of ``output_dir``: writes
    ``output_dir/eval/<benchmark>/step-0.json``. Keyword arguments as for ``evaluate_run``."""
    return evaluate_run(
        output_dir,
        benchmarks,
        steps=[0],
        include_base=True,
        overwrite=overwrite,
        model_name=model_name,
        **kwargs,
    )
