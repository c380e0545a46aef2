"""opsd.viz.method: each teaching picture draws what its data says (bars, lines, boxes, one colour scale)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.text import Annotation

from opsd.contexts import DualContexts, RoleBatch, join_rollout, left_pad
from opsd.toy import WORKED_CLIP_CASE, clip_case_values
from opsd.viz.method import (
    plot_clipping_case,
    plot_dual_contexts,
    plot_heatmaps_shared_scale,
    plot_kl_direction_fits,
    plot_position_distributions,
    shared_vmax,
)
from opsd.viz.rollout import plot_divergence_heatmap


class FakeTokenizer:
    """decode([id]) -> "t<id>", or a fixed word for the first few ids."""

    def decode(self, ids, **kwargs):
        words = {0: "<pad>", 1: " The", 2: "\n", 3: " x"}
        return "".join(words.get(int(i), f"t{int(i)}") for i in ids)


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


# ------------------------------------------------------------------------------------- one position


def test_position_distributions_show_the_union_of_both_top_k():
    v = 12
    teacher = torch.full((v,), -5.0)
    teacher[[4, 5, 6]] = torch.tensor([3.0, 2.0, 1.0])  # teacher's top 3: 4, 5, 6
    student = torch.full((v,), -5.0)
    student[[6, 7, 8]] = torch.tensor([3.0, 2.5, 2.0])  # student's top 3: 6, 7, 8
    fig = plot_position_distributions(student, teacher, FakeTokenizer(), k=3, sampled_id=7)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    # 5 tokens sorted by p_T: 4, 5, 6, then 7 and 8 (equal p_T, larger p_S first); the sampled one starred
    assert labels == ["t4", "t5", "t6", "★ t7", "t8"]
    assert [t.get_fontweight() for t in ax.get_yticklabels()][3] == "bold"
    assert len(ax.patches) == 10  # p_T and p_S per token
    p_t, p_s = torch.softmax(teacher.double(), -1), torch.softmax(student.double(), -1)
    widths = sorted(round(p.get_width(), 9) for p in ax.patches)
    assert widths == sorted(round(float(p), 9) for p in [*p_t[[4, 5, 6, 7, 8]], *p_s[[4, 5, 6, 7, 8]]])
    kl = sum(float(a) * math.log(float(a) / float(b)) for a, b in zip(p_t, p_s))
    assert f"{kl:.3f}" in ax.get_title(loc="left")


def test_position_distributions_add_a_sampled_token_outside_the_top_k():
    logits = torch.arange(10, dtype=torch.float32)
    fig = plot_position_distributions(logits, logits.flip(0), FakeTokenizer(), k=2, sampled_id=5, title="pos 3")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["<pad>", "␣The", "★ t5", "t8", "t9"]  # p_T of id i: e^(9 - i) / Z; spaces shown
    assert fig.axes[0].get_title(loc="left") == "pos 3"


# -------------------------------------------------------------------------------- KL direction fits


def test_kl_direction_fits_one_line_per_fit_with_its_moments():
    x = torch.linspace(-3.0, 3.0, 7)  # -3 .. 3, step 1
    teacher = torch.tensor([0.0, 0.1, 0.2, 0.4, 0.2, 0.1, 0.0], dtype=torch.float64)
    on_pm1 = torch.tensor([0.0, 0.0, 0.5, 0.0, 0.5, 0.0, 0.0], dtype=torch.float64)  # mean 0, std 1
    on_two = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)  # mean 2, std 0
    fig = plot_kl_direction_fits(x, teacher, {"wide": on_pm1, "narrow": on_two})
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 1  # the teacher is the one filled area
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["teacher p_T", "wide: mean +0.00, std 1.00", "narrow: mean +2.00, std 0.00"]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), on_two.numpy())


# ------------------------------------------------------------------------------ clipping case


def test_clipping_case_three_panels_with_the_case_values():
    clip = 0.05
    values = clip_case_values(WORKED_CLIP_CASE, clip)
    fig = plot_clipping_case(WORKED_CLIP_CASE, clip)
    summands_ax, divergence_ax, grad_ax = fig.axes
    # (a) 4 kept bars + the removed part of the one clipped word ("73"), from c up to l_73
    assert len(summands_ax.patches) == 5
    removed = summands_ax.patches[4]
    assert removed.get_y() == pytest.approx(clip)
    assert removed.get_height() == pytest.approx(float(values["summands"][0]) - clip)
    assert removed.get_hatch() == "//"
    assert [p.get_height() for p in summands_ax.patches[:4]] == pytest.approx(values["clipped"].tolist())
    dashed = [line for line in summands_ax.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [clip, clip]
    assert [t.get_text() for t in summands_ax.get_xticklabels()] == ["73", "72", "␣So", "␣The"]
    # (b) KL 0.432 and the clipped divergence -0.111, labelled
    assert [p.get_height() for p in divergence_ax.patches] == pytest.approx(
        [float(values["divergence"]), float(values["clipped_divergence"])])
    assert _texts(divergence_ax) == ["0.432", "-0.111"]
    # (c) both gradients per word
    assert len(grad_ax.patches) == 8
    heights = [p.get_height() for p in grad_ax.patches]
    assert heights == pytest.approx([*values["grad"].tolist(), *values["clipped_grad"].tolist()], abs=1e-12)
    assert "c = 0.05" in fig.get_suptitle()


# ------------------------------------------------------------------------------- the two contexts


def _batch():
    """Two rows; teacher prompts 20 tokens longer; row 1's prompts 4 shorter (left padding 4); rollout 12."""
    student = [list(range(10, 20)), list(range(10, 16))]
    teacher = [s + list(range(30, 50)) for s in student]

    def role(seqs):
        ids, mask = left_pad(seqs, 0)
        return RoleBatch(ids, mask, torch.tensor([len(s) for s in seqs]), [""] * len(seqs))

    completion = torch.tensor([[1, 3, 2, 5, 6, 7, 8, 9, 60, 61, 0, 0]] * 2)
    return join_rollout(DualContexts(role(student), role(teacher), [0, 1]), completion, completion != 0)


