"""RL maths (advantages, weights, clipped objective, the length bias of the first step) against hand computations
(notebook 05 is executed by tests/test_notebooks.py)."""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lossreduce_demo import ratios, rl
from lossreduce_demo.model import IGNORE_INDEX
from lossreduce_demo.tokenizer import EOT, encode
from lossreduce_demo.train import first_reply_position


def test_grpo_advantage_matches_hand_computation():
    rewards = [0.8, 0.1, 0.1, 0.1]
    mean, std = statistics.mean(rewards), statistics.stdev(rewards)  # 0.275, 0.35
    adv = rl.group_advantages(torch.tensor([rewards]), "grpo")[0]
    assert torch.allclose(adv, torch.tensor([(r - mean) / std for r in rewards]), atol=1e-5)
    assert math.isclose(float(adv[0]), 1.5, rel_tol=1e-4)
    dr = rl.group_advantages(torch.tensor([rewards]), "dr_grpo")[0]
    assert torch.allclose(dr, torch.tensor([0.525, -0.175, -0.175, -0.175]), atol=1e-6)


@given(st.lists(st.lists(st.sampled_from([0.0, 0.1, 0.2, 0.8, 1.0]), min_size=8, max_size=8), min_size=1, max_size=4))
def test_advantages_are_centred_and_never_nan(groups):
    rewards = torch.tensor(groups)
    for kind in rl.ADVANTAGES:
        adv = rl.group_advantages(rewards, kind)
        assert torch.isfinite(adv).all()
        assert torch.allclose(adv.sum(dim=1), torch.zeros(len(groups)), atol=1e-4)
    adv = rl.group_advantages(rewards, "grpo")
    for row, r in zip(adv, rewards):
        if (r != r[0]).any():  # GRPO's advantages have unit (unbiased) std within a group
            assert math.isclose(float(row.std()), 1.0, rel_tol=1e-3)
        else:  # all rewards equal: no signal
            assert float(row.abs().max()) == 0.0


def _batch(lengths):
    responses = [encode("x" * (n - 1)) + [EOT] for n in lengths]
    return rl.response_batch([1, 2, 3], responses)


@pytest.mark.parametrize("scheme, expected", [
    ("seq-mean-token-mean", lambda n, B, N, L: 1 / (B * n)),
    ("token-mean", lambda n, B, N, L: 1 / N),
    ("seq-mean-token-sum-norm", lambda n, B, N, L: 1 / (B * L)),
])
def test_per_token_weights_of_each_scheme_by_hand(scheme, expected):
    lengths, l_max = [3, 30, 10], 30
    batch = _batch(lengths)
    w = rl.rl_token_weights(batch, scheme, l_max).double()
    B, N = len(lengths), sum(lengths)
    for i, n in enumerate(lengths):
        on = w[i][batch.loss_mask[i]]
        assert on.numel() == n and torch.allclose(on, torch.full((n,), expected(n, B, N, l_max), dtype=torch.float64))
        assert float(w[i][~batch.loss_mask[i]].abs().sum()) == 0.0  # prompt and padding get nothing


def test_weights_by_template_gives_the_ten_to_one_story():
    frame = rl.weights_by_template(rl.E6_TASK).set_index(["scheme", "template"])["weight_per_token"]
    assert math.isclose(frame["seq-mean-token-mean", "GUESS"] / frame["seq-mean-token-mean", "GIBBERISH"], 10.0)
    for scheme in ("token-mean", "seq-mean-token-sum-norm"):
        assert math.isclose(frame[scheme, "GUESS"], frame[scheme, "GIBBERISH"])


def test_clipped_objective_by_hand():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss = ratios.clipped_surrogate(logp, old, adv, 0.2, 0.2)
    # -min(rho A, clip(rho) A): rho 1.5 -> clip 1.2; rho 0.5 -> clip 0.8
    assert torch.allclose(loss, torch.tensor([-1.2, 1.5, -0.5, 0.8]), atol=1e-6)
    loss.sum().backward()
    # clipped terms carry no gradient; unclipped ones d(-rho A)/dlogp = -rho A
    assert torch.allclose(logp.grad, torch.tensor([0.0, 1.5, -0.5, 0.0]), atol=1e-6)


def test_on_policy_gradient_is_plain_policy_gradient():
    logp = torch.log(torch.tensor([0.3, 0.6])).requires_grad_()
    adv = torch.tensor([2.0, -1.0])
    ratios.clipped_surrogate(logp, logp.detach(), adv).sum().backward()
    assert torch.allclose(logp.grad, -adv)  # rho = 1: the gradient of -A log pi


