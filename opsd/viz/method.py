"""Pictures of the method's pieces for the teaching notebooks: one rollout position's two distributions,
forward vs reverse KL on a toy teacher, point-wise clipping on one token, the two contexts of one row and
several token heatmaps on one colour scale.

Every function is handed data (logits, a `opsd.toy` case, a `opsd.contexts.JoinedBatch`, per-token values)
and returns a ``matplotlib.figure.Figure``; nothing here loads a model or computes the objective other
than through `opsd.divergence.token_divergence`. The style is ``opsd.viz.plots``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch

from opsd.contexts import JoinedBatch
from opsd.divergence import token_divergence
from opsd.toy import ClipCase, OnePeakedFit, clip_case_values
from opsd.viz.plots import _new_axes, styled
from opsd.viz.rollout import (
    _as_floats,
    _draw_token_boxes,
    _norm_and_cmap,
    _scale_colors,
    _token_cell_inches,
    _token_layout,
    visible_token,
)

__all__ = ["plot_clipping_case", "plot_dual_contexts", "plot_heatmaps_shared_scale", "plot_kl_direction_fits",
           "plot_position_distributions", "shared_vmax"]

TEACHER_COLOR, STUDENT_COLOR, ROLLOUT_COLOR = "#ff7f0e", "#1f77b4", "#2ca02c"
PAD_COLOR, CLIP_COLOR = "#d9d9d9", "#d62728"


def _numpy(values) -> np.ndarray:
    """float64 numpy of a tensor, array, list (None -> NaN) or number; any shape, flattened."""
    if isinstance(values, torch.Tensor):
        return values.detach().double().cpu().reshape(-1).numpy()
    return np.asarray(values, dtype=float).reshape(-1)


def _token_label(tokenizer, token_id: int, max_chars: int | None = None) -> str:
    shown = visible_token(tokenizer.decode([int(token_id)]), spaces=True)
    return shown if max_chars is None or len(shown) <= max_chars else shown[: max_chars - 1] + "…"


# ------------------------------------------------------------------------------------- one position


def plot_position_distributions(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tokenizer, *,
                                k: int = 8, temperature: float = 1.0, sampled_id: int | None = None, ax=None,
                                title: str | None = None):
    """p_T and p_S at one rollout position (logits [V] each, softmax at ``temperature``) as paired bars.

    Shown: the union of each role's top-k tokens (and ``sampled_id``, marked ★ and bold), sorted by p_T;
    two horizontal bars per token. Default title: the forward KL(p_T || p_S) at the position.
    """
    z_s, z_t = student_logits.detach().double().reshape(-1), teacher_logits.detach().double().reshape(-1)
    p_s, p_t = torch.softmax(z_s / temperature, -1), torch.softmax(z_t / temperature, -1)
    k = min(k, p_t.numel())
    ids = set(p_t.topk(k).indices.tolist()) | set(p_s.topk(k).indices.tolist())
    if sampled_id is not None:
        ids.add(int(sampled_id))
    ids = sorted(ids, key=lambda i: (-float(p_t[i]), -float(p_s[i]), i))
    kl = float(token_divergence(z_s, z_t, temperature=temperature))
    y, h = np.arange(len(ids)), 0.4
    with styled():
        fig, ax = _new_axes(ax, figsize=(5.6, 1.2 + 0.32 * len(ids)))
        ax.barh(y - h / 2, p_t[ids].numpy(), height=h, color=TEACHER_COLOR, label="teacher p_T (problem + reference)")
        ax.barh(y + h / 2, p_s[ids].numpy(), height=h, color=STUDENT_COLOR, label="student p_S (problem only)")
        labels = [("★ " if i == sampled_id else "") + _token_label(tokenizer, i) for i in ids]
        ax.set_yticks(y, labels)
        for tick, i in zip(ax.get_yticklabels(), ids):
            if i == sampled_id:
                tick.set_fontweight("bold")
        ax.invert_yaxis()
        ax.set(xlabel="probability", xlim=(0, 1.05 * float(max(p_t[ids].max(), p_s[ids].max()))),
               title=title or f"Next-token distributions at one position: KL(p_T‖p_S) = {kl:.3f}")
        ax.grid(axis="y", visible=False)
        ax.legend(loc="lower right")
    return fig


# -------------------------------------------------------------------------------- KL direction (toy)


def _fit_summary(fit, x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(probs, mean, std) of a OnePeakedFit (its parameters) or of a probability vector (its moments)."""
    if isinstance(fit, OnePeakedFit):
        return _numpy(fit.probs), fit.mean, fit.std
    p = _numpy(fit)
    mean = float((p * x).sum())
    return p, mean, float(np.sqrt((p * (x - mean) ** 2).sum()))


