"""Dual contexts: prompt wording, chat templates per role, padding, truncation audit, rollout joining."""

from __future__ import annotations

import pytest
import torch

from opsd.config import OPSDConfig, load_config
from opsd.contexts import (
    BOXED_INSTRUCTION,
    DEFAULT_EVAL_PROMPT,
    EVAL_PROMPT_PROFILES,
    PAPER_TRANSITION,
    POSITION_LAYOUTS,
    PROMPT_PROFILES,
    THINK_OPENER,
    DualContexts,
    PromptTooLongError,
    RoleBatch,
    apply_chat,
    audit_prompt_lengths,
    build_dual_contexts,
    build_eval_messages,
    build_student_messages,
    build_teacher_messages,
    join_rollout,
    legacy_student_text,
    read_wording,
    with_think_opener,
)
from opsd.rollout import completion_mask_from_eos
from opsd.validation import InputError

PROBLEMS = ["What is 2 + 3?", "Compute 12 + 30, then add {x}."]
SOLUTIONS = ["2 + 3 = 5. The answer is \\boxed{5}.", "12 + 30 = 42. \\boxed{42}"]


def test_paper_profile_wording():
    student = build_student_messages("P?", "paper")
    assert student == [{"role": "user", "content": "Problem: P?\n\nPlease reason step by step, and put your final answer within \\boxed{}."}]
    teacher = build_teacher_messages("P?", "SOL", "paper")[0]["content"]
    # the layout, pinned: problem / reference block / THREE newlines / one paragraph / blank line / instruction
    head = ("Problem: P?\n\nHere is a reference solution to this problem:\n=== Reference Solution Begin ===\n"
            "SOL\n=== Reference Solution End ===\n\n\n")
    tail = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert teacher.startswith(head) and teacher.endswith(tail)
    paragraph = teacher[len(head):-len(tail)]
    assert paragraph == PAPER_TRANSITION and paragraph.strip() == paragraph and "\n" not in paragraph
    # the intent: understand the reference, do not copy it, explore other approaches, backtrack freely
    for word in ("understand", "copy", "paraphrase", "own words", "approaches", "backtrack", "same final answer"):
        assert word in paragraph, word
    assert set(PROMPT_PROFILES) >= {"paper", "simple", "plain"}
    # the baselines' prompt has no "Problem: " prefix; the OPSD student's keeps it
    assert build_student_messages("P?", "plain")[0]["content"] == "P?\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    # braces in the problem survive formatting
    assert "{x}" in build_student_messages(PROBLEMS[1])[0]["content"]


def test_eval_prompt_is_the_reference_form_by_default():
    instruction = "Please reason step by step, and put your final answer within \\boxed{}."
    assert DEFAULT_EVAL_PROMPT == "reference"
    msgs = build_eval_messages("Find $x$ if {x} + 1 = 3.")
    # the problem text itself, one blank line, the instruction: no "Problem: " prefix, nothing else
    assert msgs == [{"role": "user", "content": "Find $x$ if {x} + 1 = 3.\n\n" + instruction}]
    assert build_eval_messages("P?", "reference")[0]["content"] == "P?\n\n" + instruction
    # the training prompts keep their prefix; the evaluation prompt is not the student prompt
    assert build_student_messages("P?", "paper")[0]["content"].startswith("Problem: P?")
    assert build_eval_messages("P?", "student") == build_student_messages("P?", "paper")
    assert set(EVAL_PROMPT_PROFILES) == {"reference", "student"}
    with pytest.raises(ValueError, match="valid evaluation prompts"):
        build_eval_messages("P?", "paper")


def test_unknown_profile_lists_valid():
    with pytest.raises(ValueError, match="valid profiles"):
        build_student_messages("x", "nope")


