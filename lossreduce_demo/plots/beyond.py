"""Figures of "beyond the mean" (notebook 08, experiments E8–E10). Every function returns a Figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import NullLocator

from . import PALETTE, InViewLocator, new_figure, readable_log_scale, scheme_color

__all__ = ["e8_figure", "variance_vs_length", "weight_profile", "family_variance", "delta_l_figure", "e9_figure", "e10_figure"]


def variance_vs_length(by_length: pd.DataFrame, ax=None):
    """Var(g_i) and Var(g_i / n_i) per length bucket (log-log), one colour per data set, fitted slopes in the
    legend. `by_length`: rows of variance.variance_by_length with `data` (and `seed`) columns."""
    fig, ax = new_figure(width=7.8, height=3.8) if ax is None else (ax.figure, ax)
    for i, (data, sel) in enumerate(by_length.groupby("data", sort=False)):
        stats = sel.groupby("bucket", sort=False)[["length", "var_sum", "var_mean"]].mean().sort_values("length")
        for column, marker, text in (("var_sum", "o", "Var(g_i)"), ("var_mean", "s", "Var(g_i / n_i)")):
            slope = np.polyfit(np.log(stats.length), np.log(stats[column]), 1)[0]
            ax.plot(stats.length, stats[column], marker=marker, color=PALETTE[i], linestyle="-" if marker == "o" else "--",
                    label=f"{data}: {text}, slope {slope:+.2f}")
    readable_log_scale(ax, "x")
    readable_log_scale(ax, "y")
    ax.set_xlabel("response length n_i (loss tokens)")
    ax.set_ylabel("total gradient variance E‖g − E g‖²")
    ax.set_title("noise grows with length (predicted slopes +1, −1)")
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def weight_profile(profile: pd.DataFrame, ax=None):
    """Per-token weight ÷ token-mean's against response length (log-log), one line per scheme: where ΔL sits.
    `profile`: variance.weights_by_length."""
    fig, ax = new_figure(width=5.2, height=3.8) if ax is None else (ax.figure, ax)
    for scheme, sel in profile.groupby("scheme", sort=False):
        ax.plot(sel.length, sel.ratio, color=scheme_color(scheme), label=scheme, linewidth=1.4,
                linestyle="--" if scheme.startswith("delta-l") else "-")
    readable_log_scale(ax, "x")
    readable_log_scale(ax, "y")
    ax.set_xlabel("response length n_i (loss tokens)")
    ax.set_ylabel("weight per token ÷ token-mean's (same total)")
    ax.set_title("weight map shape (ΔL dashed; a ↔ length-power 1−a)")
    ax.legend(fontsize=7, frameon=False, loc="lower left")
    return fig


def family_variance(steps: pd.DataFrame, family, ax=None):
    """Step variance of the unbiased weightings (Σ x_i = 1) relative to the first, measured (bars, mean over
    seeds) and predicted from the lengths (black ticks), per data set."""
    fig, ax = new_figure(width=5.2, height=3.8) if ax is None else (ax.figure, ax)
    datasets = list(dict.fromkeys(steps.data))
    width = 0.8 / len(datasets)
    for j, data in enumerate(datasets):
        sel = steps[steps.data == data].groupby("scheme")[["variance", "noise"]].mean().loc[list(family)]
        x = np.arange(len(family)) + (j - (len(datasets) - 1) / 2) * width
        measured, predicted = sel.variance / sel.variance.iloc[0], sel.noise / sel.noise.iloc[0]
        ax.bar(x, measured, width=width * 0.9, color=PALETTE[j], alpha=0.8, label=f"{data}: measured")
        ax.plot(x, predicted, "k_", markersize=14, markeredgewidth=2, label="predicted from lengths" if j == 0 else None)
        for xi, m in zip(x, measured):
            ax.text(xi, m + 0.02, f"{m:.2f}", ha="center", fontsize=7)
    ax.set_xticks(np.arange(len(family)), [f.replace("seq-mean-token-sum", "a=0 (seq-mean-\ntoken-sum)")
                                            .replace("delta-l α=", "ΔL a=") for f in family], fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_xlabel("unbiased weightings (sample weights sum to 1)")
    ax.set_ylabel("Var(step) ÷ Var(a = 0)")
    ax.set_title("unbiased weightings Σx=1: 1/n is quietest")
    ax.legend(fontsize=7, frameon=False, loc="lower left")
    return fig


def _scheme_bars(ax, steps: pd.DataFrame, column: str) -> None:
    schemes = list(dict.fromkeys(steps.scheme))
    datasets = list(dict.fromkeys(steps.data))
    width = 0.8 / len(datasets)
    for j, data in enumerate(datasets):
        values = steps[steps.data == data].groupby("scheme")[column].mean().loc[schemes]
        x = np.arange(len(schemes)) + (j - (len(datasets) - 1) / 2) * width
        ax.bar(x, values, width=width * 0.9, color=PALETTE[j], alpha=0.8, label=data)
    ax.set_xticks(np.arange(len(schemes)), schemes, rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, None)


def e8_figure(by_length: pd.DataFrame, steps: pd.DataFrame, curves: pd.DataFrame, profile: pd.DataFrame):
    """E8: variance vs length, where ΔL sits, the unbiased family's variance, noise-to-signal and cosine to
    E_i[g_i] per scheme, and training to a fixed held-out loss."""
    fig, axes = new_figure(2, 3, width=16.5, height=8.2)
    variance_vs_length(by_length, axes[0, 0])
    weight_profile(profile, axes[0, 1])
    family_variance(steps, ("seq-mean-token-sum", "delta-l α=0.5", "delta-l α=1"), axes[0, 2])
    ax = axes[1, 0]
    _scheme_bars(ax, steps, "relative_variance")
    ax.set_ylim(0, 1.4 * steps.groupby(["data", "scheme"]).relative_variance.mean().max())
    ax.set_ylabel("noise-to-signal E‖ĝ − Eĝ‖² / ‖Eĝ‖²")
    ax.set_title("noise-to-signal of a step of 16 (lower = steadier)")
    ax.legend(fontsize=7, frameon=False, loc="upper center", ncol=2)
    ax = axes[1, 1]
    _scheme_bars(ax, steps, "cosine_to_sequence_mean")
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("cosine of E[step] to E_i[g_i]")
    ax.set_title("which objective the expected step follows")
    ax.legend(fontsize=7, frameon=False, loc="lower left")
    ax = axes[1, 2]
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


def delta_l_figure(profile: pd.DataFrame, curves: pd.DataFrame, a: float):
    """The ΔL explorer: weight per token vs length (left); predicted step variance ÷ a=0 and noise-to-signal ÷
    token-mean against a, the current a marked (right). `curves`: widgets.delta_l_curves."""
    fig, axes = new_figure(1, 2, width=10.5, height=3.6)
    left, right = axes[0]
    weight_profile(profile, left)
    for axis in (left.xaxis, left.yaxis):  # fewer ticks (each is several artists) for a cheap redraw: the labelled
        axis.set_minor_locator(NullLocator())  # 1-2-5 ticks are enough
    right.xaxis.set_major_locator(InViewLocator(nbins=4))
    right.yaxis.set_major_locator(InViewLocator(nbins=5, steps=[1, 2, 5, 10]))
    right.plot(curves.a, curves.variance_vs_a0, color=scheme_color("delta-l"), label="step variance ÷ a=0")
    right.plot(curves.a, curves["noise_to_signal_per-sequence"], color=PALETTE[0], linestyle="--",
               label="noise-to-signal ÷ token-mean, signal per sequence")
    right.plot(curves.a, curves["noise_to_signal_per-token"], color=PALETTE[1], linestyle=":",
               label="noise-to-signal ÷ token-mean, signal per token")
    right.axhline(1.0, color="#999999", linewidth=0.6)
    here = curves.iloc[int(np.argmin(np.abs(curves.a - a)))]
    right.plot([here.a], [here.variance_vs_a0], "o", color="k", markersize=6)
    right.text(a, here.variance_vs_a0, f" {here.variance_vs_a0:.2f}", fontsize=8, va="bottom")
    right.set_xlabel("ΔL a (weight per token ∝ n^−a)")
    right.set_ylabel("predicted, relative")
    top = float(curves[["variance_vs_a0", "noise_to_signal_per-sequence", "noise_to_signal_per-token"]].max().max())
    right.set_ylim(0, 1.7 * top)
    right.set_title("noise model: a = 1 is quietest for Σx = 1")
    right.legend(fontsize=7, frameon=False, loc="upper center")
    return fig


E9_WEIGHTINGS = ("token-mean", "seq-mean over conversations", "per-row mean")


def e9_figure(table: pd.DataFrame, curves: pd.DataFrame, weights: pd.DataFrame):
    """E9: held-out loss under the three layouts (left), a packed batch's weight per token ÷ token-mean's per
    conversation (middle, `packing.per_row_weight_table`), learned P(long) per weighting with its prediction
    (right). `table`: the E9 rows (experiments.COLUMNS)."""
    fig, axes = new_figure(1, 3, width=15.5, height=4.0)
    ax = axes[0, 0]
    final = table[table.metric == "mean_heldout_loss"].groupby("format").value.mean()
    for i, (layout, sel) in enumerate(curves.groupby("format", sort=False)):
        stats = sel.groupby("step").value.mean()
        ax.plot(stats.index, stats.to_numpy(), color=PALETTE[i], label=f"{layout}: {final[layout]:.3f}",
                linewidth=1.4, linestyle="--" if layout == "packed" else "-")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out token-mean loss, unpacked (nats/token)")
    ax.set_title("attention across conversations costs held-out loss")
    ax.legend(fontsize=7, frameon=False, loc="upper right", title="mean over the run and seeds", title_fontsize=7)
    ax = axes[0, 1]
    x = np.arange(len(weights))
    width = 0.8 / len(E9_WEIGHTINGS)
    for j, name in enumerate(E9_WEIGHTINGS):
        ratio = weights[name] / weights["token-mean"]
        ax.bar(x + (j - 1) * width, ratio, width=width * 0.9, color=PALETTE[j], label=name)
    ax.set_xticks(x, [f"r{r}{'L' if long else 'S'}" for r, long in zip(weights.row, weights.long)], fontsize=6)
    ax.set_ylim(0, 1.3 * float((weights[list(E9_WEIGHTINGS)].div(weights["token-mean"], axis=0)).max().max()))
    ax.set_xlabel("conversation (row, Long / Short reply)")
    ax.set_ylabel("weight per token ÷ token-mean's")
    ax.set_title("one packed batch: the per-row mean is neither")
    ax.legend(fontsize=7, frameon=False, loc="upper left", ncol=3)
    ax = axes[0, 2]
    p = table[table.metric == "p_long"].groupby("scheme")[["value", "predicted"]].mean().loc[list(E9_WEIGHTINGS)]
    ax.bar(np.arange(3), p.value, color=[PALETTE[j] for j in range(3)], alpha=0.85, width=0.6)
    ax.plot(np.arange(3), p.predicted, "k_", markersize=18, markeredgewidth=2, label="predicted")
    for j, (value, pred) in enumerate(zip(p.value, p.predicted)):
        ax.text(j, max(value, pred) + 0.006, f"{value:.3f}\npred. {pred:.3f}", ha="center", fontsize=7)
    ax.set_xticks(np.arange(3), list(E9_WEIGHTINGS), fontsize=8)
    ax.set_ylim(0, 1.35 * float(p.max().max()))
    ax.set_xlabel("weighting of packed rows")
    ax.set_ylabel('learned P("L") at the branch')
    ax.set_title("E1's branch, packed into rows of 129")
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    return fig


RULE_LABELS = {"token": "token-level PPO (ε 0.2)", "gspo": "GSPO (ε 3e-4 / 4e-4)", "cispo": "CISPO (ε_high 0.2)"}


def e10_figure(by_length: pd.DataFrame):
    """E10: variance of the token, sequence and GSPO log-ratios against response length (log-log, one panel per
    rule), and the fraction of tokens with zero gradient under each rule's own clipping (right).
    `by_length`: ratios.statistics_by_length rows with `rule` and `seed` columns."""
    rules = [r for r in RULE_LABELS if r in set(by_length.rule)]
    fig, axes = new_figure(1, len(rules) + 1, width=4.4 * (len(rules) + 1), height=4.6)
    quantities = (("var_token_log_ratio", "token δ_t", ":"), ("var_seq_log_ratio", "sequence Σδ_t", "-"),
                  ("var_gspo_log_ratio", "GSPO mean δ_t", "--"))
    for ax, rule in zip(axes[0], rules):
        sel = by_length[by_length.rule == rule].groupby("length").mean(numeric_only=True)
        for i, (column, text, style) in enumerate(quantities):
            slope = np.polyfit(np.log(sel.index), np.log(sel[column]), 1)[0]
            ax.plot(sel.index, sel[column], marker="o", linestyle=style, color=PALETTE[i],
                    label=f"{text}: slope {slope:+.2f}")
        readable_log_scale(ax, "x")
        readable_log_scale(ax, "y")
        ax.set_xlabel("response length n (tokens)")
        ax.set_ylabel("variance of the log-ratio")
        ax.set_title(RULE_LABELS.get(rule, rule))
        ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax = axes[0, -1]
    top = 0.0
    for i, rule in enumerate(rules):
        sel = by_length[by_length.rule == rule].groupby("length")[f"zero_{rule}_fraction"].mean()
        ax.plot(sel.index, sel.to_numpy(), marker="o", color=PALETTE[i], label=f"{RULE_LABELS.get(rule, rule)}: "
                f"{float(sel.mean()):.1%}")
        top = max(top, float(sel.max()))
    ax.set_ylim(0, max(1.5 * top, 0.05))
    ax.set_xlabel("response length n (tokens)")
    ax.set_ylabel("fraction of tokens (A ≠ 0) with zero gradient")
    ax.set_title("which tokens each rule silences")
    ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    return fig
