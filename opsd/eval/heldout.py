"""The held-out check of ``reproduce/train.ipynb`` (what ``make demo`` reports): greedy accuracy on held-out
synthetic problems before and after training, written to the run's ``heldout_accuracy.json``.

``heldout_check`` measures the model once: ``opsd.eval.evaluate.heldout_accuracy`` on ``synthetic`` (the
wording training uses) and ``synthetic-paraphrased`` (the same problems in wordings it never uses).
``heldout_before_after`` sets the two measurements side by side (95% Wilson intervals; *separated* when
they do not overlap) and writes the file (``opsd.runs.layout.write_heldout_accuracy``).
``agreement_with_heldout`` compares an evaluation's step 0 and last step with it (``reproduce/eval.ipynb``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from opsd.eval.evaluate import heldout_accuracy
from opsd.eval.stats import accuracy_text, proportion
from opsd.runs.layout import write_heldout_accuracy
from opsd.runs.progress import batch_printer

#: The benchmarks of the check: the training wording, then the paraphrased one.
HELDOUT_BENCHMARKS = ("synthetic", "synthetic-paraphrased")
#: Problems per generate call.
HELDOUT_BATCH_SIZE = 64


def heldout_check(trainer, config, when: str, *, n: int, paraphrased: bool = True,
                  max_new_tokens: int | None = None) -> dict[str, dict] | None:
    """Greedy accuracy of ``trainer.model`` on the first `n` held-out problems of each benchmark:
    ``{benchmark: heldout_accuracy result}`` (``n``, ``correct``, ``accuracy``, ``interval``, ...), one line
    printed per benchmark, labelled `when` ("before", "after"). The evaluation prompt, the student's chat
    setting, `max_new_tokens` new tokens (None: ``config.max_completion_length``); `paraphrased` False:
    ``synthetic`` only. None, measuring nothing, when `n` is 0, the run is not trained on synthetic data, or
    `trainer` is None (training in other processes)."""
    if trainer is None or n <= 0 or not config.dataset.startswith("synthetic"):
        return None
    results = {}
    for name in HELDOUT_BENCHMARKS[: 2 if paraphrased else 1]:
        results[name] = heldout_accuracy(
            trainer.model, trainer.tokenizer, n=n, max_new_tokens=max_new_tokens or config.max_completion_length,
            batch_size=HELDOUT_BATCH_SIZE, chat_kwargs=config.student_chat_kwargs, benchmark=name,
            progress=batch_printer(f"{when}: {name}"))
        print(f"{when} | {name:22s} {accuracy_text(results[name])}  (boxed answers: {results[name]['boxed_rate']:.0%})")
    return results


def before_after_lines(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    """One line per benchmark: the accuracy before and after with 95% intervals, the change in points, and
    whether the intervals are separated."""
    lines = []
    for name in before:
        b = proportion(before[name]["correct"], before[name]["n"])
        a = proportion(after[name]["correct"], after[name]["n"])
        verdict = "separated" if not a.overlaps(b) else "intervals overlap"
        lines.append(f"{name:22s} before {b}  ->  after {a}   {100 * (a.value - b.value):+.1f} points ({verdict})")
    return lines


def heldout_before_after(run_dir: str | Path, before: dict | None, after: dict | None, *, profile: str,
                         model_name: str, steps: int | None, train_seconds: float, gap=None) -> dict:
    """The run's summary ``{profile, model_name, steps, train_seconds, gap, before, after}`` (``gap``:
    ``opsd.eval.gap.PrivilegeGap.as_dict``, None without one). Prints the gap and `before_after_lines`; when
    both checks ran (`heldout_check` results, not None), writes the summary to ``run_dir/heldout_accuracy.json``."""
    summary = {"profile": profile, "model_name": model_name, "steps": steps, "train_seconds": round(train_seconds, 1),
               "gap": gap.as_dict() if gap else None, "before": before, "after": after}
    if gap:
        print(f"privilege gap before training: student {gap.student}  |  self-teacher {gap.teacher}  |  "
              f"KL {gap.mean_token_kl:.3f}")
    if before is not None and after is not None:
        print("\n".join(before_after_lines(before, after)))
        write_heldout_accuracy(run_dir, summary)
    return summary


def agreement_with_heldout(results: Sequence[dict], heldout: dict, benchmarks: Sequence[str]) -> list[str]:
    """An evaluation's step 0 and the run's last step (`results`: ``opsd.runs.eval_results.load_eval_results``
    records) beside `heldout` (``heldout_accuracy.json``) "before" and "after", one line per benchmark and
    step found in both: ``(the same)`` when greedy (k 1) with the same correct count of the same problems."""
    lines = []
    for name in benchmarks:
        for when, step in (("before", 0), ("after", heldout.get("steps"))):
            ours = next((r for r in results if r["benchmark"] == name and r["step"] == step), None)
            theirs = (heldout.get(when) or {}).get(name)
            if ours is None or theirs is None:
                continue
            s = ours["summary"]
            here = proportion(round(s["avg_at_k"] * s["n_samples"]), s["n_samples"])
            same = (here.k, here.n) == (theirs["correct"], theirs["n"]) and ours["k"] == 1
            lines.append(f"{name:22s} step {step:3d}: this evaluation {here}  |  heldout_accuracy.json {when} "
                         f"{proportion(theirs['correct'], theirs['n'])}  "
                         f"({'the same' if same else 'different settings or results'})")
    return lines
