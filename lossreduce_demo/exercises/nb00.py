"""Exercises of notebook 00 (start here). Each check_N(answer) prints ✅/❌ feedback and returns True/False
(None while the answer is still None)."""

from __future__ import annotations

from ..synth import GEORGE_WASHINGTON
from ..tokenizer import render
from . import check_number, pending

TURN_LOSSES = (2.0, 1.0, 0.5)  # the made-up per-token losses of turns 1, 2, 3 in the notebook


def _turn_lengths() -> list[int]:
    return render(GEORGE_WASHINGTON).loss_tokens_per_turn()


def check_1(answer):
    """How many tokens of the George Washington chat are loss tokens?"""
    if pending(answer, "count the tokens underlined in black, or sum render(chat).loss_mask."):
        return None
    expected = sum(_turn_lengths())
    return check_number(answer, expected, f"{expected} loss tokens: the three replies and their <|eot|>.",
                        "Not quite: only assistant content and its closing <|eot|> count, not the <|assistant|> header.", rel=0)


def check_2(answer):
    """Token-level loss if the third reply had twice as many loss tokens (same per-token loss 0.5)?"""
    if pending(answer, "token-level = Σ_turns n_j·l_j / Σ_turns n_j; double n_3."):
        return None
    n = _turn_lengths()
    n[2] *= 2
    expected = sum(k * loss for k, loss in zip(n, TURN_LOSSES)) / sum(n)
    return check_number(answer, expected, f"{expected:.4f}: the long cheap reply pulls the mean down.",
                        "Weight each turn's loss by its token count (the third turn now has twice as many).", rel=1e-3)


def check_3(answer):
    """Sample-level formula on format A: weight of one token of turn 2 ÷ one token of turn 3?"""
    if pending(answer, "under eq. 1 each sample gets 1/3 of the step, shared by its n_j tokens."):
        return None
    n = _turn_lengths()
    expected = n[2] / n[1]
    return check_number(answer, expected, f"{expected:.3f}×: (1/(3·n_2)) / (1/(3·n_3)) = n_3 / n_2.",
                        "Each sample's tokens share 1/3: a token of turn j weighs 1/(3·n_j).", rel=1e-3)