def _boxes(ax, role, kind):
    return sorted((p for p in ax.patches if (p.get_gid() or "").startswith(f"{role}-{kind}-")),
                  key=lambda p: int(p.get_gid().rsplit("-", 1)[1]))


def test_dual_contexts_rollout_columns_line_up():
    batch = _batch()
    fig = plot_dual_contexts(batch, FakeTokenizer(), row=1, head=2, tail=3, max_rollout=8)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    teacher, student = _boxes(ax, "teacher", "rollout"), _boxes(ax, "student", "rollout")
    assert len(teacher) == len(student) == 8
    assert [p.get_x() for p in teacher] == [p.get_x() for p in student]
    assert [p.get_width() for p in teacher] == [p.get_width() for p in student]
    assert teacher[0].get_x() == 0.0 and teacher[0].get_y() > student[0].get_y()  # teacher above
    assert len(_boxes(ax, "teacher", "more")) == 1 and "… 4 more" in _texts(ax)
    # left padding: 4 in both roles of row 1; prompts 6 (student, all shown) and 26 tokens (teacher, 2 + … + 3)
    assert "pad ×4" in _texts(ax) and len(_boxes(ax, "teacher", "pad")) == len(_boxes(ax, "student", "pad")) == 1
    assert len(_boxes(ax, "student", "prompt")) == 6 and not _boxes(ax, "student", "skip")
    assert len(_boxes(ax, "teacher", "prompt")) == 5 and "… 21 tokens …" in _texts(ax)
    assert {"teacher: problem + reference", "student: problem only"} <= set(_texts(ax))
    # the prompt boxes end where the rollout starts; padding grey, prompt colours differ by role
    for role in ("teacher", "student"):
        last = _boxes(ax, role, "prompt")[-1]
        assert last.get_x() + last.get_width() == pytest.approx(0.0)
    assert _boxes(ax, "teacher", "prompt")[0].get_facecolor() != _boxes(ax, "student", "prompt")[0].get_facecolor()
    assert _boxes(ax, "teacher", "rollout")[0].get_facecolor() == _boxes(ax, "student", "rollout")[0].get_facecolor()
    # one arrow per role from the last prompt token (column P - 1) to rollout token 0
    arrows = [t for t in ax.texts if isinstance(t, Annotation)]
    assert len(arrows) == 2
    for arrow, role in zip(arrows, ("teacher", "student")):
        last, first = _boxes(ax, role, "prompt")[-1], _boxes(ax, role, "rollout")[0]
        assert arrow.xyann[0] == pytest.approx(last.get_x() + last.get_width() / 2)
        assert arrow.xy[0] == pytest.approx(first.get_x() + first.get_width() / 2)
    p_s, p_t = batch.student_prompt_width, batch.teacher_prompt_width
    assert any(f"= {p_t - 1} predict" in t for t in _texts(ax)) and any(f"= {p_s - 1} predict" in t for t in _texts(ax))
    assert f"P_t − P_s = {p_t - p_s}" in ax.get_title(loc="left")
    # column numbers under the boxes: the teacher's rollout starts at column P_t, the student's at P_s
    assert str(p_t) in _texts(ax) and str(p_s) in _texts(ax)


