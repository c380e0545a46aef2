"""What the reference trainer's position layout does to the scores, the loss and its gradient (issue 24).

    python -m benchmarks.layout              # cpu-tiny's starting model, 4 problems, greedy 48-token rollouts
                                             # (~11 CPU-minutes; the table in reproduce/REPRODUCING.md)

Layouts (`opsd.contexts.POSITION_LAYOUTS`): ``kit`` left-pads each role's prompts and numbers attended
tokens only, so a rollout token sits at the position it was sampled at; ``reference`` right-pads them and
passes no position ids, so in a row whose prompt is shorter than the widest of its micro-batch by g tokens
the rollout starts g positions later than when it was sampled, and its first token is predicted from a pad
column. The teacher's prompts differ by their reference solutions' lengths, hence the large gaps.

Setup: the `cpu-tiny` profile's starting model with its LoRA (B = 0, so student and fixed teacher have the
same weights, as at step 1), 4 synthetic training problems with the profile's prompts, one greedy rollout
of at most 48 tokens each (sampled once, from the left-padded student prompts: the same for every case).
For each case the reference solution of row 0 is lengthened by `extra` tokens (the solution repeated), which
opens a teacher gap for rows 1-3; both roles are then scored in both layouts. Printed:

  distributions  per-token KL(kit || reference) of the teacher's next-token distributions (temperature 1)
                 on rows 1-3: at the first rollout token, and the mean over the others; the same for the
                 student (its gaps come from problem lengths only); for scale, the teacher-student
                 forward KL(T || S) in the kit layout.
  loss, gradient the OPSD loss in each layout and the LoRA gradient's cosine and relative difference
                 ||g_ref - g_kit|| / ||g_kit||, for cpu-tiny's objective (forward KL at 0.7, no clip) and
                 the paper's (forward KL at 1.1, point-wise clip 0.05).
"""

from __future__ import annotations

import argparse
import time

import torch

from opsd.config import OPSDConfig, load_config
from opsd.contexts import build_dual_contexts, join_rollout
from opsd.data import synthetic_math
from opsd.divergence import distillation_loss
from opsd.models import load_model_and_tokenizer
from opsd.rollout import HFRollout, SamplingParams
from opsd.step import score_rollout, teacher_scores

EXTRA_TOKENS = (0, 50, 700, 2100)
OBJECTIVES = {
    "cpu-tiny": {"temperature": 0.7, "clip": None},
    "paper": {"temperature": 1.1, "clip": 0.05, "clip_mode": "pointwise"},
}


def lengthened(solution: str, tokenizer, extra: int) -> str:
    """`solution` followed by copies of itself until it is at least `extra` tokens longer."""
    if extra == 0:
        return solution
    own = len(tokenizer(solution, add_special_tokens=False)["input_ids"])
    text = solution
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < own + extra:
        text += "\n" + solution
    return text


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per-position KL(p || q) at temperature 1: [..., V] x 2 -> [...]."""
    p, q = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1)


def first_and_rest(values: torch.Tensor, mask: torch.Tensor, rows: list[int]) -> tuple[float, float]:
    """Mean of values [B, N] at the first rollout token, and over the other masked tokens, of `rows`."""
    first = values[rows, 0].mean().item()
    rest = values[rows, 1:][mask[rows, 1:]].mean().item()
    return first, rest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.layout", description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=48, help="greedy rollout tokens")
    ns = parser.parse_args(argv)
    start = time.perf_counter()
    config = load_config(OPSDConfig, "cpu-tiny", {"report_to": "none"})
    model, tok = load_model_and_tokenizer(config.model_name, lora=config.lora_settings())
    rows = synthetic_math(ns.problems, seed=0)
    prompt = {k: v for k, v in config.context_kwargs().items() if k not in ("max_prompt_length", "position_layout")}
    base = build_dual_contexts(tok, rows["problem"], rows["solution"], **prompt)
    rollout = HFRollout(model, tok, fast=False).generate(
        base.student.input_ids, base.student.attention_mask, SamplingParams(greedy=True, max_new_tokens=ns.tokens))
    ids, mask = rollout.completion_ids, rollout.completion_mask
    params = [p for p in model.parameters() if p.requires_grad]
    others = list(range(1, ns.problems))
    print(f"{config.model_name}, prompt profile {config.prompt_profile}, {ns.problems} problems, greedy rollouts of "
          f"{mask.sum(-1).tolist()} tokens; rows 1-{ns.problems - 1} measured (row 0's reference is lengthened)")

    dist_lines, loss_lines = [], []
    for extra in EXTRA_TOKENS:
        solutions = [lengthened(rows["solution"][0], tok, extra)] + list(rows["solution"][1:])
        scored = {}
        for layout in ("kit", "reference"):
            ctx = build_dual_contexts(tok, rows["problem"], solutions, position_layout=layout, **prompt)
            batch = join_rollout(ctx, ids, mask)
            teacher = teacher_scores(model, batch, config.teacher_mode)
            student = score_rollout(model, batch, "student")
            grads = {}
            for name, objective in OBJECTIVES.items():
                loss = distillation_loss(student, teacher, batch.loss_mask, beta=0.0, **objective)
                grads[name] = (loss.item(), torch.cat([g.flatten() for g in
                                                       torch.autograd.grad(loss, params, retain_graph=True)]))
            scored[layout] = (ctx, teacher.detach(), student.detach(), grads)
        ctx = scored["kit"][0]
        t_gap = (ctx.teacher.width - ctx.teacher.prompt_lengths[others]).float()
        s_gap = (ctx.student.width - ctx.student.prompt_lengths[others]).float()
        t_first, t_rest = first_and_rest(kl(scored["kit"][1], scored["reference"][1]), mask, others)
        s_first, s_rest = first_and_rest(kl(scored["kit"][2], scored["reference"][2]), mask, others)
        ts = kl(scored["kit"][1], scored["kit"][2])[mask].mean().item()
        dist_lines.append(f"| {extra:>5} | {t_gap.min():.0f}-{t_gap.max():.0f} | {t_first:.2f} | {t_rest:.3f} | "
                          f"{s_gap.min():.0f}-{s_gap.max():.0f} | {s_first:.2f} | {s_rest:.3f} | {ts:.3f} |")
        for name in OBJECTIVES:
            (l_kit, g_kit), (l_ref, g_ref) = scored["kit"][3][name], scored["reference"][3][name]
            cosine = torch.nn.functional.cosine_similarity(g_kit, g_ref, dim=0).item()
            rel = ((g_ref - g_kit).norm() / g_kit.norm()).item()
            loss_lines.append(f"| {extra:>5} | {name} | {l_kit:.4f} | {l_ref:.4f} | {100 * (l_ref - l_kit) / l_kit:+.1f}% | "
                              f"{cosine:.3f} | {rel:.2f} |")
        print(f"extra {extra}: done ({time.perf_counter() - start:.0f} s)", flush=True)

    print("\n| extra reference tokens | teacher gap (positions) | teacher KL(kit||ref), first token | ... other tokens "
          "| student gap | student KL, first token | ... other tokens | teacher-student KL(T||S), kit |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(dist_lines))
    print("\n| extra reference tokens | objective | loss, kit | loss, reference | difference | gradient cosine "
          "| ||g_ref - g_kit|| / ||g_kit|| |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    print("\n".join(loss_lines))
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
