"""Exercises of notebook 08 (beyond the mean). Solutions: exercises/solutions.md, "## 08"."""

from __future__ import annotations

import math

import torch

from . import check_number, pending


def check_1(answer):
    """ΔL Normalization with a = 1 on a batch of two responses of 5 and 20 loss tokens: the weight x of the
    5-token response's summed gradient?"""
    if pending(answer, "x_i = n_i^-a / Σ_j n_j^-a, and the weights of the samples add up to 1."):
        return None
    from ..layouts import completion_batch
    from ..reductions import Scheme, token_weights

    batch = completion_batch([5, 20])
    expected = float(token_weights(batch, Scheme("delta-l", delta_l_alpha=1.0))[0][batch.loss_mask[0]][0])
    return check_number(answer, expected, f"(1/5) / (1/5 + 1/20) = {expected:g}: the short response's "
                    "gradient counts 4× the long one's, and the two weights add up to 1.",
                    "x = (1/5) / (1/5 + 1/20): inverse length, normalised over the samples.", rel=1e-3)


def check_2(answer):
    """Packed rows under a per-row mean ("sample = row"): row 1 holds one long branch reply (60 loss tokens) and
    four short ones (5 each), row 2 nine short ones. The weight of one token of the long reply?"""
    if pending(answer, "w = 1 / (rows · loss tokens of the token's row)."):
        return None
    from ..chats import conversation
    from ..layouts import packed_layout, rows_as_samples
    from ..reductions import token_weights
    from ..synth import branch_reply

    chats = [conversation(("user", "pick"), ("assistant", branch_reply(i == 0))) for i in range(14)]
    packed = packed_layout(chats, 129)  # the long reply and 4 short ones fill row 1, 9 short ones row 2
    weights = token_weights(rows_as_samples(packed), "seq-mean-token-mean")
    expected = float(weights[0][packed.loss_mask[0]][0])
    return check_number(answer, expected, f"1/(2·80) = {expected:g}: token-mean inside the row, but the row of 45 "
                    "short tokens gets half the step too — neither token-mean (1/125) nor seq-mean over conversations (1/(14·60)).",
                    "Two rows with loss tokens; the long reply's row has 60 + 4·5 = 80 of them.", rel=1e-3)


def check_3(answer):
    """GSPO: a 4-token response whose token ratios π_θ/π_old are 1.1, 0.9, 1.2 and 1.0. Its sequence ratio s_i?"""
    if pending(answer, "GSPO's s_i is the geometric mean of the token ratios: (Π ρ_t)^(1/|o_i|)."):
        return None
    from ..ratios import gspo_log_ratio

    delta = torch.log(torch.tensor([[1.1, 0.9, 1.2, 1.0]], dtype=torch.float64))
    expected = math.exp(float(gspo_log_ratio(delta, torch.ones(1, 4, dtype=torch.bool))[0]))
    return check_number(answer, expected,
                        f"(1.1·0.9·1.2·1.0)^(1/4) = {expected:.4f}; the unnormalised product would be 1.188.",
                    "Multiply the four ratios, then take the 4th root.", rel=1e-3)
