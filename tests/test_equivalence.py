"""Gradients of a real (tiny) GPT: global normalisation reproduces the full-batch gradient for every scheme,
any R and K; naive per-micro-batch normalisation does not (except in the equal-length negative control);
and the format equalities of docs/science.md §4 hold.

Gradient accumulation and data parallel are simulated exactly as a framework runs them: per micro-batch,
backward on sum(micro_batch_weights * token_losses); gradients add over K steps on a rank, DDP averages them
over R ranks.
"""

from __future__ import annotations

import pytest
import torch

from lossreduce_demo.layouts import make_layout, token_losses
from lossreduce_demo.model import GPT, GPTConfig
from lossreduce_demo.reductions import (
    SCHEMES,
    Plan,
    Scheme,
    as_scheme,
    batch_stats,
    micro_batch_weights,
    resolve_l_max,
    token_weights,
    with_length_ref,
)
from lossreduce_demo.synth import LengthSpec, make_chats
from lossreduce_demo.tokenizer import render

CONFIG = GPTConfig(d_model=16, n_layer=1, n_head=2, context_len=128, dropout=0.0)
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-6}
# 13 conversations so most (R, K) deal uneven micro-batches; (4, 4) leaves some micro-batches empty.
PLANS = [(1, 2), (1, 5), (2, 1), (2, 3), (3, 2), (4, 4)]
ALL_SCHEMES = [Scheme(n) for n in SCHEMES if n != "length-power"] + [Scheme("length-power", alpha=a)
                                                                     for a in (0.5, 2.0)]
SKEWED = make_chats(13, lengths=LengthSpec("bimodal", short_mean=2, long_mean=30, long_fraction=0.3),
                    turns=(1, 3), seed=3)
EQUAL = make_chats(12, lengths=LengthSpec("fixed", mean=6), turns=(2, 2), seed=4)


@pytest.fixture(scope="module", params=[torch.float64, torch.float32], ids=["fp64", "fp32"])
def model(request):
    torch.manual_seed(0)
    return GPT(CONFIG).to(request.param)


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(1)
    return GPT(CONFIG).double()


def flat_grad(model) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
                      for p in model.parameters()])


def full_gradient(model, batch, scheme) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    (token_weights(batch, scheme) * token_losses(model, batch)).sum().backward()
    return flat_grad(model)


def accumulated_gradient(model, batch, scheme, ranks, micro_batches, normalization) -> torch.Tensor:
    """What R ranks × K accumulation steps produce after DDP's all-reduce (mean over ranks)."""
    scheme = with_length_ref(batch, resolve_l_max(batch, as_scheme(scheme)))  # constants fixed before micro-batching
    global_stats = batch_stats(batch, scheme)  # the all-reduced counts of the whole step
    plan = Plan(ranks, micro_batches, normalization)
    per_rank = []
    for r in range(ranks):
        model.zero_grad(set_to_none=True)
        for mb in plan.deal(batch.tokens.shape[0]):
            if mb.rank != r or not mb.rows:
                continue
            micro = batch.select(list(mb.rows))
            w = micro_batch_weights(micro, scheme, plan, global_stats)
            (w * token_losses(model, micro)).sum().backward()  # .grad adds up over the K steps
        per_rank.append(flat_grad(model))
    return torch.stack(per_rank).mean(0)  # DDP: average over ranks


def relative_error(a, b) -> float:
    return float((a - b).norm() / b.norm())


def cosine(a, b) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_data_is_length_skewed_and_fits_the_context():
    for convs in (SKEWED, EQUAL):
        assert max(len(render(c)) for c in convs) <= CONFIG.context_len
    turn_lengths = [n for c in SKEWED for n in render(c).loss_tokens_per_turn()]
    assert max(turn_lengths) >= 5 * min(turn_lengths)
    assert len({tuple(render(c).loss_tokens_per_turn()) for c in EQUAL}) == 1


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=lambda s: s.label)
def test_global_normalization_gives_the_full_batch_gradient(model, scheme):
    dtype = next(model.parameters()).dtype
    batch = make_layout(SKEWED, "multiturn")
    full = full_gradient(model, batch, scheme)
    assert torch.isfinite(full).all() and full.norm() > 0
    for R, K in PLANS:
        err = relative_error(accumulated_gradient(model, batch, scheme, R, K, "global"), full)
        assert err <= TOLERANCE[dtype], f"R={R} K={K}: relative error {err:.2e}"


@pytest.mark.parametrize("layout", ["split", "packed"])
@pytest.mark.parametrize("scheme", ["token-mean", "seq-mean-token-mean", "turn-mean", "seq-mean-token-sum-norm"])
def test_global_normalization_is_exact_in_every_layout(model64, layout, scheme):
    batch = make_layout(SKEWED, layout, row_len=128)
    full = full_gradient(model64, batch, scheme)
    for R, K in [(1, 3), (2, 2), (3, 1)]:
        assert relative_error(accumulated_gradient(model64, batch, scheme, R, K, "global"), full) <= 1e-12


