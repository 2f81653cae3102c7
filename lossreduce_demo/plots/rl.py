"""Plots of the RL experiments (E6, E7): length-bias ratios, lengths, and the per-token weights behind them."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter, ScalarFormatter

from . import PALETTE, new_figure, scheme_color

RATIO_LABELS = {"long_short_wrong_ratio": "π(long wrong) / π(short wrong)",
                "long_short_right_ratio": "π(long right) / π(short right)"}
X_LABELS = {"step": "RL step", "expected_reward": "expected reward of the policy"}
METRIC_LABELS = {"mean_length_wrong": "mean length of wrong answers (tokens)",
                 "mean_length_right": "mean length of right answers (tokens)",
                 "entropy_wrong": "per-token entropy, wrong answers (nats)",
                 "entropy": "per-token entropy (nats)", "mean_reward": "mean sampled reward"}


def _runs(wide: pd.DataFrame):
    key = "algorithm" if "algorithm" in wide else "scheme"
    for (label, seed), run in wide.groupby([key, "seed"], sort=False):
        yield label, seed, run.sort_values("step")


def _color(run: pd.DataFrame) -> str:
    return scheme_color(run["scheme"].iloc[0]) if "scheme" in run else PALETTE[0]


def _legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    if seen:
        ax.legend(seen.values(), seen.keys(), fontsize=8, frameon=False)


def draw_metric(ax, wide: pd.DataFrame, metric: str, x: str = "step", smooth: int = 1) -> None:
    """One line per (algorithm, seed) of `metric` against `x` on `ax`; colour by scheme."""
    for label, _seed, run in _runs(wide):
        y = run[metric]
        if smooth > 1:
            y = y.rolling(smooth, min_periods=1, center=True).mean()
        ax.plot(run[x], y, color=_color(run), alpha=0.8, linewidth=1.4, label=f"{label} ({run['scheme'].iloc[0]})")
    if metric in RATIO_LABELS:
        ax.axhline(1.0, color="#666666", linewidth=0.8, linestyle=":")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(X_LABELS.get(x, x))
    ax.set_ylabel(RATIO_LABELS.get(metric, METRIC_LABELS.get(metric, metric)))


def ratio_curves(wide: pd.DataFrame, metric: str = "long_short_wrong_ratio"):
    """The length-bias ratio against RL step (left) and against the policy's expected reward (right)."""
    fig, axes = new_figure(1, 2, width=10, height=3.6)
    for ax, x in zip(axes[0], ("step", "expected_reward")):
        draw_metric(ax, wide, metric, x)
    axes[0, 0].set_title("against step")
    axes[0, 1].set_title("at matched reward")
    _legend(axes[0, 1])
    return fig


def length_curves(wide: pd.DataFrame, x: str = "expected_reward", smooth: int = 5):
    """Mean length and per-token entropy of wrong answers (sampled, rolling mean over `smooth` steps)."""
    fig, axes = new_figure(1, 2, width=10, height=3.6)
    for ax, metric in zip(axes[0], ("mean_length_wrong", "entropy_wrong")):
        draw_metric(ax, wide, metric, x, smooth)
    _legend(axes[0, 0])
    return fig


def experiment_figure(wide: pd.DataFrame, task):
    """E6/E7 summary: ratio(s) vs step and vs reward, and wrong-answer length vs reward."""
    metrics = ["long_short_wrong_ratio"] + (["long_short_right_ratio"] if task.long_right else [])
    fig, axes = new_figure(len(metrics) + 1, 2, width=10, height=3.2 * (len(metrics) + 1))
    for row, metric in enumerate(metrics):
        for col, x in enumerate(("step", "expected_reward")):
            draw_metric(axes[row, col], wide, metric, x)
    draw_metric(axes[-1, 0], wide, "mean_length_wrong", "expected_reward", smooth=5)
    draw_metric(axes[-1, 1], wide, "entropy_wrong", "expected_reward", smooth=5)
    _legend(axes[0, 1])
    fig.suptitle(f"{task.name.upper()}: length bias of the loss reduction (one line per seed)")
    return fig


def template_weights(frame: pd.DataFrame, value: str = "weight_per_token"):
    """Bar chart from `rl.weights_by_template`: the weight each template's tokens get under each scheme."""
    schemes, templates = list(dict.fromkeys(frame["scheme"])), list(dict.fromkeys(frame["template"]))
    fig, ax = new_figure(width=8, height=3.6)
    width = 0.8 / len(schemes)
    x = np.arange(len(templates))
    for i, scheme in enumerate(schemes):
        sub = frame[frame["scheme"] == scheme].set_index("template").reindex(templates)
        bars = ax.bar(x + (i - (len(schemes) - 1) / 2) * width, sub[value], width, color=scheme_color(scheme),
                      label=scheme)
        ax.bar_label(bars, labels=[f"{v:.2g}" for v in sub["relative_to_shortest"]], fontsize=7, padding=1)
    lengths = frame.drop_duplicates("template").set_index("template")["length"].reindex(templates)
    ax.set_xticks(x, [f"{t}\n({n} tokens)" for t, n in lengths.items()])
    ax.set_ylabel("weight per token" if value == "weight_per_token" else "weight per response")
    ax.set_title("per-token weight in one group (bar labels: relative to the shortest answer)")
    ax.legend(fontsize=8, frameon=False)
    return fig
