"""Pictures of one rollout: its tokens coloured by the divergence D[n], token tables, the teacher's and
student's top alternatives, and the per-entry summands and per-position divergence behind one loss.

Inputs are plain Python / torch values (token strings, per-token values, logits rows); outputs a
``matplotlib.figure.Figure``, an HTML string or a ``pandas.DataFrame``. Nothing here computes the
objective (that is ``opsd.divergence``); the style is ``opsd.viz.plots``'s.

    html  divergence_heatmap_html / show_divergence_heatmap   tokens coloured by D[n] (JupyterLab)
          special_tokens_html                                  chat text with control tokens made visible
    figs  plot_divergence_heatmap                              the same heatmap as a figure (PNG / PDF)
          plot_logprob_scatter, plot_summands, plot_divergence_kinds
    data  token_table, top_alternatives, top_divergence_alternatives
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import HTML, display

from opsd.viz.plots import _new_axes, styled

# Colours of the heatmap's two ends (sequential for D >= 0, diverging when some D < 0).
_SEQUENTIAL_CMAP = "Reds"
_DIVERGING_CMAP = "RdBu_r"


# ------------------------------------------------------------------------------------- token heatmaps


def visible_token(token: str, *, spaces: bool = False) -> str:
    """A token string with invisible characters shown: newline ``⏎``, tab ``→``, carriage return ``␍``,
    empty ``∅``; with ``spaces=True`` also spaces as ``␣`` (for tables, where HTML would swallow them)."""
    token = str(token)
    if token == "":
        return "∅"
    token = token.replace("\r", "␍").replace("\t", "→").replace("\n", "⏎")
    return token.replace(" ", "␣") if spaces else token


def _as_floats(values) -> list[float]:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().tolist()
    elif hasattr(values, "tolist"):
        values = values.tolist()
    return [float("nan") if v is None else float(v) for v in values]


def _norm_and_cmap(values: Sequence[float], vmax: float | None, cmap: str | None):
    finite = [v for v in values if math.isfinite(v)]
    top = vmax if vmax is not None else max((abs(v) for v in finite), default=0.0)
    top = top if top > 0 else 1.0
    if any(v < 0 for v in finite):
        return mpl.colors.Normalize(vmin=-top, vmax=top), mpl.colormaps[cmap or _DIVERGING_CMAP]
    return mpl.colors.Normalize(vmin=0.0, vmax=top), mpl.colormaps[cmap or _SEQUENTIAL_CMAP]


def divergence_colors(values, *, vmax: float | None = None, cmap: str | None = None) -> list[str | None]:
    """Hex background colour per value (None for NaN).

    D >= 0 everywhere: a sequential map from 0 (white) to ``vmax`` (default: the largest value), so
    the colour darkens monotonically with D. Some D < 0 (point-wise clipping): a diverging map
    centred on 0, negative blue, positive red.
    """
    values = _as_floats(values)
    return _scale_colors(values, *_norm_and_cmap(values, vmax, cmap))


def _scale_colors(values: Sequence[float], norm, colormap) -> list[str | None]:
    """Hex colour of each value under one colour scale (None for NaN)."""
    return [mpl.colors.to_hex(colormap(norm(v)), keep_alpha=False) if math.isfinite(v) else None for v in values]


def _text_color(background: str | None) -> str:
    if background is None:
        return "#000000"
    r, g, b = mpl.colors.to_rgb(background)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#ffffff" if luminance < 0.45 else "#000000"


def _heatmap(tokens, values, vmax, cmap):
    """(tokens as strings, values as floats, each token's colour, the colour scale's norm and colormap)."""
    tokens, values = [str(t) for t in tokens], _as_floats(values)
    if len(tokens) != len(values):
        raise ValueError(f"got {len(tokens)} tokens but {len(values)} values")
    return tokens, values, divergence_colors(values, vmax=vmax, cmap=cmap), *_norm_and_cmap(values, vmax, cmap)


def divergence_heatmap_html(tokens: Sequence[str], values, *, vmax: float | None = None, title: str | None = None,
                            cmap: str | None = None, digits: int = 4) -> str:
    """HTML of the rollout with each token's background coloured by its divergence D[n].

    One ``<span class="opsd-tok">`` per token (HTML-escaped; newlines shown as ``⏎`` and a line break,
    tabs as ``→``), with the value in its tooltip. A colour legend and the optional title come first.
    ``values``: one number per token (list, numpy or torch); NaN tokens stay uncoloured.
    """
    tokens, values, colors, norm, colormap = _heatmap(tokens, values, vmax, cmap)
    parts = [('<div class="opsd-heatmap" style="font-family: ui-monospace, Menlo, Consolas, monospace; '
              'font-size: 13px; line-height: 1.9;">')]
    if title:
        parts.append(f'<div class="opsd-title" style="font-weight: bold; margin-bottom: 4px;">{html.escape(title)}</div>')
    stops = ", ".join(mpl.colors.to_hex(colormap(x)) for x in np.linspace(0, 1, 7))
    parts.append(
        '<div class="opsd-legend" style="display: flex; align-items: center; gap: 6px; font-size: 11px; '
        f'margin-bottom: 6px;"><span>{norm.vmin:.3g}</span><span style="display: inline-block; width: 160px; '
        f'height: 10px; background: linear-gradient(to right, {stops});"></span><span>{norm.vmax:.3g}</span>'
        "<span>per-token divergence D[n] (hover a token for its value)</span></div>"
    )
    parts.append('<div class="opsd-text" style="white-space: pre-wrap; word-break: break-word;">')
    for i, (token, value, color) in enumerate(zip(tokens, values, colors)):
        shown = html.escape(visible_token(token))
        tip = f"#{i} {token!r}: D = {value:.{digits}f}" if math.isfinite(value) else f"#{i} {token!r}: n/a"
        style = (f"background-color: {color}; color: {_text_color(color)}; " if color else "") + \
            "border-radius: 2px; padding: 0 1px;"
        parts.append(f'<span class="opsd-tok" style="{style}" title="{html.escape(tip, quote=True)}">{shown}</span>')
        if "\n" in token:
            parts.append("<br>")
    parts.append("</div></div>")
    return "".join(parts)


def show_divergence_heatmap(tokens: Sequence[str], values, **kwargs) -> None:
    """Display :func:`divergence_heatmap_html` in Jupyter (returns None, so a cell ending with this call
    shows the heatmap once)."""
    display(HTML(divergence_heatmap_html(tokens, values, **kwargs)))


def _special_strings(special) -> list[str]:
    if isinstance(special, str):
        return [special]
    if hasattr(special, "added_tokens_decoder"):  # a tokenizer: control tokens and other added tokens
        found = {t.content for t in special.added_tokens_decoder.values()}
        found |= set(getattr(special, "all_special_tokens", []) or [])
        return sorted((s for s in found if s), key=len, reverse=True)
    return sorted((str(s) for s in special if s), key=len, reverse=True)


def special_tokens_html(text: str, special, *, title: str | None = None) -> str:
    """HTML of a chat-templated prompt with its control tokens as coloured badges and newlines as ``⏎``.

    ``special``: a tokenizer (its added tokens, e.g. ``<|im_start|>``, ``<think>``) or a list of strings.
    Each badge is a ``<span class="opsd-special">``.
    """
    markers = _special_strings(special)  # longest first: the regex tries them in this order
    parts = re.split(f"({'|'.join(map(re.escape, markers))})", text) if markers else [text]
    pieces = []
    for i, part in enumerate(parts):  # odd positions: the markers the split kept
        if i % 2:
            pieces.append('<span class="opsd-special" style="background: #2f4b7c; color: white; '
                          f'border-radius: 3px; padding: 0 3px;">{html.escape(part)}</span>')
        elif part:
            pieces.append(html.escape(part).replace("\n", '<span style="color: #999;">⏎</span>\n'))
    head = f'<div style="font-weight: bold; margin-bottom: 4px;">{html.escape(title)}</div>' if title else ""
    return ('<div class="opsd-chat" style="font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px;">'
            f'{head}<div style="white-space: pre-wrap; border: 1px solid #ddd; padding: 6px;">{"".join(pieces)}'
            "</div></div>")


def _token_layout(tokens: Sequence[str], width: int):
    """Token boxes in monospace character cells: ([(x0, line, n_chars, shown text)], n_lines, widest line).

    Lines wrap at ``width`` characters; newline tokens end a line.
    """
    layout, x, line = [], 0, 0
    for token in tokens:
        shown = visible_token(token)
        n = max(len(shown), 1)
        if x > 0 and x + n > width:
            x, line = 0, line + 1
        layout.append((x, line, n, shown))
        x += n
        if "\n" in token:
            x, line = 0, line + 1
    n_lines = max((row for _, row, _, _ in layout), default=0) + 1
    used = max((x0 + n for x0, _, n, _ in layout), default=1)  # widest line, in characters
    return layout, n_lines, used


def _draw_token_boxes(ax, layout, colors, *, n_lines: int, used: int, fontsize: float, title: str | None) -> None:
    """One rectangle patch (coloured) and one text per token of ``_token_layout`` on ``ax``, axis off."""
    for (x0, row, n, shown), color in zip(layout, colors):
        ax.add_patch(mpl.patches.Rectangle((x0, row + 0.08), n, 0.84, facecolor=color or "none",
                                           edgecolor="#dddddd", linewidth=0.3))
        ax.text(x0 + n / 2, row + 0.5, shown, ha="center", va="center", fontsize=fontsize,
                family="monospace", color=_text_color(color))
    ax.set_xlim(0, used)
    ax.set_ylim(n_lines, 0)
    ax.set_axis_off()
    if title:
        ax.set_title(title, loc="left")


def _token_cell_inches(fontsize: float) -> tuple[float, float]:
    """(width of one monospace character, height of one token line) in inches at ``fontsize``."""
    return 0.6 * fontsize / 72.0, 2.4 * fontsize / 72.0


def plot_divergence_heatmap(tokens: Sequence[str], values, *, ax=None, width: int = 80, vmax: float | None = None,
                            cmap: str | None = None, title: str | None = None, fontsize: float = 9.0):
    """The heatmap as a figure: token boxes wrapped at ``width`` characters, coloured by D[n], plus a colour bar.

    Newline tokens end a line. One rectangle patch per token. Returns the Figure.
    """
    tokens, values, colors, norm, colormap = _heatmap(tokens, values, vmax, cmap)
    layout, n_lines, used = _token_layout(tokens, width)
    char_in, line_in = _token_cell_inches(fontsize)
    with styled():
        cax = None
        if ax is None:
            # Axes exactly `used` monospace characters wide (so token text fits its box), colour bar beside.
            text_w, text_h = used * char_in, n_lines * line_in
            bar_h = min(max(text_h, 0.8), 1.5)
            fig_w, fig_h = text_w + 1.1, max(text_h, bar_h) + 0.5
            fig = plt.figure(figsize=(fig_w, fig_h))
            top = max(text_h, bar_h) + 0.1
            ax = fig.add_axes((0.05 / fig_w, (top - text_h) / fig_h, text_w / fig_w, text_h / fig_h))
            cax = fig.add_axes(((0.2 + text_w) / fig_w, (top - bar_h) / fig_h, 0.12 / fig_w, bar_h / fig_h))
        else:
            fig = ax.figure
        _draw_token_boxes(ax, layout, colors, n_lines=n_lines, used=used, fontsize=fontsize, title=title)
        mappable = mpl.cm.ScalarMappable(norm=norm, cmap=colormap)
        if cax is not None:
            fig.colorbar(mappable, cax=cax, label="D[n]")
        else:
            fig.colorbar(mappable, ax=ax, fraction=0.03, pad=0.01, label="D[n]")
    return fig


# --------------------------------------------------------------------------------------- token tables


def token_table(tokenizer, ids, *, offset: int = 0, highlight: int | None = None):
    """DataFrame of token ids: position, id, token (visible), special. ``offset`` numbers the first row;
    ``highlight`` adds a ``note`` column marking that position (e.g. where the rollout starts)."""
    ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    special = set(_special_strings(tokenizer))
    rows = []
    for i, tid in enumerate(ids):
        token = tokenizer.decode([tid])
        rows.append({"position": offset + i, "id": tid, "token": visible_token(token, spaces=True),
                     "special": token in special})
    df = pd.DataFrame(rows)
    if highlight is not None and not df.empty:
        df["note"] = ["◀" if p == highlight else "" for p in df["position"]]
    return df


def _probs(logits_row, temperature: float):
    row = logits_row.detach().float().reshape(-1)
    return torch.softmax(row / temperature, dim=-1)


def top_alternatives(student_logits_row, teacher_logits_row, tokenizer, k: int = 5, temperature: float = 1.0):
    """Teacher's and student's k most likely next tokens at one position, side by side.

    Logits rows: [V]. Returns a DataFrame with columns rank, teacher_token, p_teacher, student_token,
    p_student (probabilities at ``temperature``), and each token's probability under the other role
    (``p_student_of_teacher_token``, ``p_teacher_of_student_token``).
    """
    p_s = _probs(student_logits_row, temperature)
    p_t = _probs(teacher_logits_row, temperature)
    t_top = p_t.topk(k)
    s_top = p_s.topk(k)
    rows = []
    for r in range(k):
        ti, si = int(t_top.indices[r]), int(s_top.indices[r])
        rows.append({
            "rank": r + 1,
            "teacher_token": visible_token(tokenizer.decode([ti]), spaces=True),
            "p_teacher": float(t_top.values[r]),
            "p_student_of_teacher_token": float(p_s[ti]),
            "student_token": visible_token(tokenizer.decode([si]), spaces=True),
            "p_student": float(s_top.values[r]),
            "p_teacher_of_student_token": float(p_t[si]),
        })
    return pd.DataFrame(rows)


def top_divergence_alternatives(student_logits, teacher_logits, token_ids, divergence, tokenizer, *,
                                positions: int = 3, k: int = 5, temperature: float = 1.0):
    """:func:`top_alternatives` at the ``positions`` rollout positions with the largest divergence.

    student_logits, teacher_logits: [N, V] for one rollout; token_ids: [N] sampled tokens; divergence: [N].
    Returns one DataFrame, rows grouped by position (columns position, sampled_token, D, then those of
    ``top_alternatives``), positions in decreasing D.
    """
    values = np.asarray(_as_floats(divergence))
    ids = [int(i) for i in (token_ids.tolist() if hasattr(token_ids, "tolist") else token_ids)]
    order = [int(i) for i in np.argsort(-np.nan_to_num(values, nan=-np.inf))[:positions]]
    frames = []
    for pos in order:
        df = top_alternatives(student_logits[pos], teacher_logits[pos], tokenizer, k=k, temperature=temperature)
        df.insert(0, "D", float(values[pos]))
        df.insert(0, "sampled_token", visible_token(tokenizer.decode([ids[pos]]), spaces=True))
        df.insert(0, "position", pos)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ------------------------------------------------------------------------------ divergence of one rollout


def plot_logprob_scatter(student_logprobs, teacher_logprobs, *, tokens: Sequence[str] | None = None, ax=None,
                         annotate: int = 6, title: str | None = None):
    """log p_S(ŷ_n) vs log p_T(ŷ_n) for sampled tokens, with the diagonal; the ``annotate`` tokens
    farthest from it are labelled. Points above the diagonal: the teacher likes the token more."""
    s = np.asarray(_as_floats(student_logprobs))
    t = np.asarray(_as_floats(teacher_logprobs))
    with styled():
        fig, ax = _new_axes(ax, figsize=(4.8, 4.4))
        ax.scatter(s, t, s=14, alpha=0.6)
        lo = float(min(s.min(initial=0), t.min(initial=0))) - 0.5
        ax.plot([lo, 0.2], [lo, 0.2], color="black", lw=0.8, ls="--", label="log p_T = log p_S")
        if tokens is not None and annotate:
            gap = np.abs(t - s)
            for i in np.argsort(-gap)[:annotate]:
                ax.annotate(visible_token(tokens[i]), (s[i], t[i]), fontsize=8, xytext=(3, 3),
                            textcoords="offset points")
        ax.set(xlabel="log p_S(sampled token)  (student context)", ylabel="log p_T(sampled token)  (teacher context)",
               title=title or "The same sampled tokens, scored in both contexts")
        ax.legend(loc="lower right")
    return fig


def plot_summands(summands, *, clip: float | None = 0.05, ax=None, title: str | None = None, linthresh: float = 1e-4):
    """Histogram of per-entry summands l[n, v] (symlog x axis), with the point-wise clip c marked.

    Everything right of c is cut to c by point-wise clipping; negative summands pass untouched.
    """
    values = summands.detach().float().reshape(-1).cpu().numpy() if hasattr(summands, "detach") \
        else np.asarray(summands, dtype=float).reshape(-1)
    with styled():
        fig, ax = _new_axes(ax, figsize=(6.4, 3.4))
        top = max(float(np.abs(values).max(initial=0.0)), linthresh * 10)
        pos = np.logspace(np.log10(linthresh), np.log10(top), 30)
        edges = np.concatenate([-pos[::-1], [0.0], pos])
        ax.hist(values, bins=edges, color="#7f7f7f")
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_yscale("log")
        if clip is not None:
            above = int((values > clip).sum())
            ax.axvspan(clip, top * 1.5, color="#d62728", alpha=0.12, lw=0)
            ax.axvline(clip, color="#d62728", ls="--", label=f"c = {clip}: {above} of {values.size:,} entries above")
        negative = int((values < 0).sum())
        ax.axvline(0.0, color="black", lw=0.8)
        ax.plot([], [], " ", label=f"{negative:,} negative entries (never clipped)")
        ax.set(xlabel="summand l[n, v]  (symlog)", ylabel="entries", title=title or "Per-entry summands of the divergence")
        ax.legend(loc="upper left")
    return fig


def plot_divergence_kinds(per_token: Mapping[str, Any], *, mask=None, ax=None, title: str | None = None):
    """Per-position divergence of one rollout under several objectives ({label: [N] values}), means in
    the legend (over ``mask`` when given, a [N] bool)."""
    keep = None if mask is None else np.asarray(_as_floats(mask)) > 0
    with styled():
        fig, ax = _new_axes(ax, figsize=(7.0, 3.2))
        for label, values in per_token.items():
            v = np.asarray(_as_floats(values))
            shown = v if keep is None else np.where(keep, v, np.nan)
            mean = np.nanmean(shown) if np.isfinite(shown).any() else float("nan")
            ax.plot(np.arange(len(v)), shown, marker=".", ms=4, label=f"{label} (mean {mean:.3f})")
        ax.axhline(0.0, color="black", lw=0.8, ls="--")
        ax.set(xlabel="rollout position n", ylabel="D[n]", title=title or "Per-token divergence, same rollout")
        ax.legend()
    return fig
