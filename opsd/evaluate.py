"""Evaluation: boxed-answer extraction, math-verify grading, Avg@k, unbiased pass@k and maj@k.

The protocol of the paper: prompt with the reference evaluation prompt (the problem text, a blank
line, the step-by-step / ``\\boxed{}`` instruction), sample k completions per problem (temperature
1.0, top_p 0.95), take the content of the last ``\\boxed{}`` of each completion, grade it against the
gold answer with math-verify, and report Avg@k = mean over problems of (correct samples / k), next to
pass@k and maj@k (the majority answer of the k samples, correct or not). The paper's settings are
k=12, 38,912 new tokens, thinking on, vLLM; the CPU defaults here are tiny.

Layers, from pure to heavy:

- ``extract_boxed``, ``is_correct``, ``pass_at_k``, ``avg_at_k``, ``majority_vote``, ``maj_at_k``,
  ``summarize``: pure functions.
- ``load_benchmark``: a benchmark name (``synthetic``, ``aime24`` ...) or a local file -> a dataset
  with ``id``, ``problem``, ``answer``.
- ``evaluate``: one model on one dataset -> (records, summary); backend ``hf`` (``opsd.rollout``) or
  ``vllm``.
- ``evaluate_run``: every checkpoint of a run directory -> ``run_dir/eval/<benchmark>/step-<N>.json``;
  ``load_eval_results`` and ``summary_table`` read those files back for tables and curves.
- ``main``: the ``python -m opsd eval`` command line.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import operator
import os
import re
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------------------

#: Benchmarks by name. ``synthetic`` is the held-out split of ``opsd.data.synthetic_math``; the others
#: are the Hub sets of ``opsd.data.BENCHMARKS`` (AIME24 ``HuggingFaceH4/aime_2024``, AIME25
#: ``yentinglin/aime_2025``, HMMT25 ``MathArena/hmmt_feb_2025``, MATH-500 ``HuggingFaceH4/MATH-500``,
#: AMC23 ``math-ai/amc23``), read from a local copy under ``$OPSD_DATA_DIR`` when there is one.
BENCHMARKS: tuple[str, ...] = ("synthetic", "synthetic-paraphrased", "aime24", "aime25", "hmmt25", "math500", "amc23")

#: Number of held-out synthetic problems when no limit is given.
SYNTHETIC_EVAL_SIZE = 64

#: The paper's evaluation settings.
PAPER_SETTINGS = dict(k=12, temperature=1.0, top_p=0.95, max_new_tokens=38912, thinking=True, backend="vllm")

#: The evaluation prompt used unless one is named (``opsd.contexts.EVAL_PROMPT_PROFILES``).
DEFAULT_EVAL_PROMPT = "reference"
EVAL_PROMPTS: tuple[str, ...] = ("reference", "student")


@dataclass
class EvalProfile:
    """One evaluation setting, from ``reproduce/configs/<name>.yaml`` (``kind: eval``).

    ``eval-paper`` is the paper's thinking evaluation; ``eval-nonthinking`` the reference's
    non-thinking one. ``context_length``, when set, caps prompt + completion tokens per sample
    (each sample may generate ``min(max_new_tokens, context_length - prompt tokens)``).
    """

    profile: str = "custom"
    benchmarks: str = "aime24,aime25,hmmt25"
    k: int = 12
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 38912
    context_length: int | None = None
    thinking: bool = True
    prompt: str = "reference"
    backend: str = "vllm"

    def __post_init__(self):
        if self.prompt not in EVAL_PROMPTS:
            raise ValueError(f"unknown evaluation prompt {self.prompt!r}: use one of {list(EVAL_PROMPTS)}")
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"backend must be 'hf' or 'vllm', got {self.backend!r}")

    def settings(self) -> dict:
        """The keyword arguments of ``evaluate_run`` / ``evaluate_model`` (benchmarks and name left out)."""
        out = asdict(self)
        out.pop("profile")
        out.pop("benchmarks")
        return out


#: Evaluation profile names (files ``reproduce/configs/<name>.yaml``).
EVAL_PROFILES: tuple[str, ...] = ("eval-paper", "eval-nonthinking")


def load_eval_profile(name: str, overrides: dict | None = None) -> EvalProfile:
    """An ``EvalProfile`` from a profile name (``eval-nonthinking``) or a YAML path, then
    ``overrides``. The file must say ``kind: eval``; unknown keys are an error listing the valid ones."""
    from opsd.config import check_keys, read_profile

    values = read_profile(name)
    kind = values.pop("kind", None)
    if kind != "eval":
        raise ValueError(f"profile {name!r} is a {kind!r} profile, not an evaluation profile (kind: eval)")
    check_keys(EvalProfile, values, "evaluation profile")
    check_keys(EvalProfile, dict(overrides or {}), "override")
    return EvalProfile(**{**values, **dict(overrides or {})})


_ID_COLUMNS = ("id", "problem_idx", "unique_id", "idx", "problem_id")


def _is_local(source: str) -> bool:
    return os.path.exists(os.path.expanduser(str(source)))


def _looks_like_source(name: str) -> bool:
    return _is_local(name) or "/" in name


def load_benchmark(name: str, *, n: int | None = None, seed: int = 0):
    """A benchmark by name, or a local file / Hub id, as a ``datasets.Dataset[id, problem, answer]``.

    ``name``: one of ``BENCHMARKS`` (``synthetic`` = held-out split of ``opsd.data.synthetic_math``,
    ``seed`` picks its problems) or anything ``opsd.data.load_problems`` reads (a local
    parquet/jsonl/json file or folder, a Hub id). ``n``: keep the first ``n`` problems, in file order,
    so a limit picks the same problems every time. A source without ``answer`` takes the last
    ``\\boxed{}`` of its ``solution``. Raises ``ValueError`` for an unknown name (listing the valid ones).
    """
    if name not in BENCHMARKS and not _looks_like_source(name):
        raise ValueError(
            f"unknown benchmark {name!r}: use one of {list(BENCHMARKS)} or a path to a local "
            "parquet/jsonl file with `problem` and `answer` (or `solution`) columns"
        )
    from opsd import data as opsd_data

    if name in opsd_data.SYNTHETIC_SOURCES:  # the held-out split (``synthetic-paraphrased``: other wordings)
        ds = opsd_data.held_out_problems(name, n or SYNTHETIC_EVAL_SIZE, seed=seed)
    elif name in BENCHMARKS:
        ds = opsd_data.load_benchmark(name)
    else:
        ds = opsd_data.load_problems(name)
    ds = _normalize_benchmark(ds, name)
    if n is not None and n < len(ds):
        ds = ds.select(range(n))
    return ds


def _normalize_benchmark(ds, name: str):
    """Add ``id`` (from ``problem_idx``/``unique_id``/... or the row index) and ``answer``."""
    cols = ds.column_names
    if "problem" not in cols:
        raise ValueError(f"benchmark {name!r}: missing column 'problem' (found {cols})")
    if "answer" not in cols:
        if "solution" in cols:
            ds = ds.map(lambda row: {"answer": extract_boxed(row["solution"] or "") or ""})
        else:
            raise ValueError(f"benchmark {name!r}: missing column 'answer' or 'solution' (found {cols})")
    answers = ["" if a is None else str(a) for a in ds["answer"]]
    id_col = next((c for c in _ID_COLUMNS if c in ds.column_names), None)
    ids = [str(i) for i in ds[id_col]] if id_col is not None else [str(i) for i in range(len(ds))]
    ds = ds.remove_columns([c for c in ("answer", "id") if c in ds.column_names])
    return ds.add_column("answer", answers).add_column("id", ids)


# ---------------------------------------------------------------------------------------------------
# Extraction and grading
# ---------------------------------------------------------------------------------------------------

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox|framebox)(?![A-Za-z])")


def _box_content(text: str, start: int) -> str | None:
    """Content of the box whose command ends at ``start`` ("" for an empty box); None if unterminated."""
    i = start
    while i < len(text) and text[i] in " \t\n":
        i += 1
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{" and (j == 0 or text[j - 1] != "\\"):
                depth += 1
            elif text[j] == "}" and text[j - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j].strip()
        return None  # unbalanced: a completion cut inside its box
    if i == start:
        return None  # "\boxed" glued to something that is not a brace
    # "\boxed 42": one token, up to whitespace or the closing math delimiter
    match = re.match(r"[^\s$]+", text[i:])
    if match is None:
        return None
    return match.group(0).rstrip(".,;") or None


def extract_boxed(text: str | None) -> str | None:
    """The content of the last complete ``\\boxed{...}`` (or ``\\boxed x``, ``\\fbox{...}``) in ``text``.

    Braces nest (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); a box cut off before its closing
    brace does not count, so the previous complete box is returned. None when there is no box.
    """
    if not text:
        return None
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        content = _box_content(text, match.end())
        if content is not None:
            return content
    return None


def _normalize_answer(s: str) -> str:
    """Textual normal form for the fallback comparison: no spaces, ``$``, ``\\!``, ``\\left/\\right``,
    ``\\text{}`` unwrapped, ``\\dfrac`` -> ``\\frac``, integers without leading zeros or ``.0``."""
    s = str(s).strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    for old, new in (
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("$", ""),
    ):
        s = s.replace(old, new)
    s = re.sub(r"\s+", "", s).rstrip(".")
    if re.fullmatch(r"[+-]?\d+(\.0+)?", s):
        s = str(int(float(s))) if len(s) < 16 else s.split(".")[0].lstrip("+").lstrip("0") or "0"
    return s


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def is_correct(prediction: str | None, answer: str | float | None, *, timeout_seconds: int = 5) -> bool:
    """Whether ``prediction`` (the extracted boxed content) equals the gold ``answer``.

    Uses math-verify: gold parsed from ``\\boxed{answer}`` (or ``$answer$``), prediction from
    ``\\boxed{prediction}``, compared with ``verify`` (fractions, decimals, LaTeX, intervals, sets,
    units and degrees stripped as math-verify does). math-verify's timeouts use ``signal.alarm``,
    which only works in the main thread, so outside it the timeout is off. A normalised string
    equality (``_normalize_answer``) is the fallback when math-verify fails to parse or raises, and
    also accepts textually identical answers. Empty or None predictions are wrong.
    """
    if prediction is None or answer is None:
        return False
    prediction, answer = str(prediction).strip(), str(answer).strip()
    if not prediction or not answer:
        return False
    textual = _normalize_answer(prediction) == _normalize_answer(answer)
    try:
        from math_verify import parse, verify

        timeout = timeout_seconds if _in_main_thread() else None
        gold = parse(answer if "\\boxed" in answer else f"\\boxed{{{answer}}}", parsing_timeout=timeout)
        if not gold:
            gold = parse(f"${answer}$", parsing_timeout=timeout)
        pred = parse(f"\\boxed{{{prediction}}}", parsing_timeout=timeout)
        if not gold or not pred:
            return textual
        return bool(verify(gold, pred, timeout_seconds=timeout)) or textual
    except BaseException as err:  # math-verify raises TimeoutException, a BaseException
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        return textual


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Exact with ``math.comb`` for n <= 1000; for larger n the equivalent stable product
    1 - prod_{i=n-c+1}^{n} (1 - k / i). Raises ``ValueError`` unless 0 <= c <= n and 1 <= k <= n.
    """
    n, c, k = operator.index(n), operator.index(c), operator.index(k)  # ints (numpy ints too), not floats
    if n < 1 or c < 0 or c > n:
        raise ValueError(f"need 0 <= c <= n and n >= 1, got n={n}, c={c}")
    if k < 1 or k > n:
        raise ValueError(f"need 1 <= k <= n, got k={k} with n={n} samples")
    if n - c < k:
        return 1.0
    if n <= 1000:
        return 1.0 - math.comb(n - c, k) / math.comb(n, k)
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _group_by_problem(records: Iterable[dict]) -> OrderedDict[Any, list[dict]]:
    groups: OrderedDict[Any, list[dict]] = OrderedDict()
    for r in records:
        groups.setdefault(r["problem_id"], []).append(r)
    return groups


