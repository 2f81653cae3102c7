"""Exercises of notebook 04 (training the tiny GPT)."""

from __future__ import annotations

from ..experiments.sft import e4_predictions, predicted_p_long
from . import check_number, close, pending


def check_1(answer, long_fraction: float = 0.1):
    """E1 with 10% long replies (60 loss tokens) and 90% short (5): P("L") learned under seq-mean-token-mean?"""
    if pending(answer, "each sample's branch token weighs 1/(B·n_i): weight each branch's frequency by 1/length."):
        return None
    f = long_fraction
    expected = predicted_p_long("seq-mean-token-mean", f, 16)
    return check_number(answer, expected,
                        f"p* = (f/60) / (f/60 + (1−f)/5) = {expected:.4f}: twelve times below the data's odds, as for f = 0.2.",
                        f"That is the data's {f}: what token-sum learns. Weight each branch by 1/length." if close(answer, f)
                        else "Not that one: p* = (f/L_long) / (f/L_long + (1−f)/L_short).", rel=0.01)


def check_2(answer):
    """E4: format B (one row per conversation), two copy turns of 5 loss tokens before the branch (5 or 60),
    20% long, seq-mean-token-mean. What P("L") does the model learn?"""
    if pending(answer, "in format B the sample is the whole conversation: its tokens share 1/(B·n_i) with n_i "
                       "counting the context turns too."):
        return None
    expected = e4_predictions(0.2)[("B", "seq-mean-token-mean")]
    per_turn = e4_predictions(0.2)[("B", "turn-mean")]
    return check_number(answer, expected,
                        f"p* = (0.2/70) / (0.2/70 + 0.8/15) = {expected:.4f}: the 10 context tokens dilute the length "
                        "penalty, so format B + sample mean lands between turn-mean (0.020) and token-mean (≈0.18).",
                        "That is format A (or turn-mean): there each turn is its own sample." if close(answer, per_turn)
                        else "Count the context: a long conversation has 10 + 60 loss tokens, a short one 10 + 5.", rel=0.01)


def check_3(answer, lr_mean: float = 0.5, tokens_per_batch: int = 250):
    """SGD: token-mean trains best at lr 0.5 with 250 loss tokens per batch. Which lr gives token-sum the same
    steps?"""
    if pending(answer, "token-sum's gradient is token-mean's times N, the loss tokens of the batch."):
        return None
    expected = lr_mean / tokens_per_batch
    return check_number(answer, expected,
                        f"lr = 0.5 / 250 = {expected:g}: the sum's gradient is N times larger, so its lr must be N times "
                        "smaller (Tülu 3). Adam divides the scale out and needs no change.",
                        "Other way round: the sum's gradient is N times larger." if close(answer, lr_mean * tokens_per_batch)
                        else f"The sum's gradient is {tokens_per_batch}× the mean's: scale the lr to give the same step.", rel=0.01)