def plot_kl_direction_fits(x, teacher_probs, fits: Mapping[str, OnePeakedFit | torch.Tensor], *, ax=None,
                           title: str | None = None):
    """The toy teacher p_T on the grid x [G] as a filled area, each one-peaked fit {label: fit or probs [G]}
    as a line, its mean and std in the legend (`opsd.toy.fit_one_peaked_student`)."""
    x = _numpy(x)
    with styled():
        fig, ax = _new_axes(ax, figsize=(6.4, 3.4))
        ax.fill_between(x, _numpy(teacher_probs), color="#7f7f7f", alpha=0.3, lw=0,
                        label="teacher p_T")
        for i, (label, fit) in enumerate(fits.items()):
            probs, mean, std = _fit_summary(fit, x)
            ax.plot(x, probs, color=f"C{i}", label=f"{label}: mean {round(mean, 2) + 0.0:+.2f}, std {std:.2f}")
        ax.set(xlabel="x", ylabel="probability", title=title or "One peak fitted to two: the KL direction decides")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left")
    return fig


# ------------------------------------------------------------------------------ clipping on one token


def plot_clipping_case(case: ClipCase, clip: float, *, title: str | None = None):
    """Point-wise clipping on one token (`opsd.toy.clip_case_values`), three panels: (a) the summands l_v
    per word, the clip level c and the part above it that the clip removes; (b) KL vs the clipped
    divergence sum_v min(l_v, c); (c) the gradient dD/dz_S per word without and with the clip."""
    v = {key: _numpy(t) for key, t in clip_case_values(case, clip).items()}
    words = [visible_token(w, spaces=True) for w in case.words]
    x = np.arange(len(words))
    with styled():
        fig, (a, b, c) = plt.subplots(1, 3, figsize=(11.0, 3.4))
        a.bar(x, v["clipped"], width=0.6, color=TEACHER_COLOR, label="kept: min(l_v, c)")
        over = v["summands"] > clip
        a.bar(x[over], (v["summands"] - clip)[over], bottom=clip, width=0.6, facecolor="none", hatch="//",
              edgecolor=CLIP_COLOR, label="removed by the clip")
        a.axhline(clip, color=CLIP_COLOR, ls="--", lw=1.0, label=f"c = {clip:g}")
        a.axhline(0.0, color="black", lw=0.8)
        a.set_xticks(x, words)
        a.set(title="(a) summands l_v = p_T(v) log(p_T(v) / p_S(v))", ylabel="l_v")
        a.legend(loc="upper right")

        kinds = [float(v["divergence"][0]), float(v["clipped_divergence"][0])]
        bars = b.bar([0, 1], kinds, width=0.55, color=[TEACHER_COLOR, CLIP_COLOR])
        b.bar_label(bars, fmt="%.3f", padding=2)
        b.axhline(0.0, color="black", lw=0.8)
        b.set_xticks([0, 1], ["forward KL", f"point-wise clip\nc = {clip:g}"])
        span = max(kinds) - min(kinds + [0.0])
        b.set_ylim(min(kinds + [0.0]) - 0.15 * span, max(kinds + [0.0]) + 0.15 * span)
        b.set(title="(b) the token's divergence D", ylabel="D")

        w = 0.38
        c.bar(x - w / 2, v["grad"], width=w, color="#7f7f7f", label="no clip: p_S − p_T")
        c.bar(x + w / 2, v["clipped_grad"], width=w, color=CLIP_COLOR, label="point-wise clip")
        c.axhline(0.0, color="black", lw=0.8)
        c.set_xticks(x, words)
        c.set(title="(c) gradient ∂D/∂z_S per word", ylabel="∂D/∂z_S")
        c.legend(loc="lower right")
        fig.suptitle(title or f"One token, {len(words)} words: point-wise clipping at c = {clip:g}")
        fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------- the two contexts