def test_dual_contexts_left_padded_and_aligned(embedded_tokenizer):
    tok = embedded_tokenizer
    ctx = build_dual_contexts(tok, PROBLEMS, SOLUTIONS)
    for role in (ctx.student, ctx.teacher):
        assert role.input_ids.shape == role.attention_mask.shape
        assert (role.attention_mask[:, -1] == 1).all()  # left padding: last column is real for every row
        assert torch.equal(role.attention_mask.sum(-1), role.prompt_lengths)
        for row, text in enumerate(role.texts):
            real = role.input_ids[row][role.attention_mask[row].bool()].tolist()
            assert real == tok(text, add_special_tokens=False)["input_ids"]
    assert ctx.teacher.width > ctx.student.width
    assert "Reference Solution Begin" in ctx.teacher.texts[0] and "Reference Solution" not in ctx.student.texts[0]
    assert ctx.student.texts[0].rstrip().endswith("<|im_start|>assistant")


def test_chat_kwargs_reach_the_template_separately():
    class RecordingTokenizer:
        def __init__(self):
            self.calls = []

        def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kwargs):
            self.calls.append(kwargs)
            return "T:" + messages[0]["content"]

    tok = RecordingTokenizer()
    apply_chat(tok, build_student_messages("x"), {"enable_thinking": False})
    apply_chat(tok, build_teacher_messages("x", "y"), {"enable_thinking": True})
    assert tok.calls == [{"enable_thinking": False}, {"enable_thinking": True}]


def test_teacher_think_opener_is_off_by_default_and_appends_once(embedded_tokenizer):
    tok = embedded_tokenizer
    plain = build_dual_contexts(tok, PROBLEMS, SOLUTIONS)
    opened = build_dual_contexts(tok, PROBLEMS, SOLUTIONS, teacher_think_opener=True)
    assert THINK_OPENER == "<think>\n"
    assert all(not t.endswith(THINK_OPENER) for t in plain.teacher.texts)
    assert opened.teacher.texts == [t + THINK_OPENER for t in plain.teacher.texts]
    assert opened.student.texts == plain.student.texts  # only the teacher changes
    extra = len(tok(THINK_OPENER, add_special_tokens=False)["input_ids"])
    assert torch.equal(opened.teacher.prompt_lengths, plain.teacher.prompt_lengths + extra)
    assert opened.teacher.input_ids[0, -extra:].tolist() == tok(THINK_OPENER, add_special_tokens=False)["input_ids"]
    # a prompt that already ends with the opener is left as it is
    assert with_think_opener("x<think>\n") == "x<think>\n" and with_think_opener("x") == "x<think>\n"
    audit = audit_prompt_lengths(tok, PROBLEMS, SOLUTIONS, teacher_think_opener=True)
    assert [a["teacher_tokens"] for a in audit] == opened.teacher.prompt_lengths.tolist()


def test_legacy_mismatch_student_has_no_control_tokens(embedded_tokenizer):
    tok = embedded_tokenizer
    fixed = build_dual_contexts(tok, PROBLEMS, SOLUTIONS)
    legacy = build_dual_contexts(tok, PROBLEMS, SOLUTIONS, legacy_mismatch=True)
    assert "<|im_start|>" in fixed.student.texts[0]
    assert "<|im_start|>" not in legacy.student.texts[0] and "Problem: What is 2 + 3?" in legacy.student.texts[0]
    assert legacy.student.texts[0] == legacy_student_text(tok, build_student_messages(PROBLEMS[0]))
    assert legacy.teacher.texts == fixed.teacher.texts  # only the student changes


def test_no_silent_truncation(embedded_tokenizer):
    tok = embedded_tokenizer
    long_problem = "add " * 400
    with pytest.raises(PromptTooLongError, match=r"row 'long'.*max_prompt_length is 200"):
        build_dual_contexts(tok, [PROBLEMS[0], long_problem], SOLUTIONS, max_prompt_length=200, row_ids=["short", "long"])
    dropped = build_dual_contexts(tok, [PROBLEMS[0], long_problem], SOLUTIONS, max_prompt_length=200, on_overflow="drop")
    assert dropped.kept_rows == [0] and dropped.dropped_rows == [1]
    audit = audit_prompt_lengths(tok, [PROBLEMS[0], long_problem], SOLUTIONS, max_prompt_length=200)
    assert [a["too_long"] for a in audit] == [False, True]
    assert audit[1]["teacher_tokens"] > audit[1]["student_tokens"] > 400


