"""The CPU starting model: the embedded SmolLM2 after a short SFT warm-up, merged and cached.

Why: the paper starts OPSD from models that already reason (Qwen3) and whose self-teacher, reference
solution in view, does clearly better than the student. The raw 135M model is not in that regime on the
synthetic additions (almost never correct as a student, right on about a third with the reference in view), so its rollouts
give the teacher no correct answer to line up with.
A few supervised steps on worked solutions of a *separate* slice of problems (split ``"warmup"`` of
``opsd.data.synthetic_math``: disjoint from OPSD's training problems and from the held-out ones) give a
model that solves part of the task alone and much more with the reference in view: the analogue of
starting from Qwen3. ``python -m opsd gap`` measures that gap.

The recipe (``WarmStartRecipe``) is a plain PyTorch loop: LoRA on every projection, AdamW, the loss on
the solution tokens only, then the adapters are merged into the weights and the model is saved as an
ordinary safetensors folder under ``$OPSD_CACHE`` (name ``smollm2-135m-opsd-start-<recipe hash>``),
written under a temporary name and renamed, so it is built once per recipe and never half-written.
Deterministic: same recipe, same machine and thread count -> the same weights.

    python -m opsd.baselines.warmstart            # what `make setup` runs; prints the folder
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path

import torch

from opsd.contexts import apply_chat, build_student_messages
from opsd.data import synthetic_math
from opsd.models import (
    DEFAULT_RECIPE,
    START_MODEL_MARKER,
    LoRASettings,
    WarmStartRecipe,
    build_folder,
    load_model_and_tokenizer,
    start_model_folder,
)

logger = logging.getLogger(__name__)


def start_model_dir(recipe: WarmStartRecipe = DEFAULT_RECIPE, *, force: bool = False) -> Path:
    """The cached starting model of ``recipe`` (``opsd.models.start_model_folder``), built if it is not there
    yet or ``force`` (~30 s on 2 CPU cores)."""
    target = start_model_folder(recipe)
    if (target / START_MODEL_MARKER).is_file() and not force:
        return target
    build_folder(target, lambda tmp: build_start_model(recipe, tmp), START_MODEL_MARKER, replace=True)
    logger.info("built the starting model %s", target)
    return target


def sft_batch(tokenizer, problems, solutions, profile: str = "paper") -> dict[str, torch.Tensor]:
    """Chat-formatted [student prompt][solution<eos>] rows, right-padded: input_ids, attention_mask,
    labels [B, T] (labels -100 on the prompt and the padding: the loss is on the solution only)."""
    rows = []
    for problem, solution in zip(problems, solutions, strict=True):
        prompt = apply_chat(tokenizer, build_student_messages(problem, profile))
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        s_ids = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((p_ids, s_ids))
    width = max(len(p) + len(s) for p, s in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, s) in enumerate(rows):
        ids[i, : len(p) + len(s)] = torch.tensor(p + s)
        attn[i, : len(p) + len(s)] = 1
        labels[i, len(p) : len(p) + len(s)] = torch.tensor(s)
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def build_start_model(recipe: WarmStartRecipe, out_dir: str | os.PathLike) -> list[float]:
    """Run the warm-up of ``recipe`` and save the merged model + tokenizer into ``out_dir``.
    Returns the per-step training losses."""
    out_dir = Path(out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model, tokenizer = load_model_and_tokenizer(
            recipe.base_model, lora=LoRASettings(r=recipe.lora_r, alpha=recipe.lora_alpha))
        data = synthetic_math(recipe.n_problems, seed=recipe.seed, split=recipe.split)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.0)
        model.train()
        losses = []
        for step in range(recipe.steps):
            start = step * recipe.batch_size % len(data)
            rows = [data[(start + i) % len(data)] for i in range(recipe.batch_size)]
            batch = sft_batch(tokenizer, [r["problem"] for r in rows], [r["solution"] for r in rows],
                              recipe.prompt_profile)
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            logger.info("warm-up step %d/%d: loss %.4f", step + 1, recipe.steps, losses[-1])
    merged = model.merge_and_unload()
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / START_MODEL_MARKER).write_text(json.dumps({"recipe": dataclasses.asdict(recipe), "losses": losses}, indent=2))
    return losses


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m opsd.baselines.warmstart", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="build again even if the folder exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(start_model_dir(force=args.force))


if __name__ == "__main__":
    main()
