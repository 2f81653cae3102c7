"""Training plots: curves of a `train()` history and the figures of experiments E1, E2, E4, E5.

Every function takes tidy DataFrames (train.HISTORY_COLUMNS or experiments.COLUMNS) and returns a Figure.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.ticker import FixedLocator, NullLocator

from . import PALETTE, PLAIN, new_figure, readable_log_scale, scheme_color

METRIC_LABELS = {
    "objective": "objective Σ w·l (as the scheme reports it)",
    "train_token_loss": "training token-mean loss (nats/token)",
    "heldout_loss": "held-out token-mean loss (nats/token)",
    "heldout_accuracy": "held-out next-token accuracy",
    "p_long": 'P("L") at the branch',
}


OUTSIDE = dict(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # legends right of the data

__all__ = ["training_curves", "bucket_curves", "p_long_figure", "e2_figure", "e4_figure", "e5_figure",
           "gradient_share_figure", "loss_by_length_figure"]


def _run_color(label: str, i: int) -> str:
    name = str(label).split(" (")[0]
    return scheme_color(name) if i == 0 or "(" not in str(label) else PALETTE[i % len(PALETTE)]


def training_curves(history: pd.DataFrame, metric: str = "heldout_loss", *, by: str = "run", title: str = ""):
    """One line per `by` value (mean over seeds, band = min..max) of `metric` against the optimizer step."""
    rows = history[(history.metric == metric) & history.bucket.isna()] if "bucket" in history else \
        history[history.metric == metric]
    fig, ax = new_figure()
    for i, (label, sel) in enumerate(rows.groupby(by, sort=False)):
        stats = sel.groupby("step").value.agg(["mean", "min", "max"])
        color = PALETTE[i % len(PALETTE)]
        ax.plot(stats.index, stats["mean"], color=color, label=str(label), linewidth=1.4)
        if sel.seed.nunique() > 1:
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(title or metric)
    ax.legend(fontsize=8, **OUTSIDE)
    return fig


def bucket_curves(history: pd.DataFrame, run: str, metric: str = "heldout_loss", title: str = ""):
    """`metric` per response-length bucket (one line per bucket) for one run."""
    rows = history[(history.metric == metric) & history.bucket.notna() & (history.run == run)]
    fig, ax = new_figure()
    for i, (bucket, sel) in enumerate(rows.groupby("bucket", sort=False)):
        stats = sel.groupby("step").value.mean()
        ax.plot(stats.index, stats.to_numpy(), color=PALETTE[i % len(PALETTE)], label=f"{bucket} tokens")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(title or f"{run}: {metric} by response length")
    ax.legend(fontsize=8, title="response length", **OUTSIDE)
    return fig


def p_long_figure(table: pd.DataFrame, title: str = 'Learned P("L") at the branch', by: str = "run"):
    """Measured p_long per seed (dots) and its prediction (black bar), one column per run."""
    rows = table[table.metric == "p_long"]
    labels = list(dict.fromkeys(rows[by]))
    fig, ax = new_figure(width=max(6.5, 1.9 * len(labels)))
    top = max(0.3, 1.35 * max(float(rows.value.max()), float(rows.predicted.astype(float).max())))
    for i, label in enumerate(labels):
        sel = rows[rows[by] == label]
        color = _run_color(label, 0)
        ax.scatter(np.full(len(sel), i) + np.linspace(-0.12, 0.12, len(sel)), sel.value, color=color, s=28,
                   zorder=3, label="measured (one per seed)" if i == 0 else None)
        measured, predicted = sel.value.mean(), sel.predicted.astype(float).mean()
        ax.hlines(predicted, i - 0.3, i + 0.3, color="#888888", linewidth=2.5, zorder=2,
                  label="predicted" if i == 0 else None)
        text = dict(textcoords="offset points", fontsize=8, ha="left", va="bottom")
        if abs(measured - predicted) < 0.08 * top:  # one label above both
            ax.annotate(f"{measured:.3f}\npred. {predicted:.3f}", (i + 0.16, max(sel.value.max(), predicted)),
                        xytext=(0, 4), **text)
        else:  # far apart (a short fast-mode run): each number beside what it labels
            ax.annotate(f"{measured:.3f}", (i + 0.14, measured), xytext=(3, -4), **text)
            ax.annotate(f"pred. {predicted:.3f}", (i + 0.16, predicted), xytext=(0, 4), **text)
    ax.set_xticks(range(len(labels)), [_wrap(lab) for lab in labels], fontsize=8)
    ax.set_xlabel("training run (scheme)")
    ax.set_ylabel('P("L" | prompt)')
    ax.set_ylim(0, top)  # room for the numbers above the dots
    ax.set_xlim(-0.5, len(labels) - 0.5 + 0.4)
    ax.set_title(title)
    ax.legend(fontsize=8, **OUTSIDE)
    return fig


def _drawn_before(curve, drawn: dict):
    """The name of the curve in {name: curve} that `curve` would hide (same points to 0.1 %), or None."""
    return next((name for name, other in drawn.items() if other.shape == curve.shape
                 and np.allclose(other.to_numpy(), curve.to_numpy(), rtol=1e-3, atol=0, equal_nan=True)), None)


def _wrap(label, width: int = 18) -> str:
    """A tick label on lines of ≤ `width` characters, "(…)" on its own line."""
    return "\n".join(textwrap.fill(part, width) for part in str(label).replace(" (", "\n(").split("\n"))


def e2_figure(table: pd.DataFrame):
    """E2: relative weight distance to the (16, 1) run against ga (naive vs global, both datasets), and the
    learned P("L") against the naive micro-batch size."""
    fig, axes = new_figure(1, 2, width=10.0)
    ax, bx = axes[0, 0], axes[0, 1]
    dist = table[(table.metric == "rel_weight_distance") & (table.grad_accum > 1)]
    styles = {"local": ("naive (local)", "#D55E00"), "global": ("global", "#0072B2")}
    drawn: dict[str, dict] = {}  # per data set: {normalization label: curve} (equal lengths: naive = global)
    for (data, norm), sel in dist.groupby(["format", "normalization"]):
        mean = sel.groupby("grad_accum").value.mean()
        (label, color), same = styles[norm], drawn.setdefault(data, {})
        twin = _drawn_before(mean, same)
        same[label] = mean
        style = dict(linestyle="none", marker="x", markersize=8) if twin else \
            dict(linestyle="-" if data == "mixed lengths" else ":", marker="o")
        ax.plot(mean.index, mean.clip(lower=1e-17), color=color,
                label=f"{label}, {data}" + (f" (= {twin}, on top)" if twin else ""), **style)
    if (dist.value <= 0).any():  # bit-identical to the (16, 1) run: no such point on a log axis
        ax.annotate("0 (bit-identical) drawn at 1e-17", (0.5, 1e-17), xycoords=("axes fraction", "data"),
                    xytext=(0, 6), textcoords="offset points", ha="center", va="bottom", fontsize=7)
    _powers_of_two(ax, sorted(dist.grad_accum.unique()))
    readable_log_scale(ax)
    ax.set_xlabel("gradient-accumulation steps (micro-batch = 16 / ga)")
    ax.set_ylabel("‖W − W(16,1)‖ / ‖W(16,1)‖")
    mixed = dist[dist.format == "mixed lengths"].groupby(["normalization", "grad_accum"]).value.mean()
    if {"local", "global"} <= set(mixed.index.get_level_values(0)):
        worst = mixed["local"].idxmax()
        ax.set_title(f"E2: distance to the full-batch run\nGA {worst}: naive {mixed['local'][worst]:.2g}, "
                     f"global {mixed['global'][worst]:.1g}", fontsize=10)
    else:
        ax.set_title("E2: distance to the full-batch run")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    p = table[table.metric == "p_long"].groupby("micro_batch_size")[["value", "predicted"]]
    stats = p.mean()
    bx.plot(stats.index, stats.predicted.astype(float), "k--", marker="s", label="predicted")
    bx.plot(stats.index, stats.value, marker="o", color="#D55E00", label="measured (mean of seeds)")
    _powers_of_two(bx, list(stats.index))
    bx.set_xlabel("naive micro-batch size (samples)")
    bx.set_ylabel('P("L" | prompt)')
    bx.set_ylim(0, None)
    bx.set_title("E2: naive token-mean learns a batch-size prior")
    bx.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    return fig


def _powers_of_two(ax, values) -> None:
    """A log-2 x axis labelled at exactly the values run (1, 2, 4, 8, 16), in plain numbers."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator([float(v) for v in values]))
    ax.xaxis.set_major_formatter(PLAIN)
    ax.xaxis.set_minor_locator(NullLocator())