def test_join_rollout_masks_prompt_padding_and_after_eos(embedded_tokenizer):
    tok = embedded_tokenizer
    eos = tok.eos_token_id
    assert tok.pad_token_id == eos  # SmolLM2: the mask must not rely on pad != eos
    ctx = build_dual_contexts(tok, PROBLEMS, SOLUTIONS)
    completion = torch.tensor([[100, 101, eos, eos, eos], [102, 103, 104, 105, 106]])
    mask = completion_mask_from_eos(completion, [eos])
    assert mask.tolist() == [[True, True, True, False, False], [True] * 5]
    joined = join_rollout(ctx, completion, mask)
    ps, pt = ctx.student.width, ctx.teacher.width
    assert torch.equal(joined.student_input_ids[:, ps:], completion)
    assert torch.equal(joined.teacher_input_ids[:, pt:], completion)
    assert torch.equal(joined.loss_mask, mask)
    assert joined.student_attention_mask[0, ps + 3:].sum() == 0  # after-eos padding not attended
    # positions count only real tokens: the first rollout token sits right after each row's prompt
    for row in range(2):
        assert joined.student_position_ids[row, ps] == ctx.student.prompt_lengths[row]
        assert joined.teacher_position_ids[row, pt] == ctx.teacher.prompt_lengths[row]
    # logits slicing: column P-1+n predicts rollout token n
    logits = torch.arange(joined.student_input_ids.shape[1]).view(1, -1, 1).float().expand(2, -1, 3)
    sliced = joined.rollout_slice(logits, "student")
    assert sliced.shape == (2, 5, 3) and sliced[0, 0, 0] == ps - 1
    assert torch.equal(joined.rollout_slice(logits[:, -6:], "student"), sliced)  # logits_to_keep = N + 1


def test_join_rollout_with_repeated_contexts(embedded_tokenizer):
    ctx = build_dual_contexts(embedded_tokenizer, PROBLEMS, SOLUTIONS).repeat_interleave(3)
    assert len(ctx) == 6 and ctx.kept_rows == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="rollouts for"):
        join_rollout(build_dual_contexts(embedded_tokenizer, PROBLEMS, SOLUTIONS), torch.zeros(6, 2, dtype=torch.long), torch.ones(6, 2, dtype=torch.bool))


# ------------------------------------------------------------------------------------------ position layouts

PAD = 0


def hand_contexts(layout: str) -> DualContexts:
    """Two rows by hand, left-padded with pad id 0: student prompts [11 12 13] and [21]; teacher prompts
    [31 32] and [41 42 43 44]."""
    student = RoleBatch(torch.tensor([[11, 12, 13], [PAD, PAD, 21]]), torch.tensor([[1, 1, 1], [0, 0, 1]]),
                        torch.tensor([3, 1]), ["s0", "s1"])
    teacher = RoleBatch(torch.tensor([[PAD, PAD, 31, 32], [41, 42, 43, 44]]), torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
                        torch.tensor([2, 4]), ["t0", "t1"])
    return DualContexts(student, teacher, [0, 1], position_layout=layout)


COMPLETION = torch.tensor([[7, 8, PAD], [9, 10, 11]])
COMPLETION_MASK = torch.tensor([[True, True, False], [True, True, True]])


