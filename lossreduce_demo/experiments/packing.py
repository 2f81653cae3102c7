"""E9 (docs/science.md §6.2): packing — attention contamination vs weighting.

Part 1 trains the tiny GPT on the same short noisy-tail chats ("say 7 ..." -> "7" + random letters: the digit must
be found in the chat's own prompt, so attending to other chats misleads) in the same order laid out three ways: `multiturn`, `packed`
(block-diagonal mask, positions restarting) and `packed-causal` (plain causal attention over the row, positions
running on: contaminated), and compares their held-out loss on unpacked conversations. Part 2 trains on the E1
branch data packed into rows, under token-mean, seq-mean over conversations and the per-row mean ("sample =
row"), whose optimum P(long) is predicted by enumerating every long/short sequence of a batch through the packer.
"""

from __future__ import annotations

import functools
import itertools
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from .. import synth
from ..config import fast_mode, pick, set_torch_threads
from ..tokenizer import render
from . import ExperimentResult, tidy
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
    from ..layouts import packed_layout, rows_as_samples
    from ..reductions import token_weights

    chats = synth.make_branch_chats(batch, long_fraction=f, seed=seed)
    packed = packed_layout(chats, row_len)
    weights = {"token-mean": token_weights(packed, "token-mean"),
               "seq-mean over conversations": token_weights(packed, "seq-mean-token-mean"),
               "per-row mean": token_weights(rows_as_samples(packed), "seq-mean-token-mean")}
    rows = []
    for c, chat in enumerate(chats):
        where = (packed.conversation_id == c) & packed.loss_mask
        row = int(where.any(1).nonzero()[0])
        rows.append(dict(conversation=c, row=row, long=synth.is_long_branch(chat), loss_tokens=int(where.sum()),
                         **{name: float(w[where][0]) for name, w in weights.items()}))
    return pd.DataFrame(rows)




# ------------------------------------------------------------------------------------------ the experiment

LAYOUT_RUNS = ("multiturn", "packed", "packed-causal")
SAME_MODEL = 0.01  # block-diagonal packing vs multiturn: mean held-out loss within 1 % (rounding, amplified by Adam)
CONTAMINATION_MARGIN = 0.02  # contaminated packing: held-out loss at least 2 % above block-diagonal packing
P_LONG_TOLERANCE = 0.25  # learned P(long) within 25 % of its prediction
SHORT_TAILS = synth.LengthSpec("lognormal", mean=6, sigma=0.5, max_len=16)  # ~6 noisy-tail chats per packed row


def e9_predictions(f: float) -> dict[str, float]:
    """Predicted P(long) at the branch for packed rows of the E1 data, per weighting."""
    from .sft import predicted_p_long

    return {"token-mean": predicted_p_long("token-mean", f, 16),
            "seq-mean over conversations": predicted_p_long("seq-mean-token-mean", f, 16),
            "per-row mean": p_long_per_row_mean(f)}


E9_PREDICTION = ("E9 predicted: block-diagonal packing and multiturn train the same model (mean held-out loss within "
                 f"{SAME_MODEL:.1%}); contaminated packing (causal over the row, positions running on) ends at least "
                 f"{CONTAMINATION_MARGIN:.0%} higher on unpacked held-out conversations. On E1's branch data packed into "
                 "rows of 129: P(long) = {token-mean} (token-mean, packing-invariant), {seq-mean over conversations} "
                 "(seq-mean over conversations), {per-row mean} (the per-row mean: exact enumeration of the packer), "
                 "at f = 0.2.")


def _final(history, metric: str) -> float:
    from ..train import final_metric

    return float(final_metric(history, metric).iloc[0])


