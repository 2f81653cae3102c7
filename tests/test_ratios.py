"""lossreduce_demo.ratios (E10): token vs sequence importance ratios and the zero-gradient tokens of each rule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lossreduce_demo import ratios

PROPERTY = settings(max_examples=60, deadline=None)


@st.composite
def off_policy_batches(draw):
    """Random log-probs of a batch of responses of different lengths, a perturbed old policy and advantages."""
    B, T = draw(st.integers(1, 5)), draw(st.integers(1, 8))
    seed = draw(st.integers(0, 10**6))
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logp = old + torch.randn(B, T, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.01, 0.2, 1.0]))
    advantage = torch.randn(B, generator=g, dtype=torch.float64)
    advantage[torch.rand(B, generator=g) < 0.2] = 0.0  # groups with equal rewards
    return logp, old, advantage, mask


def test_sequence_and_gspo_ratios_are_the_product_and_the_geometric_mean():
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.1], [0.9, 0.3, 1.0]], dtype=torch.float64))
    old = torch.log(torch.tensor([[0.25, 0.4, 0.1], [0.3, 0.3, 0.5]], dtype=torch.float64))
    mask = torch.tensor([[True, True, True], [True, True, False]])
    delta = ratios.log_ratios(logp, old, mask)
    ratio = [[2.0, 0.5, 1.0], [3.0, 1.0]]
    for i, r in enumerate(ratio):
        assert float(torch.exp(ratios.sequence_log_ratio(delta, mask)[i])) == pytest.approx(math.prod(r))
        assert float(torch.exp(ratios.gspo_log_ratio(delta, mask)[i])) == pytest.approx(math.prod(r) ** (1 / len(r)))


def test_the_gspo_log_ratio_has_the_sequence_log_ratios_variance_over_n_squared():
    """Exactly: log s = log ρ_seq / n, so at a fixed length n the variances differ by n²."""
    g = torch.Generator().manual_seed(0)
    for n in (1, 4, 16):
        delta = torch.randn(500, n, generator=g, dtype=torch.float64) * 0.3 + torch.randn(500, 1, generator=g) * 0.1
        mask = torch.ones(500, n, dtype=torch.bool)
        seq, gspo = ratios.sequence_log_ratio(delta, mask), ratios.gspo_log_ratio(delta, mask)
        assert float(gspo.var()) == pytest.approx(float(seq.var()) / n**2, rel=1e-10)


def _logp_gradient(loss_of, logp, *args):
    leaf = logp.clone().requires_grad_(True)
    loss_of(leaf, *args).backward()
    return leaf.grad


@PROPERTY
@given(batch=off_policy_batches(), eps=st.sampled_from([(0.2, 0.2), (0.2, 0.28), (3e-4, 4e-4)]))
def test_zero_gradient_tokens_are_exactly_the_tokens_autograd_gives_no_gradient(batch, eps):
    logp, old, advantage, mask = batch
    lo, hi = eps
    weights = torch.rand(mask.shape, dtype=torch.float64) + 0.1  # any positive weight map
    losses = {
        "token": lambda x: (weights * ratios.token_ppo_loss(x, old, advantage, mask, lo, hi)).sum(),
        "gspo": lambda x: ratios.gspo_loss(x, old, advantage, mask, lo, hi),
        "cispo": lambda x: (weights * ratios.cispo_loss(x, old, advantage, mask, hi, lo)).sum(),
    }
    for rule, loss in losses.items():
        grad = _logp_gradient(loss, logp)
        zero = ratios.zero_gradient_tokens(rule, logp, old, advantage, mask, lo, hi)
        assert torch.equal(zero, mask & (grad == 0)), rule
        assert (grad[~mask] == 0).all()


@PROPERTY
@given(batch=off_policy_batches())
def test_cispo_never_silences_a_token_with_an_advantage(batch):
    logp, old, advantage, mask = batch
    zero = ratios.zero_gradient_tokens("cispo", logp, old, advantage, mask, math.inf, 0.2)
    assert not (zero & (advantage[:, None] != 0)).any()


def test_gspo_gradient_puts_s_times_a_over_n_on_every_token_inside_the_clip_range():
    """Unclipped, d(loss)/d log π_t = −s_i A_i / (G |o_i|): seq-mean-token-mean's weight times s_i A_i."""
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.0, 0.0]], dtype=torch.float64).clamp(min=1e-9))
    old = logp - torch.tensor([[0.01, -0.02, 0.0], [0.005, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    advantage = torch.tensor([1.0, -2.0], dtype=torch.float64)
    grad = _logp_gradient(lambda x: ratios.gspo_loss(x, old, advantage, mask, 1.0, 1.0), logp)
    s = torch.exp(ratios.gspo_log_ratio(ratios.log_ratios(logp, old, mask), mask))
    expected = torch.where(mask, -(s * advantage / (2 * mask.sum(1)))[:, None], 0.0)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)


def test_bad_rules_and_clip_ranges_raise():
    x = torch.zeros(1, 2, dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="unknown rule"):
        ratios.zero_gradient_tokens("ppo", x, x, torch.ones(1), mask, 0.2, 0.2)
    with pytest.raises(ValueError, match="eps_low"):
        ratios.token_ppo_loss(x, x, torch.ones(1), mask, -0.1, 0.2)


def test_statistics_by_length_from_hand_made_updates():
    """Two responses of length 2 and one of length 3 with known log-ratios."""
    delta = torch.tensor([[0.1, 0.3, 0.0], [-0.1, 0.1, 0.0], [0.2, 0.2, 0.5]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, False], [True, True, True]])
    old = torch.full((3, 3), -1.0, dtype=torch.float64)
    advantage = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
    stats = ratios.update_statistics(old + delta, old, advantage, mask)
    frame = ratios.statistics_by_length(stats).set_index("length")
    assert list(frame.responses) == [2, 1]
    two = frame.loc[2]
    tokens = torch.tensor([0.1, 0.3, -0.1, 0.1], dtype=torch.float64)
    assert two.var_token_log_ratio == pytest.approx(float(tokens.var(unbiased=False)), rel=1e-12)
    assert two.var_seq_log_ratio == pytest.approx(float(torch.tensor([0.4, 0.0]).var()), rel=1e-6)
    assert two.var_gspo_log_ratio == pytest.approx(two.var_seq_log_ratio / 4, rel=1e-12)
    # token clipping at 0.2: only the 0.3 token (ρ = 1.35 > 1.2 with A > 0); GSPO's s = e^0.2 > 1 + 4e-4 silences
    # all of response 0; response 1 has s = 1 (not < 1 − 3e-4); CISPO silences nothing; response 2 has A = 0
    assert two.zero_token_fraction == pytest.approx(1 / 4)
    assert two.zero_gspo_fraction == pytest.approx(2 / 4)
    assert two.zero_cispo_fraction == 0.0
    assert frame.loc[3, "zero_cispo_fraction"] == 0.0 and stats["zero_cispo"][2] == 3  # A = 0: no gradient at all


def test_token_ppo_objective_by_hand():
    old = torch.zeros(4, 1)
    logp = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    mask = torch.ones(4, 1, dtype=torch.bool)
    loss = ratios.token_ppo_loss(logp, old, adv, mask, 0.2, 0.2)
    # -min(rho A, clip(rho) A): rho 1.5 -> clip 1.2; rho 0.5 -> clip 0.8
    assert torch.allclose(loss[:, 0], torch.tensor([-1.2, 1.5, -0.5, 0.8]), atol=1e-6)
    loss.sum().backward()
    # clipped terms carry no gradient; unclipped ones d(-rho A)/dlogp = -rho A
    assert torch.allclose(logp.grad[:, 0], torch.tensor([0.0, 1.5, -0.5, 0.0]), atol=1e-6)


def test_on_policy_every_rule_is_the_plain_policy_gradient():
    """At the first update (ρ = 1) token PPO and CISPO give d/d log π_t = −A per token, GSPO −A/n per token."""
    logp = torch.log(torch.tensor([[0.3, 0.6], [0.2, 0.9]], dtype=torch.float64))
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.bool)
    token = _logp_gradient(lambda x: ratios.token_ppo_loss(x, logp, adv, mask).sum(), logp)
    cispo = _logp_gradient(lambda x: ratios.cispo_loss(x, logp, adv, mask).sum(), logp)
    gspo = _logp_gradient(lambda x: ratios.gspo_loss(x, logp, adv, mask), logp)
    expected = -adv[:, None].expand(2, 2)
    torch.testing.assert_close(token, expected)
    torch.testing.assert_close(cispo, expected)
    torch.testing.assert_close(gspo, expected / (2 * 2))  # mean over 2 responses, 1/n over 2 tokens