def avg_at_k(records: Sequence[dict]) -> float:
    """Avg@k: per problem the mean of ``correct`` over its samples, then the mean over problems."""
    groups = _group_by_problem(records)
    if not groups:
        return 0.0
    return sum(sum(bool(r["correct"]) for r in g) / len(g) for g in groups.values()) / len(groups)


def answers_equivalent(a: str | None, b: str | None) -> bool:
    """Whether two extracted answers say the same thing: the math-verify equivalence of ``is_correct``
    (``b`` taken as the reference), or textual equality after ``_normalize_answer``."""
    if a is None or b is None:
        return False
    return a == b or is_correct(a, b)


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index (into ``answers``) of the majority answer of one problem's samples; None when no sample
    has an answer.

    Samples without an answer (None or empty) do not vote. Answers are grouped greedily in sample
    order: each joins the first group whose first answer is equivalent to it (``answers_equivalent``),
    else opens a new group. The largest group wins; among groups of equal size the one opened first
    (the lowest sample index) wins, so the result is deterministic. Returns that group's first index.
    """
    groups: list[list[int]] = []
    for i, a in enumerate(answers):
        if a is None or not str(a).strip():
            continue
        for g in groups:
            if answers_equivalent(str(a), str(answers[g[0]])):
                g.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    return max(groups, key=lambda g: (len(g), -g[0]))[0]


def maj_at_k(records: Sequence[dict], k: int | None = None) -> float:
    """maj@k: the fraction of problems whose majority answer (``majority_vote`` over the first k
    samples by ``sample_index``; all samples when k is None) is correct. A problem where no sample
    boxed an answer counts as wrong."""
    groups = _group_by_problem(records)
    if not groups:
        return 0.0
    right = 0
    for g in groups.values():
        g = sorted(g, key=lambda r: r.get("sample_index", 0))[: k if k is not None else None]
        winner = majority_vote([r.get("extracted_answer") for r in g])
        right += winner is not None and bool(g[winner]["correct"])
    return right / len(groups)


def summarize(records: Sequence[dict], k: int | None = None) -> dict:
    """Summary of per-sample records: Avg@k with its 95% Wilson interval (``avg_at_k_interval``),
    pass@1..k (mean over problems of the unbiased estimator), maj@k (majority vote of the first k samples, ``maj_at_k``), boxed rate (samples with a box), mean completion tokens (generated tokens, eos
    included), truncation rate (samples cut by max_new_tokens). All rates are fractions in [0, 1]."""
    groups = _group_by_problem(records)
    n_min = min((len(g) for g in groups.values()), default=0)
    k = n_min if k is None else min(k, n_min)
    pass_k = {}
    for kk in range(1, k + 1):
        vals = [pass_at_k(len(g), sum(bool(r["correct"]) for r in g), kk) for g in groups.values()]
        pass_k[str(kk)] = sum(vals) / len(vals)
    from opsd.stats import wilson_interval

    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    return {
        "n_problems": len(groups),
        "n_samples": n,
        "k": k,
        "avg_at_k": avg_at_k(records),
        # 95% Wilson interval of the share of correct samples; with k > 1 samples per problem they are not
        # independent, so it understates the uncertainty (exact for greedy Avg@1).
        "avg_at_k_interval": list(wilson_interval(correct, n)) if n else [0.0, 1.0],
        "pass_at_k": pass_k,
        "maj_at_k": maj_at_k(records, k),
        "boxed_rate": sum(r["extracted_answer"] is not None for r in records) / n if n else 0.0,
        "mean_completion_tokens": sum(r["completion_tokens"] for r in records) / n if n else 0.0,
        "truncated_rate": sum(bool(r.get("truncated", False)) for r in records) / n if n else 0.0,
    }


def make_record(
    problem_id,
    sample_index: int,
    completion: str,
    answer: str,
    completion_tokens: int,
    truncated: bool = False,
) -> dict:
    """One graded sample: problem id, sample index, completion, extracted answer, gold, correct."""
    extracted = extract_boxed(completion)
    return {
        "problem_id": problem_id,
        "sample_index": int(sample_index),
        "completion": completion,
        "extracted_answer": extracted,
        "answer": answer,
        "correct": is_correct(extracted, answer),
        "completion_tokens": int(completion_tokens),
        "truncated": bool(truncated),
    }


# ---------------------------------------------------------------------------------------------------
# Generation backends
# ---------------------------------------------------------------------------------------------------


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
    from opsd.contexts import apply_chat, build_eval_messages

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


def _generate_hf(model, tokenizer, prompts: list[str], *, k, temperature, top_p, max_new_tokens,
                 context_length=None):
    """k completions per prompt with ``opsd.rollout.HFRollout``. With ``context_length`` the batch
    generates at most ``context_length`` minus its longest prompt (one budget per generate call).

    Returns per prompt a list of k tuples (text, completion_tokens, truncated); completion_tokens
    counts the generated tokens up to and including the first eos.
    """
    import torch

    from opsd.rollout import HFRollout, SamplingParams, eos_token_ids

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
        rollout = HFRollout(model, tokenizer).generate(
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
    outputs, problem_ids: Sequence, answers: Sequence[str], max_new_tokens: int | Sequence[int]
) -> list[dict]:
    """Records from ``vllm.LLM.generate`` outputs (one ``RequestOutput`` per prompt, in order, each
    with ``.outputs``: k ``CompletionOutput`` with ``.text``, ``.token_ids``, ``.finish_reason``).
    ``max_new_tokens``: one budget for all prompts or one per prompt."""
    records = []
    if isinstance(max_new_tokens, int):
        max_new_tokens = [max_new_tokens] * len(outputs)
    for req, pid, ans, budget in zip(outputs, problem_ids, answers, max_new_tokens, strict=True):
        for j, comp in enumerate(req.outputs):
            n_tok = len(comp.token_ids)
            truncated = getattr(comp, "finish_reason", None) == "length" or (
                getattr(comp, "finish_reason", None) is None and n_tok >= budget
            )
            records.append(make_record(pid, j, comp.text, ans, n_tok, truncated))
    return records


def _evaluate_vllm(
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
):
    """vLLM backend: ``model`` is a ``vllm.LLM`` or a model path/Hub id (an ``LLM`` is built).
    With ``context_length``, each prompt gets its own token budget (``completion_budgets``)."""
    import vllm

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
        from vllm.lora.request import LoRARequest

        # a stable positive integer id per adapter path (vLLM caches adapters by id)
        lora_id = 1 + zlib.crc32(str(lora_adapter).encode()) % (2**31 - 2)
        kwargs["lora_request"] = LoRARequest(Path(lora_adapter).name, lora_id, str(lora_adapter))
    outputs = llm.generate(prompts, params, use_tqdm=progress, **kwargs)
    return records_from_vllm(outputs, list(dataset["id"]), [str(a) for a in dataset["answer"]], budgets)


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
    if "problem" not in dataset.column_names or "answer" not in dataset.column_names:
        raise ValueError(f"dataset needs columns 'problem' and 'answer' (found {dataset.column_names})")
    ids = list(dataset["id"]) if "id" in dataset.column_names else [str(i) for i in range(len(dataset))]
    answers = [str(a) for a in dataset["answer"]]

    if backend == "vllm":
        if "id" not in dataset.column_names:
            dataset = dataset.add_column("id", ids)
        records = _evaluate_vllm(
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
        )
        return records, summarize(records, k)

    import torch
    from tqdm import tqdm

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
            samples = _generate_hf(
                model,
                tokenizer,
                prompts,
                k=k,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                context_length=context_length,
            )
            for offset, per_prompt in enumerate(samples):
                i = start + offset
                for j, (text, n_tok, truncated) in enumerate(per_prompt):
                    records.append(make_record(ids[i], j, text, answers[i], n_tok, truncated))
            bar.update(len(chunk))
            if report is not None:
                report(min(start + batch_size, len(problems)), len(problems))
    finally:
        bar.close()
        if was_training:
            model.train()
    return records, summarize(records, k)


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
) -> dict:
    """Greedy accuracy of ``model`` on the first ``n`` held-out synthetic problems (one sample each):
    ``{"n", "correct", "accuracy", "interval", "boxed_rate", "mean_completion_tokens"}``, ``interval``
    the 95% Wilson interval ``[lo, hi]`` of the accuracy (``opsd.stats``). ``benchmark``: ``synthetic``
    or ``synthetic-paraphrased`` (same problems, other wordings). ``progress``: a callable gets
    ``(done, total)`` after each batch. The before/after check of
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
# Run directories
# ---------------------------------------------------------------------------------------------------

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def find_checkpoints(run_dir: str | os.PathLike) -> dict[int, Path]:
    """step -> ``run_dir/checkpoint-<step>`` for every checkpoint directory, by step."""
    run_dir = Path(run_dir)
    found = {}
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            m = _CHECKPOINT.match(child.name)
            if m and child.is_dir():
                found[int(m.group(1))] = child
    return dict(sorted(found.items()))


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """``run_dir/config.yaml`` as a dict (``yaml.safe_load``)."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run directory?")
    with open(path) as f:
        return yaml.safe_load(f) or {}


def find_latest_run(runs_root: str | os.PathLike = "runs", profile: str | None = "cpu-tiny") -> Path | None:
    """The most recently modified run directory under ``runs_root`` whose config.yaml has
    ``profile`` (any when None) and at least one checkpoint; None when there is none."""
    import yaml

    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        return None
    candidates = []
    for cfg in runs_root.glob("*/config.yaml"):
        run = cfg.parent
        if not find_checkpoints(run):
            continue
        if profile is not None:
            try:
                conf = read_run_config(run)
            except (OSError, ValueError, yaml.YAMLError):
                continue  # an unreadable config is not a run to evaluate
            if conf.get("profile") != profile:
                continue
        candidates.append((cfg.stat().st_mtime, run))
    return max(candidates)[1] if candidates else None


def eval_path(run_dir: str | os.PathLike, benchmark: str, step: int) -> Path:
    """``run_dir/eval/<benchmark>/step-<step>.json`` (benchmark names that are paths use the stem)."""
    return Path(run_dir) / "eval" / benchmark_slug(benchmark) / f"step-{int(step)}.json"


def benchmark_slug(benchmark: str) -> str:
    if benchmark in BENCHMARKS:
        return benchmark
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(benchmark)).stem if _is_local(benchmark) else benchmark)


def _settings(
    *, k, temperature, top_p, max_new_tokens, thinking, backend, seed, n_problems, model, batch_size,
    prompt=DEFAULT_EVAL_PROMPT, context_length=None,
) -> dict:
    extra = {} if context_length is None else {"context_length": int(context_length)}
    return extra | {
        "prompt": str(prompt),
        "k": int(k),
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_new_tokens": int(max_new_tokens),
        "thinking": bool(thinking),
        "backend": backend,
        "seed": int(seed),
        "n_problems": int(n_problems),
        "model": str(model),
        "batch_size": int(batch_size),
    }


def _same_settings(a: dict, b: dict) -> bool:
    ignore = {"batch_size"}
    return {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}


def write_eval_json(
    path: str | os.PathLike,
    *,
    benchmark: str,
    step: int | None,
    settings: dict,
    records: list[dict],
    summary: dict,
    checkpoint: str | None = None,
) -> dict:
    """Write one evaluation (schema of the run-directory contract) atomically; returns the dict."""
    payload = {
        "benchmark": benchmark,
        "step": step,
        "k": settings["k"],
        "checkpoint": checkpoint,
        "settings": settings,
        "summary": summary,
        "records": records,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)
    return payload


def _is_lora_checkpoint(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def _default_dtype(device):
    import torch

    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


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
) -> list[dict]:
    """Evaluate every checkpoint of a training run on each benchmark.

    Reads the base model from ``run_dir/config.yaml`` (key ``model_name``; ``model_name`` overrides).
    Steps: ``steps`` (0 = the base model) or every ``checkpoint-<N>``, plus step 0 when
    ``include_base``. A LoRA checkpoint (``adapter_config.json``) is loaded onto the base with
    ``peft.PeftModel.from_pretrained`` and unloaded after; a full checkpoint (``config.json``) is
    loaded on its own. Writes ``run_dir/eval/<benchmark>/step-<N>.json`` and skips a file that
    already holds the same settings unless ``overwrite``. ``n_problems`` keeps the first N problems.
    Returns the result dicts (as written / read back), ordered by step then benchmark.
    """
    from opsd.runlog import check_eval_run_dir, reusable_eval, usable_checkpoints
    from opsd.validation import InputError, validate_rows

    run_dir = Path(run_dir)
    benchmarks = _split_names(benchmarks)
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
    gen = dict(
        k=k,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        thinking=thinking,
        backend=backend,
        seed=seed,
        prompt=prompt,
        context_length=context_length,
    )
    settings = {
        b: _settings(**gen, n_problems=len(ds), model=model_name, batch_size=batch_size)
        for b, ds in datasets_.items()
    }

    def todo(step: int) -> list[str]:
        out = []
        for b in benchmarks:
            path = eval_path(run_dir, b, step)
            # a file cut by a crash, or from other settings, is moved aside (with a warning) and redone
            if not overwrite and reusable_eval(path, settings[b], _same_settings):
                continue
            out.append(b)
        return out

    plan = {s: todo(s) for s in chosen}
    if any(plan.values()):
        if backend == "vllm":
            _evaluate_run_vllm(
                run_dir,
                model_name,
                checkpoints,
                plan,
                datasets_,
                settings,
                gen,
                progress=progress,
                vllm_kwargs=vllm_kwargs,
            )
        else:
            _evaluate_run_hf(
                run_dir,
                model_name,
                checkpoints,
                plan,
                datasets_,
                settings,
                gen,
                batch_size=batch_size,
                device=device,
                progress=progress,
                torch_dtype=torch_dtype,
            )

    results = []
    for s in chosen:
        for b in benchmarks:
            with open(eval_path(run_dir, b, s)) as f:
                results.append(json.load(f))
    return results


def _evaluate_run_hf(
    run_dir,
    model_name,
    checkpoints,
    plan,
    datasets_,
    settings,
    gen,
    *,
    batch_size,
    device,
    progress,
    torch_dtype=None,
):
    import torch

    from opsd.models import load_model_and_tokenizer

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else _default_dtype(device)
    base = tokenizer = None

    def get_base():
        nonlocal base, tokenizer
        if base is None:
            base, tokenizer = load_model_and_tokenizer(model_name, dtype=dtype, device=device)
        return base

    for step, todo in plan.items():
        if not todo:
            continue
        ckpt = checkpoints.get(step)
        model = get_base()
        if ckpt is not None and _is_lora_checkpoint(ckpt):
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(ckpt))
        elif ckpt is not None:
            import transformers

            model = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=dtype).to(device)
        try:
            for b in todo:
                if progress:
                    print(f"[eval] {b} step {step} ({'base' if ckpt is None else ckpt.name})", flush=True)
                records, summary = evaluate(
                    model, tokenizer, datasets_[b], batch_size=batch_size, progress=progress, **gen
                )
                write_eval_json(
                    eval_path(run_dir, b, step),
                    benchmark=b,
                    step=step,
                    settings=settings[b],
                    records=records,
                    summary=summary,
                    checkpoint=None if ckpt is None else ckpt.name,
                )
        finally:
            if ckpt is not None and _is_lora_checkpoint(ckpt):
                base = model.unload()  # removes the LoRA layers, leaving the base weights untouched
            elif ckpt is not None:
                del model
                gc.collect()


def _evaluate_run_vllm(
    run_dir, model_name, checkpoints, plan, datasets_, settings, gen, *, progress, vllm_kwargs
):
    """One ``vllm.LLM`` for the base and every LoRA checkpoint (``enable_lora``); a fresh one per
    full-model checkpoint."""
    import vllm

    lora_steps = [s for s in plan if s in checkpoints and _is_lora_checkpoint(checkpoints[s])]
    vllm_kwargs = dict(vllm_kwargs or {})
    if gen.get("context_length") is not None:  # the engine's context is the evaluation's
        vllm_kwargs.setdefault("max_model_len", int(gen["context_length"]))
    kwargs = dict(vllm_kwargs)
    if lora_steps:
        ranks = []
        for s in lora_steps:
            with open(checkpoints[s] / "adapter_config.json") as f:
                ranks.append(int(json.load(f).get("r", 16)))
        kwargs.setdefault("enable_lora", True)
        kwargs.setdefault("max_lora_rank", max(ranks))
    shared = None
    for step, todo in plan.items():
        if not todo:
            continue
        ckpt = checkpoints.get(step)
        adapter = None
        if ckpt is None or _is_lora_checkpoint(ckpt):
            if shared is None:
                shared = vllm.LLM(model=model_name, seed=gen["seed"], **kwargs)
            llm, adapter = shared, (None if ckpt is None else str(ckpt))
        else:
            llm = vllm.LLM(model=str(ckpt), seed=gen["seed"], **(vllm_kwargs or {}))
        for b in todo:
            records, summary = evaluate(
                llm, llm.get_tokenizer(), datasets_[b], progress=progress, lora_adapter=adapter, **gen
            )
            write_eval_json(
                eval_path(run_dir, b, step),
                benchmark=b,
                step=step,
                settings=settings[b],
                records=records,
                summary=summary,
                checkpoint=None if ckpt is None else ckpt.name,
            )
        if llm is not shared:
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


def load_eval_results(run_dir: str | os.PathLike) -> list[dict]:
    """Every ``run_dir/eval/<benchmark>/step-<N>.json``, ordered by benchmark then step. Each dict
    gets ``path``."""
    results = []
    for path in Path(run_dir).glob("eval/*/step-*.json"):
        with open(path) as f:
            res = json.load(f)
        res["path"] = str(path)
        results.append(res)
    return sorted(
        results, key=lambda r: (str(r.get("benchmark")), r.get("step") if r.get("step") is not None else -1)
    )


def summary_table(results: Sequence[dict]):
    """A ``pandas.DataFrame``, one row per (benchmark, step): n_problems, k, avg@k, maj@k, pass@1..k,
    boxed_rate, mean_tokens, truncated_rate (rates are fractions, exactly as in the JSON)."""
    import pandas as pd

    rows = []
    for r in results:
        s = r["summary"]
        row = {
            "benchmark": r.get("benchmark"),
            "step": r.get("step"),
            "checkpoint": r.get("checkpoint") or "base",
            "n_problems": s.get("n_problems"),
            "k": r.get("k", s.get("k")),
            "avg@k": s["avg_at_k"],
            "maj@k": s.get("maj_at_k"),  # None in files written before maj@k was recorded
            "avg@k 95% lo": (s.get("avg_at_k_interval") or [None, None])[0],  # absent in older files
            "avg@k 95% hi": (s.get("avg_at_k_interval") or [None, None])[1],
        }
        for kk, v in sorted(s.get("pass_at_k", {}).items(), key=lambda kv: int(kv[0])):
            row[f"pass@{kk}"] = v
        row["boxed_rate"] = s.get("boxed_rate")
        row["mean_tokens"] = s.get("mean_completion_tokens")
        row["truncated_rate"] = s.get("truncated_rate")
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        tail = ["boxed_rate", "mean_tokens", "truncated_rate"]
        df = df[[c for c in df.columns if c not in tail] + tail]
        df = df.sort_values(["benchmark", "step"], kind="stable").reset_index(drop=True)
    return df


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def _split_names(benchmarks: str | Sequence[str]) -> list[str]:
    names = benchmarks.split(",") if isinstance(benchmarks, str) else list(benchmarks)
    names = [b.strip() for b in names if b and b.strip()]
    if not names:
        raise ValueError("no benchmark given")
    for b in names:
        if b not in BENCHMARKS and not _looks_like_source(b):
            raise ValueError(f"unknown benchmark {b!r}: use one of {list(BENCHMARKS)} or a local file path")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m opsd eval",
        description="Sample k answers per problem, grade the last \\boxed{} with math-verify, report Avg@k, "
        "maj@k and pass@k. Writes <run or output>/eval/<benchmark>/step-<N>.json.",
        epilog="Paper settings: --profile eval-paper (k 12, 38,912 new tokens, temperature 1.0, top_p 0.95, "
        "thinking, vllm, aime24,aime25,hmmt25); the reference's non-thinking setting: --profile "
        "eval-nonthinking. Flags given explicitly override the profile.",
    )
    p.add_argument(
        "--profile",
        default=None,
        help=f"evaluation profile ({', '.join(EVAL_PROFILES)} or a YAML path with kind: eval): its values "
        "become the defaults of the flags below",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="training run directory: evaluates the base model and every checkpoint")
    src.add_argument("--model", help="one model (embedded name, local path or Hub id), evaluated as step 0")
    p.add_argument(
        "--benchmarks",
        default="synthetic",
        help=f"comma-separated: {', '.join(BENCHMARKS)} or local files (default: synthetic)",
    )
    p.add_argument("--k", type=int, default=4, help="samples per problem (paper: 12)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="paper: 38912")
    p.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="cap on prompt + completion tokens per sample (non-thinking setting: 32768); default none",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument(
        "--thinking",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="chat template enable_thinking (Qwen3; paper: on)",
    )
    p.add_argument(
        "--prompt",
        choices=EVAL_PROMPTS,
        default=DEFAULT_EVAL_PROMPT,
        help="evaluation prompt: reference = the problem, a blank line, the instruction (the reference "
        "evaluation; default); student = the training student prompt with its 'Problem: ' prefix",
    )
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    p.add_argument("--batch-size", type=int, default=8, help="problems per generate call (hf backend)")
    p.add_argument("--steps", default=None, help="comma-separated checkpoint steps (0 = base); default all")
    p.add_argument("--no-base", action="store_true", help="with --run: skip step 0 (the base model)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N problems of each benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="hf backend device (default: cuda when available)")
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="vllm backend")
    p.add_argument(
        "--output",
        default=None,
        help="output directory (default: the run directory; with --model runs/eval-<model>)",
    )
    p.add_argument("--overwrite", action="store_true", help="re-evaluate steps whose JSON already exists")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--profile``'s values as the defaults of the flags not given."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.profile is not None:
        profile = load_eval_profile(first.profile)
        parser.set_defaults(**profile.settings(), benchmarks=profile.benchmarks)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m opsd eval``: evaluate a run directory or a model and print the summary table."""
    args = parse_args(argv)
    try:
        benchmarks = _split_names(args.benchmarks)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    try:
        steps = None if args.steps is None else [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        print(f"error: --steps must be comma-separated checkpoint steps such as 0,25,50; got {args.steps!r}")
        return 2
    if steps is not None and any(s < 0 for s in steps):
        print(f"error: --steps must be >= 0; got {args.steps!r}")
        return 2
    vllm_kwargs = None
    if args.gpu_memory_utilization is not None:
        vllm_kwargs = {"gpu_memory_utilization": args.gpu_memory_utilization}
    common = dict(
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        context_length=args.context_length,
        thinking=args.thinking,
        prompt=args.prompt,
        backend=args.backend,
        batch_size=args.batch_size,
        seed=args.seed,
        n_problems=args.limit,
        device=args.device,
        overwrite=args.overwrite,
        vllm_kwargs=vllm_kwargs,
    )
    if args.run:
        if args.output:
            print("note: --output is ignored with --run (results go to the run directory)")
        results = evaluate_run(args.run, benchmarks, steps=steps, include_base=not args.no_base, **common)
    else:
        output = args.output or os.path.join("runs", "eval-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", args.model))
        results = evaluate_model(args.model, benchmarks, output, **common)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(summary_table(results).to_string(index=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
