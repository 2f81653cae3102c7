"""Figures of "beyond the mean" (notebook 08, experiments E8–E10). Every function returns a Figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from . import PALETTE, new_figure, scheme_color

__all__ = ["e8_figure", "variance_vs_length", "scheme_variance_bars"]


def _log_axis(axis) -> None:
    """Log axis with plain-number labels at 1, 2, 5 × 10^k (at least two labelled ticks on short ranges)."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def variance_vs_length(by_length: pd.DataFrame, ax=None):
    """Var(g_i) and Var(g_i / n_i) per length bucket (log-log), one colour per data set, fitted slopes in the
    legend. `by_length`: rows of variance.variance_by_length with `data` (and `seed`) columns."""
    fig, ax = new_figure(width=5.2, height=3.8) if ax is None else (ax.figure, ax)
    for i, (data, sel) in enumerate(by_length.groupby("data", sort=False)):
        stats = sel.groupby("bucket", sort=False)[["length", "var_sum", "var_mean"]].mean().sort_values("length")
        for column, marker, text in (("var_sum", "o", "Var(g_i)"), ("var_mean", "s", "Var(g_i / n_i)")):
            slope = np.polyfit(np.log(stats.length), np.log(stats[column]), 1)[0]
            ax.plot(stats.length, stats[column], marker=marker, color=PALETTE[i], linestyle="-" if marker == "o" else "--",
                    label=f"{data}: {text}, slope {slope:+.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_axis(ax.xaxis)
    ax.set_xlabel("response length n_i (loss tokens)")
    ax.set_ylabel("total gradient variance E‖g − E g‖²")
    ax.set_title("gradient noise grows with length (predicted slopes +1, −1)")
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def scheme_variance_bars(steps: pd.DataFrame, ax=None):
    """Measured relative variance of each scheme's mini-batch step (bars, mean over seeds) per data set, with the
    noise model's prediction (token_noise scaled to the measured token-mean bar) as markers."""
    fig, ax = new_figure(width=6.0, height=3.8) if ax is None else (ax.figure, ax)
    schemes = list(dict.fromkeys(steps.scheme))
    datasets = list(dict.fromkeys(steps.data))
    width = 0.8 / len(datasets)
    for j, data in enumerate(datasets):
        sel = steps[steps.data == data].groupby("scheme")[["relative_variance", "token_noise"]].mean().loc[schemes]
        scale = sel.relative_variance.iloc[0] / sel.token_noise.iloc[0]  # prediction in units of the first scheme
        x = np.arange(len(schemes)) + (j - (len(datasets) - 1) / 2) * width
        ax.bar(x, sel.relative_variance, width=width * 0.9, color=PALETTE[j], alpha=0.8, label=f"{data}: measured")
        ax.plot(x, sel.token_noise * scale, "k_", markersize=12, markeredgewidth=2,
                label="predicted from lengths (scaled)" if j == 0 else None)
    ax.set_xticks(np.arange(len(schemes)), schemes, rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, None)
    ax.set_ylabel("relative variance E‖ĝ − Eĝ‖² / ‖Eĝ‖²")
    ax.set_title("noise of a mini-batch step of 16 (lower = steadier)")
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def e8_figure(by_length: pd.DataFrame, steps: pd.DataFrame, curves: pd.DataFrame):
    """E8: variance vs length, relative variance per scheme, cosine to E_i[g_i], steps to a held-out loss."""
    fig, axes = new_figure(2, 2, width=12.5, height=8.0)
    variance_vs_length(by_length, axes[0, 0])
    scheme_variance_bars(steps, axes[0, 1])
    ax = axes[1, 0]
    schemes = list(dict.fromkeys(steps.scheme))
    for j, (data, sel) in enumerate(steps.groupby("data", sort=False)):
        cos = sel.groupby("scheme").cosine_to_sequence_mean.mean().loc[schemes]
        x = np.arange(len(schemes)) + (j - 0.5) * 0.4
        ax.bar(x, cos, width=0.36, color=PALETTE[j], alpha=0.8, label=data)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_xticks(np.arange(len(schemes)), schemes, rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("cosine of E[step] to E_i[g_i]")
    ax.set_title("which objective a scheme's expected step follows")
    ax.legend(fontsize=7, frameon=False, loc="lower left")
    ax = axes[1, 1]
    for scheme, sel in curves.groupby("scheme", sort=False):
        stats = sel.groupby("step").value.agg(["mean", "min", "max"])
        ax.plot(stats.index, stats["mean"], color=scheme_color(scheme), label=scheme, linewidth=1.3)
        ax.fill_between(stats.index, stats["min"], stats["max"], color=scheme_color(scheme), alpha=0.12, linewidth=0)
    threshold = float(curves.threshold.mean())
    ax.axhline(threshold, color="k", linestyle=":", linewidth=1, label=f"target {threshold:.2f} (floor + margin)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out token-mean loss (nats/token)")
    ax.set_title("noisy tail: training to a fixed held-out loss")
    ax.legend(fontsize=7, frameon=False, loc="upper right")
    return fig
