"""opsd/audit.py: the prompt-length audit (`python -m opsd audit-lengths`) on hand-made local data."""

from __future__ import annotations

import json

import pytest

from opsd import audit
from opsd.contexts import build_dual_contexts

PROBLEMS = ["What is 2 + 3?", "Compute 12 + 30.", "Add 7 and 8.", "What is 1 + 1?"]
SOLUTIONS = ["2 + 3 = 5. \\boxed{5}", "12 + 30 = 42. " + "Check the tens again. " * 60 + "\\boxed{42}",
             "7 + 8 = 15. \\boxed{15}", "1 + 1 = 2. \\boxed{2}"]


def test_length_stats_nearest_rank():
    stats = audit.length_stats(range(1, 101))  # 1..100
    assert stats["n"] == 100 and stats["min"] == 1 and stats["max"] == 100 and stats["mean"] == 50.5
    assert (stats["p50"], stats["p90"], stats["p99"], stats["p99.9"]) == (50, 90, 99, 100)
    assert audit.length_stats([7]) == {"n": 1, "min": 7, "mean": 7.0, "p50": 7, "p90": 7, "p99": 7,
                                       "p99.9": 7, "max": 7}
    assert audit.length_stats([]) == {"n": 0}


def test_audit_counts_what_training_builds(embedded_tokenizer):
    tok = embedded_tokenizer
    chat = {"profile": "paper", "student_chat_kwargs": {"enable_thinking": False},
            "teacher_chat_kwargs": {"enable_thinking": True}}
    student, teacher = audit.prompt_lengths(tok, PROBLEMS, SOLUTIONS, chunk=3, **chat)  # chunks of 3 and 1
    ctx = build_dual_contexts(tok, PROBLEMS, SOLUTIONS, **chat)
    assert student == ctx.student.prompt_lengths.tolist() and teacher == ctx.teacher.prompt_lengths.tolist()
    # a budget between the long row's teacher prompt and the others': exactly that row is over
    budget = sorted(teacher)[-2] + 1
    result = audit.audit_lengths(tok, PROBLEMS, SOLUTIONS, max_prompt_length=budget, max_completion_length=64,
                                 row_ids=["a", "b", "c", "d"], longest=2, **chat)
    assert result.n_rows == 4 and result.n_over == 1
    assert result.over == [{"row": "b", "student_tokens": student[1], "teacher_tokens": teacher[1]}]
    assert [r["row"] for r in result.longest] == ["b", sorted(zip(teacher, "abcd"))[-2][1]]
    assert result.teacher["max"] == teacher[1] and result.student["max"] == max(student)
    assert result.required_max_length == teacher[1] + 64
    # with the smallest max_length it reports, nothing overflows (and build_dual_contexts agrees)
    fits = result.required_max_length - 64
    assert audit.audit_lengths(tok, PROBLEMS, SOLUTIONS, max_prompt_length=fits, **chat).n_over == 0
    build_dual_contexts(tok, PROBLEMS, SOLUTIONS, max_prompt_length=fits, **chat)
    # the think opener lengthens the teacher prompts only
    opened = audit.audit_lengths(tok, PROBLEMS, SOLUTIONS, teacher_think_opener=True, **chat)
    assert opened.teacher["min"] > result.teacher["min"] and opened.student == result.student
    text = result.report(show=1)
    assert "rows over the budget: 1 of 4" in text and "row 'b'" in text and str(result.required_max_length) in text
    assert json.loads(json.dumps(result.to_dict()))["n_over"] == 1


def _write_jsonl(path, problems, solutions):
    path.write_text("".join(json.dumps({"problem": p, "solution": s}) + "\n" for p, s in zip(problems, solutions)))
    return path


def test_audit_lengths_command_on_a_local_file(tmp_path, embedded_tokenizer, capsys):
    data = _write_jsonl(tmp_path / "train.jsonl", PROBLEMS, SOLUTIONS)
    longest_teacher = max(audit.prompt_lengths(embedded_tokenizer, PROBLEMS, SOLUTIONS)[1])
    base = ["--config", "cpu-tiny", f"dataset={data}", "max_completion_length=16", "dataset_size=null",
            "prompt_profile=paper"]  # the prompts prompt_lengths builds by default
    # a budget one token short of the longest teacher prompt: exit code 1, the row named, the fix given
    out_json = tmp_path / "audit.json"
    code = audit.main(base + [f"max_length={longest_teacher + 15}", "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert code == 1 and "rows over the budget: 1 of 4" in printed
    assert f"set max_length >= {longest_teacher + 16}" in printed
    saved = json.loads(out_json.read_text())
    assert saved["n_over"] == 1 and saved["required_max_length"] == longest_teacher + 16
    assert saved["profile"]["max_length"] == longest_teacher + 15
    # one more token of budget and the whole file fits
    assert audit.main(base + [f"max_length={longest_teacher + 16}"]) == 0
    assert "rows over the budget: 0 of 4" in capsys.readouterr().out
    # through python -m opsd
    from opsd.__main__ import main as opsd_main

    assert opsd_main(["audit-lengths"] + base + [f"max_length={longest_teacher + 16}", "--limit", "2"]) == 0
    assert "2 rows; prompt tokens per role" in capsys.readouterr().out


def test_audit_rejects_unknown_keys_and_non_training_profiles(capsys):
    assert audit.main(["--config", "cpu-tiny", "learning_rate=1e-4"]) == 2
    assert "unknown audit override" in capsys.readouterr().out
    with pytest.raises(ValueError, match="kind: train"):
        audit.audit_profile("sft-cpu-tiny")


@pytest.mark.parametrize("name", ["qwen3-1.7b-4xh100", "qwen3-4b-8xh100", "qwen3-8b-8xh100",
                                  "qwen3-4b-8xh100-nonthink", "qwen3-8b-8xh100-nonthink"])
def test_paper_profiles_budget_the_reference_prompt_length(name):
    values = audit._profile_values(name, None)
    # the reference runs' 20,000-token budget: teacher prompts up to 20,000 - 1,024 tokens fit
    assert values["max_length"] == 20000 and values["max_length"] - values["max_completion_length"] == 18976
