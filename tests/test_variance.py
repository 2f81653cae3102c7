"""lossreduce_demo.variance (E8): Gram-matrix arithmetic against brute force, the noise model's analytic cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lossreduce_demo import variance
from lossreduce_demo.chats import Conversation, Message
from lossreduce_demo.layouts import multiturn_layout, token_losses
from lossreduce_demo.model import GPT, GPTConfig
from lossreduce_demo.reductions import Scheme

SCHEMES = [Scheme("token-mean"), Scheme("seq-mean-token-mean"), Scheme("delta-l", delta_l_alpha=1.0),
           Scheme("length-power", alpha=0.5)]


def pool_of(lengths) -> object:
    """Single-turn chats whose replies have the given numbers of loss tokens (reply characters + <|eot|>)."""
    return multiturn_layout([Conversation((Message("user", "hi"), Message("assistant", "a" * (n - 1))))
                             for n in lengths])


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=4, max_size=12), seed=st.integers(0, 10**6),
       batch_size=st.integers(1, 4))
def test_minibatch_statistics_from_the_gram_matrix_equal_brute_force_steps(lengths, seed, batch_size):
    pool = pool_of(lengths)
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(len(lengths), 7)) + rng.normal(size=7)  # a shared mean: a signal to be biased about
    batches = variance.draw_minibatches(pool, SCHEMES, batch_size=batch_size, n_batches=30, seed=seed)
    measured = variance.minibatch_steps(grads @ grads.T, batches).set_index("scheme")
    for scheme in SCHEMES:
        x = batches.weights[scheme.label]
        steps = np.stack([w @ grads[idx] for w, idx in zip(x, batches.draws)])  # every step written out
        mean = steps.mean(0)
        full = batches.full[scheme.label] @ grads
        row = measured.loc[scheme.label]
        assert row.variance == pytest.approx(((steps - mean) ** 2).sum(1).mean(), rel=1e-8, abs=1e-10)
        assert row.bias == pytest.approx(np.linalg.norm(mean - full) / np.linalg.norm(full), rel=1e-7, abs=1e-9)
        sequence_mean = grads.mean(0)
        cosine = mean @ sequence_mean / (np.linalg.norm(mean) * np.linalg.norm(sequence_mean))
        assert row.cosine_to_sequence_mean == pytest.approx(cosine, rel=1e-8, abs=1e-10)


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=2, max_size=10), seed=st.integers(0, 10**6),
       batch_size=st.integers(1, 4), a=st.floats(-2.0, 3.0))
def test_closed_form_minibatch_weights_equal_token_weights_on_every_minibatch(lengths, seed, batch_size, a):
    """draw_minibatches' shortcut (sample weights from the lengths) is what sample_weights gives on each drawn
    mini-batch; a scheme without a shortcut (length-power) still goes through token_weights."""
    pool = pool_of(lengths)
    schemes = [Scheme("token-mean"), Scheme("seq-mean-token-mean"), Scheme("delta-l", delta_l_alpha=a),
               Scheme("length-power", alpha=0.5)]
    batch_size = min(batch_size, len(lengths))
    batches = variance.draw_minibatches(pool, schemes, batch_size=batch_size, n_batches=6, seed=seed)
    for scheme in schemes:
        brute = np.stack([variance.sample_weights(pool.select(idx), scheme) for idx in batches.draws])
        np.testing.assert_allclose(batches.weights[scheme.label], brute, rtol=1e-9, atol=1e-15)
    assert variance._closed_form_weights(Scheme("length-power"), batches.lengths[batches.draws]) is None
    assert variance._closed_form_weights(Scheme("token-mean", count_empty=True), batches.lengths[batches.draws]) \
        is None


def test_constant_denominator_schemes_are_unbiased_and_ratio_schemes_are_not():
    """seq-mean's and seq-mean-token-sum's expected mini-batch weights are exactly their pool weights (exact
    expectation: every (B of n) subset drawn once); token-mean's denominator correlates with the batch."""
    from itertools import combinations

    lengths = [1, 2, 8, 30]
    pool = pool_of(lengths)
    draws = np.array(list(combinations(range(4), 2)))
    schemes = [Scheme("seq-mean-token-mean"), Scheme("seq-mean-token-sum"), Scheme("token-mean")]
    weights = {s.label: np.stack([variance.sample_weights(pool.select(d), s) for d in draws]) for s in schemes}
    batches = variance.MiniBatches(np.array(lengths, float), draws, weights,
                                   {s.label: variance.sample_weights(pool, s) for s in schemes})
    gram = np.eye(4)
    bias = variance.minibatch_steps(gram, batches).set_index("scheme").bias
    assert bias["seq-mean-token-mean"] == pytest.approx(0, abs=1e-12)
    assert bias["seq-mean-token-sum"] == pytest.approx(0, abs=1e-12)
    assert bias["token-mean"] > 0.05