def _prompt_boxes(ids, mask, width: int, tokenizer, head: int, tail: int) -> list[tuple[str, str, tuple]]:
    """One role's [left padding][prompt] as boxes (kind, text, (first column, last column)), left to right;
    kind pad (one box for all), prompt (one per token) or skip (the middle of a long prompt)."""
    n_pad = int((mask[:width] == 0).sum())
    cols = list(range(n_pad, width))
    boxes = [("pad", f"pad ×{n_pad}", (0, n_pad - 1))] if n_pad else []
    skipped = cols[head:-tail] if len(cols) > head + tail + 1 else []
    shown = cols[:head] + [None] + cols[-tail:] if skipped else cols
    for j in shown:
        boxes.append(("skip", f"… {len(skipped)} tokens …", (skipped[0], skipped[-1])) if j is None
                     else ("prompt", _token_label(tokenizer, ids[j], 10), (j, j)))
    return boxes


def _box_width(text: str) -> float:
    return max(len(text), 1) + 1.0


def plot_dual_contexts(batch: JoinedBatch, tokenizer, row: int = 0, *, head: int = 4, tail: int = 6,
                       max_rollout: int = 10, ax=None, title: str | None = None):
    """The two contexts of one row of `batch` as two rows of token boxes, [left padding][prompt][rollout]:
    the teacher (problem + reference, prompt width P_t) above the student (problem only, P_s), drawn so
    that their rollout columns line up (the student's sequence shifted by P_t - P_s). Prompts longer than
    head + tail + 1 tokens show their first ``head`` and last ``tail``; arrows mark that the logits at
    column P - 1 predict rollout token 0. Patch gids: "<role>-<kind>-<i>", kind pad / prompt / skip /
    rollout / more."""
    if tail < 1 or head < 0:
        raise ValueError(f"need tail >= 1 (the last prompt token predicts the rollout) and head >= 0, "
                         f"got tail={tail}, head={head}")
    n = min(batch.completion_length, max_rollout)
    rollout_ids, kept = batch.completion_ids[row].tolist(), batch.loss_mask[row].tolist()
    rollout = [("rollout", _token_label(tokenizer, rollout_ids[i], 10), i) for i in range(n)]
    if batch.completion_length > n:
        rollout.append(("more", f"… {batch.completion_length - n} more", None))
    roles = {}  # role: (y, label, prompt colour, prompt width P, [(kind, text, columns)] left to right)
    for role, y, label, color, width, ids, mask in (
            ("teacher", 1.0, "teacher: problem + reference", TEACHER_COLOR, batch.teacher_prompt_width,
             batch.teacher_input_ids, batch.teacher_attention_mask),
            ("student", 0.0, "student: problem only", STUDENT_COLOR, batch.student_prompt_width,
             batch.student_input_ids, batch.student_attention_mask)):
        boxes = _prompt_boxes(ids[row].tolist(), mask[row], width, tokenizer, head, tail)
        boxes += [(kind, text, None if j is None else (width + j, width + j)) for kind, text, j in rollout]
        roles[role] = (y, label, color, width, boxes)
    face = {"pad": PAD_COLOR, "skip": "white", "rollout": ROLLOUT_COLOR, "more": "white"}
    height, fontsize, label_w = 0.56, 7.5, 34.0
    prompt_w = {role: sum(_box_width(t) for k, t, _ in boxes if k not in ("rollout", "more"))
                for role, (*_, boxes) in roles.items()}
    left, right = -max(prompt_w.values()), sum(_box_width(text) for _, text, _ in rollout)
    with styled():
        if ax is None:  # axes as wide as the boxes' monospace characters, so each text fits its box
            fig = plt.figure(figsize=((right - left + label_w + 0.5) * _token_cell_inches(fontsize)[0] / 0.98, 2.9))
            ax = fig.add_axes((0.01, 0.02, 0.98, 0.86))
        fig = ax.figure
        for role, (y, label, color, width, boxes) in roles.items():
            x0, placed, counts = -prompt_w[role], {}, {}
            for kind, text, cols in boxes:
                w, i = _box_width(text), counts.get(kind, 0)
                counts[kind] = i + 1
                dimmed = kind == "rollout" and not kept[cols[0] - width]
                ax.add_patch(mpl.patches.Rectangle(
                    (x0, y - height / 2), w, height, facecolor=face.get(kind, color), alpha=0.35 if dimmed else 0.85,
                    edgecolor="#555555", lw=0.6, ls="--" if kind in ("skip", "more") else "-",
                    gid=f"{role}-{kind}-{i}"))
                ax.text(x0 + w / 2, y, text, ha="center", va="center", fontsize=fontsize, family="monospace")
                if cols is not None and kind != "skip":
                    shown = str(cols[0]) if cols[0] == cols[1] else f"{cols[0]}–{cols[1]}"
                    ax.text(x0 + w / 2, y - height / 2 - 0.04, shown, ha="center", va="top", fontsize=5.5,
                            color="#666666")
                placed.setdefault(kind, []).append(x0 + w / 2)
                x0 += w
            ax.text(left - 1.0, y, label, ha="right", va="center", fontsize=8.5, color=color, fontweight="bold")
            if placed.get("prompt") and placed.get("rollout"):  # column P - 1 -> rollout token 0
                side = 1 if role == "teacher" else -1
                ax.annotate("", xy=(placed["rollout"][0], y + side * height / 2),
                            xytext=(placed["prompt"][-1], y + side * height / 2),
                            arrowprops={"arrowstyle": "->", "color": color, "lw": 1.0,
                                        "shrinkA": 0, "shrinkB": 0, "connectionstyle":
                                        f"arc,angleA={90 * side},angleB={90 * side},armA=9,armB=9,rad=3"})
                ax.text(placed["prompt"][-1], y + side * (height / 2 + 0.32),
                        f"logits at column P{'_t' if side > 0 else '_s'} − 1 = {width - 1} predict rollout token 0",
                        ha="right", va="center", fontsize=7, color=color)
        ax.plot([0.0, 0.0], [height / 2, 1.0 - height / 2 - 0.16], color="#555555", lw=0.8, ls=":")  # rollout starts
        ax.set_xlim(left - label_w, right + 0.5)
        ax.set_ylim(-0.75, 1.75)
        ax.set_axis_off()
        p_s, p_t = batch.student_prompt_width, batch.teacher_prompt_width
        ax.set_title(title or f"Row {row}: one rollout in two contexts (P_s = {p_s}, P_t = {p_t}: the student's "
                     f"columns are shifted by P_t − P_s = {p_t - p_s})")
    return fig