def test_reference_layout_right_pads_each_prompt_and_passes_no_positions():
    assert POSITION_LAYOUTS == ("kit", "reference")
    ref = join_rollout(hand_contexts("reference"), COMPLETION, COMPLETION_MASK)
    assert ref.position_layout == "reference"
    assert ref.student_input_ids.tolist() == [[11, 12, 13, 7, 8, PAD], [21, PAD, PAD, 9, 10, 11]]
    assert ref.student_attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [1, 0, 0, 1, 1, 1]]
    assert ref.teacher_input_ids.tolist() == [[31, 32, PAD, PAD, 7, 8, PAD], [41, 42, 43, 44, 9, 10, 11]]
    assert ref.teacher_attention_mask.tolist() == [[1, 1, 0, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]]
    assert ref.student_position_ids is None and ref.teacher_position_ids is None
    assert set(ref.student_inputs()) == set(ref.teacher_inputs()) == {"input_ids", "attention_mask"}
    assert torch.equal(ref.loss_mask, COMPLETION_MASK)
    # the kit's layout of the same rows: left padding, positions over attended tokens only
    kit = join_rollout(hand_contexts("kit"), COMPLETION, COMPLETION_MASK)
    assert kit.student_input_ids.tolist() == [[11, 12, 13, 7, 8, PAD], [PAD, PAD, 21, 9, 10, 11]]
    assert kit.student_inputs()["position_ids"].tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]
    assert kit.teacher_inputs()["position_ids"][0].tolist() == [0, 0, 0, 1, 2, 3, 3]
    # the rollout slice: in both layouts the logits at column P_role - 1 + n predict rollout token n
    for batch in (ref, kit):
        for role, width in (("student", 3), ("teacher", 4)):
            ids = batch.student_input_ids if role == "student" else batch.teacher_input_ids
            logits = torch.arange(ids.shape[1]).view(1, -1, 1).float().expand(2, -1, 5)  # logit = its column
            sliced = batch.rollout_slice(logits, role)
            assert sliced[..., 0].tolist() == [[width - 1, width, width + 1]] * 2
            assert torch.equal(batch.rollout_slice(logits[:, -4:], role), sliced)  # logits_to_keep = N + 1
            assert torch.equal(ids[:, width:], COMPLETION)  # ... and column P_role + n holds token n
    # reference layout: a row shorter than the role's widest prompt predicts its first rollout token from a pad
    assert ref.student_attention_mask[1, 2] == 0 and ref.teacher_attention_mask[0, 3] == 0
    moved = ref.to("cpu")
    assert moved.student_position_ids is None and moved.position_layout == "reference"


def test_position_layout_is_kept_from_contexts_to_batch(embedded_tokenizer):
    ctx = build_dual_contexts(embedded_tokenizer, PROBLEMS, SOLUTIONS, position_layout="reference")
    assert ctx.position_layout == "reference" and ctx.repeat_interleave(2).position_layout == "reference"
    assert (ctx.student.attention_mask[:, -1] == 1).all()  # rollouts are still sampled from left-padded prompts
    with pytest.raises(ValueError, match=r"position_layout='right': must be one of \['kit', 'reference'\]"):
        build_dual_contexts(embedded_tokenizer, PROBLEMS, SOLUTIONS, position_layout="right")


def test_reference_layout_changes_only_the_rows_shorter_than_the_widest(embedded_model):
    """On the embedded model: the row with the widest teacher prompt is scored alike in both layouts (no pad
    before its rollout); the other row's teacher distributions move (its rollout starts after a gap)."""
    model, tok = embedded_model
    model.eval()
    ctx = build_dual_contexts(tok, PROBLEMS, [SOLUTIONS[0], SOLUTIONS[1] + " Check: 42 - 30 = 12." * 4])
    widest = int(ctx.teacher.prompt_lengths.argmax())
    assert ctx.teacher.prompt_lengths[1 - widest] < ctx.teacher.width
    rollout = tok(" The answer is \\boxed{5}.", add_special_tokens=False)["input_ids"]
    completion = torch.tensor([rollout, rollout])
    mask = torch.ones_like(completion, dtype=torch.bool)
    scores = {}
    for layout in POSITION_LAYOUTS:
        ctx.position_layout = layout
        batch = join_rollout(ctx, completion, mask)
        with torch.no_grad():
            scores[layout] = batch.rollout_slice(model(**batch.teacher_inputs()).logits, "teacher").log_softmax(-1)
    assert torch.allclose(scores["kit"][widest], scores["reference"][widest], atol=1e-4)
    kl = (scores["kit"].exp() * (scores["kit"] - scores["reference"])).sum(-1)  # KL(kit || reference) [B, N]
    print(f"KL(kit || reference) per token: shorter row {kl[1 - widest].tolist()}, widest {kl[widest].tolist()}")
    assert kl[1 - widest].mean() > 1e-3 > kl[widest].abs().max()


