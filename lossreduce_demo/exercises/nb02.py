"""Exercises of notebook 02 (reduction schemes)."""

from __future__ import annotations

import torch

from ..chats import conversation
from ..layouts import multiturn_layout
from ..reductions import Scheme, token_weights
from ..synth import make_chats
from . import check_number, feedback, pending


def check_1(answer, long_fraction: float = 0.2, short: int = 5, long: int = 60):
    """E1: the optimum P(long) of seq-mean-token-mean when 20% of replies are long (5 vs 60 loss tokens)."""
    if pending(answer, "each sample's tokens share 1/B: a long reply's branch token weighs 1/60, a short one 1/5."):
        return None
    f = long_fraction
    expected = (f / long) / (f / long + (1 - f) / short)
    return check_number(answer, expected, f"p* = {expected:.4f}: ten times below the data's {f}.",
                        "Weight each branch by f/L: p* = (f/L_l) / (f/L_l + (1−f)/L_s).", rel=0.01)


def check_2(answer):
    """Which α makes length-power give exactly token-mean's weights?"""
    if pending(answer, "length-power weights are ∝ n_i^(α−1)."):
        return None
    batch = multiturn_layout(make_chats(16, seed=0))
    try:
        same = torch.allclose(token_weights(batch, Scheme("length-power", alpha=float(answer))),
                              token_weights(batch, "token-mean"), rtol=1e-9, atol=0)
    except (TypeError, ValueError):
        same = False
    return feedback(same, "α = 1: n_i^0 = 1 for every token, then normalised by Σ n_i = N.",
                    "Not that one: at which α does n_i^(α−1) stop depending on n_i?")


def check_3(answer):
    """Format B + seq-mean-token-mean on the 5/5/41 chat: the share of the step that goes to turn 3?"""
    if pending(answer, "format B makes the whole chat one sample."):
        return None
    chat = conversation(("user", "a"), ("assistant", "abcd"), ("user", "b"), ("assistant", "efgh"),
                        ("user", "c"), ("assistant", "x" * 40))
    batch = multiturn_layout([chat])
    w = token_weights(batch, "seq-mean-token-mean")
    expected = float(w[batch.turn_in_conversation == 2].sum() / w.sum())
    return check_number(answer, expected,
                        f"{expected:.3f}: one sample, so its mean is token-mean inside it (41/51).",
                        "With a single sample, seq-mean-token-mean divides by that sample's 51 tokens.", rel=0.01)
