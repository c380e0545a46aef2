"""Tests for opsd.diagnostics: per-step divergence numbers and token categories."""

import math

import pytest
import torch
from divergence_reference import one_thread  # noqa: F401  (autouse fixture: one intra-op thread)

from opsd.diagnostics import MATH_PATTERN, STYLE_WORDS, divergence_diagnostics, token_category
from opsd.divergence import DivergenceSpec

# --------------------------------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------------------------------


def test_batch_diagnostics_are_the_token_weighted_means_of_the_rows():
    """The trainer takes the diagnostics of a whole micro-batch in one chunked call; that equals the rows'
    diagnostics weighted by their masked-in positions (categories by their own counts)."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 6, 11, generator=g, dtype=torch.float64), torch.randn(3, 6, 11, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    words = ["\u0120Wait", "\u01202", "\u0120the", "\u0120Hmm", "+", "\u0120cat"]
    tokens = [words[i:] + words[:i] for i in range(3)]
    spec = DivergenceSpec(clip=0.05, clip_mode="pointwise")
    whole = divergence_diagnostics(s, t, mask, spec, token_strings=tokens, chunk_size=4)
    rows = [(divergence_diagnostics(s[i:i + 1], t[i:i + 1], mask[i:i + 1], spec, token_strings=[tokens[i]]),
             int(mask[i].sum())) for i in range(3)]
    assert whole["num_tokens"] == 11.0
    for key in ("divergence_mean", "divergence_unclipped_mean", "clipped_fraction", "clipped_token_fraction",
                "negative_token_fraction"):
        assert whole[key] == pytest.approx(sum(d[key] * n for d, n in rows) / 11, rel=1e-12), key
    for category in ("style", "math", "other"):
        counts = [d[f"count_{category}"] for d, _ in rows]
        assert whole[f"count_{category}"] == sum(counts)
        assert sum(counts) > 0, category  # every category occurs, so every mean is compared
        total = sum(d[f"kl_{category}"] * c for (d, _), c in zip(rows, counts) if c)
        assert whole[f"kl_{category}"] == pytest.approx(total / sum(counts), rel=1e-12), category


def diagnostics_example():
    """Position 0: the negative case of test_divergence.py; 1: identical distributions (D = 0); 2: masked out."""
    pt = torch.tensor([0.9, 0.025, 0.025, 0.025, 0.025], dtype=torch.float64).log()
    ps = torch.tensor([0.5, 0.125, 0.125, 0.125, 0.125], dtype=torch.float64).log()
    same = torch.tensor([0.3, 0.1, 0.2, 0.2, 0.2], dtype=torch.float64).log()
    junk = torch.full((5,), float("nan"), dtype=torch.float64)
    s = torch.stack([ps, same, junk]).unsqueeze(0)
    t = torch.stack([pt, same, junk]).unsqueeze(0)
    mask = torch.tensor([[True, True, False]])
    unclipped = 0.9 * math.log(0.9 / 0.5) + 4 * 0.025 * math.log(0.2)
    clipped = 0.05 + 4 * 0.025 * math.log(0.2)
    return s, t, mask, unclipped, clipped


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_diagnostics_on_a_hand_made_example(chunk_size):
    s, t, mask, unclipped, clipped = diagnostics_example()
    tokens = [["\u0120Wait", "\u01202", "garbage"]]
    got = divergence_diagnostics(
        s, t, mask, DivergenceSpec(clip=0.05, clip_mode="pointwise"), token_strings=tokens, chunk_size=chunk_size
    )
    assert math.isclose(got["divergence_mean"], clipped / 2, rel_tol=1e-12)
    assert math.isclose(got["divergence_unclipped_mean"], unclipped / 2, rel_tol=1e-12)
    assert got["clipped_fraction"] == pytest.approx(1 / 10)  # one summand of the ten masked-in ones
    assert got["clipped_token_fraction"] == pytest.approx(1 / 2)  # one of the two positions has a clipped summand
    assert got["negative_token_fraction"] == pytest.approx(1 / 2)
    assert got["num_tokens"] == 2.0
    assert math.isclose(got["kl_style"], unclipped, rel_tol=1e-12)
    assert got["kl_math"] == 0.0 and math.isnan(got["kl_other"])
    assert (got["count_style"], got["count_math"], got["count_other"]) == (1.0, 1.0, 0.0)
    assert all(isinstance(value, float) for value in got.values())

    token = divergence_diagnostics(s, t, mask, DivergenceSpec(clip=0.05, clip_mode="token"))
    assert token["clipped_fraction"] == pytest.approx(1 / 2)
    assert token["divergence_mean"] == pytest.approx(0.05 / 2)
    assert token["negative_token_fraction"] == 0.0 and token["clipped_token_fraction"] == pytest.approx(1 / 2)
    none = divergence_diagnostics(s, t, mask, DivergenceSpec(clip=None))
    assert none["clipped_fraction"] == 0.0
    assert none["divergence_mean"] == pytest.approx(unclipped / 2)


def test_diagnostics_with_nothing_masked_in():
    s, t, _, _, _ = diagnostics_example()
    got = divergence_diagnostics(s, t, torch.zeros(1, 3, dtype=torch.bool), DivergenceSpec(),
                                 token_strings=[["a", "b", "c"]])
    assert got["num_tokens"] == 0.0 and math.isnan(got["divergence_mean"]) and math.isnan(got["kl_style"])


def test_diagnostics_checks_token_strings():
    s, t, mask, _, _ = diagnostics_example()
    with pytest.raises(ValueError, match="rows"):
        divergence_diagnostics(s, t, mask, DivergenceSpec(), token_strings=[["a"], ["b"]])
    with pytest.raises(ValueError, match="position 1"):
        divergence_diagnostics(s, t, mask, DivergenceSpec(), token_strings=[["a"]])


@pytest.mark.parametrize(
    "token, category",
    [
        ("\u0120Wait", "style"),
        ("wait", "style"),
        ("\u2581So", "style"),
        (" Hmm", "style"),
        ("Alternatively,", "style"),
        ("\u0120Let's", "style"),
        ("\u0120therefore", "style"),
        ("OKAY", "style"),
        ("\u0120123", "math"),
        ("3.14", "math"),
        ("+", "math"),
        (" =", "math"),
        ("\\frac", "math"),
        ("\\boxed{", "math"),
        ("\u0120x", "math"),
        ("n", "math"),
        ("^{2}", "math"),
        ("2x", "math"),
        ("f(x)", "math"),
        ("$", "math"),
        ("\u0120the", "other"),
        ("\u0120triangle", "other"),
        (".", "other"),
        ("\u0120a", "other"),
        ("I", "other"),
        ("\u010a\u010a", "other"),
        ("", "other"),
        ("sin", "other"),
    ],
)
def test_token_category(token, category):
    assert token_category(token) == category


def test_keyword_lists_are_documented_constants():
    assert {
        "wait",
        "so",
        "think",
        "hmm",
        "let",
        "okay",
        "alternatively",
        "maybe",
        "check",
        "actually",
    } <= STYLE_WORDS
    assert all(word == word.lower() for word in STYLE_WORDS)
    assert MATH_PATTERN.fullmatch("\\sqrt") and not MATH_PATTERN.fullmatch("word")


def test_float32_rounding_of_a_kl_is_not_a_negative_token():
    """An unclipped forward KL of near-identical float32 distributions can round below 0 (by ~1e-6 at a
    49,152-entry vocabulary); those positions are not negative tokens, a clipped run's are."""
    torch.manual_seed(0)
    s = torch.randn(1, 64, 49152)
    t = s + 1e-4 * torch.randn_like(s)
    mask = torch.ones(1, 64, dtype=torch.bool)
    spec = DivergenceSpec(clip=None)
    assert (spec.token_divergence(s, t) < 0).any()          # rounding does go below 0
    assert divergence_diagnostics(s, t, mask, spec)["negative_token_fraction"] == 0.0
