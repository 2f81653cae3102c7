"""Exercises of notebook 06 (your own data). Each checker reads the same file as the notebook (default:
the shipped data/default_chats.jsonl); pass `path=` if you pointed the notebook at your own file."""

from __future__ import annotations

from ..chats import load_chats
from ..layouts import multiturn_layout
from ..reductions import SCHEMES, token_weights
from ..report import data_path, length_profile
from . import close, feedback, pending

DEFAULT = "default_chats.jsonl"


def _chats(path):
    return load_chats(path or data_path(DEFAULT))


def check_1(answer, path=None):
    """How many conversations of the file have more than one assistant turn?"""
    if pending(answer, "count conversations with c.n_assistant_turns > 1."):
        return None
    expected = sum(c.n_assistant_turns > 1 for c in _chats(path))
    return feedback(close(answer, expected, rel=0), f"{expected} multi-turn conversations.",
                    "Count Conversation.n_assistant_turns > 1 over the whole file.")


def check_2(answer, path=None, n: int = 64):
    """seq-mean-token-mean, format B, first 64 conversations: largest weight per token ÷ smallest?"""
    if pending(answer, "a token of sample i weighs 1/(B·n_i)."):
        return None
    profile = length_profile(batch := multiturn_layout(_chats(path)[:n]), token_weights(batch, "seq-mean-token-mean"))
    expected = float(profile.length.max() / profile.length.min())
    return feedback(close(answer, expected, rel=1e-3), f"{expected:.2f} = longest sample ÷ shortest sample.",
                    "The ratio of weights is the inverse ratio of the samples' loss-token counts.")


def check_3(answer, path=None, n: int = 64):
    """Which scheme gives every conversation (format B) exactly the same share of the step?"""
    if pending(answer, f"one of {', '.join(SCHEMES)}."):
        return None
    if answer not in SCHEMES:
        return feedback(False, "", f"{answer!r} is not a scheme; choose one of {', '.join(SCHEMES)}.")
    batch = multiturn_layout(_chats(path)[:n])
    share = length_profile(batch, token_weights(batch, answer)).share
    return feedback(bool(share.max() - share.min() < 1e-12), f"{answer}: every sample gets 1/B of the step.",
                    f"Under {answer} the shares range from {share.min():.4f} to {share.max():.4f}.")
