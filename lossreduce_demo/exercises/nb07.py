"""Exercises of notebook 07 (your framework): three about the presets, then five "find the bug" exercises from
real threads. Each bug is restated here as a small loss function (the thread's logic, not its code); its weight
map is read off with autograd, w = d(loss)/d(per-token loss), and the checker compares your answer with it."""

from __future__ import annotations

import torch

from ..frameworks import TRL_LOSS_TYPES, effective_weights
from ..layouts import IGNORE_INDEX, completion_batch
from ..widgets import COMPLETION_LENGTHS
from . import close, feedback, pending


def weights_of(loss_fn, batch) -> torch.Tensor:
    """w = d loss / d l for per-token losses l on the batch grid (zeros as leaves: only the weights matter)."""
    losses = torch.zeros(batch.shape, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss_fn(losses, batch.loss_mask.double()), losses)
    return grad


def per_token(weights, batch, row: int) -> float:
    return float(weights[row][batch.loss_mask[row]].mean())


def check_1(answer):
    """transformers, `average_tokens_across_devices=False`, 2 ranks: rank 0 holds a completion of 30 loss tokens,
    rank 1 one of 90. Weight of a rank-0 token ÷ weight of a rank-1 token?"""
    if pending(answer, "each rank divides by its own count over its GA window: 1/(R·N_r)."):
        return None
    batch = completion_batch([30, 90])
    w = effective_weights(batch, "transformers", ranks=2, average_tokens_across_devices=False)
    expected = per_token(w, batch, 0) / per_token(w, batch, 1)
    return feedback(close(answer, expected), f"{expected:g}: 1/(2·30) vs 1/(2·90). With the default (True) the count "
                    "is gathered over ranks and both weigh 1/120.", "Each rank uses its own token count.")


def length_blind_loss_types(ranks: int = 2, micro_batches: int = 4) -> set[str]:
    """TRL loss types under which every token of the notebook's 16 completions gets the same weight."""
    batch = completion_batch(COMPLETION_LENGTHS)
    out = set()
    for loss_type in TRL_LOSS_TYPES:
        w = effective_weights(batch, "trl-grpo", ranks=ranks, micro_batches=micro_batches, loss_type=loss_type)
        on = w[batch.loss_mask]
        if float((on.max() - on.min()) / on.max()) < 1e-12:
            out.add(loss_type)
    return out


def check_2(answer):
    """The widget's 16 completions (2 to 30 tokens, short first), R = 2, K = 4: under which TRL loss types does
    every token get exactly the same weight? Answer a list of loss_type names."""
    if pending(answer, "a per-row token mean weighs 1/n_i; a constant or a count of rows does not depend on n_i."):
        return None
    expected = length_blind_loss_types()
    given = {str(a) for a in answer} if isinstance(answer, (list, tuple, set)) else None
    return feedback(given == expected, f"{sorted(expected)}: dapo/cispo/vespo divide by the step's token count; "
                    "dr_grpo and luspo by rows (× max_completion_length), and every micro-batch here holds 2 rows.",
                    "Not quite: look at which denominators depend on the token's own completion or micro-batch "
                    "token count (grpo, sapo: 1/n_i; bnpo: N_rk).")


def check_3(answer, ranks: int = 2, micro_batches: int = 4, max_completion_length: int = 64):
    """Which verl `loss_scale_factor` makes `loss_agg_mode="seq-mean-token-sum-norm"` give exactly the weights of
    TRL's `dr_grpo` with `max_completion_length=64` (R = 2, K = 4, 16 completions of which one is masked)?"""
    if pending(answer, "both count every completion in B; what does each divide the sum by?"):
        return None
    batch = completion_batch(COMPLETION_LENGTHS, masked=[6])
    trl = effective_weights(batch, "trl-grpo", ranks=ranks, micro_batches=micro_batches, loss_type="dr_grpo",
                            max_completion_length=max_completion_length)
    try:
        verl = effective_weights(batch, "verl", ranks=ranks, micro_batches=micro_batches,
                                 loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=float(answer))
    except (TypeError, ValueError):
        verl = None
    ok = verl is not None and torch.allclose(verl, trl, rtol=1e-12, atol=0)
    return feedback(ok, "64: then both are Σ l / (M·64) with M every completion (8 micro-batches of 2 rows each, so "
                    "TRL's per-micro-batch rows and verl's global count agree). Left at None, verl divides by each "
                    "micro-batch's padded width instead.", "Not equal: what constant does TRL's dr_grpo divide by?")


# ---------------------------------------------------------------- find the bug (real threads)


def bug_1(answer, rows: int = 4, length: int = 32):
    """transformers PR #46204: `num_items_in_batch` counted `labels != -100` at every position, but a causal LM
    loss predicts positions 1.. only. Pretraining rows (every token labelled), 4 rows × 32 tokens: by what factor
    is every weight, and so the gradient, too small?"""
    if pending(answer, "count what the loss sums over (labels[..., 1:]) and what the buggy count counted."):
        return None
    labels = torch.arange(rows * length).reshape(rows, length) % 250
    counted = int((labels != IGNORE_INDEX).sum())
    predicted = int((labels[..., 1:] != IGNORE_INDEX).sum())
    expected = predicted / counted
    return feedback(close(answer, expected, rel=1e-6), f"{predicted}/{counted} = {expected:g}: one label per row is "
                    "counted but never predicted (position 0 has no previous token).",
                    "The loss sums T − 1 terms per row; the count saw T.")


