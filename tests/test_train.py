"""The training loop: one step against a hand-computed update, real GA, tidy history, exact metrics, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lossreduce_demo import synth
from lossreduce_demo.layouts import make_layout, token_losses
from lossreduce_demo.model import GPT, GPTConfig
from lossreduce_demo.reductions import SCHEMES, Plan, Scheme, effective_weights, token_weights
from lossreduce_demo.train import (
    HISTORY_COLUMNS,
    Run,
    TrainConfig,
    TrainingData,
    TrainingDiverged,
    final_metric,
    first_reply_position,
    heldout_metrics,
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


def initial_model(cfg: TrainConfig) -> GPT:
    torch.manual_seed(cfg.seed)
    return GPT(cfg.model).to(torch.float64 if cfg.dtype == "float64" else torch.float32)


def full_batch_gradient(model: GPT, batch, scheme) -> list[torch.Tensor]:
    """Gradient of the full-batch objective Σ w·l, w the scheme's weights on the whole global batch."""
    objective = (token_weights(batch, scheme).to(torch.float64) * token_losses(model, batch)).sum()
    return torch.autograd.grad(objective, list(model.parameters()))


def max_rel_diff(model: GPT, expected: list[torch.Tensor]) -> float:
    return max(float((p.detach() - e).abs().max() / e.abs().max().clamp_min(1e-12))
               for p, e in zip(model.parameters(), expected))


@settings(max_examples=12, deadline=None)
@given(optimizer=st.sampled_from(["sgd", "adamw"]), scheme=st.sampled_from(SCHEMES),
       split=st.sampled_from([(8, 1, 1), (4, 2, 1), (2, 4, 1), (1, 8, 1), (2, 2, 2), (1, 3, 3)]))
def test_one_step_equals_the_update_by_hand_on_the_full_batch_gradient(optimizer, scheme, split):
    """One optimizer step with global normalization, any micro-batch split (R ranks × K micro-batches), equals the
    optimizer's formula applied by hand to the gradient of the full global batch: SGD θ − lr·g, AdamW's first step
    θ − lr·g / (|g| + eps) (bias-corrected moments m̂ = g, v̂ = g²)."""
    bsz, ga, ranks = split
    lr = 0.1 if optimizer == "sgd" else 1e-3
    cfg = config(steps=1, micro_batch_size=bsz, grad_accum=ga, ranks=ranks, optimizer=optimizer, lr=lr,
                 dtype="float64")
    trained = train(CHATS, [Run(scheme)], cfg).models[0]
    model = initial_model(cfg)
    batch = TrainingData(CHATS, "multiturn", cfg.global_batch, cfg.seed, SMALL.context_len + 1).global_batch_at(0)
    grads = full_batch_gradient(model, batch, scheme)
    if optimizer == "sgd":
        expected = [p.detach() - lr * g for p, g in zip(model.parameters(), grads)]
    else:
        expected = [p.detach() - lr * g / (g.abs() + cfg.eps) for p, g in zip(model.parameters(), grads)]
    assert max_rel_diff(trained, expected) <= 1e-9


def test_naive_accumulation_does_not_give_the_full_batch_update():
    """Negative control for the test above: local normalization with micro-batches of unequal token counts."""
    cfg = config(steps=1, micro_batch_size=2, grad_accum=4, optimizer="sgd", lr=0.1, dtype="float64")
    naive = train(CHATS, [Run("token-mean", "local")], cfg).models[0]
    model = initial_model(cfg)
    batch = TrainingData(CHATS, "multiturn", cfg.global_batch, cfg.seed, SMALL.context_len + 1).global_batch_at(0)
    grads = full_batch_gradient(model, batch, "token-mean")
    assert max_rel_diff(naive, [p.detach() - 0.1 * g for p, g in zip(model.parameters(), grads)]) > 1e-3


def test_learning_rate_decays_linearly_to_lr_decay_times_lr_at_the_last_step():
    """Two SGD steps with lr_decay=0.25: θ2 = θ1 − 0.25·lr·g(θ1) (torch.optim.lr_scheduler.LinearLR)."""
    cfg = config(steps=2, optimizer="sgd", lr=0.05, lr_decay=0.25, dtype="float64")
    trained = train(CHATS, ["token-mean"], cfg).models[0]
    model = initial_model(cfg)
    data = TrainingData(CHATS, "multiturn", cfg.global_batch, cfg.seed, SMALL.context_len + 1)
    for step, lr in enumerate((0.05, 0.05 * 0.25)):
        grads = full_batch_gradient(model, data.global_batch_at(step), "token-mean")
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p -= lr * g
    assert max_rel_diff(trained, [p.detach() for p in model.parameters()]) <= 1e-9


def test_global_grad_accum_equals_full_batch_over_several_steps_and_naive_does_not():
    runs = [Run("token-mean", "global"), Run("token-mean", "local")]
    full = train(CHATS, runs, config(micro_batch_size=8, grad_accum=1, dtype="float64"))
    split = train(CHATS, runs, config(micro_batch_size=2, grad_accum=4, dtype="float64"))
    assert relative_distance(split.models[0], full.models[0]) <= 1e-12  # float64: rounding only
    assert relative_distance(split.models[1], full.models[0]) > 1e-3


def test_objective_is_the_weighted_loss_of_the_first_batch():
    cfg = config(steps=1, micro_batch_size=4, grad_accum=2)
    runs = [Run("seq-mean-token-mean", "local"), Run("length-power", "global")]
    result = train(CHATS, runs, cfg)
    batch = TrainingData(CHATS, "multiturn", cfg.global_batch, cfg.seed, SMALL.context_len + 1).global_batch_at(0)
    with torch.no_grad():
        losses = token_losses(initial_model(cfg), batch).double()
    for run in runs:
        w, _, _ = effective_weights(batch, run.scheme, Plan(1, 2, run.normalization))
        got = result.history.query("metric == 'objective' and run == @run.label").value.iloc[0]
        assert got == pytest.approx(float((w * losses).sum()), rel=1e-5)


