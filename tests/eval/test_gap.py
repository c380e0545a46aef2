"""The privilege gap (opsd.eval.gap) on the embedded model: accuracies with intervals, KL against a float64 reference."""

import json
import subprocess
import sys

import pytest
import torch

from opsd.contexts import build_dual_contexts, join_rollout
from opsd.data import synthetic_math
from opsd.eval.gap import GapReport, controls_table, main, privilege_gap, privilege_gaps
from opsd.eval.stats import proportion
from opsd.rollout import HFRollout, SamplingParams

pytestmark = pytest.mark.slow


def _reference_kl(model, tokenizer, problems, solutions, seed, temperature, top_p, tokens):
    """Mean KL(T||S) per rollout token, recomputed independently in float64."""
    torch.manual_seed(seed)
    ctx = build_dual_contexts(tokenizer, problems, solutions, profile="simple")
    # privilege_gap decodes greedily first (no random numbers drawn), then samples
    rollout = HFRollout(model, tokenizer).generate(
        ctx.student.input_ids, ctx.student.attention_mask,
        SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=tokens))
    joined = join_rollout(ctx, rollout.completion_ids, rollout.completion_mask)
    with torch.no_grad():
        s = joined.rollout_slice(model(**joined.student_inputs()).logits, "student").double()
        with model.disable_adapter():
            t = joined.rollout_slice(model(**joined.teacher_inputs()).logits, "teacher").double()
    log_s, log_t = s.log_softmax(-1), t.log_softmax(-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    mask = joined.loss_mask.bool()
    return float(kl[mask].mean()), int(mask.sum())


def test_privilege_gap_on_the_embedded_model():
    from opsd.models import LoRASettings, load_model_and_tokenizer

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(lora=LoRASettings(r=4, alpha=8))
    data = synthetic_math(4, split="heldout")
    report = privilege_gap(model, tokenizer, data["problem"], data["solution"], data["answer"],
                           prompt_profile="simple", max_new_tokens=24, rollout_tokens=12, batch_size=4, seed=3)
    assert isinstance(report, GapReport) and report.n == 4
    assert report.student.n == report.teacher.n == 4
    assert report.student == proportion(report.student.k, 4)
    assert len(report.student_correct) == len(report.teacher_correct) == 4
    assert sum(report.student_correct) == report.student.k and sum(report.teacher_correct) == report.teacher.k
    assert sum(report.outcome_counts().values()) == 4
    kl, count = _reference_kl(model, tokenizer, data["problem"], data["solution"], seed=3, temperature=0.7,
                              top_p=0.95, tokens=12)
    assert report.rollout_tokens == count and 0 < count <= 4 * 12
    assert report.mean_token_kl == pytest.approx(kl, rel=1e-4, abs=1e-6)
    assert report.mean_token_kl > 0
    assert "self-teacher (reference shown)" in report.summary()

    # several teacher contexts at once share the student's part and give each context's own report
    kwargs = {"prompt_profile": "simple", "max_new_tokens": 24, "rollout_tokens": 12, "batch_size": 4, "seed": 3}
    both = privilege_gaps(model, tokenizer, data["problem"], {"reference": data["solution"], "none": [None] * 4},
                          data["answer"], **kwargs)
    assert both["reference"] == report
    alone = privilege_gap(model, tokenizer, data["problem"], [None] * 4, data["answer"], teacher_context="none",
                          **kwargs)
    assert both["none"] == alone and both["none"].teacher_context == "none"
    assert both["none"].mean_token_kl != report.mean_token_kl


def test_gap_cli_writes_json(tmp_path):
    out = tmp_path / "gap.json"
    proc = subprocess.run(
        [sys.executable, "-m", "opsd", "gap", "--config", "cpu-tiny", "--n", "2", "--json", str(out),
         "max_completion_length=8", "lora_r=4", "lora_alpha=8"],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "privilege gap of smollm2-135m-opsd-start on 2 held-out problems" in proc.stdout
    report = json.loads(out.read_text())
    assert report["n"] == 2 and report["student"]["n"] == 2 and "accuracy_gap" in report


def test_outcome_counts_is_the_per_problem_two_by_two_table():
    report = GapReport(n=5, student=proportion(2, 5), teacher=proportion(3, 5), mean_token_kl=0.1, rollout_tokens=9,
                       student_correct=[True, True, False, False, False],
                       teacher_correct=[True, False, True, True, False])
    assert report.outcome_counts() == {"both right": 1, "teacher only": 2, "student only": 1, "both wrong": 1}
    assert report.as_dict()["teacher_correct"] == [True, False, True, True, False]


def test_controls_table_one_line_per_teacher_context():
    def report(context, k, kl):
        return GapReport(n=8, student=proportion(3, 8), teacher=proportion(k, 8), mean_token_kl=kl, rollout_tokens=40,
                         model="m", teacher_context=context)
    text = controls_table({"reference": report("reference", 7, 0.25), "none": report("none", 3, 0.02)})
    lines = text.splitlines()
    assert lines[0].startswith("privilege gap of m on 8 held-out problems; student (problem only) 3/8")
    assert lines[2].split()[:2] == ["reference", "7/8"] and lines[2].split()[-2:] == ["+50.0", "0.250"]
    assert lines[3].split()[:2] == ["none", "3/8"] and lines[3].split()[-2:] == ["+0.0", "0.020"]
    assert "self-teacher (none shown)" in report("none", 3, 0.02).summary()


def test_gap_cli_rejects_an_unknown_control_before_loading_a_model(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--config", "cpu-tiny", "--controls", "reference,nothing"])
    assert exc.value.code == 2 and "unknown teacher context 'nothing'" in capsys.readouterr().err
