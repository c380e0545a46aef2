"""opsd.viz.rollout: every helper produces a figure / HTML / table with real content from small hand-made inputs."""

from __future__ import annotations

import itertools
import re

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from opsd.viz import rollout as viz_rollout


def _luminance(hex_color: str) -> float:
    r, g, b = matplotlib.colors.to_rgb(hex_color)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _all_texts(fig) -> list[str]:
    """Every text drawn on the figure's axes, line breaks folded into spaces."""
    return [" ".join(t.get_text().split()) for ax in fig.axes for t in ax.texts]


class FakeTokenizer:
    """decode([id]) -> a fixed string per id; a couple of added (control) tokens."""

    class _Added:
        def __init__(self, content):
            self.content = content

    def __init__(self, vocab):
        self.vocab = list(vocab)
        self.added_tokens_decoder = {0: self._Added("<|im_start|>"), 1: self._Added("<|im_end|>")}
        self.all_special_tokens = ["<|im_start|>", "<|im_end|>"]

    def decode(self, ids, **kwargs):
        return "".join(self.vocab[i] for i in ids)


# ------------------------------------------------------------------------------------------ heatmaps


def test_heatmap_html_escapes_and_counts_spans():
    tokens = ["a", " <b>", " & c", "\n", "x<y", ""]
    values = [0.0, 0.5, 1.0, 0.25, 2.0, 0.1]
    out = viz_rollout.divergence_heatmap_html(tokens, values, title="T <1> & 2")
    assert out.count('class="opsd-tok"') == len(tokens)
    # Raw markup from tokens never survives; escaped forms do.
    assert "<b>" not in out and "&lt;b&gt;" in out
    assert "&amp; c" in out and "x&lt;y" in out
    assert "T &lt;1&gt; &amp; 2" in out
    assert "⏎" in out and "<br>" in out  # newline made visible and kept as a line break
    assert "∅" in out  # empty token still visible
    # Tooltips carry the values.
    assert "D = 2.0000" in out and "D = 0.5000" in out


def test_heatmap_colors_monotone_in_value():
    values = [0.0, 0.1, 0.3, 0.6, 1.0]
    colors = viz_rollout.divergence_colors(values)
    lum = [_luminance(c) for c in colors]
    assert all(a > b for a, b in itertools.pairwise(lum)), lum
    # The HTML uses the same colours, in token order.
    out = viz_rollout.divergence_heatmap_html([f"t{i}" for i in range(5)], values)
    found = re.findall(r'class="opsd-tok" style="background-color: (#[0-9a-f]{6})', out)
    assert found == colors
    # vmax saturates: everything above it gets the same colour.
    sat = viz_rollout.divergence_colors([1.0, 5.0], vmax=1.0)
    assert sat[0] == sat[1]


def test_heatmap_negative_values_use_diverging_colors_and_nan_is_blank():
    colors = viz_rollout.divergence_colors([-0.5, 0.0, 0.5, float("nan")])
    r_neg, _, b_neg = matplotlib.colors.to_rgb(colors[0])
    r_pos, _, b_pos = matplotlib.colors.to_rgb(colors[2])
    assert b_neg > r_neg and r_pos > b_pos  # negative blue, positive red
    assert colors[3] is None
    out = viz_rollout.divergence_heatmap_html(["a", "b", "c", "d"], torch.tensor([-0.5, 0.0, 0.5, float("nan")]))
    assert out.count('class="opsd-tok"') == 4 and "n/a" in out


def test_heatmap_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 tokens but 3 values"):
        viz_rollout.divergence_heatmap_html(["a", "b"], [1, 2, 3])


def test_show_divergence_heatmap_displays_html_once(monkeypatch):
    shown = []
    monkeypatch.setattr(viz_rollout, "display", lambda obj: shown.append(obj))  # IPython's display, as imported
    assert viz_rollout.show_divergence_heatmap(["a", "b"], [0.1, 0.2]) is None
    assert len(shown) == 1 and shown[0].data.count('class="opsd-tok"') == 2