def verl_623_loss(losses, mask, mini_batch_rows: int, micro_rows: int = 2):
    """verl before PR #906 (discussed in PR #623): each micro-batch's token mean, scaled by its share of the
    mini-batch's *sequences* (len(micro_batch) / ppo_mini_batch_size), summed over micro-batches."""
    total = 0.0
    for start in range(0, mask.shape[0], micro_rows):
        rows = slice(start, start + micro_rows)
        token_mean = (losses[rows] * mask[rows]).sum() / mask[rows].sum()
        total = total + token_mean * (micro_rows / mini_batch_rows)
    return total


def bug_2(answer):
    """verl PR #623: a token-mean loss whose micro-batches are combined by sequence count. Mini-batch of 4
    completions, micro-batches of 2: (4, 4) and (40, 40) tokens. Weight of a token of the short micro-batch ÷
    its right token-mean weight 1/N?"""
    if pending(answer, "work out the buggy weight: 1/(micro-batch tokens) × (2 / 4)."):
        return None
    batch = completion_batch([4, 4, 40, 40])
    buggy = weights_of(lambda losses, mask: verl_623_loss(losses, mask, mini_batch_rows=4), batch)
    right = effective_weights(batch, "verl", micro_batches=2)  # the engine path: 1/N
    expected = per_token(buggy, batch, 0) / per_token(right, batch, 0)
    return feedback(close(answer, expected), f"{expected:g}: (1/8)·(2/4) = 1/16 against 1/88. Combining by sequences "
                    "turns a token mean into a mean of micro-batch means: short micro-batches are over-weighted.",
                    "Compute the weight of one token of the (4, 4) micro-batch under the buggy sum.")


def verl_3741_loss(losses, mask, micro_rows: int = 2):
    """verl's seq-mean-token-sum-norm as issue #3741 quotes it: per micro-batch, the sequences' token sums divided
    by `loss_mask.shape[-1]` (the micro-batch padded to its longest response), summed over micro-batches."""
    total = 0.0
    for start in range(0, mask.shape[0], micro_rows):
        rows = slice(start, start + micro_rows)
        width = int(mask[rows].sum(-1).max())  # padded to the longest response of the micro-batch
        total = total + (losses[rows] * mask[rows]).sum() / width
    return total


def bug_3(answer):
    """verl #3741: Dr. GRPO dividing by the padded horizon. Micro-batches of 2 completions: (6, 12) and (30, 48)
    tokens. Weight of a token of the first micro-batch ÷ weight of a token of the second?"""
    if pending(answer, "each micro-batch divides by its own padded width, its longest response."):
        return None
    batch = completion_batch([6, 12, 30, 48])
    buggy = weights_of(verl_3741_loss, batch)
    expected = per_token(buggy, batch, 0) / per_token(buggy, batch, 2)
    return feedback(close(answer, expected), f"{expected:g} = 48/12: Dr. GRPO's constant L_max is not constant here "
                    "(and without a 1/B the loss also grows with the micro-batch size). verl's `loss_scale_factor` "
                    "fixes the first.", "Which width does each micro-batch divide by?")


def bug_4(answer):
    """trl #3178 → #3938: TRL's "dapo" normalised each micro-batch by its own token count (what is now `bnpo`), so
    it was DAPO only with one GPU and no accumulation. GA = 2 micro-batches of 10 and 90 loss tokens: weight of
    a token of the first ÷ a token of the second?"""
    if pending(answer, "a per-micro-batch token mean, divided by K: 1/(K·N_rk)."):
        return None
    batch = completion_batch([10, 90])
    old = effective_weights(batch, "trl-grpo", micro_batches=2, loss_type="bnpo")
    expected = per_token(old, batch, 0) / per_token(old, batch, 1)
    fixed = effective_weights(batch, "trl-grpo", micro_batches=2, loss_type="dapo")
    return feedback(close(answer, expected), f"{expected:g}: 1/(2·10) vs 1/(2·90). Since #3938 `dapo` divides by the "
                    f"generation batch's token count: both weigh {per_token(fixed, batch, 0):.4g} = 1/100.",
                    "Each micro-batch is a token mean of its own tokens, then ÷ K.")


def bug_5(answer, micro_batches: int = 8, per_token_loss=(2.0, 0.5)):
    """transformers 4.46, issue #34263: with `num_items_in_batch` the gradient was right, but the logged training
    loss came out gradient_accumulation_steps times too high. 8 micro-batches of one completion each, alternately
    6 and 60 loss tokens with per-token losses 2.0 and 0.5: the log showed the value printed by `logged()`. What
    loss was the optimiser actually minimising?"""
    if pending(answer, "the weights are the transformers preset's (1/N); only the log was scaled."):
        return None
    batch, losses = _bug_5_batch(micro_batches, per_token_loss)
    w = effective_weights(batch, "transformers", micro_batches=micro_batches)
    expected = float((w * losses).sum())
    return feedback(close(answer, expected, rel=1e-4), f"{expected:.4f} = Σ w·l with w = 1/N; the log showed "
                    f"{micro_batches}× that. Compare held-out losses, not the logged training curve, across GA "
                    "settings.", "Divide the logged value by the number of accumulation steps.")


def _bug_5_batch(micro_batches: int, per_token_loss):
    batch = completion_batch([6, 60] * (micro_batches // 2))
    values = torch.tensor(per_token_loss, dtype=torch.float64)[torch.arange(batch.shape[0]) % 2]
    return batch, values[:, None] * batch.loss_mask


def logged(micro_batches: int = 8, per_token_loss=(2.0, 0.5)) -> float:
    """What the buggy logger printed in bug 5 (K × the minimised loss)."""
    batch, losses = _bug_5_batch(micro_batches, per_token_loss)
    w = effective_weights(batch, "transformers", micro_batches=micro_batches)
    return micro_batches * float((w * losses).sum())