def e4_figure(table: pd.DataFrame):
    """E4: P("L") per (format, scheme), measured (dots per seed) vs predicted (black bar)."""
    rows = table[table.metric == "p_long"].copy()
    rows["label"] = rows["format"].astype(str) + ": " + rows["scheme"].astype(str)
    fig = p_long_figure(rows, 'E4: P("L") at turn 3, format A (split) vs B (multi-turn)', by="label")
    return fig


def e5_figure(table: pd.DataFrame):
    """E5: final held-out loss against the SGD learning rate (token-mean vs token-sum), and Adam's final loss."""
    fig, axes = new_figure(1, 2, width=10.0)
    ax, bx = axes[0, 0], axes[0, 1]
    sgd = table[table.metric == "sgd_final_heldout_loss"]
    for scheme, sel in sgd.groupby("scheme", sort=False):
        stats = sel.groupby("lr").value.mean()
        ax.plot(stats.index, stats.clip(upper=10).to_numpy(), marker="o", color=scheme_color(scheme), label=scheme)
    readable_log_scale(ax, "x")
    ax.set_xlabel("SGD learning rate")
    ax.set_ylabel("final held-out loss\n(nats/token, capped at 10)")
    ax.set_title("E5: SGD, same grid for sum and mean")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    adam = table[table.metric == "final_heldout_loss"]
    stats = adam.groupby("scheme", sort=False).value.agg(["mean", "min", "max"])
    bars = bx.bar(range(len(stats)), stats["mean"], color=[scheme_color(s) for s in stats.index])
    bx.bar_label(bars, labels=[f"{v:.3f}" for v in stats["mean"]], fontsize=8, padding=3)
    bx.errorbar(range(len(stats)), stats["mean"], yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
                fmt="none", color="black", capsize=3)
    bx.set_xticks(range(len(stats)), stats.index, fontsize=8)
    bx.set_xlabel("reduction (Adam)")
    bx.set_ylabel("final held-out loss (nats/token)")
    bx.set_ylim(0, float(stats["max"].max()) * 1.2)
    unigram = table.loc[table.metric == "unigram_heldout_loss", "value"]
    bx.set_title("E5: Adam, sum vs sum / C vs mean" + (f"\n(unigram baseline {unigram.mean():.2f} nats/token)"
                                                        if len(unigram) else ""))
    return fig