def test_predicted_noise_with_equal_lengths_is_one_over_the_batch_tokens():
    """All n_i = n: token-mean and seq-mean coincide, x_i = 1/(B n), noise = B n x² = 1/(B n), no scale spread."""
    pool = pool_of([5] * 10)
    batches = variance.draw_minibatches(pool, SCHEMES[:2], batch_size=4, n_batches=20)
    for signal in variance.SIGNALS:
        frame = variance.predicted_relative_variance(batches, signal).set_index("scheme")
        np.testing.assert_allclose(frame.noise, 1 / (4 * 5), rtol=1e-12)
        np.testing.assert_allclose(frame.scale_spread, 0, atol=1e-20)
    with pytest.raises(ValueError, match="signal"):
        variance.predicted_relative_variance(batches, "per-word")


def test_delta_l_one_minimises_the_predicted_noise_among_unbiased_combinations():
    """ΔL's theorem: among weights with Σ x_i = 1, V Σ x_i² n_i is smallest for x_i ∝ 1/n_i."""
    pool = pool_of([2, 3, 5, 8, 13, 21, 34, 55] * 4)
    family = [Scheme("delta-l", delta_l_alpha=a) for a in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)]
    batches = variance.draw_minibatches(pool, family, batch_size=8, n_batches=200)
    noise = variance.predicted_relative_variance(batches, "per-sequence").set_index("scheme").noise
    assert noise.idxmin() == "delta-l α=1"
    assert list(noise.iloc[:5]) == sorted(noise.iloc[:5], reverse=True)


def test_variance_by_length_recovers_variance_proportional_to_length_and_slopes():
    rng = np.random.default_rng(0)
    lengths = np.repeat([2, 4, 7, 11, 16, 25, 35, 50], 60).astype(float)
    grads = np.stack([rng.normal(size=(int(n), 40)).sum(0) for n in lengths])  # independent token gradients
    frame = variance.variance_by_length(grads @ grads.T, lengths)
    assert frame.samples.sum() == len(lengths)
    assert variance.loglog_slope(frame.length, frame.var_sum) == pytest.approx(1.0, abs=0.1)
    assert variance.loglog_slope(frame.length, frame.var_mean) == pytest.approx(-1.0, abs=0.1)
    assert variance.loglog_slope([1, 2, 4], [3, 12, 48]) == pytest.approx(2.0, rel=1e-12)


def test_sample_gram_matches_one_backward_per_sample():
    torch.manual_seed(0)
    model = GPT(GPTConfig(d_model=16, n_layer=1, n_head=2, context_len=64))
    pool = pool_of([2, 5, 9])
    gram, lengths = variance.sample_gram(model, pool)
    np.testing.assert_array_equal(lengths, [2, 5, 9])
    grads = []
    for row in range(3):
        model.zero_grad()
        (token_losses(model, pool.select([row])) * pool.loss_mask[row]).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).double())
    g = torch.stack(grads)
    np.testing.assert_allclose(gram, (g @ g.T).numpy(), rtol=1e-4, atol=1e-7)
