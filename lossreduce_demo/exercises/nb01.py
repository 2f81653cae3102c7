"""Exercises of notebook 01 (formats and masks)."""

from __future__ import annotations

from ..layouts import LAYOUTS, layout_waste, make_layout, split_layout
from ..synth import make_chats
from . import check_number, feedback, pending


def check_1(answer):
    """How many rows does format A (split) make for synth.make_chats(10, turns=(3, 3), max_tokens=None, seed=1)?"""
    if pending(answer, "format A makes one row per assistant turn."):
        return None
    expected = split_layout(make_chats(10, turns=(3, 3), max_tokens=None, seed=1)).shape[0]
    return check_number(answer, expected, f"{expected} rows: one per assistant turn, each with its prefix.",
                        "Format A turns every assistant turn into its own training row.", rel=0)


def check_2(answer):
    """Equal-length sessions, T = 4 turns: format A costs how many times the tokens of format B?"""
    if pending(answer, "row j of format A holds j sessions; sum j over j = 1..T and divide by T."):
        return None
    turns = 4
    expected = (turns + 1) / 2
    return check_number(answer, expected, f"(T+1)/2 = {expected}: quadratic in the number of turns.",
                        "Format A: s·(1+2+…+T) = s·T(T+1)/2 tokens; format B: s·T.", rel=0.03)


def check_3(answer, conversations=None, row_len: int = 192):
    """Which layout computes the fewest positions per loss token (default: 4 chats of 3 turns, seed 0)?"""
    if pending(answer, "compare slots_per_loss_token in layout_waste(...) or the bar chart."):
        return None
    convs = conversations or make_chats(4, turns=(3, 3), seed=0)
    waste = {name: layout_waste(make_layout(convs, name, row_len=row_len))["slots_per_loss_token"]
             for name in LAYOUTS}
    expected = min(waste, key=waste.get)
    return feedback(str(answer).strip().lower() == expected,
                    f"{expected}: {waste[expected]:.2f} positions per loss token (no prefixes repeated, little padding).",
                    f"Look again: positions per loss token are {', '.join(f'{k} {v:.2f}' for k, v in waste.items())}.")
