"""Plots of chats, layouts and per-token weights (notebooks 00–03, 06 and the widgets).

Weights are compared across schemes as `relative` = weight per token ÷ token-mean's weight on the same batch
(weights rescaled to the same total first), so 1 means "what token-mean gives", 8 means eight times that.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PolyCollection
from matplotlib.colors import LogNorm, to_rgb
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, NullLocator

from ..layouts import Batch, layout_waste
from ..report import length_profile
from ..tokenizer import ROLE_NAMES, render
from . import (
    PALETTE,
    ROLE_COLORS,
    TICK_LABEL_CHAR,
    InViewLocator,
    fixed_margins,
    legend_width,
    made_by,
    new_figure,
    readable_log_scale,
    redraws,
    refit_view,
    scheme_color,
    y_label_room,
)

__all__ = ["token_strip", "layout_diagram", "layout_diagrams", "waste_bars", "attention_mask_plot",
           "relative_weights", "weight_heatmap", "weight_heatmap_grid", "weight_vs_length", "share_by_bucket",
           "effective_vs_ideal"]

_ROLE_RGB = np.array([to_rgb(ROLE_COLORS[ROLE_NAMES[code]]) for code in sorted(ROLE_NAMES)])  # (5, 3)
_SPECIAL_LABEL = {256: "pad", 257: "bos", 258: "sys", 259: "usr", 260: "ast", 261: "eot"}
_LOSS_MARK = "#000000"
_WEIGHT_CMAP = "viridis"  # dark: down-weighted, yellow: up-weighted vs token-mean (colour-blind safe)


def _role_legend(ax, loss: bool = True, **kw) -> None:
    handles = [Patch(color=ROLE_COLORS[r], label=r) for r in ("bos", "system", "user", "assistant", "pad")]
    if loss:
        handles.append(Patch(color=_LOSS_MARK, label="loss token (trained on)"))
    ax.legend(handles=handles, fontsize=8, frameon=False, **kw)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return list(zip(starts.tolist(), (ends - starts).tolist()))


def _mark_loss(ax, loss_mask: np.ndarray) -> None:
    """A black bar along the lower third of every run of loss tokens (row r spans r-0.5..r+0.5), all of them one
    collection (one artist to draw, whatever the number of rows)."""
    bars = [[(s - 0.5, r + 0.12), (s - 0.5 + n, r + 0.12), (s - 0.5 + n, r + 0.42), (s - 0.5, r + 0.42)]
            for r, row in enumerate(loss_mask) for s, n in _runs(row)]
    if bars:
        ax.add_collection(PolyCollection(bars, facecolors=_LOSS_MARK, linewidths=0), autolim=False)


def token_strip(conv, *, per_line: int = 48, title: str | None = None):
    """A rendered chat as a grid of tokens (one byte or special token per cell), coloured by role, the loss
    tokens underlined in black. Special tokens read bos/sys/usr/ast/eot."""
    chat = conv if hasattr(conv, "loss_mask") else render(conv)
    n = len(chat.tokens)
    lines = -(-n // per_line)
    grid = np.full(lines * per_line, -1)
    grid[:n] = chat.role
    rgb = np.ones((lines * per_line, 3))
    rgb[:n] = _ROLE_RGB[np.asarray(chat.role)]
    fig, ax = new_figure(width=max(6.0, per_line * 0.2), height=0.9 + 0.34 * lines)
    ax.grid(False)
    ax.imshow(rgb.reshape(lines, per_line, 3), aspect="auto", interpolation="nearest",
              extent=(-0.5, per_line - 0.5, lines - 0.5, -0.5))
    mask = np.zeros(lines * per_line, bool)
    mask[:n] = chat.loss_mask
    _mark_loss(ax, mask.reshape(lines, per_line))
    for i, tok in enumerate(chat.tokens):
        label = _SPECIAL_LABEL.get(tok) or (chr(tok) if 32 <= tok < 127 else "·")
        ax.text(i % per_line, i // per_line - 0.08, label, ha="center", va="center",
                fontsize=4.5 if tok >= 256 else 7, family="monospace")
    ax.set_yticks(range(lines), [str(i * per_line) for i in range(lines)])
    ax.set_xlabel("token within the line (one byte or special token per cell)")
    ax.set_ylabel("position of the line's first token")
    n_loss = int(np.sum(chat.loss_mask))
    ax.set_title(title or f"{n} tokens, {n_loss} of them loss tokens ({n_loss / n:.0%})")
    _role_legend(ax, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def layout_diagram(batch: Batch, *, ax=None, title: str | None = None, max_rows: int | None = None, legend=True):
    """Rows of a laid-out batch as bars of tokens coloured by role (padding grey), loss tokens underlined in
    black, white lines between packed conversations: the format diagrams of docs/science.md §4 drawn from real tokens."""
    rows = batch.shape[0] if max_rows is None else min(max_rows, batch.shape[0])
    if ax is None:
        fig, ax = new_figure(width=8.0, height=1.0 + 0.28 * rows)
    ax.grid(False)
    _paint_rows(ax, batch, rows, title)
    ax.set_xlabel("position in the row (tokens)")
    ax.set_ylabel("row")
    ax.yaxis.set_major_locator(FixedLocator(range(0, rows, -(-rows // 8))))  # whole rows only, ≤ 8 of them
    if legend:
        _role_legend(ax, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax.figure


def _paint_rows(ax, batch: Batch, rows: int, title: str | None) -> None:
    """A layout diagram's data: the tokens as one image, the loss marks and packed boundaries as one collection
    each, the title. Painted again into the same axes for a redraw in place (layout_diagrams)."""
    role = batch.role[:rows].numpy()
    T = role.shape[1]
    extent = (-0.5, T - 0.5, rows - 0.5, -0.5)
    if ax.images:
        ax.images[0].set_data(_ROLE_RGB[role])
        ax.images[0].set_extent(extent)
    else:
        ax.imshow(_ROLE_RGB[role], aspect="auto", interpolation="nearest", extent=extent)
    for collection in list(ax.collections):
        collection.remove()
    _mark_loss(ax, batch.loss_mask[:rows].numpy())
    segment = batch.segment_id[:rows].numpy()
    rows_at, starts = np.nonzero((segment[:, 1:] != segment[:, :-1]) & (segment[:, 1:] > 0))
    if len(starts):  # one collection of white lines between packed conversations
        ax.vlines(starts + 0.5, rows_at - 0.5, rows_at + 0.5, color="white", linewidth=2.0)
    waste = layout_waste(batch)
    ax.set_title(title or f"{batch.layout}: {waste['rows']} rows × {T} positions, "
                          f"{waste['padding_fraction']:.0%} padding", fontsize=10)


_DIAGRAM_MARGINS = {"left": 0.75, "right": 1.85, "top": 0.32, "bottom": 0.55, "gap": 0.42}  # inches: labels, legend


def layout_diagrams(batches: Mapping[str, Batch], *, width: float = 9.0, fig=None):
    """The same conversations in several layouts, one panel each, on a common position axis. Laid out once with
    fixed margins in inches (room for the row labels, the titles, the legend on the right) instead of constrained
    layout: the figure's height follows the rows, so a widget would otherwise lay out every new row count afresh.
    `fig`: an earlier figure of this plot to redraw in place."""
    rows = [b.shape[0] for b in batches.values()]
    structure = (width, *batches, *rows)
    if redraws(fig, "layout_diagrams", structure):  # as many rows in each layout: new tokens in the same panels
        axes = np.array(fig.axes).reshape(-1, 1)
        for ax, batch in zip(axes[:, 0], batches.values()):
            _paint_rows(ax, batch, batch.shape[0], None)
    else:
        height = 1.2 + 0.22 * sum(rows) + 0.5 * len(rows)
        fig, axes = new_figure(len(batches), 1, width=width, height=height, sharex=True,
                               gridspec_kw={"height_ratios": [r + 2 for r in rows]})
        made_by(fig, "layout_diagrams", structure)
        m = _DIAGRAM_MARGINS
        fixed_margins(fig, left=m["left"], right=m["right"], top=m["top"], bottom=m["bottom"], hspace=m["gap"])
        for i, (ax, batch) in enumerate(zip(axes[:, 0], batches.values())):
            layout_diagram(batch, ax=ax, legend=i == 0)
            if i < len(rows) - 1:
                ax.set_xlabel("")
    for ax, (name, batch) in zip(axes[:, 0], batches.items()):
        if name != batch.layout:
            ax.set_title(f"{name} — {ax.get_title()}", fontsize=10)
    axes[-1, 0].set_xlim(-0.5, max(b.shape[1] for b in batches.values()) - 0.5)
    return fig


def waste_bars(batches: Mapping[str, Batch] | Mapping[str, dict], *, fig=None):
    """Compute per loss token, per layout: the loss token itself, context tokens, padding (stacked bars).
    `fig`: an earlier figure of this plot to redraw in place."""
    wastes = {k: (layout_waste(v) if isinstance(v, Batch) else v) for k, v in batches.items()}
    names = list(wastes)
    context = np.array([w["tokens_per_loss_token"] - 1 for w in wastes.values()])
    padding = np.array([w["slots_per_loss_token"] - w["tokens_per_loss_token"] for w in wastes.values()])
    ones = np.ones(len(names))
    stacks = [(0 * ones, ones), (ones, context), (1 + context, padding)]  # (bottom, height): loss, context, pad
    totals = [w["slots_per_loss_token"] for w in wastes.values()]
    notes = [f"{w['slots_per_loss_token']:.1f}\n{w['padding_fraction']:.0%} pad" for w in wastes.values()]
    x = np.arange(len(names))
    if redraws(fig, "waste_bars", tuple(names)):  # the same layouts: new bar heights and numbers
        ax = fig.axes[0]
        for bars, (bottoms, heights) in zip(ax.containers, stacks):
            for bar, bottom, height in zip(bars, bottoms, heights):
                bar.set(y=bottom, height=height)
        for text, total, note in zip(ax.texts, totals, notes):
            text.set(y=total, text=note)
    else:
        fig, ax = new_figure(width=6.0, height=3.2)
        made_by(fig, "waste_bars", tuple(names))
        styles = [dict(color=ROLE_COLORS["assistant"], label="the loss token"),
                  dict(color=ROLE_COLORS["user"], label="context (prompt, earlier turns)"),
                  dict(color=ROLE_COLORS["pad"], hatch="//", edgecolor="white", label="padding")]
        for (bottoms, heights), style in zip(stacks, styles):
            ax.bar(x, heights, bottom=bottoms, **style)
        for xi, total, note in zip(x, totals, notes):
            ax.text(xi, total, note, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, names)
        ax.set_xlabel("layout")
        ax.set_ylabel("positions computed per loss token")
        ax.yaxis.set_major_locator(InViewLocator(nbins=5))  # ticks not set by the axes size: the margin fits them
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title("Compute per loss token")
    ax.set_ylim(0, max(totals) * 1.25)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]  # margins for labels and legend: no layout
    fixed_margins(fig, left=y_label_room(ax), right=legend_width(labels, 8), top=0.35, bottom=0.7)  # per redraw
    return fig


def attention_mask_plot(batch: Batch, row: int = 0):
    """Which positions a row's queries may attend to (block-diagonal causal for packed rows)."""
    mask = batch.attention_mask()[row, 0].numpy()
    fig, ax = new_figure(width=4.2, height=3.8)
    ax.grid(False)
    ax.imshow(mask, cmap="Greys", interpolation="nearest", vmin=0, vmax=1.6)
    ax.set_xlabel("key position (tokens)")
    ax.set_ylabel("query position (tokens)")
    ax.set_title(f"{batch.layout} row {row}: may attend (dark)")
    return fig


