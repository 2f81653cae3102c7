"""Exercises of notebook 06 (your own data). Each checker reads the same file as the notebook (default:
the shipped data/default_chats.jsonl) and the shipped tokenizer; pass `path=` / `tokenizer=` if you pointed the
notebook at your own."""

from __future__ import annotations

from ..chats import load_chats
from ..hf_tokenizer import SHIPPED_TOKENIZER
from ..layouts import multiturn_layout
from ..notebook import data_path
from ..reductions import token_weights
from ..report import length_profile
from . import check_number, pending

DEFAULT = "default_chats.jsonl"


def _chats(path):
    return load_chats(path or data_path(DEFAULT))


def check_1(answer, path=None):
    """How many conversations of the file have more than one assistant turn?"""
    if pending(answer, "count conversations with c.n_assistant_turns > 1."):
        return None
    expected = sum(c.n_assistant_turns > 1 for c in _chats(path))
    return check_number(answer, expected, f"{expected} multi-turn conversations.",
                        "Count Conversation.n_assistant_turns > 1 over the whole file.", rel=0)


def check_2(answer, path=None, tokenizer=None):
    """Format B, the whole file: loss tokens under the tokenizer ÷ loss tokens under the byte template?"""
    if pending(answer, "sum the loss_mask of multiturn_layout(convs) with and without tokenizer=tok."):
        return None
    convs = _chats(path)
    bpe = int(multiturn_layout(convs, tokenizer=tokenizer or data_path(SHIPPED_TOKENIZER)).loss_mask.sum())
    byte = int(multiturn_layout(convs).loss_mask.sum())
    expected = bpe / byte
    return check_number(answer, expected, f"{bpe} / {byte} = {expected:.3f}: BPE merges letters, "
                        "and every reply keeps one end-of-turn token.",
                        "Count the trained tokens (loss_mask) of both renderings of the same chats, then divide.",
                        rel=0.01)


def check_3(answer, path=None, tokenizer=None):
    """seq-mean-token-mean, format B, the whole file under the tokenizer: largest weight per token ÷ smallest?"""
    if pending(answer, "a token of sample i weighs 1/(B·n_i); n_i now counts the tokenizer's tokens."):
        return None
    batch = multiturn_layout(_chats(path), tokenizer=tokenizer or data_path(SHIPPED_TOKENIZER))
    profile = length_profile(batch, token_weights(batch, "seq-mean-token-mean"))
    expected = float(profile.length.max() / profile.length.min())
    return check_number(answer, expected, f"{expected:.2f} = longest sample ÷ shortest, in BPE tokens.",
                        "The ratio of weights is the inverse ratio of the samples' loss-token counts under the tokenizer.",
                        rel=0.01)
