"""E9 (docs/science.md §6.2): packing — attention contamination vs weighting.

Part 1 trains the tiny GPT on the same conversations in the same order laid out three ways: `multiturn`, `packed`
(block-diagonal mask, positions restarting) and `packed-causal` (plain causal attention over the row, positions
running on: contaminated), and compares their held-out loss on unpacked conversations. Part 2 trains on the E1
branch data packed into rows, under token-mean, seq-mean over conversations and the per-row mean ("sample =
row"), whose optimum P(long) is predicted by enumerating every long/short sequence of a batch through the packer.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from .. import synth
from ..tokenizer import render
from .sft import L_LONG, L_SHORT

ROW_LEN = 129  # packed rows: the model's context + 1 (inputs and shifted targets)


def _branch_tokens() -> tuple[int, int]:
    """Rendered tokens of a short and a long E1 branch conversation."""
    short, long = (synth.make_branch_chats(1, long_fraction=x, seed=0)[0] for x in (0.0, 1.0))
    return len(render(short)), len(render(long))


def pack_rows(longs, short_tokens: int, long_tokens: int, row_len: int = ROW_LEN) -> list[tuple[int, int]]:
    """(conversations, long ones) of each row when conversations, long or short in the order `longs`, are packed
    as `layouts.packed_layout` does: in order, a new row whenever the next one does not fit."""
    rows, filled = [], row_len
    for long in longs:
        size = long_tokens if long else short_tokens
        if filled + size > row_len:
            rows.append([0, 0])
            filled = 0
        rows[-1][0] += 1
        rows[-1][1] += int(long)
        filled += size
    return [tuple(r) for r in rows]


@functools.lru_cache(maxsize=8)
def _row_mean_terms(batch: int, row_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every long/short sequence of a batch (2^batch of them): its number of long conversations and the
    branch gradient's two sums Σ_r k_r / (R n_r) and Σ_r m_r / (R n_r) under the per-row mean."""
    short_tokens, long_tokens = _branch_tokens()
    k, top, bottom = [], [], []
    for longs in itertools.product((False, True), repeat=batch):
        rows = pack_rows(longs, short_tokens, long_tokens, row_len)
        n = [L_LONG * k_r + L_SHORT * (m_r - k_r) for m_r, k_r in rows]
        k.append(sum(longs))
        top.append(sum(k_r / (len(rows) * n_r) for (_, k_r), n_r in zip(rows, n)))
        bottom.append(sum(m_r / (len(rows) * n_r) for (m_r, _), n_r in zip(rows, n)))
    return np.array(k), np.array(top), np.array(bottom)


def p_long_per_row_mean(f: float, batch: int = 16, row_len: int = ROW_LEN) -> float:
    """Optimum of P(long) at the branch under the per-row mean of packed rows: every token of row r weighs
    1/(R n_r), R rows, n_r = 60 k_r + 5 (m_r − k_r) loss tokens; the expected gradient at the branch logit vanishes
    at p* = E[Σ_r k_r / (R n_r)] / E[Σ_r m_r / (R n_r)]. Exact: all 2^batch long/short sequences of a batch."""
    k, top, bottom = _row_mean_terms(batch, row_len)
    prob = f**k * (1 - f) ** (batch - k)
    return float(prob @ top / (prob @ bottom))


def per_row_weight_table(f: float = 0.2, batch: int = 16, row_len: int = ROW_LEN, seed: int = 0):
    """One packed batch of branch chats: per conversation, its row and the weight of one of its tokens under
    token-mean, seq-mean over conversations and the per-row mean (the numbers behind the weight-map figure)."""
    import pandas as pd

    from ..layouts import packed_layout, rows_as_samples
    from ..reductions import token_weights

    chats = synth.make_branch_chats(batch, long_fraction=f, seed=seed)
    packed = packed_layout(chats, row_len)
    weights = {"token-mean": token_weights(packed, "token-mean"),
               "seq-mean-token-mean": token_weights(packed, "seq-mean-token-mean"),
               "per-row mean": token_weights(rows_as_samples(packed), "seq-mean-token-mean")}
    rows = []
    for c, chat in enumerate(chats):
        where = (packed.conversation_id == c) & packed.loss_mask
        row = int(where.any(1).nonzero()[0])
        rows.append(dict(conversation=c, row=row, long=synth.is_long_branch(chat), loss_tokens=int(where.sum()),
                         **{name: float(w[where][0]) for name, w in weights.items()}))
    return pd.DataFrame(rows)