# ---------------------------------------------------------------------------- heatmaps, one scale


def shared_vmax(*values) -> float:
    """max |D| over all finite entries of several per-token arrays (lists, numpy, torch; any shape), 0.0
    if none: the ``vmax`` that draws them on one colour scale (the heatmap's own per-panel default)."""
    flat = np.concatenate([_numpy(v) for v in values] or [np.zeros(0)])
    finite = np.abs(flat[np.isfinite(flat)])
    return float(finite.max()) if finite.size else 0.0


def plot_heatmaps_shared_scale(panels: Mapping[str, tuple[Sequence[str], object]], *, width: int = 80,
                               vmax: float | None = None, cmap: str | None = None, fontsize: float = 9.0):
    """Several token heatmaps {title: (tokens, values [N])} stacked in one figure with one colour bar:
    the same colour means the same D[n] in every panel (scale: ``vmax``, default `shared_vmax`; diverging
    if any panel has D < 0). Layout as `opsd.viz.rollout.plot_divergence_heatmap`."""
    items = []
    for name, (tokens, values) in panels.items():
        tokens, values = [str(t) for t in tokens], _as_floats(values)
        if len(tokens) != len(values):
            raise ValueError(f"panel {name!r}: got {len(tokens)} tokens but {len(values)} values")
        items.append((name, values, *_token_layout(tokens, width)))
    everything = [v for _, values, *_ in items for v in values]
    norm, colormap = _norm_and_cmap(everything, shared_vmax(everything) if vmax is None else vmax, cmap)
    char_in, line_in = _token_cell_inches(fontsize)
    title_in = 0.3
    heights = [n_lines * line_in for *_, n_lines, _ in items]
    used_max = max((used for *_, used in items), default=1)
    fig_w = used_max * char_in + 1.1
    fig_h = sum(heights) + title_in * len(items) + 0.2
    with styled():
        fig = plt.figure(figsize=(fig_w, fig_h))
        top = fig_h - 0.1
        for (name, values, layout, n_lines, used), text_h in zip(items, heights):
            top -= title_in
            ax = fig.add_axes((0.05 / fig_w, (top - text_h) / fig_h, used * char_in / fig_w, text_h / fig_h))
            _draw_token_boxes(ax, layout, _scale_colors(values, norm, colormap), n_lines=n_lines, used=used,
                              fontsize=fontsize, title=name)
            top -= text_h
        bar_h = min(max(fig_h - 0.2 - title_in, 0.8), 3.0)
        cax = fig.add_axes(((0.2 + used_max * char_in) / fig_w, (fig_h - 0.1 - title_in - bar_h) / fig_h,
                            0.12 / fig_w, bar_h / fig_h))
        fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=colormap), cax=cax, label="D[n]")
    return fig