def test_dual_contexts_marks_masked_rollout_tokens_and_draws_on_a_given_axes():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    out = plot_dual_contexts(_batch(), FakeTokenizer(), row=0, ax=ax)
    assert out is fig
    rollout = _boxes(ax, "student", "rollout")
    assert len(rollout) == 10 and len(_boxes(ax, "student", "more")) == 1 and "… 2 more" in _texts(ax)
    assert [p.get_alpha() for p in rollout] == [0.85] * 10  # tokens 10, 11 are masked but beyond max_rollout
    out = plot_dual_contexts(_batch(), FakeTokenizer(), row=0, max_rollout=12)
    assert [p.get_alpha() for p in _boxes(out.axes[0], "student", "rollout")][-3:] == [0.85, 0.35, 0.35]
    with pytest.raises(ValueError, match="tail"):
        plot_dual_contexts(_batch(), FakeTokenizer(), tail=0)


# ---------------------------------------------------------------------------- one colour scale


def test_shared_vmax_over_mixed_inputs_ignores_nan_and_inf():
    mixed = ([0.1, float("nan"), None], np.array([[0.5, np.inf]]), torch.tensor([-0.7, 0.2]))
    assert shared_vmax(*mixed) == pytest.approx(0.7)  # |-0.7| (float32)
    assert shared_vmax(torch.tensor([[0.3, float("nan")]]), [1.25]) == 1.25
    assert shared_vmax(torch.tensor([0.1, -2.5], dtype=torch.float64), 3) == 3.0
    assert shared_vmax([], [float("nan")]) == 0.0 and shared_vmax() == 0.0


def test_shared_vmax_gives_two_heatmaps_one_scale():
    tokens = ["a", "b"]
    before, after = [2.0, 0.5], [0.5, 0.1]
    vmax = shared_vmax(before, after)
    color = [p.get_facecolor() for fig in (plot_divergence_heatmap(tokens, before, vmax=vmax),
                                           plot_divergence_heatmap(tokens, after, vmax=vmax))
             for p in fig.axes[0].patches]
    assert color[1] == color[2]  # 0.5 in both figures
    own_scale = plot_divergence_heatmap(tokens, after).axes[0].patches[0].get_facecolor()
    assert own_scale != color[2]  # on its own scale 0.5 would be the darkest colour


def test_heatmaps_shared_scale_one_figure_one_colour_bar():
    tokens = ["The", " answer", " is", " 3", "\n", "So"]
    panels = {"before": (tokens, [0.1, 0.5, 0.2, 2.0, 0.0, 0.1]),
              "after": (tokens, torch.tensor([0.05, 0.5, 0.1, 0.4, float("nan"), 0.02]))}
    fig = plot_heatmaps_shared_scale(panels, width=20)
    assert isinstance(fig, Figure)
    colour_bars = [ax for ax in fig.axes if ax.get_ylabel() == "D[n]"]
    assert len(colour_bars) == 1 and len(fig.axes) == 3
    assert colour_bars[0].get_ylim() == pytest.approx((0.0, 2.0))
    before_ax, after_ax = (ax for ax in fig.axes if ax not in colour_bars)
    assert before_ax.get_title(loc="left") == "before" and after_ax.get_title(loc="left") == "after"
    assert len(before_ax.patches) == len(after_ax.patches) == 6
    assert before_ax.patches[1].get_facecolor() == after_ax.patches[1].get_facecolor()  # 0.5 in both
    assert before_ax.patches[3].get_facecolor() != after_ax.patches[3].get_facecolor()  # 2.0 vs 0.4
    assert after_ax.patches[4].get_facecolor()[3] == 0.0  # NaN: no colour
    # the same layout as the single heatmap: token boxes at the same character cells
    single = plot_divergence_heatmap(tokens, [0.1, 0.5, 0.2, 2.0, 0.0, 0.1], width=20).axes[0]
    assert [(p.get_x(), p.get_y(), p.get_width()) for p in single.patches] == \
        [(p.get_x(), p.get_y(), p.get_width()) for p in before_ax.patches]
    fig = plot_heatmaps_shared_scale(panels, vmax=4.0)
    assert next(ax for ax in fig.axes if ax.get_ylabel() == "D[n]").get_ylim() == pytest.approx((0.0, 4.0))


def test_heatmaps_shared_scale_diverging_when_any_panel_is_negative():
    panels = {"a": (["x", "y"], [0.5, 1.0]), "b": (["x", "y"], [-0.25, 0.5])}
    fig = plot_heatmaps_shared_scale(panels)
    bar = next(ax for ax in fig.axes if ax.get_ylabel() == "D[n]")
    assert bar.get_ylim() == pytest.approx((-1.0, 1.0))
    a, b = (ax for ax in fig.axes if ax is not bar)
    assert a.patches[0].get_facecolor() == b.patches[1].get_facecolor()
    with pytest.raises(ValueError, match="panel 'a'"):
        plot_heatmaps_shared_scale({"a": (["x"], [0.1, 0.2])})
