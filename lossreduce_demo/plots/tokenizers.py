"""Your tokenizer: the same chats' lengths under two tokenizations (notebook 06)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from . import PALETTE, new_figure

__all__ = ["tokenization_lengths"]


def tokenization_lengths(lengths: Mapping[str, Sequence[int]]):
    """Loss tokens per sample under two tokenizations of the same chats ({name: lengths}, same sample order), one
    dot per sample, with the diagonal y = x; the title gives the ratio of the totals."""
    (x_name, x), (y_name, y) = lengths.items()
    fig, ax = new_figure(width=5.0, height=4.2)
    top = max(max(x), max(y)) * 1.05
    ax.plot([0, top], [0, top], color="0.45", linestyle="--", linewidth=1, label="y = x: as many tokens")
    ax.scatter(x, y, s=14, alpha=0.5, color=PALETTE[0], label="one sample", zorder=3)
    ax.set(xlim=(0, top), ylim=(0, top), xlabel=f"loss tokens per sample, {x_name}",
           ylabel=f"loss tokens per sample, {y_name}")
    ax.set_title(f"{y_name}: {sum(y) / sum(x):.2f}× the loss tokens of the {x_name}")
    ax.legend(loc="upper left", frameon=False)  # every dot of a byte-level BPE lies on or below the diagonal
    return fig
