"""Data parallel in real processes (E3, notebook 03): gradient error per scheme, weight distance per step."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..reductions import SCHEMES
from . import new_figure, readable_log_scale, scheme_color

FLOOR = 1e-17  # exact zeros drawn here on the log axis
TOLERANCE = 1e-6  # below: the same gradient (rounding); above: a different objective
NORM_STYLE = {"global": dict(marker="o", fill=True, linestyle="--"), "local": dict(marker="D", fill=False,
                                                                                   linestyle="-")}
ROUNDING = {"float64": "≈ 1e-16", "float32": "≈ 1e-7"}  # relative rounding error of one gradient


__all__ = ["draw_gradient_errors", "draw_weight_distance", "plot_dp_gradient_errors", "plot_dp_weight_distance", "plot_e3"]


def _schemes(frame: pd.DataFrame) -> list[str]:
    present = set(frame.scheme)
    return [s for s in SCHEMES if s in present] + sorted(present - set(SCHEMES))


def _gradient_errors(frame: pd.DataFrame, metric: str, data: str) -> pd.DataFrame:
    rows = frame[frame.metric == metric]
    if "data" in rows and data in set(rows.data):
        rows = rows[rows.data == data]
    if "step" in rows:
        rows = rows[rows.step.fillna(0) == 0]
    if rows.empty:
        raise ValueError(f"no rows with metric {metric!r} to plot")
    return rows.groupby(["scheme", "normalization"]).value.max().unstack("normalization")


def draw_gradient_errors(ax, frame: pd.DataFrame, metric: str = "max_rel_grad_diff", data: str = "skewed"):
    """Markers on `ax` (a log axis: bars from an arbitrary floor would mislead): per scheme, global (filled) vs
    local (hollow), worst case over seeds / K; the values above the tolerance line are printed."""
    table = _gradient_errors(frame, metric, data)
    schemes = [s for s in _schemes(frame) if s in table.index]
    x = np.arange(len(schemes))
    norms = [n for n in ("global", "local") if n in table.columns]
    offset = 0.36 / max(len(norms), 1)
    for j, norm in enumerate(norms):
        values = np.maximum(table.loc[schemes, norm].to_numpy(dtype=float), FLOOR)
        style = NORM_STYLE[norm]
        xs = x + (j - (len(norms) - 1) / 2) * offset
        for xi, value, scheme in zip(xs, values, schemes):
            color = scheme_color(scheme)
            ax.plot([xi], [value], linestyle="none", marker=style["marker"], markersize=8, color=color,
                    markerfacecolor=color if style["fill"] else "white", markeredgewidth=1.5)
            if value > TOLERANCE:
                ax.annotate(f"{value:.1e}", (xi, value), xytext=(0, 7), textcoords="offset points", ha="center",
                            fontsize=7)
    readable_log_scale(ax)
    ax.set_ylim(FLOOR / 10, 10)
    ax.axhline(TOLERANCE, color="gray", linestyle=":", linewidth=1)
    dtypes = sorted(set(frame.dtype)) if "dtype" in frame else []
    rounding = ", ".join(f"{d} rounding {ROUNDING[d]}" for d in dtypes if d in ROUNDING)
    ax.annotate(f"tolerance {TOLERANCE:g}" + (f" ({rounding})" if rounding else ""), (1.0, TOLERANCE),
                xycoords=("axes fraction", "data"), xytext=(-2, 3), textcoords="offset points", ha="right",
                fontsize=8, color="gray")
    ax.set_xticks(x, schemes, rotation=30, ha="right")
    ax.set_xlim(-0.6, len(schemes) - 0.4)
    ax.set_xlabel("reduction scheme")
    ax.set_ylabel("relative gradient error\nmax |g_DDP − g_single| / max |g_single|", fontsize=9)
    ax.legend(handles=[Line2D([], [], linestyle="none", marker=NORM_STYLE[n]["marker"], color="gray",
                              markerfacecolor="gray" if NORM_STYLE[n]["fill"] else "white", label=f"{n} normalisation")
                       for n in norms], fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("DDP gradient vs one process (same batch, same init)")
    return ax


def draw_weight_distance(ax, table: pd.DataFrame):
    """Lines on `ax`: relative weight distance to single-process training per step (mean over seeds)."""
    rows = table[table.metric == "rel_weight_distance"]
    if rows.empty:
        raise ValueError("no rows with metric 'rel_weight_distance' to plot")
    curves = rows.groupby(["scheme", "normalization", "step"]).value.mean()
    schemes, norms = _schemes(rows), [n for n in ("global", "local") if n in set(rows.normalization)]
    for scheme in schemes:
        for norm in norms:
            if (scheme, norm) not in curves.index.droplevel("step"):
                continue
            curve = curves.loc[(scheme, norm)]
            ax.plot(curve.index, np.maximum(curve.to_numpy(dtype=float), FLOOR), color=scheme_color(scheme),
                    linestyle=NORM_STYLE[norm]["linestyle"], marker="o", markersize=3)
    readable_log_scale(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("‖θ_DDP − θ_single‖ / ‖θ_single‖")
    ax.set_title("Weights vs single-process training (AdamW, mean over seeds)")
    handles = [Line2D([], [], color=scheme_color(s), label=s) for s in schemes]
    handles += [Line2D([], [], color="gray", linestyle=NORM_STYLE[n]["linestyle"], label=f"{n} normalisation")
                for n in norms]
    ax.legend(handles=handles, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def plot_dp_gradient_errors(frame: pd.DataFrame, metric: str = "max_rel_grad_diff", data: str = "skewed"):
    """Figure: gradient error per scheme, global vs local (from `distributed.dp_gradient_errors` or E3)."""
    fig, ax = new_figure(width=7.5, height=3.8)
    draw_gradient_errors(ax, frame, metric, data)
    return fig


def plot_dp_weight_distance(table: pd.DataFrame):
    """Figure: weight distance to single-process training vs step (from `distributed.dp_training` or E3)."""
    fig, ax = new_figure(width=7.5, height=3.8)
    draw_weight_distance(ax, table)
    return fig


def plot_e3(table: pd.DataFrame):
    """E3's figure: gradient error at step 0 (left), weight distance per step (right)."""
    fig, axes = new_figure(1, 2, width=13, height=4.2)
    draw_gradient_errors(axes[0, 0], table)
    draw_weight_distance(axes[0, 1], table)
    fig.suptitle("E3 · data parallel, 2 real processes (gloo): rank 0 mostly short replies, rank 1 mostly long")
    return fig
