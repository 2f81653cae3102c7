"""The mechanism cells of notebooks 03, 04 and 05 (the lines a learner reads and edits) compute exactly what the
package functions the notebooks then use compute: each cell is read from the .ipynb and executed here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lossreduce_demo import layouts, reductions, rl, synth
from lossreduce_demo.layouts import token_losses
from lossreduce_demo.model import GPT, GPTConfig
from lossreduce_demo.reductions import Plan, Scheme
from lossreduce_demo.tokenizer import EOT, encode
from lossreduce_demo.train import Run, TrainConfig, TrainingData, relative_distance, train, train_step

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SMALL = GPTConfig(n_layer=1, d_model=16, n_head=2)


def notebook_function(notebook: str, name: str):
    """Execute the code cell of `notebook` that defines `name` and return the function."""
    cells = json.loads((NOTEBOOKS / notebook).read_text(encoding="utf-8"))["cells"]
    source = next("".join(c["source"]) for c in cells if c["cell_type"] == "code"
                  and f"def {name}(" in "".join(c["source"]))
    namespace = {"torch": torch, "reductions": reductions, "layouts": layouts, "rl": rl,
                 "token_losses": token_losses}
    exec(compile(source, f"{notebook}:{name}", "exec"), namespace)  # noqa: S102 - our own notebook's cell
    return namespace[name]


def model64(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(SMALL).double()


def package_gradient(model: GPT, batch, plan: Plan) -> torch.Tensor:
    """The gradient `train.train_step` applies: one SGD step with lr 1 moves the weights by minus it."""
    model.zero_grad(set_to_none=True)  # what train() starts a step from
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, torch.optim.SGD(model.parameters(), lr=1.0), batch, Scheme("token-mean"), plan)
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    with torch.no_grad():
        for b, p in zip(before, model.parameters()):
            p.copy_(b)
    return step


SKEWED = layouts.multiturn_layout(synth.make_chats(12, lengths=synth.LengthSpec(
    "bimodal", short_mean=3, long_mean=40, long_fraction=0.3), seed=5))


@pytest.mark.parametrize("K", [1, 2, 3, 5])
@pytest.mark.parametrize("naive", [True, False])
def test_notebook_03_accumulation_loop_is_train_step(K, naive):
    accumulate = notebook_function("03_accumulation_and_data_parallel.ipynb", "accumulate")
    model = model64()
    mine = accumulate(model, SKEWED, K=K, naive=naive)
    theirs = package_gradient(model, SKEWED, Plan(1, K, "local" if naive else "global"))
    torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("naive", [True, False])
def test_notebook_03_ddp_step_over_simulated_ranks_is_the_package_weight_map(naive):
    """The notebook plays R ranks in one process; their mean gradient equals the gradient of
    `reductions.effective_weights` for that plan, which tests/test_distributed.py holds equal to `ddp.ddp_backward`
    in real processes (max_rel_diff_vs_core)."""
    ddp_step = notebook_function("03_accumulation_and_data_parallel.ipynb", "ddp_step")
    R, K, model = 2, 2, model64()
    shards = [SKEWED.select(range(r * 6, (r + 1) * 6)) for r in range(R)]
    counts = [int(s.loss_mask.sum()) for s in shards]
    mean = sum(ddp_step(model, shard, K, R, lambda mine: sum(counts), naive) for shard in shards) / R
    weights, _, _ = reductions.effective_weights(SKEWED, "token-mean", Plan(R, K, "local" if naive else "global"))
    model.zero_grad()
    (weights * token_losses(model, SKEWED)).sum().backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(mean, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("scheme, plan", [("token-mean", Plan(1, 1, "global")),
                                          ("seq-mean-token-mean", Plan(2, 2, "global")),
                                          ("token-mean", Plan(1, 4, "local"))])
def test_notebook_04_training_loop_is_train(scheme, plan):
    train_run = notebook_function("04_training_tiny_gpt.ipynb", "train_run")
    chats = synth.make_branch_chats(64, seed=1)
    cfg = TrainConfig(steps=3, micro_batch_size=16 // (plan.ranks * plan.micro_batches), grad_accum=plan.micro_batches,
                      ranks=plan.ranks, lr=1e-2, progress=False)
    data = TrainingData(chats, "multiturn", cfg.global_batch, cfg.seed, cfg.model.context_len + 1)
    mine = train_run(data, Scheme(scheme), plan, steps=3, lr=1e-2)
    theirs = train(chats, [Run(scheme, plan.normalization)], cfg, data=data).models[0]
    assert relative_distance(mine, theirs) <= 1e-6


@pytest.mark.parametrize("algorithm", ["GRPO", "DAPO", "Dr. GRPO"])
def test_notebook_05_rl_loss_is_rl_rl_loss(algorithm):
    notebook_rl_loss = notebook_function("05_rl_length_bias.ipynb", "rl_loss")
    task = rl.E6_TASK
    texts = [t.text(np.random.default_rng(i)) for i, t in enumerate(task.templates * 3)]
    responses = [encode(x) + [EOT] for x in texts[:8]]
    rewards = torch.tensor([rl.reward_of(task, rl.classify(task, r)) for r in responses])
    batch = rl.response_batch(task.prompt_tokens, responses)
    g = torch.Generator().manual_seed(0)
    shape = batch.loss_mask[:, 1:].shape
    old = -torch.rand(shape, generator=g, dtype=torch.float64)
    logp = (old + 0.4 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()  # clipping acts
    cfg = rl.algorithm_config(algorithm, group_size=8)
    mine = notebook_rl_loss(logp, old, batch, rewards, cfg, task.budget)
    theirs = rl.rl_loss(logp, old, batch, rewards, cfg, task.budget)
    torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=0)
    grads = [torch.autograd.grad(loss, logp)[0] for loss in (mine, theirs)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=0)