def test_classify_and_rewards():
    task = rl.E6_TASK
    assert [rl.classify(task, encode(t.text(np.random.default_rng(0))) + [EOT]) for t in task.templates] == \
        [t.name for t in task.templates]
    assert rl.classify(task, encode("?") + [EOT]) == "other" and rl.reward_of(task, "other") == 0.0
    assert [t.length for t in rl.E7_TASK.templates] == [3, 30, 6, 20]
    assert all(len(encode(t.text())) + 1 == t.length for t in rl.E6_TASK.templates + rl.E7_TASK.templates)


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="advantage"):
        rl.RLConfig(advantage="ppo")
    with pytest.raises(ValueError, match="scheme"):
        rl.RLConfig(scheme="mean")
    with pytest.raises(ValueError, match="algorithm"):
        rl.algorithm_config("PPO")
    with pytest.raises(ValueError, match="G >= 2"):
        rl.group_advantages(torch.tensor([[1.0]]))


def test_a_marker_may_not_occur_in_any_template_text():
    short = rl.Template("short", "r", 3, 0.2, False, 0.5)
    with pytest.raises(ValueError, match="marker 'r' of short occurs in the text of long"):
        rl.Task("t", "?", (short, rl.Template("long", "L", 10, 0.8, True, 0.5, body="probably")), "long", "short")
    with pytest.raises(ValueError, match="occurs in the text of gib"):  # random letters may produce any of them
        rl.Task("t", "?", (short, rl.Template("gib", "G", 10, 0.1, False, 0.5, random_body=True)), "gib", "short")


def test_policy_head_is_untied_and_trains_separately():
    policy = rl.new_policy(0)
    assert policy.lm_head.weight.data_ptr() != policy.wte.weight.data_ptr()
    _, loss = policy(torch.tensor([rl.E7_TASK.prompt_tokens]), torch.tensor([[IGNORE_INDEX] * 8 + encode("x")]))
    loss.sum().backward()
    assert policy.lm_head.weight.grad.abs().sum() > 0 and policy.wte.weight.grad[encode("x")[0]].abs().sum() == 0


@pytest.mark.parametrize("scheme, ratio", [("seq-mean-token-mean", 10.0), ("token-mean", 1.0),
                                           ("seq-mean-token-sum-norm", 1.0)])
def test_first_step_pushes_a_short_wrong_marker_down_ten_times_harder_only_under_seq_mean(scheme, ratio):
    """DAPO §3.3 analytically: in one group, a wrong 3-token and a wrong 30-token answer (same reward, so the same
    advantage) get gradients on their marker's log-probability in the ratio of their per-token weights:
    30/3 = 10 under GRPO's seq-mean-token-mean, 1 under DAPO's token-mean and Dr. GRPO's constant normaliser."""
    task = rl.E6_TASK
    texts = [t.text(np.random.default_rng(0)) for t in task.templates for _ in range(2)]  # 2 of each template
    responses = [encode(x) + [EOT] for x in texts]
    rewards = torch.tensor([rl.reward_of(task, rl.classify(task, r)) for r in responses])
    batch = rl.response_batch(task.prompt_tokens, responses)
    logp = torch.full(batch.loss_mask[:, 1:].shape, -1.0, requires_grad=True)  # on-policy: old = current
    cfg = rl.RLConfig(scheme=scheme, group_size=len(responses))
    rl.rl_loss(logp, logp.detach(), batch, rewards, cfg, task.budget).backward()
    marker = first_reply_position(batch) - 1  # (B,) logp index of each response's first token
    grad = logp.grad[torch.arange(len(responses)), marker]
    short, long = texts.index(task.template("GUESS").text()), texts.index(task.template("GIBBERISH").text(
        np.random.default_rng(0)))
    assert float(grad[short]) > 0 and float(grad[long]) > 0  # wrong answers: their markers are pushed down
    assert float(grad[short] / grad[long]) == pytest.approx(ratio, rel=1e-6)


@pytest.fixture(scope="module")
def warm():
    return rl.warm_start(rl.E6_TASK, seed=0, steps=60)


def test_warm_start_learns_the_shares(warm):
    probs = rl.template_probs(warm, rl.E6_TASK)
    for t in rl.E6_TASK.templates:
        assert abs(probs[t.name] - t.share) < 0.05, probs


