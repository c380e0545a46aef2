"""Dual contexts: the student sees the problem, the teacher also sees the reference solution.

Both roles are chat-formatted with the model's own chat template (separate template kwargs per role,
e.g. a non-thinking student and a thinking teacher on Qwen3). Prompts are padded to the role's widest
prompt P_role, so the rollout starts at column P_role in every row of a role. Two position layouts
(`POSITION_LAYOUTS`, key `position_layout`):

    kit        [pad ... pad][prompt][ŷ_1 .. ŷ_N][pad]   positions count attended tokens only: ŷ_1 sits at
                                                        position len(prompt), as when the rollout was sampled
    reference  [prompt][pad ... pad][ŷ_1 .. ŷ_N][pad]   no position ids (the model numbers columns 0, 1, ...):
                                                        ŷ_1 sits at position P_role, a gap of P_role - len(prompt)
                                                        positions, and ŷ_1 is predicted from a pad column

`join_rollout` appends one rollout to both prompts and builds the loss mask over rollout tokens only.
Nothing is ever truncated silently: an over-long prompt raises `PromptTooLongError` naming the row,
unless the caller asked to drop such rows (they are then counted in `DualContexts.dropped_rows`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_BOXED = BOXED_INSTRUCTION.replace("{", "{{").replace("}", "}}")  # literal braces inside str.format templates

# The transition paragraph of the `paper` teacher prompt: the reference configuration's intent, in our own
# words. One paragraph, no line breaks inside; the template puts two blank lines before it (three newlines
# after the reference block, as the reference layout) and one blank line after it.
PAPER_TRANSITION = (
    "Study the reference solution above until you understand why each of its steps holds. Do not copy it "
    "and do not paraphrase it: solve the problem yourself, in your own words and step by step, and reach "
    "the same final answer. You are free to explore approaches other than the reference's, and when a line "
    "of reasoning stops working, do not hesitate to backtrack and try another route."
)

# The `paper` teacher's layout; {transition} and {instruction} are settings (`teacher_transition`,
# `teacher_instruction`), by default PAPER_TRANSITION and BOXED_INSTRUCTION.
# `teacher_context: none` (opsd.privileged) leaves out the reference block, "{reference}".
_PAPER_TEACHER = "Problem: {problem}\n\n{reference}{transition}\n\n{instruction}"
_PAPER_REFERENCE = (
    "Here is a reference solution to this problem:\n"
    "=== Reference Solution Begin ===\n{solution}\n=== Reference Solution End ===\n\n\n"
)

PROMPT_PROFILES: dict[str, dict[str, str]] = {
    # The reference configuration's layout, with the transition paragraph in our own words.
    "paper": {
        "student": "Problem: {problem}\n\n" + _BOXED,
        "teacher": _PAPER_TEACHER,
        "reference": _PAPER_REFERENCE,
    },
    # The reference baseline scripts' prompt (SFT, GRPO): the problem text without the "Problem: " prefix,
    # a blank line, the instruction (the same form as the evaluation prompt). The teacher is `paper`'s;
    # the baselines have no teacher.
    "plain": {
        "student": "{problem}\n\n" + _BOXED,
        "teacher": _PAPER_TEACHER,
        "reference": _PAPER_REFERENCE,
    },
    # Figure-2 style of the paper: problem, reference solution, a one-line instruction.
    "simple": {
        "student": "Problem: {problem}\n\n" + _BOXED,
        "teacher": (
            "Problem: {problem}\n\n{reference}"
            "Now solve the problem yourself, step by step, and put your final answer within \\boxed{{}}."
        ),
        "reference": "Reference solution: {solution}\n\n",
    },
}


class PromptTooLongError(ValueError):
    """A prompt would not fit in `max_prompt_length` (prompts are never truncated silently)."""


def _check_profile(profile: str) -> dict[str, str]:
    if profile not in PROMPT_PROFILES:
        raise ValueError(f"unknown prompt profile {profile!r}; valid profiles: {sorted(PROMPT_PROFILES)}")
    return PROMPT_PROFILES[profile]


def build_student_messages(problem: str, profile: str = "paper") -> list[dict[str, str]]:
    """The student's chat: one user turn with the problem and the boxed-answer instruction."""
    template = _check_profile(profile)["student"]
    return [{"role": "user", "content": template.format(problem=problem)}]


