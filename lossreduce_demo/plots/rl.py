"""Plots of the RL experiments (E6, E7): length-bias ratios, lengths, and the per-token weights behind them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import PALETTE, new_figure, readable_log_scale, scheme_color

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
    """One entry per recipe, to the right of the axes (off the curves)."""
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    if seen:
        ax.legend(seen.values(), seen.keys(), fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def matched_reward_ratios(wide: pd.DataFrame, metric: str = "long_short_wrong_ratio") -> tuple[float, dict]:
    """(reward level, {recipe: mean over seeds of `metric` when its expected reward first reaches that level}):
    the level is the highest one every run reaches, so recipes that learn at different speeds compare fairly."""
    runs = list(_runs(wide))
    if not runs or "expected_reward" not in wide:
        return float("nan"), {}
    level = min(float(run["expected_reward"].max()) for _, _, run in runs)
    values: dict = {}
    for label, _seed, run in runs:
        reached = run[run["expected_reward"] >= level - 1e-12]
        values.setdefault(label, []).append(float(reached[metric].iloc[0]))
    return level, {label: float(np.mean(v)) for label, v in values.items()}


def draw_metric(ax, wide: pd.DataFrame, metric: str, x: str = "step", smooth: int = 1) -> None:
    """One line per (algorithm, seed) of `metric` against `x` on `ax`; colour by scheme."""
    for label, _seed, run in _runs(wide):
        y = run[metric]
        if smooth > 1:
            y = y.rolling(smooth, min_periods=1, center=True).mean()
        ax.plot(run[x], y, color=_color(run), alpha=0.8, linewidth=1.4, label=f"{label} ({run['scheme'].iloc[0]})")
    if metric in RATIO_LABELS:
        ax.axhline(1.0, color="#666666", linewidth=0.8, linestyle=":")
        readable_log_scale(ax)
    ax.set_xlabel(X_LABELS.get(x, x))
    ax.set_ylabel(RATIO_LABELS.get(metric, METRIC_LABELS.get(metric, metric)))


def ratio_curves(wide: pd.DataFrame, metric: str = "long_short_wrong_ratio"):
    """The length-bias ratio against RL step (left) and against the policy's expected reward (right)."""
    fig, axes = new_figure(1, 2, width=10, height=3.6)
    for ax, x in zip(axes[0], ("step", "expected_reward")):
        draw_metric(ax, wide, metric, x)
    axes[0, 0].set_title("against step")
    axes[0, 1].set_title(matched_reward_title(wide, metric), fontsize=9)
    _legend(axes[0, 1])
    return fig


def matched_reward_title(wide: pd.DataFrame, metric: str = "long_short_wrong_ratio") -> str:
    """"at matched reward 0.80: GRPO 3.0, DAPO 1.0, …" (the headline numbers of a ratio plot)."""
    level, ratios = matched_reward_ratios(wide, metric)
    if not ratios:
        return "at matched reward"
    return f"at matched reward {level:.2f}: " + ", ".join(f"{k} {v:.2g}" for k, v in ratios.items())


def length_curves(wide: pd.DataFrame, x: str = "expected_reward", smooth: int = 5):
    """Mean length and per-token entropy of wrong answers (sampled, rolling mean over `smooth` steps)."""
    fig, axes = new_figure(1, 2, width=10, height=3.6)
    for ax, metric in zip(axes[0], ("mean_length_wrong", "entropy_wrong")):
        draw_metric(ax, wide, metric, x, smooth)
    _legend(axes[0, 1])
    return fig


def experiment_figure(wide: pd.DataFrame, task):
    """E6/E7 summary: ratio(s) vs step and vs reward; wrong-answer length vs reward, and beside it (E6) the
    wrong answers' per-token entropy or (E7, where every template's text is fixed, so per-token entropy only
    measures length) the right answers' length."""
    metrics = ["long_short_wrong_ratio"] + (["long_short_right_ratio"] if task.long_right else [])
    fig, axes = new_figure(len(metrics) + 1, 2, width=10, height=3.2 * (len(metrics) + 1))
    for row, metric in enumerate(metrics):
        for col, x in enumerate(("step", "expected_reward")):
            draw_metric(axes[row, col], wide, metric, x)
        axes[row, 1].set_title(matched_reward_title(wide, metric), fontsize=9)
    draw_metric(axes[-1, 0], wide, "mean_length_wrong", "expected_reward", smooth=5)
    draw_metric(axes[-1, 1], wide, "mean_length_right" if task.long_right else "entropy_wrong", "expected_reward",
                smooth=5)
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
        ax.bar_label(bars, labels=[f"{v:.2g}×" for v in sub["relative_to_shortest"]], fontsize=7, padding=1)
    lengths = frame.drop_duplicates("template").set_index("template")["length"].reindex(templates)
    ax.set_xticks(x, [f"{t}\n({n} tokens)" for t, n in lengths.items()])
    ax.set_xlabel("response template")
    ax.set_ylabel("weight per token" if value == "weight_per_token" else "weight per response")
    ax.set_title("per-token weight in one group (bar labels: relative to the shortest answer)")
    ax.set_ylim(0, float(frame[value].max()) * 1.15)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