# ------------------------------------------------------------------------------------------ teacher wording

def test_teacher_wording_is_a_setting(tmp_path):
    base = build_teacher_messages("P?", "SOL")[0]["content"]
    worded = build_teacher_messages("P?", "SOL", transition="Read it {carefully}.", instruction="Box it.")[0]["content"]
    assert worded == base.replace(PAPER_TRANSITION, "Read it {carefully}.").replace(BOXED_INSTRUCTION, "Box it.")
    assert build_teacher_messages("P?", "SOL", "plain", instruction="Box it.")[0]["content"].endswith("\n\nBox it.")
    with pytest.raises(ValueError, match=r"teacher_transition is set but the 'simple' teacher prompt has no such "
                                         r"part; profiles with it: \['paper', 'plain'\]"):
        build_teacher_messages("P?", "SOL", "simple", transition="Read it.")
    # file:PATH reads the file (relative to the base folder), one trailing newline dropped
    (tmp_path / "transition.txt").write_text("Line one: {x}.\n", encoding="utf-8")
    assert read_wording("file:transition.txt", tmp_path) == "Line one: {x}."
    assert read_wording("Plain text.", tmp_path) == "Plain text." and read_wording(None) is None
    with pytest.raises(ValueError, match=r"'file:missing.txt': cannot read"):
        read_wording("file:missing.txt", tmp_path)


def test_teacher_wording_and_layout_from_a_profile(tmp_path, embedded_tokenizer):
    path = tmp_path / "transition.txt"
    path.write_text("Understand the reference, then solve it yourself.\n", encoding="utf-8")
    config = load_config(OPSDConfig, "cpu-tiny", {"output_dir": str(tmp_path), "prompt_profile": "paper",
                                                  "teacher_transition": f"file:{path}", "position_layout": "reference"})
    kwargs = config.context_kwargs()
    assert kwargs["teacher_transition"] == "Understand the reference, then solve it yourself."
    assert kwargs["teacher_instruction"] is None and kwargs["position_layout"] == "reference"
    ctx = build_dual_contexts(embedded_tokenizer, PROBLEMS, SOLUTIONS, **kwargs)
    assert ctx.position_layout == "reference"
    assert "=== Reference Solution End ===\n\n\nUnderstand the reference, then solve it yourself.\n\n" + BOXED_INSTRUCTION \
        in ctx.teacher.texts[0]
    audit = audit_prompt_lengths(embedded_tokenizer, PROBLEMS, SOLUTIONS, teacher_transition=kwargs["teacher_transition"])
    assert [a["teacher_tokens"] for a in audit] == ctx.teacher.prompt_lengths.tolist()


@pytest.mark.parametrize("overrides, message", [
    ({"position_layout": "right"}, r"position_layout='right': must be one of \['kit', 'reference'\]"),
    ({"teacher_transition": "file:no/such/file.txt", "prompt_profile": "paper"}, r"'file:no/such/file.txt': cannot read"),
    ({"teacher_instruction": "Box it."}, r"teacher_instruction is set but the 'simple' teacher prompt has no such part"),
    ({"teacher_transition": " ", "prompt_profile": "paper"}, r"teacher_transition must be a non-empty text"),
])
def test_bad_layout_or_wording_is_refused_before_any_model(tmp_path, overrides, message):
    with pytest.raises(InputError, match=message):
        load_config(OPSDConfig, "cpu-tiny", {"output_dir": str(tmp_path), **overrides})