def build_teacher_messages(problem: str, solution: str | None, profile: str = "paper", *,
                           transition: str | None = None, instruction: str | None = None) -> list[dict[str, str]]:
    """The teacher's chat: the student's problem plus the privileged reference solution (None: the same
    prompt without its reference block, `teacher_context: none`).

    `transition`, `instruction`: the paragraph after the reference block and the closing instruction of
    the profiles with the reference layout (`paper`, `plain`); None: `PAPER_TRANSITION`, `BOXED_INSTRUCTION`.
    """
    parts = _check_profile(profile)
    check_teacher_wording(profile, transition, instruction)
    reference = "" if solution is None else parts["reference"].format(solution=solution)
    return [{"role": "user", "content": parts["teacher"].format(
        problem=problem, reference=reference, transition=PAPER_TRANSITION if transition is None else transition,
        instruction=BOXED_INSTRUCTION if instruction is None else instruction,
    )}]


def check_teacher_wording(profile: str, transition: str | None, instruction: str | None) -> None:
    """ValueError unless the profile's teacher has the slots that a set `transition` / `instruction` fill."""
    template = _check_profile(profile)["teacher"]
    for name, value in (("teacher_transition", transition), ("teacher_instruction", instruction)):
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty text or file:PATH, got {value!r}")
        slot = "{" + name.removeprefix("teacher_") + "}"
        if slot not in template:
            with_slots = sorted(p for p, t in PROMPT_PROFILES.items() if slot in t["teacher"])
            raise ValueError(f"{name} is set but the {profile!r} teacher prompt has no such part; "
                             f"profiles with it: {with_slots}")


#: A wording setting that names a file instead of holding the text: ``file:PATH``.
WORDING_FILE_PREFIX = "file:"


def read_wording(value: str | None, base: str | Path = ".") -> str | None:
    """A wording setting's text: the value itself, or for ``file:PATH`` the UTF-8 text of the file (PATH
    relative to `base`) without one trailing newline. None stays None (the kit's wording)."""
    if value is None or not value.startswith(WORDING_FILE_PREFIX):
        return value
    path = Path(value[len(WORDING_FILE_PREFIX):]).expanduser()
    path = path if path.is_absolute() else Path(base) / path
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{value!r}: cannot read {str(path)!r} as UTF-8 text ({err})") from None
    return text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text


#: Evaluation prompt profiles: the single user turn an evaluated model reads (format fields: problem).
#: ``reference`` is the form of the reference evaluation (the bare problem text, one blank line, the
#: instruction); ``student`` is the training student prompt of the ``paper`` profile, with its
#: ``Problem: `` prefix, kept to compare with evaluations made before the two were separated.
EVAL_PROMPT_PROFILES: dict[str, str] = {
    "reference": "{problem}\n\n" + _BOXED,
    "student": PROMPT_PROFILES["paper"]["student"],
}
DEFAULT_EVAL_PROMPT = "reference"


def build_eval_messages(problem: str, profile: str = DEFAULT_EVAL_PROMPT) -> list[dict[str, str]]:
    """The evaluation chat: one user turn, by default the reference form ``{problem}\\n\\n{instruction}``.

    Separate from the training prompts on purpose: the ``Problem: `` prefix belongs to training only.
    """
    if profile not in EVAL_PROMPT_PROFILES:
        raise ValueError(
            f"unknown evaluation prompt {profile!r}; valid evaluation prompts: {sorted(EVAL_PROMPT_PROFILES)}"
        )
    return [{"role": "user", "content": EVAL_PROMPT_PROFILES[profile].format(problem=problem)}]


def apply_chat(tokenizer, messages: list[dict[str, str]], chat_kwargs: Mapping | None = None) -> str:
    """Chat-template `messages` as text ending in the assistant generation prompt.

    `chat_kwargs` go to the template (e.g. ``{"enable_thinking": False}`` for Qwen3); templates ignore
    variables they do not use.
    """
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **dict(chat_kwargs or {})
    )


#: What a thinking Qwen3 writes first after its assistant header: the opener of its thinking block.
THINK_OPENER = "<think>\n"


