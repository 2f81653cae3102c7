"""Tidy tables of per-token weights (pandas), shared by the CLI, the notebooks and the plots."""

from __future__ import annotations

import pandas as pd

from .layouts import Batch, make_layout
from .reductions import as_scheme, effective_weights
from .tokenizer import ROLE_NAMES, token_text


def batch_table(batch: Batch, weights, rank=None, micro_batch=None) -> pd.DataFrame:
    """One row per non-padding token of a laid-out batch, with its labels and weight."""
    keep = batch.segment_id >= 0
    rows, positions = keep.nonzero(as_tuple=True)
    frame = pd.DataFrame({
        "row": rows.numpy(),
        "sample": batch.sample_id[keep].numpy(),
        "conversation": batch.conversation_id[keep].numpy(),
        "turn": batch.turn_in_conversation[keep].numpy(),
        "position": positions.numpy(),
        "token": batch.tokens[keep].numpy(),
        "role": [ROLE_NAMES[int(r)] for r in batch.role[keep]],
        "loss_mask": batch.loss_mask[keep].numpy().astype(int),
        "rank": (rank[keep].numpy() if rank is not None else 0),
        "micro_batch": (micro_batch[keep].numpy() if micro_batch is not None else 0),
        "weight": weights[keep].double().numpy(),
    })
    frame.insert(6, "text", [token_text(t) for t in frame.token])
    return frame


def weights_table(conversations, scheme, *, layout: str = "multiturn", ranks: int = 1, micro_batches: int = 1,
                  normalization: str = "global", row_len: int | None = None,
                  max_len: int | None = None) -> pd.DataFrame:
    """Effective per-token weights of `conversations` laid out by `layout`, dealt into R ranks × K micro-batches."""
    batch = make_layout(conversations, layout, max_len=max_len, row_len=row_len)
    weights, rank, step = effective_weights(batch, as_scheme(scheme), ranks=ranks, micro_batches=micro_batches,
                                            normalization=normalization)
    return batch_table(batch, weights, rank, step)


def weights_summary(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-sample and per-assistant-turn totals: loss tokens, total weight, weight per token, share of the step."""
    loss = table[table.loss_mask == 1]
    total = loss.weight.sum()

    def summarise(keys):
        out = loss.groupby(keys, as_index=False).agg(loss_tokens=("weight", "size"), weight=("weight", "sum"))
        out["weight_per_token"] = out.weight / out.loss_tokens
        out["share"] = out.weight / total if total > 0 else 0.0
        return out

    return summarise(["sample", "conversation", "rank", "micro_batch"]), summarise(["conversation", "turn", "sample"])
