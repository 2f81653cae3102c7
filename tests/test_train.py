"""The training loop: tidy history, grouped model = GPT, multi-scheme = separate runs, real GA, data order."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import stack_module_state

from lossreduce_demo import synth
from lossreduce_demo.chats import conversation
from lossreduce_demo.layouts import make_layout, token_losses
from lossreduce_demo.model import GPT, GPTConfig
from lossreduce_demo.reductions import Scheme, effective_weights
from lossreduce_demo.train import (
    HISTORY_COLUMNS,
    Run,
    TrainConfig,
    TrainingData,
    _init_params,
    distinct_rows,
    final_metric,
    grouped_forward,
    heldout_metrics,
    length_groups,
    relative_distance,
    token_probability_metric,
    train,
)

SMALL = GPTConfig(n_layer=1, d_model=32, n_head=2)
CHATS = synth.make_chats(48, seed=11, max_tokens=100)
HELDOUT = synth.make_chats(8, seed=12, max_tokens=100)


def config(**kw) -> TrainConfig:
    base = dict(steps=4, micro_batch_size=8, eval_every=2, model=SMALL, progress=False, seed=3)
    return TrainConfig(**(base | kw))


def max_rel_diff(a: dict, i: int, b: dict, j: int) -> float:
    return max(float((a[k][i] - b[k][j]).abs().max() / b[k][j].abs().max().clamp_min(1e-12)) for k in a)


@pytest.mark.parametrize("layout", ["multiturn", "split", "packed"])
def test_grouped_forward_matches_gpt(layout):
    batch = make_layout(CHATS[:6], layout, row_len=129 if layout == "packed" else None)
    torch.manual_seed(0)
    models = [GPT(SMALL) for _ in range(3)]
    params, _ = stack_module_state(models)
    logits, loss = grouped_forward(SMALL, params, **batch.model_inputs())
    no_logits, loss_on_targets = grouped_forward(SMALL, params, **batch.model_inputs(), return_logits=False)
    assert no_logits is None
    for i, m in enumerate(models):
        ref_logits, ref_loss = m(**batch.model_inputs())
        torch.testing.assert_close(logits[i], ref_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss[i], ref_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss_on_targets[i], ref_loss, rtol=1e-5, atol=1e-5)


def test_history_has_documented_columns_and_metrics():
    probe = token_probability_metric(HELDOUT[:2], ord("a"), "p_a")
    result = train(CHATS, ["token-mean", "seq-mean-token-mean"], config(), heldout=HELDOUT, task_metrics=probe)
    h = result.history
    assert list(h.columns) == HISTORY_COLUMNS
    assert set(h.metric) == {"objective", "train_token_loss", "heldout_loss", "heldout_accuracy", "p_a"}
    assert h[h.metric == "objective"].groupby("run").step.nunique().eq(4).all()  # every step, every run
    assert sorted(h[h.metric == "heldout_loss"].step.unique()) == [2, 4]  # eval_every and the last step
    assert h[h.metric == "heldout_loss"].bucket.notna().any()  # per response-length bucket
    assert h.value.notna().all() and h.value.map(float).apply(lambda v: v == v).all()
    assert set(final_metric(h, "p_a").index) == {r.label for r in result.runs}
    assert ((h[h.metric == "p_a"].value > 0) & (h[h.metric == "p_a"].value < 1)).all()


def test_objective_is_weighted_loss_of_the_first_batch():
    cfg = config(steps=1, micro_batch_size=4, grad_accum=2)
    runs = [Run("seq-mean-token-mean", "local"), Run("length-power", "global")]
    result = train(CHATS, runs, cfg)
    data = TrainingData(CHATS, "multiturn", cfg.global_batch, cfg.seed, SMALL.context_len + 1)
    batch = data.global_batch_at(0)
    torch.manual_seed(cfg.seed)
    model = GPT(SMALL)
    with torch.no_grad():
        losses = token_losses(model, batch).double()
    for run in runs:
        w, _, _ = effective_weights(batch, run.scheme, micro_batches=2, normalization=run.normalization)
        got = result.history.query("metric == 'objective' and run == @run.label").value.iloc[0]
        assert got == pytest.approx(float((w * losses).sum()), rel=1e-5)


@settings(max_examples=3, deadline=None)
@given(optimizer=st.sampled_from(["adamw", "sgd"]), layout=st.sampled_from(["multiturn", "split"]))
def test_multi_scheme_training_equals_separate_runs(optimizer, layout):
    runs = [Run("token-mean"), Run("seq-mean-token-mean", "local"), Run("token-sum", lr=1e-4),
            Run("turn-mean", "local", micro_batches=4)]
    cfg = config(optimizer=optimizer, layout=layout, lr=3e-3 if optimizer == "adamw" else 0.1, grad_accum=2)
    together = train(CHATS, runs, cfg)
    for i, run in enumerate(runs):
        alone = train(CHATS, [run], cfg)
        assert max_rel_diff(together.params, i, alone.params, 0) <= 1e-5
        a = together.history.query("run == @run.label").value.to_numpy()
        b = alone.history.value.to_numpy()
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_global_grad_accum_equals_full_batch_and_naive_does_not():
    runs = [Run("token-mean", "global"), Run("token-mean", "local")]
    full = train(CHATS, runs, config(micro_batch_size=8, grad_accum=1))
    split = train(CHATS, runs, config(micro_batch_size=2, grad_accum=4))
    assert relative_distance(split.params, 0, full.params, 0) <= 1e-5
    assert relative_distance(split.params, 1, full.params, 0) > 1e-3


def test_every_split_sees_the_same_samples_per_step():
    a = TrainingData(CHATS, "multiturn", 16, seed=5, max_len=129)
    b = TrainingData(CHATS, "multiturn", 16, seed=5, max_len=129)
    for step in (0, 1, 2, 7):  # crosses epochs (48 samples = 3 steps)
        assert (a.samples(step) == b.samples(step)).all()
    epoch = [i for s in range(3) for i in a.samples(s)]
    assert sorted(epoch) == list(range(48))  # one epoch = a permutation


def test_same_seed_same_history_and_different_seed_differs():
    h1 = train(CHATS, ["token-mean"], config()).history
    h2 = train(CHATS, ["token-mean"], config()).history
    h3 = train(CHATS, ["token-mean"], config(seed=4)).history
    assert h1.equals(h2)
    assert not h1.value.equals(h3.value)


@given(st.lists(st.integers(1, 60), min_size=1, max_size=20))
@settings(max_examples=30, deadline=None)
def test_length_groups_partition_rows(lengths):
    chats = [conversation(("user", "x"), ("assistant", "y" * n)) for n in lengths]
    batch = make_layout(chats, "multiturn")
    groups = length_groups(batch)
    assert 1 <= len(groups) <= 2
    assert sorted(torch.cat(groups).tolist()) == list(range(len(lengths)))


def test_packed_layout_trains_and_bad_input_raises():
    result = train(CHATS, [Run(Scheme("seq-mean-token-sum-norm"))], config(layout="packed", row_len=129))
    assert result.history.value.notna().all()
    with pytest.raises(ValueError, match="layout"):
        config(layout="diagonal")
    with pytest.raises(ValueError, match="optimizer"):
        config(optimizer="lion")
    with pytest.raises(ValueError, match="normalization"):
        Run("token-mean", "sometimes")
    with pytest.raises(ValueError, match="dropout"):
        train(CHATS, ["token-mean"], config(model=dataclasses.replace(SMALL, dropout=0.1)))


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=12))
def test_repeated_chats_are_evaluated_once_with_the_same_metrics(picks):
    chats = [HELDOUT[i] for i in picks]
    batch = make_layout(chats, "multiturn")
    distinct, inverse = distinct_rows(batch)
    assert len(distinct.tokens) == len(set(picks))
    assert torch.equal(distinct.tokens[inverse], batch.tokens)
    model, params = _init_params(config(), 2)
    with torch.no_grad():
        reference = token_losses(model, batch)  # a plain GPT on every row
    got = heldout_metrics(model, params, batch)[("heldout_loss", None)]
    expected = float(reference[batch.loss_mask].double().mean())
    assert got.tolist() == pytest.approx([expected, expected], rel=1e-5)
    probe = token_probability_metric(chats, ord("a"), "p_a")(model, params)["p_a"]
    weights = torch.tensor([picks.count(i) for i in sorted(set(picks))], dtype=torch.float64)
    per_chat = torch.stack([token_probability_metric([HELDOUT[i]], ord("a"), "p_a")(model, params)["p_a"]
                            for i in sorted(set(picks))], 1)
    assert probe.tolist() == pytest.approx((per_chat * weights).sum(1).div(len(picks)).tolist(), rel=1e-5)