def with_think_opener(text: str, opener: str = THINK_OPENER) -> str:
    """``text`` (a chat-templated prompt ending in the assistant header) followed by ``opener``, unless
    it already ends with it.

    For a thinking teacher and a non-thinking student: the teacher's template leaves the assistant turn
    open, so at the first rollout position the teacher expects ``<think>`` while the student's rollout
    starts with the answer itself; with the opener in its prompt the teacher reads the rollout as the
    content of its thinking block instead.
    """
    return text if text.endswith(opener) else text + opener


def legacy_student_text(tokenizer, messages, chat_kwargs: Mapping | None = None) -> str:
    """The earlier reference code's student prompt: the chat-templated ids decoded with special tokens
    skipped, i.e. the role names and content without the template's control tokens."""
    ids = tokenizer(apply_chat(tokenizer, messages, chat_kwargs), add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True)


@dataclass
class RoleBatch:
    """One role's left-padded prompts. input_ids, attention_mask: [B, P]; prompt_lengths: [B]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_lengths: torch.Tensor
    texts: list[str]

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])


#: How `join_rollout` lays out [prompt][rollout] for scoring (module docstring): ``kit`` left-pads and
#: numbers attended tokens only; ``reference`` right-pads each prompt and passes no position ids.
POSITION_LAYOUTS = ("kit", "reference")


def check_position_layout(layout: str) -> str:
    """`layout` itself, or ValueError naming the valid layouts."""
    if layout not in POSITION_LAYOUTS:
        raise ValueError(f"position_layout={layout!r}: must be one of {list(POSITION_LAYOUTS)}")
    return layout


@dataclass
class DualContexts:
    """Student and teacher prompts for the same problems; row i of each role is problem kept_rows[i].

    The prompts are left-padded (what rollouts are sampled from); `position_layout` is how `join_rollout`
    lays them out for scoring.
    """

    student: RoleBatch
    teacher: RoleBatch
    kept_rows: list[int]
    dropped_rows: list[int] = field(default_factory=list)
    position_layout: str = "kit"

    def __len__(self) -> int:
        return len(self.kept_rows)

    def repeat_interleave(self, n: int) -> DualContexts:
        """Each row repeated n times (rollout i*n + j belongs to prompt i), for n samples per prompt."""
        if n == 1:
            return self

        def rep(role: RoleBatch) -> RoleBatch:
            return RoleBatch(
                role.input_ids.repeat_interleave(n, 0),
                role.attention_mask.repeat_interleave(n, 0),
                role.prompt_lengths.repeat_interleave(n, 0),
                [t for t in role.texts for _ in range(n)],
            )

        return DualContexts(rep(self.student), rep(self.teacher), [r for r in self.kept_rows for _ in range(n)],
                            self.dropped_rows, self.position_layout)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists to [B, max_len]; returns (ids, attention_mask)."""
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq):
            ids[i, width - len(seq):] = torch.tensor(list(seq), dtype=torch.long)
            mask[i, width - len(seq):] = 1
    return ids, mask


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(pad)


def role_texts(
    tokenizer,
    problems: Sequence[str],
    solutions: Sequence[str],
    *,
    profile: str = "paper",
    student_chat_kwargs: Mapping | None = None,
    teacher_chat_kwargs: Mapping | None = None,
    legacy_mismatch: bool = False,
    teacher_think_opener: bool = False,
    teacher_transition: str | None = None,
    teacher_instruction: str | None = None,
) -> tuple[list[str], list[str]]:
    """The chat-formatted prompt strings of both roles (what the model reads, special tokens included).

    ``teacher_think_opener`` appends ``THINK_OPENER`` to each teacher prompt (``with_think_opener``);
    ``teacher_transition`` / ``teacher_instruction``: the teacher's wording (``build_teacher_messages``).
    """
    if len(problems) != len(solutions):
        raise ValueError(f"got {len(problems)} problems but {len(solutions)} solutions")
    student_text = legacy_student_text if legacy_mismatch else apply_chat
    students, teachers = [], []
    for problem, solution in zip(problems, solutions):
        students.append(student_text(tokenizer, build_student_messages(problem, profile), student_chat_kwargs))
        messages = build_teacher_messages(problem, solution, profile, transition=teacher_transition,
                                          instruction=teacher_instruction)
        teacher = apply_chat(tokenizer, messages, teacher_chat_kwargs)
        teachers.append(with_think_opener(teacher) if teacher_think_opener else teacher)
    return students, teachers


