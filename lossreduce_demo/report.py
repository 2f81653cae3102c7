"""Tidy tables of per-token weights (pandas), shared by the CLI, the notebooks and the plots."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from .hf_tokenizer import as_tokenizer
from .layouts import Batch, make_layout
from .reductions import FULL_BATCH, LENGTH_BUCKETS, Plan, as_scheme, effective_weights, length_bucket_labels
from .tokenizer import ROLE_NAMES, VOCAB_SIZE, token_text

_ROLE_NAME_ARRAY = np.array([ROLE_NAMES[i] for i in range(len(ROLE_NAMES))], dtype=object)
_TOKEN_TEXT = np.array([token_text(i) for i in range(VOCAB_SIZE)], dtype=object)


def batch_table(batch: Batch, weights, rank=None, micro_batch=None, tokenizer=None) -> pd.DataFrame:
    """One row per non-padding token of a laid-out batch, with its labels and weight; `text` is the token's text
    under `tokenizer` (None: the byte template; a ChatTokenizer: its pieces)."""
    keep = batch.segment_id >= 0
    rows, positions = keep.nonzero(as_tuple=True)
    frame = pd.DataFrame({
        "row": rows.numpy(),
        "sample": batch.sample_id[keep].numpy(),
        "conversation": batch.conversation_id[keep].numpy(),
        "turn": batch.turn_in_conversation[keep].numpy(),
        "position": positions.numpy(),
        "token": batch.tokens[keep].numpy(),
        "role": _ROLE_NAME_ARRAY[batch.role[keep].numpy()],
        "loss_mask": batch.loss_mask[keep].numpy().astype(int),
        "rank": (rank[keep].numpy() if rank is not None else 0),
        "micro_batch": (micro_batch[keep].numpy() if micro_batch is not None else 0),
        "weight": weights[keep].double().numpy(),
    })
    tokens = frame.token.to_numpy()
    text = _TOKEN_TEXT[tokens] if tokenizer is None else np.array([tokenizer.token_text(t) for t in tokens], object)
    frame.insert(6, "text", text)
    return frame


def weights_table(conversations, scheme, plan: Plan = FULL_BATCH, *, layout: str = "multiturn",
                  row_len: int | None = None, max_len: int | None = None, tokenizer=None, recipe=None) -> pd.DataFrame:
    """Effective per-token weights of `conversations` laid out by `layout`, dealt by `plan` (R ranks × K
    micro-batches, normalization).
    `tokenizer`: None renders with the byte template; a ChatTokenizer or a local Hugging Face tokenizer directory
    renders with its own chat template (`token` = its ids, `text` = its pieces). `recipe` (a `frameworks.Recipe`)
    replaces the scheme and the plan's normalization by a framework preset's."""
    tokenizer = as_tokenizer(tokenizer)
    batch = make_layout(conversations, layout, max_len=max_len, row_len=row_len, tokenizer=tokenizer)
    if recipe is not None:
        from .frameworks import check_batch

        check_batch(batch, recipe)
        scheme, plan = recipe.scheme, replace(plan, normalization=recipe.normalization,
                                              window_steps=recipe.window_steps)
    weights, rank, step = effective_weights(batch, as_scheme(scheme), plan)
    return batch_table(batch, weights, rank, step, tokenizer)


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


# ---------------------------------------------------------------- per-sample weight profiles (plots, widgets)

def length_profile(batch: Batch, weights, by: str = "sample") -> pd.DataFrame:
    """One row per sample (or assistant turn, by="turn") with loss tokens: its length, total weight, weight per
    token, share of the step, and `relative` = weight per token ÷ token-mean's (1 everywhere under token-mean)."""
    if by not in ("sample", "turn"):
        raise ValueError(f"by={by!r}: choose 'sample' or 'turn'")
    mask = batch.loss_mask.numpy()
    ids = (batch.sample_id if by == "sample" else batch.turn_id).numpy()[mask]
    w = weights.double().numpy()[mask] if hasattr(weights, "numpy") else np.asarray(weights, float)[mask]
    length = np.bincount(ids, minlength=1) if ids.size else np.zeros(0, int)
    weight = np.bincount(ids, weights=w, minlength=1) if ids.size else np.zeros(0)
    conv = np.zeros(len(length), int)
    conv[ids] = batch.conversation_id.numpy()[mask]
    keep = length > 0
    total, n_tokens = weight.sum(), length.sum()
    per_token = weight[keep] / length[keep]
    return pd.DataFrame({
        by: np.nonzero(keep)[0], "conversation": conv[keep], "length": length[keep], "weight": weight[keep],
        "weight_per_token": per_token,
        "share": weight[keep] / total if total > 0 else 0.0,
        "relative": per_token * n_tokens / total if total > 0 else 0.0,
    })


def bucket_shares(profile: pd.DataFrame, edges=LENGTH_BUCKETS) -> pd.DataFrame:
    """Share of the step's weight per length bucket, next to its share of loss tokens (= token-mean's share).
    Every bucket appears (zeros where empty), so bars line up across schemes."""
    bucket = pd.cut(profile.length, list(edges), labels=length_bucket_labels(edges))
    grouped = profile.groupby(bucket, observed=False)
    out = pd.DataFrame({"units": grouped.size(), "tokens": grouped.length.sum(), "weight": grouped.weight.sum()})
    out.index.name = "bucket"
    out = out.reset_index()
    total_w, total_t = out.weight.sum(), out.tokens.sum()
    out["share"] = out.weight / total_w if total_w > 0 else 0.0
    out["token_share"] = out.tokens / total_t if total_t > 0 else 0.0
    return out
