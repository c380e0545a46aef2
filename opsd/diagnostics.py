"""Per-step numbers about the OPSD divergence, and the token categories they are broken down by.

`divergence_diagnostics` reports, over the masked-in rollout positions, the mean clipped and unclipped
D[n] (see `opsd.divergence`), how much the clip bites and how often D[n] < 0; given the decoded tokens it
also averages the unclipped D[n] per `token_category` ("style" words, "math" tokens, "other"), the
breakdown of the paper's Table 5.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from opsd.divergence import DivergenceSpec, check_pair, checked_rows, masked_rows
from opsd.divergence_chunked import check_chunk_size

__all__ = ["MATH_PATTERN", "NEGATIVE_TOLERANCE", "STYLE_WORDS", "divergence_diagnostics", "token_category"]

# --------------------------------------------------------------------------------------------------
# Token categories
# --------------------------------------------------------------------------------------------------


#: Discourse and reasoning-style words (lower case). A token is "style" when, stripped of its leading
#: space marker ("Ġ", "▁", whitespace) and trailing punctuation, it is one of these, ignoring case.
STYLE_WORDS = frozenset({
    "wait", "so", "think", "thinking", "hmm", "hm", "um", "uh", "let", "let's", "lets", "okay", "ok",
    "alright", "alternatively", "alternative", "maybe", "perhaps", "check", "checking", "verify", "double",
    "actually", "first", "second", "next", "now", "then", "therefore", "thus", "hence", "but", "however",
    "also", "again", "instead", "well", "oh", "ah", "right", "yes", "no", "sure", "indeed", "recall",
    "remember", "notice", "note", "consider", "suppose", "assume", "since", "because", "seems", "seem",
    "guess", "wonder", "try", "finally", "step", "steps", "hold", "on", "wrong", "mistake", "correct",
    "really", "probably", "means", "meaning",
})

#: A token is "math" when (stripped as above) it consists only of digits, operators, brackets, "$", "\",
#: LaTeX commands (\frac, \boxed, ...) and decimal separators, with at least one digit, operator, bracket
#: or command; or when it is a single-letter variable (any letter except "a", "A" and "I", which are
#: mostly English words).
MATH_PATTERN = re.compile(
    r"""
      [B-HJ-Zb-z]                           # a single-letter variable
    | (?=.*[0-9+\-*/=^<>(){}\[\]\\|$])         # or at least one digit, operator, bracket, "$" or "\"
      (?: \\[A-Za-z]+                        #   LaTeX command: \frac \boxed \sqrt ...
        | [A-Za-z](?![A-Za-z])              #   a lone letter inside an expression: 2x, f(x)
        | [0-9+\-*/=^<>(){}\[\]\\|_$%!.,:;']  #   digits, operators, brackets, separators
      )+
    """,
    re.VERBOSE,
)

#: D[n] below -NEGATIVE_TOLERANCE counts as negative. An unclipped forward KL is never negative, but its
#: float32 sum over the vocabulary is off by up to ~2e-6 nats (measured against float64 on 49,152 entries,
#: logits at scales 1-20): without a tolerance 10-50% of near-agreeing positions read "negative".
NEGATIVE_TOLERANCE = 1e-5

_SPACE_MARKERS = " \t\n\r\u0120\u2581\u010a"  # space, tab, newlines, "Ġ", "▁", "Ċ"
_TRAILING_PUNCTUATION = ".,:;!?\"')"


def token_category(token_string: str) -> str:
    """ "style" | "math" | "other" for one decoded token (see STYLE_WORDS and MATH_PATTERN)."""
    text = str(token_string).strip(_SPACE_MARKERS)
    if not text:
        return "other"
    word = text.rstrip(_TRAILING_PUNCTUATION).lower().replace("\u2019", "'")
    if word in STYLE_WORDS:
        return "style"
    if MATH_PATTERN.fullmatch(text):
        return "math"
    return "other"


# --------------------------------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------------------------------


def divergence_diagnostics(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    objective: DivergenceSpec,
    *,
    token_strings: Sequence[Sequence[str]] | None = None,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Per-step numbers about the divergence of `objective` over the masked-in positions (no gradient), for
    logits [B, T, V] and mask bool [B, T], chunk_size positions at a time if set.

    Keys: divergence_mean (mean D[n] with the configured clip), divergence_unclipped_mean (mean sum_v l),
    clipped_fraction (pointwise: fraction of (position, entry) summands above c; token: fraction of
    positions whose sum is above c; 0 without clipping), clipped_token_fraction (fraction of positions
    where the clip changed at least one summand), negative_token_fraction (fraction of positions with
    D[n] < -NEGATIVE_TOLERANCE), num_tokens (masked-in positions). With token_strings (decoded tokens, rows aligned with the mask's [B, T]):
    kl_style / kl_math / kl_other (mean unclipped D by `token_category`, NaN when empty) and
    count_style / count_math / count_other. No masked-in position -> NaN means and fractions.
    """
    clip = objective.clip
    check_pair(student_logits, teacher_logits, "logits")
    lead = student_logits.shape[:-1]
    rows = masked_rows(mask, lead, student_logits.device)
    if chunk_size is not None:
        check_chunk_size(chunk_size)
    total = rows.numel()
    step = chunk_size or max(total, 1)
    student, teacher = student_logits.detach(), teacher_logits.detach()
    clipped = entries = clipped_tokens = 0
    clipped_sums, raw_sums = [torch.zeros(0, dtype=torch.float64)], [torch.zeros(0, dtype=torch.float64)]
    with torch.no_grad():
        for start in range(0, total, step):
            s, t = checked_rows(student, teacher, rows[start : start + step], lead)
            summands = objective.summands(s, t)
            raw = summands.sum(-1)
            if clip is not None:  # pointwise: the summands above c; token: the positions whose sum is
                over = summands if objective.clip_mode == "pointwise" else raw
                clipped += int((over > clip).sum())
                entries += over.numel()
                clipped_tokens += int((over > clip).reshape(raw.shape[0], -1).any(-1).sum())
            clipped_sums.append(objective.reduce(summands).double().cpu())
            raw_sums.append(raw.double().cpu())
    nan = float("nan")
    d, raw = torch.cat(clipped_sums), torch.cat(raw_sums)
    out = {
        "divergence_mean": float(d.mean()) if total else nan,
        "divergence_unclipped_mean": float(raw.mean()) if total else nan,
        "clipped_fraction": (clipped / entries if entries else 0.0) if total else nan,
        "clipped_token_fraction": clipped_tokens / total if total else nan,
        "negative_token_fraction": float((d < -NEGATIVE_TOLERANCE).double().mean()) if total else nan,
        "num_tokens": float(total),
    }
    if token_strings is not None:
        out.update(_category_means(token_strings, rows.tolist(), raw.tolist(), lead))
    return out


def _category_means(token_strings, rows, values, lead_shape) -> dict[str, float]:
    if len(lead_shape) != 2:
        raise ValueError(f"token_strings need [B, T] logits, got leading shape {tuple(lead_shape)}")
    batch, length = lead_shape
    if len(token_strings) != batch:
        raise ValueError(f"token_strings has {len(token_strings)} rows, the mask {batch}")
    sums = {"style": 0.0, "math": 0.0, "other": 0.0}
    counts = {"style": 0, "math": 0, "other": 0}
    for row, value in zip(rows, values):
        b, n = divmod(row, length)
        if n >= len(token_strings[b]):
            raise ValueError(
                f"token_strings row {b} has {len(token_strings[b])} entries; position {n} is masked in"
            )
        category = token_category(token_strings[b][n])
        sums[category] += value
        counts[category] += 1
    out = {}
    for category in ("style", "math", "other"):
        out[f"kl_{category}"] = sums[category] / counts[category] if counts[category] else float("nan")
        out[f"count_{category}"] = float(counts[category])
    return out