@pytest.mark.parametrize("scheme, R, K", [
    ("token-mean", 1, 2),  # micro-batch token counts differ
    ("token-mean", 2, 1),  # ... across ranks
    ("seq-mean-token-mean", 1, 5),  # 13 samples in 5 micro-batches: 3, 3, 3, 2, 2
    ("seq-mean-token-sum", 2, 3),
    ("turn-mean", 1, 2),  # turns per micro-batch differ
    ("length-power", 2, 2),
])
def test_local_normalization_differs_on_length_skewed_data(model64, scheme, R, K):
    batch = make_layout(SKEWED, "multiturn")
    full = full_gradient(model64, batch, scheme)
    assert relative_error(accumulated_gradient(model64, batch, scheme, R, K, "local"), full) > 1e-3
    assert relative_error(accumulated_gradient(model64, batch, scheme, R, K, "global"), full) <= 1e-12


@pytest.mark.parametrize("R, K", [(1, 4), (2, 3), (3, 2), (2, 2)])
def test_local_normalization_is_exact_with_equal_lengths_and_even_micro_batches(model64, R, K):
    """Negative control: every sample has the same turns, and R·K divides the 12 samples."""
    batch = make_layout(EQUAL, "multiturn")
    for scheme in ALL_SCHEMES:
        full = full_gradient(model64, batch, scheme)
        local = accumulated_gradient(model64, batch, scheme, R, K, "local")
        if scheme.name == "token-sum":  # naive `loss / K` and DDP's mean rescale a sum: nothing cancels them
            local = local * (K * R)
        assert relative_error(local, full) <= 1e-12, scheme.label


# ------------------------------------------------------------------ docs/science.md §4 format equalities

FORMATS = make_chats(8, lengths=LengthSpec("uniform", low=1, high=16), turns=(2, 3), system_prompt_prob=0.0,
                     seed=5)  # short enough that rows of 128 pack 2 conversations
EQUAL_TURNS = make_chats(6, lengths=LengthSpec("fixed", mean=7), turns=(3, 3), seed=6)


def grad_of(model, convs, layout, scheme):
    return full_gradient(model, make_layout(convs, layout, row_len=128), scheme)


def test_format_data_has_unequal_turns():
    lengths = [render(c).loss_tokens_per_turn() for c in FORMATS]
    assert any(len(set(t)) > 1 for t in lengths)
    assert len({len(t) for t in lengths}) > 1


def test_split_and_multiturn_agree_under_token_mean(model64):
    a = grad_of(model64, FORMATS, "split", "token-mean")
    b = grad_of(model64, FORMATS, "multiturn", "token-mean")
    assert cosine(a, b) >= 0.999999 and relative_error(a, b) <= 1e-9


def test_split_with_sample_mean_is_multiturn_with_turn_mean(model64):
    a = grad_of(model64, FORMATS, "split", "seq-mean-token-mean")
    b = grad_of(model64, FORMATS, "multiturn", "turn-mean")
    assert cosine(a, b) >= 0.999999 and relative_error(a, b) <= 1e-9


@pytest.mark.parametrize("scheme", ["token-mean", "seq-mean-token-mean"])
def test_packing_with_block_diagonal_mask_is_exact(model64, scheme):
    packed = make_layout(FORMATS, "packed", row_len=128)
    assert packed.tokens.shape[0] < len(FORMATS)  # something was actually packed together
    a = grad_of(model64, FORMATS, "packed", scheme)
    b = grad_of(model64, FORMATS, "multiturn", scheme)
    assert cosine(a, b) >= 0.999999 and relative_error(a, b) <= 1e-9


def test_multiturn_sample_mean_matches_neither_when_turn_lengths_differ(model64):
    b_mean = grad_of(model64, FORMATS, "multiturn", "seq-mean-token-mean")
    token_mean = grad_of(model64, FORMATS, "multiturn", "token-mean")
    a_mean = grad_of(model64, FORMATS, "split", "seq-mean-token-mean")
    assert cosine(b_mean, token_mean) < 0.9999
    assert cosine(b_mean, a_mean) < 0.9999


def test_all_formats_agree_when_every_turn_has_the_same_length(model64):
    b_mean = grad_of(model64, EQUAL_TURNS, "multiturn", "seq-mean-token-mean")
    for layout, scheme in [("multiturn", "token-mean"), ("split", "seq-mean-token-mean"),
                           ("multiturn", "turn-mean"), ("split", "token-mean")]:
        assert cosine(b_mean, grad_of(model64, EQUAL_TURNS, layout, scheme)) >= 0.999999, (layout, scheme)


def test_token_losses_live_on_the_loss_mask_only(model64):
    batch = make_layout(SKEWED, "packed", row_len=128)
    losses = token_losses(model64, batch)
    assert losses.shape == batch.tokens.shape
    assert torch.isfinite(losses).all()
    assert (losses[~batch.loss_mask] == 0).all() and (losses[batch.loss_mask] > 0).all()