# ---------------------------------------------------------------- weights


def relative_weights(batch: Batch, weights) -> np.ndarray:
    """(B, T) weight ÷ token-mean's weight after rescaling to the same total; NaN off the loss mask (for
    plotting: NaN cells are left transparent). All-zero weights give 0 on loss tokens, never NaN there."""
    w = weights.double().numpy() if hasattr(weights, "numpy") else np.asarray(weights, float)
    mask = batch.loss_mask.numpy()
    total, n = w[mask].sum(), mask.sum()
    out = np.full(w.shape, np.nan)
    out[mask] = w[mask] * n / total if total > 0 else 0.0
    return out


def _heat_norm(values: list[np.ndarray]) -> LogNorm:
    """A log norm symmetric around 1 covering every finite positive value."""
    finite = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in values] + [np.ones(1)])
    span = max(float(finite.max()), 1.0 / float(finite.min()), 2.0)
    return LogNorm(vmin=1.0 / span, vmax=span)


def _colorbar_ticks(norm) -> tuple[list[float], list[str]]:
    """Powers of two inside the norm's range (at most ~7 of them) and their plain labels (…, 0.5, 1, 2, …)."""
    lo, hi = norm.vmin, norm.vmax
    ticks = [2.0**e for e in range(int(np.floor(np.log2(lo))), int(np.ceil(np.log2(hi))) + 1)
             if lo <= 2.0**e <= hi]
    ticks = ticks[::max(1, len(ticks) // 7)]
    return ticks, [f"{t:g}" for t in ticks]


def _colorbar(fig, image, label, **kw) -> None:
    """Colour bar with plain tick labels at powers of two."""
    bar = fig.colorbar(image, label=label, **kw)
    bar.ax.set_label("<colorbar>")
    bar.ax.weight_colorbar = bar  # for a redraw in place (weight_heatmap)
    _colorbar_ticks_on(bar)


def _colorbar_ticks_on(bar) -> None:
    ticks, labels = _colorbar_ticks(bar.mappable.norm)
    bar.set_ticks(ticks, labels=labels)
    bar.minorticks_off()


def _heat(ax, batch: Batch, rel: np.ndarray, norm) -> ScalarMappable:
    """The weight map over its background (padding white, context light grey) as one RGB image; returns the
    colour scale for a colour bar."""
    ax.grid(False)
    scale = ScalarMappable(norm=norm, cmap=colormaps[_WEIGHT_CMAP])
    ax.imshow(_heat_rgb(batch, rel, scale), aspect="auto", interpolation="nearest", extent=_heat_extent(rel))
    return scale


def _heat_extent(rel: np.ndarray) -> tuple:
    return -0.5, rel.shape[1] - 0.5, rel.shape[0] - 0.5, -0.5


def _heat_rgb(batch: Batch, rel: np.ndarray, scale: ScalarMappable) -> np.ndarray:
    real, weighted = (batch.segment_id >= 0).numpy(), np.isfinite(rel)
    rgb = np.where(real[..., None], 0.88, 1.0) * np.ones(3)
    rgb[weighted] = scale.to_rgba(rel[weighted])[:, :3]
    return rgb


_HEATMAP_MARGINS = {"top": 0.3, "bottom": 0.5, "bar_gap": 0.25, "bar": 0.15}  # inches


def weight_heatmap(batch: Batch, weights, *, title: str | None = None, ax=None, norm=None, colorbar=True,
                   fig=None):
    """Per-token weights of one scheme on a batch (rows × positions), relative to token-mean, log colour.
    `fig`: an earlier figure of this plot (made without `ax`) to redraw in place."""
    rel = relative_weights(batch, weights)
    norm = norm or _heat_norm([rel])
    if ax is not None:  # a panel of the caller's figure
        image = _heat(ax, batch, rel, norm)
        _heat_labels(ax, title)
        if colorbar:
            _colorbar(ax.figure, image, "weight ÷ token-mean's (log)", ax=ax)
        return ax.figure
    width, height = 7.5, max(2.8, 1.2 + 0.16 * rel.shape[0])
    if redraws(fig, "weight_heatmap", (rel.shape[0], colorbar)):  # as many rows (the height): a new image there
        ax = fig.axes[0]
        scale = ScalarMappable(norm=norm, cmap=colormaps[_WEIGHT_CMAP])
        ax.images[0].set_data(_heat_rgb(batch, rel, scale))
        ax.images[0].set_extent(_heat_extent(rel))  # and the view, as imshow sets it
        ax.set_title(title or "", fontsize=10)
    else:
        fig, ax = new_figure(width=width, height=height)
        made_by(fig, "weight_heatmap", (rel.shape[0], colorbar))
        scale = _heat(ax, batch, rel, norm)
        _heat_labels(ax, title)
        ax.xaxis.set_major_locator(InViewLocator(nbins=5))  # five or so ticks a side: every tick is several
        ax.yaxis.set_major_locator(InViewLocator(nbins=5, integer=True))  # artists to make and draw per change
    m = _HEATMAP_MARGINS  # fixed margins (its height follows the rows: no layout per row count), the bar's room
    bar_labels = max(map(len, _colorbar_ticks(norm)[1]), default=1)
    right = m["bar_gap"] + m["bar"] + 0.5 + TICK_LABEL_CHAR * bar_labels if colorbar else 0.2
    fixed_margins(fig, left=y_label_room(ax), right=right, top=m["top"], bottom=m["bottom"])
    if colorbar:
        box = ax.get_position()
        bar_box = (box.x1 + m["bar_gap"] / width, box.y0, m["bar"] / width, box.height)
        if len(fig.axes) == 1:
            _colorbar(fig, scale, "weight ÷ token-mean's (log)", cax=fig.add_axes(bar_box))
        else:  # the colour bar drawn before: its scale, ticks and place follow the new norm
            bar = fig.axes[1].weight_colorbar
            bar.mappable.set_norm(norm)
            _colorbar_ticks_on(bar)
            bar.ax.set_position(bar_box)
    return fig


def _heat_labels(ax, title: str | None) -> None:
    ax.set_xlabel("position in the row (tokens)")
    ax.set_ylabel("row")
    if title:
        ax.set_title(title, fontsize=10)


def weight_heatmap_grid(batch: Batch, weights_by_scheme: Mapping[str, object], *, ncols: int = 2):
    """One heatmap per scheme on the same batch and one shared colour scale: where each scheme puts the step."""
    rels = {name: relative_weights(batch, w) for name, w in weights_by_scheme.items()}
    nrows = -(-len(rels) // ncols)
    fig, axes = new_figure(nrows, ncols, width=5.0 * ncols, height=0.6 + nrows * (0.9 + 0.11 * batch.shape[0]),
                           sharex=True, sharey=True)
    norm = _heat_norm(list(rels.values()))
    image = None
    for ax, (name, rel) in zip(axes.flat, rels.items()):
        image = _heat(ax, batch, rel, norm)
        total = float(weights_by_scheme[name].sum())
        ax.set_title(f"{name}   (Σw = {total:.3g})", fontsize=10, color=scheme_color(name))
    for ax in axes.flat[len(rels):]:
        ax.set_visible(False)
    for ax in axes.flat[max(0, len(rels) - ncols):len(rels)]:  # the lowest panel of every column
        ax.set_xlabel("position in the row (tokens)")
        ax.tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel("row")
    _colorbar(fig, image, "weight per token ÷ token-mean's (log)", ax=axes, shrink=0.8)
    return fig


def weight_vs_length(profiles: Mapping[str, object], *, unit: str = "sample", fig=None):
    """Weight per token against response length, one colour per scheme, log y. Left: absolute weight (what the
    loss scale becomes); right: relative to token-mean (where the step goes). `profiles` maps a scheme name to
    report.length_profile(...) or to (batch, weights). `fig`: an earlier figure of this plot to redraw in place."""
    frames = {k: (v if hasattr(v, "columns") else length_profile(*v, by=unit)) for k, v in profiles.items()}
    means = {name: df.groupby("length", as_index=False)[["weight_per_token", "relative"]].mean()
             for name, df in frames.items()}
    labels = [f"{name}: shortest ÷ longest {mean.relative.iloc[0] / mean.relative.iloc[-1]:.3g}×"  # the headline
              for name, mean in means.items()]
    columns = ("weight_per_token", "relative")
    markers = "os^Dv<>P"
    if redraws(fig, "weight_vs_length", (unit, len(means))):  # as many schemes: new data in the same lines
        axes = np.array([fig.axes])
        for ax, column in zip(axes[0], columns):
            for line, (name, mean), label in zip(ax.lines, means.items(), labels):
                line.set_data(mean.length, mean[column].clip(lower=1e-12))
                line.set(color=scheme_color(name), label=label)
            refit_view(ax)
    else:
        fig, axes = new_figure(1, 2, width=10.0, height=3.6)
        made_by(fig, "weight_vs_length", (unit, len(means)))
        for i, ((name, mean), label) in enumerate(zip(means.items(), labels)):
            style = dict(color=scheme_color(name), marker=markers[i % len(markers)], markersize=4, label=label)
            for ax, column in zip(axes[0], columns):
                ax.plot(mean.length, mean[column].clip(lower=1e-12), linestyle="-" if i < 4 else "--", **style)
        for ax, ylabel in zip(axes[0], ("weight per token (loss = Σ w·l)", "weight per token ÷ token-mean's")):
            readable_log_scale(ax)
            ax.yaxis.set_minor_locator(NullLocator())  # the labelled 1-2-5 ticks are enough: fewer artists to draw
            ax.xaxis.set_major_locator(InViewLocator(nbins=5, integer=True))
            ax.set_xlabel(f"{unit} length (loss tokens)")
            ax.set_ylabel(ylabel)
        axes[0, 0].set_title("absolute: the loss scale")
        axes[0, 1].set_title("relative: where the step goes")
    axes[0, 1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fixed_margins(fig, left=y_label_room(axes[0, 0]), right=legend_width(labels, 7), top=0.3, bottom=0.55,
                  wspace=y_label_room(axes[0, 1]) + 0.1)  # room for labels, the legend: no layout pass
    return fig


def share_by_bucket(shares: Mapping[str, object], *, unit: str = "sample", fig=None):
    """Share of the step's weight by response-length bucket, one bar per scheme, next to the bucket's share of
    loss tokens (black outline = what token-mean gives). `shares` maps a scheme to report.bucket_shares(...).
    `fig`: an earlier figure of this plot to redraw in place."""
    names = list(shares)
    first = shares[names[0]]
    x = np.arange(len(first))
    heights = [100 * shares[name].share for name in names] + [100 * first.token_share]
    tick_labels = [f"{b}\n({n} {unit}s)" for b, n in zip(first.bucket.astype(str), first.units)]
    if redraws(fig, "share_by_bucket", (unit, len(first), len(names))):  # as many schemes and buckets
        ax = fig.axes[0]
        for bars, values, name in zip(ax.containers, heights, names + [None]):  # the outline last, kept black
            bars.set_label(name or "share of loss tokens")
            for bar, value in zip(bars, values):
                bar.set(height=value, **({"facecolor": scheme_color(name)} if name else {}))
        ax.set_xticks(x, tick_labels)
        refit_view(ax)
    else:
        width = 0.8 / len(names)
        fig, ax = new_figure(width=7.5, height=3.4)
        made_by(fig, "share_by_bucket", (unit, len(first), len(names)))
        for i, name in enumerate(names):
            ax.bar(x - 0.4 + width * (i + 0.5), heights[i], width, color=scheme_color(name), label=name)
        ax.bar(x, heights[-1], 0.84, fill=False, edgecolor="black", linewidth=1.2, label="share of loss tokens")
        ax.set_xticks(x, tick_labels)
        ax.set_xlabel("response length bucket (loss tokens)")
        ax.set_ylabel("share of the step's weight (%)")
        ax.yaxis.set_major_locator(InViewLocator(nbins=4))  # 0, 20, 40, 60: fewer ticks to make and draw
    fixed_margins(fig, left=0.75, right=legend_width(names + ["share of loss tokens"], 7), top=0.15, bottom=0.7)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def effective_vs_ideal(batch: Batch, effective, ideal, *, rank=None, step=None, title: str | None = None,
                       row_order: str = "batch order", fig=None):
    """Per sample: weight per token the optimiser applies (bars, one colour per micro-batch) vs the full-batch
    weights (black ticks), and the relative error. rank/step are effective_weights' (B, T) placement tensors;
    `row_order` names the order of the rows (the x label says it). `fig`: an earlier figure of this plot to
    redraw in place."""
    eff, ref = length_profile(batch, effective), length_profile(batch, ideal)
    err = np.where(ref.weight_per_token > 0, (eff.weight_per_token - ref.weight_per_token) / ref.weight_per_token, 0)
    err[np.abs(err) < 1e-12] = 0  # float rounding drawn as 0: an exact match is a flat line, not ±1e-17 bars
    groups = [(0, 0)] * len(eff)
    if rank is not None and step is not None:  # a sample never straddles micro-batches: any of its tokens tells
        mask = batch.loss_mask.numpy()
        ids, first = np.unique(batch.sample_id.numpy()[mask], return_index=True)
        where = dict(zip(ids.tolist(), zip(np.asarray(rank)[mask][first].tolist(),
                                           np.asarray(step)[mask][first].tolist())))
        groups = [where[s] for s in eff["sample"]]
    order = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    colors = [PALETTE[order[g] % len(PALETTE)] for g in groups]
    x = np.arange(len(eff))
    if redraws(fig, "effective_vs_ideal", (len(eff),)):  # as many samples: new bar heights and colours
        top, bottom = fig.axes
        for bars, heights in ((top.containers[0], eff.weight_per_token), (bottom.containers[0], 100 * err)):
            for bar, height, color in zip(bars, heights, colors):
                bar.set(height=height, facecolor=color)
        ideal_ticks = top.collections[0]
        ideal_ticks.set_offsets(np.column_stack([x, ref.weight_per_token]))
        bottom.lines[0].remove()  # the zero line: relim would take its interpolated path's rounding as data
        for ax in (top, bottom):
            refit_view(ax)
        top.update_datalim(ideal_ticks.get_offsets())  # relim leaves a collection out: the ideal's ticks
        top.autoscale_view()
        bottom.axhline(0, color="black", linewidth=0.8)
    else:
        fig, axes = new_figure(2, 1, width=8.0, height=5.0, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
        made_by(fig, "effective_vs_ideal", (len(eff),))
        top, bottom = axes[0, 0], axes[1, 0]
        top.bar(x, eff.weight_per_token, color=colors, width=0.8)  # linear from 0: a −24 % bar is 76 % as tall
        ideal_ticks = top.scatter(x, ref.weight_per_token, marker="_", s=220, color="black", linewidths=2,
                                  zorder=3, label="full batch (ideal)")
        top.set_ylabel("weight per token")
        bottom.bar(x, 100 * err, color=colors, width=0.8)
        bottom.axhline(0, color="black", linewidth=0.8)
        bottom.set_ylabel("error vs ideal (%)")
    handles = [Patch(color=PALETTE[i % len(PALETTE)], label=f"rank {r}, micro-batch {k}")
               for (r, k), i in list(order.items())[:8]]
    top.legend(handles=handles + [ideal_ticks], fontsize=7, frameon=False, loc="upper left",
               bbox_to_anchor=(1.0, 1.0))
    every = max(1, -(-len(eff) // 32))  # the loss tokens of each sample under its bar: sorting shows as rising labels
    bottom.set_xticks(x[::every], [str(n) for n in eff.length[::every]], fontsize=7 if len(eff) > 16 else 8)
    bottom.set_xlabel(f"samples ({row_order}), labelled by their loss tokens")
    top.set_title(title or f"max relative error {np.abs(err).max():.1%}", fontsize=10)
    legend = [h.get_label() for h in handles] + ["full batch (ideal)"]  # margins for labels and legend: no layout
    fixed_margins(fig, left=max(y_label_room(top), y_label_room(bottom)), right=legend_width(legend, 7), top=0.3,
                  bottom=0.6, hspace=0.15)  # pass on each of the accumulation explorer's redraws
    return fig