def test_plot_divergence_heatmap_one_patch_per_token_and_colorbar():
    tokens = ["The", " answer", " is", "\n", "\\boxed", "{", "73", "}", "."] * 3
    values = [i / 10 for i in range(len(tokens))]
    fig = viz_rollout.plot_divergence_heatmap(tokens, values, width=20, title="rollout")
    main = fig.axes[0]
    assert len(main.patches) == len(tokens)
    assert len(fig.axes) == 2  # heatmap + colour bar
    texts = [t.get_text() for t in main.texts]
    assert "⏎" in texts and "\\boxed" in texts
    # Wrapping: more than one line at width 20.
    ys = {p.get_y() for p in main.patches}
    assert len(ys) > 3
    # Darker boxes for larger values.
    lum = [_luminance(matplotlib.colors.to_hex(p.get_facecolor())) for p in main.patches]
    assert lum[0] > lum[-1]


def test_special_tokens_html_marks_control_tokens():
    text = "<|im_start|>user\nWhat is 1 < 2 & 3?<|im_end|>\n<|im_start|>assistant\n"
    out = viz_rollout.special_tokens_html(text, FakeTokenizer(["<|im_start|>", "<|im_end|>"]), title="student")
    assert out.count('class="opsd-special"') == 3
    assert "1 &lt; 2 &amp; 3?" in out and "⏎" in out


# -------------------------------------------------------------------------------------------- tables


def test_token_table_marks_special_and_highlight():
    tok = FakeTokenizer(["<|im_start|>", "<|im_end|>", "hi", "\n"])
    df = viz_rollout.token_table(tok, torch.tensor([0, 2, 3, 1]), offset=10, highlight=12)
    assert list(df["position"]) == [10, 11, 12, 13]
    assert list(df["special"]) == [True, False, False, True]
    assert df.loc[2, "token"] == "⏎" and df.loc[2, "note"] == "◀"


def test_top_alternatives_orders_by_probability():
    tok = FakeTokenizer(["a", "b", "c", "d"])
    student = torch.tensor([3.0, 2.0, 1.0, 0.0])
    teacher = torch.tensor([0.0, 1.0, 2.0, 3.0])
    df = viz_rollout.top_alternatives(student, teacher, tok, k=3)
    assert list(df["teacher_token"]) == ["d", "c", "b"]
    assert list(df["student_token"]) == ["a", "b", "c"]
    assert df["p_teacher"].is_monotonic_decreasing and df["p_student"].is_monotonic_decreasing
    p = torch.softmax(teacher, -1)
    assert df.loc[0, "p_teacher"] == pytest.approx(float(p[3]))
    assert df.loc[0, "p_student_of_teacher_token"] == pytest.approx(float(torch.softmax(student, -1)[3]))


def test_top_divergence_alternatives_picks_largest_positions():
    tok = FakeTokenizer(["a", "b", "c", "d"])
    torch.manual_seed(0)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    df = viz_rollout.top_divergence_alternatives(s, t, [0, 1, 2, 3, 0], [0.1, 0.9, 0.2, 0.5, float("nan")], tok,
                                         positions=2, k=2)
    assert list(df["position"]) == [1, 1, 3, 3]
    assert list(df["sampled_token"]) == ["b", "b", "d", "d"]


def test_plot_logprob_scatter_annotates_largest_gaps():
    fig = viz_rollout.plot_logprob_scatter([-0.1, -2.0, -0.5], [-0.1, -0.2, -3.0], tokens=["a", "b", "c"], annotate=2)
    assert sorted(_all_texts(fig)) == ["b", "c"]


def test_plot_summands_counts_clipped_and_negative():
    summands = torch.tensor([[0.2, 0.01, -0.03, 0.0], [0.06, -0.001, 0.0, 0.0]])
    fig = viz_rollout.plot_summands(summands, clip=0.05)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any("2 of 8 entries above" in lab for lab in labels)
    assert any("2 negative entries" in lab for lab in labels)


def test_plot_divergence_kinds_legend_has_masked_means():
    fig = viz_rollout.plot_divergence_kinds({"forward KL": [1.0, 3.0, 100.0], "JSD": [0.5, 0.5, 0.5]},
                                    mask=[True, True, False])
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["forward KL (mean 2.000)", "JSD (mean 0.500)"]


