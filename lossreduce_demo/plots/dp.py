"""Data parallel in real processes (E3, notebook 03): gradient error per scheme, weight distance per step."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..reductions import SCHEMES
from . import new_figure, scheme_color

FLOOR = 1e-17  # exact zeros drawn here on the log axis
NORM_STYLE = {"global": dict(hatch=None, alpha=1.0, linestyle="--"), "local": dict(hatch="//", alpha=0.45,
                                                                                   linestyle="-")}


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
    """Bars on `ax`: per scheme, global vs local, log scale, worst case over seeds / K."""
    table = _gradient_errors(frame, metric, data)
    schemes = [s for s in _schemes(frame) if s in table.index]
    x = np.arange(len(schemes))
    norms = [n for n in ("global", "local") if n in table.columns]
    width = 0.8 / max(len(norms), 1)
    for j, norm in enumerate(norms):
        values = np.maximum(table.loc[schemes, norm].to_numpy(dtype=float), FLOOR)
        style = NORM_STYLE[norm]
        ax.bar(x + (j - (len(norms) - 1) / 2) * width, values, width, color=[scheme_color(s) for s in schemes],
               hatch=style["hatch"], alpha=style["alpha"], edgecolor="black", linewidth=0.5)
    ax.set_yscale("log")
    ax.axhline(1e-6, color="gray", linestyle=":", linewidth=1)
    middle = (len(schemes) - 1) / 2  # the seq-mean bars in the middle stay low: room for labels
    ax.annotate("1e-6 (fp32 tolerance)", (middle, 1e-6), xytext=(0, 2), textcoords="offset points",
                ha="center", fontsize=8, color="gray")
    ax.set_xticks(x, schemes, rotation=30, ha="right")
    ax.set_ylabel("max |g_DDP − g_single| / max |g_single|")
    ax.legend(handles=[Patch(facecolor="lightgray", edgecolor="black", hatch=NORM_STYLE[n]["hatch"],
                             alpha=NORM_STYLE[n]["alpha"], label=f"{n} normalisation") for n in norms],
              loc="center", bbox_to_anchor=(0.42, 0.3), fontsize=8, frameon=False)
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
    ax.set_yscale("log")
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
