"""Per-sample / per-turn gradients with torch.func against plain backward passes, and the gradient views."""

from __future__ import annotations

import pytest
import torch

from lossreduce_demo import gradients as G
from lossreduce_demo import synth
from lossreduce_demo.layouts import make_layout, token_losses
from lossreduce_demo.model import GPT, GPTConfig
from lossreduce_demo.reductions import Plan, effective_weights

SMALL = GPTConfig(n_layer=1, d_model=32, n_head=2)
CHATS = synth.make_chats(5, seed=21, turns=(1, 3), max_tokens=90)


def model() -> GPT:
    torch.manual_seed(0)
    return GPT(SMALL)


def flat_grad(m: GPT) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in m.parameters()])


def loop_gradient(m: GPT, batch, weights: torch.Tensor) -> torch.Tensor:
    m.zero_grad()
    (token_losses(m, batch) * weights).sum().backward()
    return flat_grad(m).double()


@pytest.mark.parametrize("layout", ["multiturn", "split", "packed"])
def test_per_sample_gradients_equal_a_loop_of_backward_passes(layout):
    m = model()
    batch = make_layout(CHATS, layout, row_len=129 if layout == "packed" else None)
    grads, ids = G.per_sample_gradients(m, batch)
    assert grads.shape == (len(ids), sum(p.numel() for p in m.parameters()))
    for row, i in zip(grads, ids):
        ref = loop_gradient(m, batch, ((batch.sample_id == int(i)) & batch.loss_mask).float())
        torch.testing.assert_close(row.double(), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scheme", ["token-mean", "seq-mean-token-mean", "turn-mean", "length-power",
                                    "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("normalization,micro_batches", [("global", 1), ("local", 2), ("global", 3)])
def test_scheme_gradient_from_turns_equals_backward(scheme, normalization, micro_batches):
    m = model()
    batch = make_layout(CHATS, "multiturn")
    tg = G.turn_gradients(m, batch)
    plan = Plan(micro_batches=micro_batches, normalization=normalization)
    w, _, _ = effective_weights(batch, scheme, plan)
    ref = loop_gradient(m, batch, w.float())
    got = G.scheme_gradient(tg, scheme, plan)
    assert float((got - ref).norm() / ref.norm()) <= 1e-5


def test_views_add_up_and_compare_to_token_mean():
    m = model()
    tg = G.turn_gradients(m, make_layout(CHATS, "split"))
    schemes = ["token-mean", "seq-mean-token-mean", "token-sum"]
    shares = G.sample_shares(tg, schemes)
    assert shares.groupby("scheme").share.sum().to_numpy() == pytest.approx([1, 1, 1], abs=1e-9)
    assert shares.groupby("scheme").norm_share.sum().to_numpy() == pytest.approx([1, 1, 1], abs=1e-9)
    cos = G.scheme_cosines(tg, schemes).set_index("scheme").cosine_to_token_mean
    assert cos["token-mean"] == pytest.approx(1.0, abs=1e-9)
    assert cos["token-sum"] == pytest.approx(1.0, abs=1e-9)  # a constant multiple of token-mean
    assert cos["seq-mean-token-mean"] < 0.9999  # format A + mean reweights turns of different lengths
    buckets = G.bucket_shares(tg, schemes)
    sums = buckets.groupby("scheme")[["gradient_share", "weight_share", "token_share"]].sum()
    assert sums.to_numpy() == pytest.approx(1.0, abs=1e-9)
    tm = buckets[buckets.scheme == "token-mean"]
    assert tm.weight_share.to_numpy() == pytest.approx(tm.token_share.to_numpy())  # token-mean: weight = tokens