def test_runs_train_one_after_another_from_the_same_start_on_the_same_batches():
    runs = [Run("token-mean"), Run("seq-mean-token-mean", "local"), Run("turn-mean", "local", micro_batches=4)]
    cfg = config(grad_accum=2)
    together = train(CHATS, runs, cfg)
    for i, run in enumerate(runs):
        alone = train(CHATS, [run], cfg)
        assert relative_distance(together.models[i], alone.models[0]) == 0
        assert together.history.query("run == @run.label").value.tolist() == alone.history.value.tolist()
    assert relative_distance(together.models[0], together.models[1]) > 1e-4  # the schemes do differ


def test_history_is_tidy_and_its_metrics_are_the_final_models():
    probe = token_probability_metric(HELDOUT[:3], ord("a"), "p_a")
    cfg = config()
    result = train(CHATS, ["token-mean", "seq-mean-token-mean"], cfg, heldout=HELDOUT, task_metrics=probe)
    h = result.history
    assert list(h.columns) == HISTORY_COLUMNS
    assert set(h.metric) == {"objective", "train_token_loss", "heldout_loss", "heldout_accuracy", "p_a"}
    assert h[h.metric == "objective"].groupby("run").step.nunique().eq(4).all()  # every step, every run
    assert sorted(h[h.metric == "heldout_loss"].step.unique()) == [2, 4]  # eval_every and the last step
    heldout = make_layout(HELDOUT, "multiturn")
    probes = make_layout(HELDOUT[:3], "multiturn")
    for run, model in zip(result.runs, result.models):
        last = h[(h.run == run.label) & (h.step == 4) & h.bucket.isna()].set_index("metric").value
        with torch.no_grad():  # by hand, from the final model
            logits, _ = model(**heldout.model_inputs())
            loss = token_losses(model, heldout).double()
            right = F.pad(logits.argmax(-1) == heldout.tokens[:, 1:], (1, 0))
            probs = model(**probes.model_inputs())[0].softmax(-1)
        mask = heldout.loss_mask
        assert last["heldout_loss"] == pytest.approx(float(loss[mask].mean()), rel=1e-6)
        assert last["heldout_accuracy"] == pytest.approx(float(right[mask].double().mean()), rel=1e-12)
        first = first_reply_position(probes)
        p_a = probs[torch.arange(3), first - 1, ord("a")].double().mean()
        assert last["p_a"] == pytest.approx(float(p_a), rel=1e-5)
    assert final_metric(h, "p_a").index.tolist() == [r.label for r in result.runs]


def test_heldout_buckets_partition_the_loss_tokens():
    model = initial_model(config())
    batch = make_layout(HELDOUT, "multiturn")
    metrics = heldout_metrics(model, batch)
    turn_tokens = batch.turn_id[batch.loss_mask].bincount()
    n_all = int(batch.loss_mask.sum())
    buckets = {b: v for (name, b), v in metrics.items() if name == "heldout_loss" and b is not None}
    weights = {"1-8": (turn_tokens <= 8), "9-16": (turn_tokens > 8) & (turn_tokens <= 16),
               "17-32": (turn_tokens > 16) & (turn_tokens <= 32)}
    counts = {b: int(turn_tokens[m].sum()) for b, m in weights.items() if m.any()}
    assert set(buckets) == set(counts)
    recombined = sum(buckets[b] * counts[b] for b in counts) / n_all  # token-weighted mean of the buckets
    assert recombined == pytest.approx(metrics[("heldout_loss", None)], rel=1e-9)


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


def test_packed_and_split_layouts_train_to_finite_histories():
    for cfg in (config(layout="packed", row_len=129), config(layout="split")):
        result = train(CHATS, [Run(Scheme("seq-mean-token-sum-norm"))], cfg)
        assert result.history.value.map(math.isfinite).all()


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_diverging_run_stops_with_a_clear_error(optimizer):
    with pytest.raises(TrainingDiverged, match=r"diverged at step \d+.*lower the learning rate"):
        train(CHATS, [Run("token-sum", name="too fast")], config(lr=1e6, optimizer=optimizer, steps=20))


@pytest.mark.parametrize("bad, match", [
    (dict(steps=2.5), "steps=2.5"), (dict(steps=0), "steps=0"), (dict(micro_batch_size=True), "micro_batch_size"),
    (dict(betas=(1, 1)), "betas"), (dict(betas=(0.9,)), "betas"), (dict(eps=0), "eps=0"),
    (dict(lr=float("nan")), "lr=nan"), (dict(lr_decay=0), "lr_decay"), (dict(weight_decay=-1), "weight_decay"),
    (dict(layout="diagonal"), "layout"), (dict(optimizer="lion"), "optimizer"), (dict(dtype="float16"), "dtype"),
])
def test_bad_config_is_rejected_with_the_option_named(bad, match):
    with pytest.raises(ValueError, match=match):
        config(**bad)


def test_bad_runs_are_rejected():
    with pytest.raises(ValueError, match="normalization"):
        Run("token-mean", "sometimes")
    with pytest.raises(ValueError, match="micro_batches"):
        Run("token-mean", micro_batches=1.5)
    with pytest.raises(ValueError, match="alpha"):
        Scheme("length-power", alpha=True)
    with pytest.raises(ValueError, match="at least one run"):
        train(CHATS, [], config())