def audit_prompt_lengths(
    tokenizer, problems: Sequence[str], solutions: Sequence[str], *, max_prompt_length: int | None = None,
    **prompt_kwargs,
) -> list[dict]:
    """Token length of each row's student and teacher prompt (`role_texts`, prompt_kwargs as there), and
    whether it would exceed the limit. Returns one dict per row: {"row", "student_tokens",
    "teacher_tokens", "too_long"}.
    """
    students, teachers = role_texts(tokenizer, problems, solutions, **prompt_kwargs)
    s_ids = tokenizer(students, add_special_tokens=False)["input_ids"]
    t_ids = tokenizer(teachers, add_special_tokens=False)["input_ids"]
    rows = []
    for i, (s, t) in enumerate(zip(s_ids, t_ids)):
        too_long = max_prompt_length is not None and max(len(s), len(t)) > max_prompt_length
        rows.append({"row": i, "student_tokens": len(s), "teacher_tokens": len(t), "too_long": too_long})
    return rows


def build_dual_contexts(
    tokenizer,
    problems: Sequence[str],
    solutions: Sequence[str],
    *,
    max_prompt_length: int | None = None,
    on_overflow: str = "error",
    row_ids: Sequence | None = None,
    position_layout: str = "kit",
    **prompt_kwargs,
) -> DualContexts:
    """Tokenize both roles' prompts (`role_texts`; prompt_kwargs: profile, student_chat_kwargs,
    teacher_chat_kwargs, legacy_mismatch, teacher_think_opener, teacher_transition, teacher_instruction),
    left-padded per role; `position_layout` (`POSITION_LAYOUTS`) is kept for `join_rollout`.

    A row whose student or teacher prompt is longer than `max_prompt_length` raises
    `PromptTooLongError` naming it (`on_overflow="error"`), or is dropped from both roles and listed in
    `dropped_rows` (`on_overflow="drop"`). `row_ids` name rows in messages (default: their index).
    """
    if on_overflow not in ("error", "drop"):
        raise ValueError(f"on_overflow must be 'error' or 'drop', got {on_overflow!r}")
    check_position_layout(position_layout)
    students, teachers = role_texts(tokenizer, problems, solutions, **prompt_kwargs)
    s_ids = tokenizer(students, add_special_tokens=False)["input_ids"]
    t_ids = tokenizer(teachers, add_special_tokens=False)["input_ids"]
    names = list(row_ids) if row_ids is not None else list(range(len(problems)))
    kept, dropped = [], []
    for i, (s, t) in enumerate(zip(s_ids, t_ids)):
        if max_prompt_length is not None and max(len(s), len(t)) > max_prompt_length:
            if on_overflow == "drop":
                dropped.append(i)
                continue
            role, n = ("teacher", len(t)) if len(t) >= len(s) else ("student", len(s))
            raise PromptTooLongError(
                f"row {names[i]!r}: the {role} prompt has {n} tokens but max_prompt_length is {max_prompt_length} "
                f"(problem starts {problems[i][:60]!r}). Raise max_length / lower max_completion_length, "
                "or set on_overflow='drop' to skip such rows."
            )
        kept.append(i)
    if not kept:
        raise PromptTooLongError(f"all {len(problems)} rows were dropped for exceeding max_prompt_length")
    pad = _pad_id(tokenizer)

    def role(ids_list, texts) -> RoleBatch:
        ids, mask = left_pad([ids_list[i] for i in kept], pad)
        lengths = torch.tensor([len(ids_list[i]) for i in kept], dtype=torch.long)
        return RoleBatch(ids, mask, lengths, [texts[i] for i in kept])

    return DualContexts(role(s_ids, students), role(t_ids, teachers), kept, dropped, position_layout)


