"""The privilege gap: does OPSD have anything to distil on this model and data?

Measured before training, on N held-out problems of a profile's data, with the training prompts of both
roles (the student's: problem only; the teacher's: problem + reference solution):

    student accuracy    greedy answers from the student prompt, graded
    teacher accuracy    greedy answers from the teacher prompt (the self-teacher of the profile's
                        teacher mode: for ``fixed``, the model with LoRA adapters disabled)
    mean token KL       KL(T || S) per rollout token, on the student's own sampled rollouts (the profile's
                        temperature / top_p / length), temperature-1 logits, averaged over all tokens

A large teacher - student accuracy difference (with intervals that do not overlap) and a clearly non-zero
KL say the privileged context carries information the student lacks: the regime of the paper. Both near
zero say OPSD has nothing to teach. ``teacher_context`` (opsd.privileged) swaps what the teacher reads:
``--controls reference,none,other,wrong`` measures each on the same problems and samples, one table.

    python -m opsd gap --config cpu-tiny [--n 200] [--controls reference,none,other,wrong] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch

from opsd.config import DEFAULT_PROFILE, OPSDConfig, load_config, parse_overrides
from opsd.contexts import build_dual_contexts, join_rollout
from opsd.data import held_out_problems
from opsd.divergence import token_divergence
from opsd.eval.grading import extract_boxed, is_correct
from opsd.eval.stats import Proportion, proportion
from opsd.models import load_model_and_tokenizer
from opsd.privileged import TEACHER_CONTEXTS, privileged_texts
from opsd.rollout import HFRollout, SamplingParams
from opsd.teacher import teacher_context as teacher_weights  # adapters off for the fixed teacher


@dataclass
class GapReport:
    """The numbers of ``privilege_gap``; ``student`` / ``teacher`` are accuracies with 95% intervals,
    ``student_correct`` / ``teacher_correct`` the per-problem grades behind them (problem order)."""

    n: int
    student: Proportion
    teacher: Proportion
    mean_token_kl: float
    rollout_tokens: int
    model: str = ""
    student_correct: list[bool] = field(default_factory=list)
    teacher_correct: list[bool] = field(default_factory=list)
    student_answers: list[str | None] = field(default_factory=list)  # the last \\boxed{} of each answer
    teacher_answers: list[str | None] = field(default_factory=list)
    teacher_context: str = "reference"   # what the teacher read (opsd.privileged.TEACHER_CONTEXTS)

    @property
    def accuracy_gap(self) -> float:
        return self.teacher.value - self.student.value

    def outcome_counts(self) -> dict[str, int]:
        """The per-problem 2x2 table: ``{"both right", "teacher only", "student only", "both wrong"}``.
        "teacher only" (teacher right, student wrong) is what OPSD can teach; "student only" is what the
        privileged context costs."""
        pairs = list(zip(self.student_correct, self.teacher_correct))
        return {"both right": sum(s and t for s, t in pairs), "teacher only": sum(t and not s for s, t in pairs),
                "student only": sum(s and not t for s, t in pairs),
                "both wrong": sum(not s and not t for s, t in pairs)}

    def as_dict(self) -> dict:
        return asdict(self) | {"accuracy_gap": self.accuracy_gap}

    def summary(self) -> str:
        return (f"privilege gap of {self.model or 'the model'} on {self.n} held-out problems:\n"
                f"  student (problem only)          {self.student}\n"
                f"  {f'self-teacher ({self.teacher_context} shown)':<31} {self.teacher}\n"
                f"  mean per-token KL(T||S) on the student's own samples: {self.mean_token_kl:.3f} "
                f"({self.rollout_tokens} tokens)")


def _greedy_answers(model, tokenizer, prompts_ids, prompts_mask, max_new_tokens: int) -> list[str]:
    params = SamplingParams(max_new_tokens=max_new_tokens, greedy=True)
    rollout = HFRollout(model, tokenizer).generate(prompts_ids, prompts_mask, params)
    return [tokenizer.decode(ids[m].tolist(), skip_special_tokens=True)
            for ids, m in zip(rollout.completion_ids, rollout.completion_mask.bool())]


def privilege_gap(model, tokenizer, problems: Sequence[str], solutions: Sequence[str | None], answers: Sequence[str], *,
                  teacher_context: str = "reference", **kwargs) -> GapReport:
    """Student and self-teacher greedy accuracy (with 95% Wilson intervals) and the mean per-token
    KL(T||S) on the student's own samples; see the module docstring. ``solutions``: what the teacher
    reads, one per problem (None: no reference block), labelled ``teacher_context`` in the report; the
    other keywords as ``privilege_gaps``."""
    return privilege_gaps(model, tokenizer, problems, {teacher_context: solutions}, answers, **kwargs)[teacher_context]


def privilege_gaps(model, tokenizer, problems: Sequence[str], solutions: Mapping[str, Sequence[str | None]],
                   answers: Sequence[str], *, prompt_profile: str = "paper", student_chat_kwargs: dict | None = None,
                   teacher_chat_kwargs: dict | None = None, teacher_mode: str = "fixed",
                   max_new_tokens: int = 96, temperature: float = 0.7, top_p: float = 0.95,
                   rollout_tokens: int = 64, batch_size: int = 32, seed: int = 0, model_name: str = "",
                   progress=None) -> dict[str, GapReport]:
    """``privilege_gap`` for each teacher context in ``solutions`` ({context: one text per problem}), on the
    same problems: the student's part (greedy answers, sampled rollouts, scores) is computed once and
    shared, so each report equals the one ``privilege_gap`` gives for that context alone.
    ``progress(done, total)`` is called after each batch."""
    n = len(problems)
    contexts = list(solutions)
    correct = {c: [] for c in ["student", *contexts]}
    boxed: dict[str, list[str | None]] = {c: [] for c in ["student", *contexts]}
    kl_sum, kl_count = dict.fromkeys(contexts, 0.0), 0
    sampling = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=rollout_tokens)
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    try:
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            ctx = {c: build_dual_contexts(tokenizer, problems[sl], solutions[c][sl], profile=prompt_profile,
                                          student_chat_kwargs=student_chat_kwargs,
                                          teacher_chat_kwargs=teacher_chat_kwargs) for c in contexts}
            first = ctx[contexts[0]]
            with torch.no_grad():
                for role, batch in [("student", first.student)] + [(c, ctx[c].teacher) for c in contexts]:
                    with teacher_weights(model, teacher_mode) if role != "student" else nullcontext():
                        texts = _greedy_answers(model, tokenizer, batch.input_ids, batch.attention_mask,
                                                max_new_tokens)
                    boxed[role] += [extract_boxed(t) for t in texts]
                    correct[role] += [bool(is_correct(b, a)) for b, a in zip(boxed[role][start:], answers[sl])]
                rollout = HFRollout(model, tokenizer).generate(first.student.input_ids, first.student.attention_mask,
                                                               sampling)
                joined = {c: join_rollout(ctx[c], rollout.completion_ids, rollout.completion_mask) for c in contexts}
                base = joined[contexts[0]]  # the student's columns are the same in every context's batch
                width = base.completion_length
                student = base.rollout_slice(model(**base.student_inputs(), logits_to_keep=width + 1).logits,
                                             "student")
                mask = base.loss_mask.bool()
                for c in contexts:
                    with teacher_weights(model, teacher_mode):
                        teacher = joined[c].rollout_slice(
                            model(**joined[c].teacher_inputs(), logits_to_keep=width + 1).logits, "teacher")
                    kl = token_divergence(student.float(), teacher.float(), beta=0.0, temperature=1.0)
                    kl_sum[c] += float(kl[mask].sum())
                kl_count += int(mask.sum())
            if progress is not None:
                progress(min(start + batch_size, n), n)
    finally:
        model.train(was_training)
    student_accuracy = proportion(sum(correct["student"]), n)
    return {c: GapReport(n=n, student=student_accuracy, teacher=proportion(sum(correct[c]), n),
                         mean_token_kl=kl_sum[c] / max(kl_count, 1), rollout_tokens=kl_count, model=model_name,
                         student_correct=correct["student"], teacher_correct=correct[c],
                         student_answers=boxed["student"], teacher_answers=boxed[c], teacher_context=c)
            for c in contexts}


def gap_for_config(config, n: int = 200, *, model=None, tokenizer=None, progress=None,
                   teacher_context: str | None = None) -> GapReport:
    """``privilege_gap`` on ``n`` held-out problems of ``config``'s data (synthetic: the held-out split,
    with the training set's reference style), with the config's prompts, teacher mode and sampling, and
    the teacher reading ``teacher_context`` (None: the config's; ``other`` draws among these problems)."""
    context = config.teacher_context if teacher_context is None else teacher_context
    return controls_for_config(config, n, [context], model=model, tokenizer=tokenizer, progress=progress)[context]


def controls_for_config(config, n: int = 200, contexts: Sequence[str] = TEACHER_CONTEXTS, *, model=None,
                        tokenizer=None, progress=None) -> dict[str, GapReport]:
    """``gap_for_config`` for each teacher context in ``contexts``, the student's part computed once
    (``privilege_gaps``): {context: report}, on the same problems, rollouts and seed."""
    if model is None:
        model, tokenizer = load_model_and_tokenizer(config.model_name, dtype=config.torch_dtype,
                                                    lora=config.lora_settings())
    data = held_out_problems(config.dataset, n=n, seed=config.seed)
    solutions = {c: privileged_texts(data["solution"], c, answers=data["answer"], seed=config.seed) for c in contexts}
    return privilege_gaps(
        model, tokenizer, list(data["problem"]), solutions, list(data["answer"]),
        prompt_profile=config.prompt_profile, student_chat_kwargs=config.student_chat_kwargs,
        teacher_chat_kwargs=config.teacher_chat_kwargs, teacher_mode=config.teacher_mode,
        temperature=config.temperature, top_p=config.top_p, rollout_tokens=config.max_completion_length,
        seed=config.seed, model_name=config.model_name, progress=progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m opsd gap --config PROFILE [--n N] [--json PATH] [key=value ...]`."""
    parser = argparse.ArgumentParser(prog="python -m opsd gap", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_PROFILE, help="training profile name or YAML path")
    parser.add_argument("--n", type=int, default=200, help="held-out problems (default 200)")
    parser.add_argument("--json", default=None, help="also write the report(s) to this JSON file")
    parser.add_argument("--controls", default=None,
                        help=f"comma-separated teacher contexts to compare on the same problems ({','.join(TEACHER_CONTEXTS)})")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the profile, e.g. model_name=...")
    ns = parser.parse_args(argv)
    if ns.n < 1:
        parser.error(f"--n must be >= 1, got {ns.n}")
    config = load_config(OPSDConfig, ns.config, parse_overrides(ns.overrides), output_dir="runs/gap", report_to="none")
    if ns.controls is None:
        report = gap_for_config(config, ns.n)
        print(report.summary())
        out = report.as_dict()
    else:
        controls = [c.strip() for c in ns.controls.split(",") if c.strip()]
        for c in controls:
            if c not in TEACHER_CONTEXTS:
                parser.error(f"--controls: unknown teacher context {c!r}; valid: {','.join(TEACHER_CONTEXTS)}")
        reports = controls_for_config(config, ns.n, controls)
        print(controls_table(reports))
        out = {c: r.as_dict() for c, r in reports.items()}
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


def controls_table(reports: dict[str, GapReport]) -> str:
    """One line per teacher context: teacher accuracy with its interval, the gap to the student, the KL."""
    first = next(iter(reports.values()))
    lines = [(f"privilege gap of {first.model or 'the model'} on {first.n} held-out problems; "
              f"student (problem only) {first.student}"),
             f"  {'teacher reads':<14} {'teacher accuracy':<28} {'gap':>7}  {'KL(T||S)/token':>14}"]
    for context, r in reports.items():
        lines.append(f"  {context:<14} {r.teacher!s:<28} {100 * r.accuracy_gap:+6.1f}  {r.mean_token_kl:14.3f}")
    return "\n".join(lines)