def test_ppo_style_reuse_of_a_batch_stays_finite(warm):
    policy = rl.warm_start(rl.E6_TASK, seed=0, steps=60)
    cfg = rl.RLConfig(scheme="token-mean", steps=1, groups=2, updates_per_batch=3, lr=0.05)
    before = [p.detach().clone() for p in policy.parameters()]
    row = rl.rl_step(policy, rl.make_optimizer(policy, cfg), rl.E6_TASK, cfg, torch.Generator().manual_seed(0))
    assert all(math.isfinite(v) for k, v in row.items() if k not in ("mean_length_right", "entropy_wrong",
                                                                         "mean_length_wrong"))
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_runs_are_deterministic_and_leave_the_start_unchanged(warm):
    cfg = rl.algorithm_config("GRPO", steps=3, groups=2)
    first = rl.train_policy(rl.E6_TASK, cfg, 0, warm, progress=False)
    assert first.equals(rl.train_policy(rl.E6_TASK, cfg, 0, warm, progress=False))
    before = rl.template_probs(warm, rl.E6_TASK)
    rl.train_policy(rl.E6_TASK, cfg, 1, warm, progress=False)
    assert rl.template_probs(warm, rl.E6_TASK) == before


def test_sampled_responses_follow_the_policy_and_end_at_eot_or_the_budget(warm):
    responses = rl.sample_responses(warm, rl.E6_TASK, 64, torch.Generator().manual_seed(0))
    assert all(r[-1] == EOT or len(r) == rl.E6_TASK.budget for r in responses)
    names = [rl.classify(rl.E6_TASK, r) for r in responses]
    probs = rl.template_probs(warm, rl.E6_TASK)
    for name, p in probs.items():  # 64 draws: within 4 standard errors of the exact share
        assert abs(names.count(name) / 64 - p) <= 4 * math.sqrt(p * (1 - p) / 64) + 1e-9, (name, p)


def test_ratio_by_parameters_splits_a_change_between_the_marker_rows_and_the_rest(warm):
    trained = copy.deepcopy(warm)
    j, g = encode("J")[0], encode("G")[0]
    direction = torch.randn(trained.lm_head.weight.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        trained.lm_head.weight[j] += 0.05 * direction  # the GIBBERISH marker row moves half as far as GUESS's
        trained.lm_head.weight[g] -= 0.10 * direction
    split = rl.ratio_by_parameters(warm, trained, rl.E6_TASK)
    assert split["marker_row_step_ratio"] == pytest.approx(0.5, rel=1e-5)
    assert split["ratio_marker_rows_only"] == pytest.approx(split["ratio_trained"], rel=1e-9)
    assert split["ratio_other_parameters_only"] == pytest.approx(split["ratio_start"], rel=1e-9)
    assert abs(math.log(split["ratio_trained"] / split["ratio_start"])) > 1e-3  # the rows did move the ratio


def test_adam_recipes_share_one_learning_rate_and_keep_an_explicit_one():
    adam = {name: rl.algorithm_config(name, optimizer="adam") for name in rl.ALGORITHMS}
    assert {cfg.optimizer for cfg in adam.values()} == {"adam"}
    assert len({cfg.lr for cfg in adam.values()}) == 1 and adam["GRPO"].lr in (rl.ADAM_LR, 2 * rl.ADAM_LR)
    assert rl.algorithm_config("DAPO", optimizer="adam", lr=3e-3).lr == 3e-3
    assert rl.algorithm_config("DAPO").lr != adam["DAPO"].lr  # SGD keeps its own per-recipe rate


def test_ratio_rules_are_validated_and_each_trains_off_policy():
    with pytest.raises(ValueError, match="unknown ratio"):
        rl.RLConfig(ratio="ppo")
    from lossreduce_demo.experiments import importance_ratios as e10

    start = e10.warm_start(0)
    seen = []
    for rule in e10.RULE_CONFIGS:
        cfg = dataclasses.replace(e10.rule_config(rule), steps=1)

        def record(k, logp, old, adv, mask):
            seen.append((k, float((logp - old)[mask].abs().max())))

        table = rl.train_policy(e10.E10_TASK, cfg, 0, start, progress=False, on_update=record)
        assert table["value"].notna().any()
    updates = [k for k, _ in seen]
    assert updates == [1, 2, 3, 4] * 3
    assert all(d == 0 for k, d in seen if k == 1) and all(d > 0 for k, d in seen if k > 1)  # off-policy after the first