@dataclass
class JoinedBatch:
    """Both roles' full sequences [prompt][rollout] aligned on the rollout, in one position layout.

    *_input_ids, *_attention_mask: [B, P_role + N]; *_position_ids: [B, P_role + N] (layout ``kit``) or
    None (``reference``: the model numbers the columns); completion_ids, loss_mask: [B, N].
    The logits at column P_role - 1 + n predict rollout token n in either role and either layout.
    """

    student_input_ids: torch.Tensor
    student_attention_mask: torch.Tensor
    student_position_ids: torch.Tensor | None
    teacher_input_ids: torch.Tensor
    teacher_attention_mask: torch.Tensor
    teacher_position_ids: torch.Tensor | None
    completion_ids: torch.Tensor
    loss_mask: torch.Tensor
    student_prompt_width: int
    teacher_prompt_width: int
    position_layout: str = "kit"

    @property
    def completion_length(self) -> int:
        return int(self.completion_ids.shape[1])

    @staticmethod
    def _inputs(ids, mask, positions) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": ids, "attention_mask": mask}
        return inputs if positions is None else inputs | {"position_ids": positions}

    def student_inputs(self) -> dict[str, torch.Tensor]:
        """The student pass's model inputs (no ``position_ids`` key in the reference layout)."""
        return self._inputs(self.student_input_ids, self.student_attention_mask, self.student_position_ids)

    def teacher_inputs(self) -> dict[str, torch.Tensor]:
        """The teacher pass's model inputs (no ``position_ids`` key in the reference layout)."""
        return self._inputs(self.teacher_input_ids, self.teacher_attention_mask, self.teacher_position_ids)

    def rollout_slice(self, logits: torch.Tensor, role: str) -> torch.Tensor:
        """[B, P_role + N, V] (or the last N+1 positions only) -> [B, N, V] predicting the rollout tokens."""
        n = self.completion_length
        if logits.shape[1] == n + 1:  # computed with logits_to_keep = N + 1
            return logits[:, :-1]
        width = self.student_prompt_width if role == "student" else self.teacher_prompt_width
        return logits[:, width - 1 : width - 1 + n]

    def to(self, device) -> JoinedBatch:
        moved = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.__dict__.items()}
        return JoinedBatch(**moved)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only attended tokens, so left padding does not shift the prompt: [B, L]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def right_padded(batch: RoleBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded role's (ids, attention_mask) [B, P] with each row's prompt moved to the left:
    row b becomes [prompt_b][pad x (P - len_b)] (the same pad ids, rotated)."""
    width = batch.width
    shift = width - batch.attention_mask.sum(-1, keepdim=True)  # [B, 1]: the row's left pads
    index = (torch.arange(width, device=shift.device) + shift) % width
    return batch.input_ids.gather(1, index), batch.attention_mask.gather(1, index)


def join_rollout(contexts: DualContexts, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> JoinedBatch:
    """Append rollouts [B, N] (mask: eos kept, everything after it False) to both roles' prompts, in the
    contexts' `position_layout`.

    Masked completion positions are excluded from attention and from the loss, so padding (even when
    pad == eos, as in SmolLM2) never enters the objective; prompts never do either. Layout ``reference``:
    each role's prompts right-padded to P_role, then the rollouts, attention mask 0 on every pad, no
    position ids (the reference trainer's layout; its mask is ``ids != pad``, the same wherever the pad
    id is not a rollout token before eos).
    """
    if completion_ids.shape != completion_mask.shape:
        raise ValueError(f"completion ids {tuple(completion_ids.shape)} and mask {tuple(completion_mask.shape)} differ")
    if completion_ids.shape[0] != len(contexts):
        raise ValueError(f"{completion_ids.shape[0]} rollouts for {len(contexts)} prompts; repeat the contexts first")
    completion_mask = completion_mask.bool()
    cm = completion_mask.long().to(contexts.student.attention_mask.device)
    completion_ids = completion_ids.to(contexts.student.input_ids.device)

    layout = check_position_layout(contexts.position_layout)

    def role(batch: RoleBatch):
        prompt_ids, prompt_mask = (batch.input_ids, batch.attention_mask) if layout == "kit" else right_padded(batch)
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        mask = torch.cat([prompt_mask, cm], dim=1)
        return ids, mask, position_ids_from_mask(mask) if layout == "kit" else None

    s_ids, s_mask, s_pos = role(contexts.student)
    t_ids, t_mask, t_pos = role(contexts.teacher)
    return JoinedBatch(
        s_ids, s_mask, s_pos, t_ids, t_mask, t_pos,
        completion_ids, completion_mask.to(completion_ids.device),
        contexts.student.width, contexts.teacher.width, layout,
    )