def gradient_share_figure(buckets: pd.DataFrame, title: str = "Share of the gradient step by response length"):
    """Bars of gradients.bucket_shares: each scheme's gradient share per response-length bucket, with the bucket's
    share of loss tokens as a grey outline."""
    labels = list(dict.fromkeys(buckets.bucket))
    schemes = list(dict.fromkeys(buckets.scheme))
    width = 0.8 / max(len(schemes), 1)
    fig, ax = new_figure(width=max(6.0, 1.5 * len(labels)))
    x = np.arange(len(labels))
    tokens = buckets.drop_duplicates("bucket").set_index("bucket").token_share.reindex(labels)
    ax.bar(x, tokens, width=0.9, facecolor="none", edgecolor="#888888", linestyle="--", label="share of loss tokens")
    for j, scheme in enumerate(schemes):
        sel = buckets[buckets.scheme == scheme].set_index("bucket").gradient_share.reindex(labels)
        ax.bar(x - 0.4 + width * (j + 0.5), sel, width=width, color=scheme_color(scheme), label=scheme)
    ax.set_xticks(x, [f"{b} tokens" for b in labels], fontsize=8)
    ax.set_xlabel("response length (loss tokens of the turn)")
    ax.set_ylabel("share of the gradient step (projection)")
    ax.set_title(title)
    ax.legend(fontsize=8, **OUTSIDE)
    return fig


def loss_by_length_figure(history: pd.DataFrame, title: str = "Held-out loss by reply length"):
    """Held-out loss against the step, one colour per run, solid = short replies, dashed = long ones. A run whose
    curves coincide with an earlier run's (same weights, e.g. naive GA with micro-batches of 1 and seq-mean) is
    drawn as markers on top of them and says so in the legend."""
    rows = history[(history.metric == "heldout_loss") & history.bucket.notna()]
    fig, ax = new_figure(width=10.0, height=4.2)
    buckets = sorted(rows.bucket.unique(), key=lambda b: int(str(b).split("-")[0].lstrip(">")))
    used: list[str] = []
    drawn: dict[str, pd.DataFrame] = {}
    for run, sel in rows.groupby("run", sort=False):
        color = scheme_color(run)  # the scheme's colour, or a free one for a second run of that scheme
        color = color if color not in used else next((c for c in PALETTE if c not in used), color)
        used.append(color)
        curves = sel.pivot_table(index="step", columns="bucket", values="value").reindex(columns=buckets)
        twin = _drawn_before(curves, drawn)
        drawn[run] = curves
        for i, bucket in enumerate(buckets):
            style = dict(linestyle="none", marker="ox+"[i % 3], markersize=5, markerfacecolor="none") if twin else \
                dict(linestyle=("-", "--", ":")[i % 3])
            label = f"{run}, {bucket}-token replies" + (f" (= {twin}: drawn on top)" if twin else "")
            ax.plot(curves.index, curves[bucket].to_numpy(), color=color, label=label, **style)
    readable_log_scale(ax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(title)
    ax.legend(fontsize=7, **OUTSIDE)
    return fig