def run_e9(seeds: int = 3) -> ExperimentResult:
    from ..plots.beyond import e9_figure
    from ..train import TrainConfig, token_probability_metric, train
    from .sft import P_LONG_TOKEN, _branch_sets, _finish, _judge, _verdict, long_fraction

    set_torch_threads()
    print(E9_PREDICTION.format(**{k: f"{v:.3f}" for k, v in e9_predictions(0.2).items()}))
    started, rows, curves = time.time(), [], []
    for seed in range(seeds):
        train_set = synth.make_noisy_tail_chats(pick(512, 64), lengths=SHORT_TAILS, seed=11000 + seed)
        heldout = synth.make_noisy_tail_chats(pick(64, 16), lengths=SHORT_TAILS, seed=12000 + seed)
        base = dict(experiment="e9", seed=seed, normalization="global", micro_batch_size=16, grad_accum=1,
                    scheme="token-mean")
        for layout in LAYOUT_RUNS:
            cfg = TrainConfig(steps=pick(100, 8), eval_every=pick(5, 4), seed=seed, layout=layout,
                              progress=not fast_mode())
            history = train(train_set, ["token-mean"], cfg, heldout=heldout).history
            h = history[(history.metric == "heldout_loss") & history.bucket.isna()]
            rows.append(base | dict(format=layout, metric="mean_heldout_loss", value=float(h.value.mean())))
            curves.append(pd.DataFrame(dict(experiment="e9", seed=seed, scheme="token-mean", format=layout,
                                            metric="heldout_loss_curve", value=h.value, step=h.step)))
        branch, probes, branch_heldout = _branch_sets(seed)
        predicted = e9_predictions(long_fraction(branch))
        metric = token_probability_metric(probes, P_LONG_TOKEN, "p_long")
        cfg = TrainConfig(steps=pick(200, 12), eval_every=pick(5, 4), seed=seed, layout="packed", lr_decay=pick(0.01, 1.0),
                          progress=not fast_mode())
        weighting = {"token-mean": ("token-mean", False), "seq-mean over conversations": ("seq-mean-token-mean", False),
                     "per-row mean": ("seq-mean-token-mean", True)}
        for name, (scheme, per_row) in weighting.items():
            history = train(branch, [scheme], replace(cfg, sample_is_row=per_row), heldout=branch_heldout,
                            task_metrics=metric).history
            rows.append(dict(experiment="e9", seed=seed, scheme=name, format="packed", normalization="global",
                             micro_batch_size=16, grad_accum=1, metric="p_long", value=_final(history, "p_long"),
                             predicted=predicted[name]))
    frame = tidy(rows)
    loss = frame[frame.metric == "mean_heldout_loss"].pivot(index="seed", columns="format", values="value")
    same = (loss["packed"] / loss["multiturn"] - 1).abs()
    worse = loss["packed-causal"] / loss["packed"] - 1
    p = frame[frame.metric == "p_long"]
    verdict = [
        dict(what=f"held-out loss along training: packed (block-diagonal) vs multiturn within {SAME_MODEL:.1%}",
             predicted=0.0,
             measured=float(same.max()), passed=_judge(bool((same <= SAME_MODEL).all()))),
        dict(what=f"held-out loss along training: contaminated packing ≥ {CONTAMINATION_MARGIN:.0%} above block-diagonal",
             predicted=CONTAMINATION_MARGIN, measured=float(worse.min()),
             passed=_judge(bool((worse >= CONTAMINATION_MARGIN).all()))),
    ]
    for name in weighting:
        sel = p[p.scheme == name]
        close = (np.abs(sel.value / sel.predicted - 1) <= P_LONG_TOLERANCE).all()
        verdict.append(dict(what=f"P(long), {name}: within {P_LONG_TOLERANCE:.0%} of its prediction (every seed)",
                            predicted=float(sel.predicted.mean()), measured=float(sel.value.mean()),
                            passed=_judge(bool(close))))
    by_seed = {name: p[p.scheme == name].set_index("seed").value for name in weighting}
    row_mean = by_seed["per-row mean"]
    between = ((by_seed["seq-mean over conversations"] < row_mean) & (row_mean < by_seed["token-mean"])).all()
    verdict.append(dict(what="per-row mean's P(long) lies between seq-mean's and token-mean's (every seed)",
                        predicted=np.nan, measured=float(row_mean.mean()), passed=_judge(bool(between))))
    figure = e9_figure(frame, pd.concat(curves, ignore_index=True), per_row_weight_table(seed=3))
    return _finish("e9", rows, curves, _verdict(verdict), figure, started)
