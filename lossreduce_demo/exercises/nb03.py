"""Exercises of notebook 03 (gradient accumulation and data parallel)."""

from __future__ import annotations

import copy

import torch

from ..chats import conversation
from ..layouts import multiturn_layout, token_losses
from ..model import GPT, GPTConfig
from ..reductions import Plan, effective_weights, token_weights
from ..synth import make_chats
from . import check_number, close, feedback, pending


def two_samples(short: int, long: int):
    """Format B batch of two single-turn chats whose replies have `short` and `long` loss tokens."""
    return multiturn_layout([conversation(("user", "q"), ("assistant", "s" * (short - 1))),
                             conversation(("user", "q"), ("assistant", "L" * (long - 1)))])


def check_1(answer, n=(30, 90), per_token=(0.6, 0.2)):
    """#24725 again: samples of 30 and 90 loss tokens, per-token losses 0.6 and 0.2, batch 1, GA 2.
    The loss that correct (global) accumulation reports?"""
    if pending(answer, "every loss token counts once: Σ n_i·l_i / Σ n_i."):
        return None
    batch = two_samples(*n)
    losses = torch.tensor(per_token, dtype=torch.float64)[batch.sample_id.clamp(min=0)] * batch.loss_mask
    loss = {norm: float((effective_weights(batch, "token-mean", Plan(micro_batches=2, normalization=norm))[0] * losses)
                        .sum()) for norm in ("global", "local")}
    naive = close(answer, loss["local"], rel=1e-3)
    return check_number(answer, loss["global"],
                        f"{loss['global']:.4f}: (30·0.6 + 90·0.2) / 120. Naive accumulation reports {loss['local']:.4f}.",
                        "That is what naive accumulation reports (the mean of the two samples' means)." if naive else
                        "Not that one: weight each sample's per-token loss by its number of loss tokens.", rel=1e-3)


def check_2(answer, n_samples: int = 16):
    """16 samples, naive (local) accumulation over K micro-batches: for which K in 1..16 does seq-mean-token-mean
    still give exactly the full-batch weights?"""
    if pending(answer, "the denominator of seq-mean-token-mean is the number of samples in the micro-batch."):
        return None
    batch = multiturn_layout(make_chats(n_samples, seed=0))
    ideal = token_weights(batch, "seq-mean-token-mean")
    exact = {k for k in range(1, n_samples + 1)
             if torch.allclose(effective_weights(batch, "seq-mean-token-mean", Plan(micro_batches=k,
                                                                            normalization="local"))[0], ideal, rtol=1e-12, atol=0)}
    try:
        given = {int(k) for k in answer}
    except (TypeError, ValueError):
        given = None
    return feedback(given == exact, f"K ∈ {sorted(exact)}: exactly the K that split {n_samples} samples into equal "
                    "micro-batches; then each micro-batch's 1/(B/K), times 1/K, is the global 1/B.",
                    "Give a list of K. Which K give every micro-batch the same number of samples?")


def check_3(answer, ranks: int = 4, micro_batches: int = 8):
    """The fix with R = 4 ranks and K = 8 micro-batches per rank: each micro-batch's loss is already divided by
    the global token count N. What constant must it be multiplied by before backward?"""
    if pending(answer, "gradients add over the K micro-batches, then DDP takes the mean over the R ranks."):
        return None
    expected = Plan(ranks, micro_batches, "global").coefficient
    return check_number(answer, expected,
                        f"c = R = {expected:g}: no 1/K (N already counts every micro-batch), and ×R undoes DDP's mean "
                        "(transformers: loss *= num_processes; torchtune: scale_grads(world_size / num_tokens)).",
                        "Sum over K is what we want; the mean over R ranks divides by R once too often.", rel=1e-9)


def check_loop(micro_batch_loss, micro_batches: int = 4):
    """The accumulation loop with the learner's `micro_batch_loss(losses, micro, n_step, K)` (the one line that
    turns a micro-batch's per-token losses into the number it backpropagates), on 16 chats of mixed lengths:
    its gradient against the full-batch token-mean gradient."""
    batch = multiturn_layout(make_chats(16, seed=3))
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, d_model=16, n_head=2)).double()
    reference = copy.deepcopy(model)
    (token_weights(batch, "token-mean") * token_losses(reference, batch)).sum().backward()
    full = torch.cat([p.grad.flatten() for p in reference.parameters()])
    micros = [batch.select(mb.rows) for mb in Plan(micro_batches=micro_batches).deal(len(batch.tokens))]
    n_step = sum(int(m.loss_mask.sum()) for m in micros)
    try:
        for micro in micros:
            micro_batch_loss(token_losses(model, micro), micro, n_step, micro_batches).backward()
    except Exception as error:  # noqa: BLE001 - whatever the edit broke, say it in one line
        return feedback(False, "", f"the loop stopped: {type(error).__name__}: {error}")
    error = float((torch.cat([p.grad.flatten() for p in model.parameters()]) - full).norm() / full.norm())
    return feedback(error <= 1e-9, f"gradient error {error:.1e}: every token now weighs 1/N of the whole step, "
                    "the full-batch gradient (what `num_items_in_batch` does in transformers).",
                    f"gradient error {error:.1e} against the full batch. Divide by the step's loss-token count "
                    "`n_step` (counted before any backward) instead of the micro-batch's own count and K.")
