"""Exercises of notebook 05 (RL length bias). Solutions: exercises/solutions.md, "## 05"."""

from __future__ import annotations

import torch

from . import check_number, pending


def check_1(answer):
    """Under seq-mean-token-mean, how many times the weight of a 30-token wrong answer's token does a 3-token wrong
    answer's token get (same batch)?"""
    if pending(answer, "under 1/|o| a token of sample i weighs 1/(B·n_i)."):
        return None
    from ..rl import E6_TASK, weights_by_template

    frame = weights_by_template(E6_TASK, ["seq-mean-token-mean"]).set_index("template")
    expected = frame.loc["GUESS", "weight_per_token"] / frame.loc["GIBBERISH", "weight_per_token"]
    return check_number(answer, expected, f"{expected:g}x: 1/3 against 1/30 of the same 1/B.",
                        "Each token weighs 1/(B·n_i): compare 1/3 with 1/30.", rel=1e-2)


def check_2(answer):
    """Dr. GRPO with L_max = 30 and a batch of 8 responses: the per-token weight of a 30-token response?"""
    if pending(answer, "seq-mean-token-sum-norm divides by B·L_max, whatever the response's length."):
        return None
    expected = 1 / (8 * 30)
    return check_number(answer, expected, f"1/(B·L_max) = {expected:.6f}, the same for every token.",
                        "seq-mean-token-sum-norm gives every token 1/(B·L_max).", rel=1e-3)


def check_3(answer):
    """GRPO advantage of the one right answer in a group with rewards [0.8, 0.1, 0.1, 0.1]?"""
    if pending(answer, "subtract the group mean, divide by the group's (unbiased) standard deviation."):
        return None
    from ..rl import group_advantages

    expected = float(group_advantages(torch.tensor([[0.8, 0.1, 0.1, 0.1]]), "grpo")[0, 0])
    return check_number(answer, expected, f"(0.8 − 0.275) / 0.35 = {expected:.3f}.",
                        "Mean 0.275, unbiased std 0.35: A = (r − mean) / std.", rel=1e-3)
