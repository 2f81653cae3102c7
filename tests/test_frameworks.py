"""Every framework preset against the library it names.

Real code where it can be imported here (the `[frameworks]` extra): transformers' `ForCausalLMLoss` and
`Trainer._get_num_items_in_batch` on simulated ranks, a real `Trainer` step with gradient accumulation on a tiny
randomly initialised GPT-2, TRL's `GRPOTrainer._compute_loss` for every loss type on a stand-in trainer. Where
the library cannot be imported (verl pulls ray; Megatron-LM, torchtune and open-instruct are not installed),
the test restates the library's own formula, cited by file and function, independently of `reductions`.
Weights are compared as gradients: with the per-token losses as leaves, d(loss)/d(l) *is* the weight map.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lossreduce_demo import frameworks, reductions
from lossreduce_demo.frameworks import FRAMEWORKS, effective_weights, placed_weights, recipe, weight_formula
from lossreduce_demo.layouts import IGNORE_INDEX, completion_batch, make_layout
from lossreduce_demo.real_trainer import causal_lm_labels, trainer_vs_preset
from lossreduce_demo.reductions import Plan
from lossreduce_demo.synth import make_chats

try:
    import transformers  # noqa: F401
    import trl  # noqa: F401

    HAVE_EXTRA = True
except ImportError:  # pragma: no cover - `make test` installs the extra
    HAVE_EXTRA = False
needs_extra = pytest.mark.skipif(not HAVE_EXTRA, reason="needs the [frameworks] extra (transformers, trl): "
                                 "pip install -e '.[frameworks]'")

REL = 1e-6  # the bar for "equals the real library"
CONFIGS = [(1, 1), (1, 3), (2, 2), (3, 2)]  # (ranks, micro_batches)
PROPERTY = settings(max_examples=25)


def rel_diff(a, b) -> float:
    return float((a - b).norm() / b.norm())


def skewed_completions(masked=()):
    """12 completions, short first and long last (so micro-batches differ), with optional fully masked rows."""
    return completion_batch([2, 3, 2, 4, 3, 9, 14, 5, 20, 17, 30, 6], masked=masked)


def chat_batch(n=12, seed=0):
    return make_layout(make_chats(n, seed=seed), "multiturn")




# ---------------------------------------------------------------- the interface


def test_every_framework_and_option_is_listed_with_its_allowed_values_and_default():
    assert list(FRAMEWORKS) == ["transformers", "trl-grpo", "verl", "megatron", "torchtune", "nanogpt",
                                "open-instruct"]
    assert list(FRAMEWORKS["trl-grpo"]["loss_type"]) == list(frameworks.TRL_LOSS_TYPES)
    assert set(frameworks.TRL_LOSS_TYPES) == {"grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"}
    assert list(FRAMEWORKS["verl"]["loss_agg_mode"]) == ["token-mean", "token-sum", "seq-mean-token-sum",
                                                         "seq-mean-token-mean", "seq-mean-token-sum-norm"]
    assert FRAMEWORKS["transformers"]["average_tokens_across_devices"].default is True
    assert FRAMEWORKS["megatron"]["calculate_per_token_loss"].default is False
    assert list(FRAMEWORKS["open-instruct"]["reduce_loss"]) == ["mean", "sum"]
    for name, fw in FRAMEWORKS.items():
        doc = fw.__doc__ or ""
        assert re.search(r"\d+\.\d+|commit [0-9a-f]{7}|karpathy/nanoGPT", doc), f"{name}: no version in docstring"
        assert re.search(r"`[\w.]+`|\.py", doc), f"{name}: no function named in docstring"
        for option in fw:
            assert fw[option].default in fw[option]


@pytest.mark.parametrize("call, message", [
    (lambda: recipe("deepspeed"), "unknown framework 'deepspeed'; choose one of transformers, trl-grpo, verl"),
    (lambda: recipe("trl-grpo", loss_type="gspo"), "loss_type='gspo' is not allowed; allowed: grpo, bnpo"),
    (lambda: recipe("trl-grpo", loss_typ="dapo"), "no option 'loss_typ'; its options: loss_type, "
                                                  "max_completion_length, steps_per_generation"),
    (lambda: recipe("trl-grpo", max_completion_length=0), "max_completion_length=0 is not allowed"),
    (lambda: recipe("transformers", average_tokens_across_devices="yes"), "allowed: True, False"),
    (lambda: recipe("verl", loss_scale_factor=-1.0), "loss_scale_factor=-1.0 is not allowed"),
    (lambda: recipe("nanogpt", reduce_loss="sum"), "nanogpt has no option 'reduce_loss'; its options: none"),
    (lambda: effective_weights(skewed_completions(), "trl-grpo", max_completion_length=16),
     "30 loss tokens, more than max_completion_length=16"),
    (lambda: effective_weights(skewed_completions(), "trl-grpo", micro_batches=4, steps_per_generation=3),
     "window_steps=3: must divide micro_batches=4 or be a multiple of it"),
])
def test_bad_names_options_and_values_get_one_clear_error(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


@PROPERTY
@given(name_options=st.sampled_from([(n, o) for n in FRAMEWORKS for o in frameworks.option_settings(n)]),
       R=st.integers(1, 3), K=st.integers(1, 3), masked=st.lists(st.integers(0, 11), max_size=3))
def test_every_preset_gives_finite_non_negative_weights_only_on_loss_tokens(name_options, R, K, masked):
    name, options = name_options
    batch = skewed_completions(masked)
    w, rank, step = placed_weights(batch, name, ranks=R, micro_batches=K, **options)
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert (w[~batch.loss_mask] == 0).all() and (w[batch.loss_mask] > 0).all()
    for mb in Plan(R, K).deal(batch.shape[0]):
        assert all((rank[r] == mb.rank).all() and (step[r] == mb.step).all() for r in mb.rows)


# ---------------------------------------------------------------- transformers


def trainer_standin(average_tokens_across_devices, ranks, local_counts):
    """The attributes `Trainer._get_num_items_in_batch` reads; `gather` returns every simulated rank's count."""
    args = SimpleNamespace(average_tokens_across_devices=average_tokens_across_devices, world_size=ranks, n_gpu=1)
    return SimpleNamespace(
        model_accepts_loss_kwargs=True, compute_loss_func=None, _loss_shifts_labels=True, args=args,
        accelerator=SimpleNamespace(gather=lambda _: torch.stack(local_counts)),
        get_tp_size=lambda: 1, get_cp_size=lambda: 1, get_sp_size=lambda: 1)


def transformers_gradient(batch, logits, ranks, micro_batches, num_items_in_batch, average_tokens_across_devices):
    """d(objective)/d(logits) of R simulated ranks × K micro-batches, with transformers' own counting
    (`Trainer._get_num_items_in_batch`) and loss (`ForCausalLMLoss`); the Trainer's two scalings (x num_processes
    in `compute_loss` when averaging across devices, `/ K` in `training_step` without num_items_in_batch) and
    DDP's mean over ranks are applied as the Trainer and DDP apply them."""
    from transformers import Trainer
    from transformers.loss.loss_utils import ForCausalLMLoss

    labels = causal_lm_labels(batch)
    plan = [mb for mb in Plan(ranks, micro_batches).deal(batch.shape[0])]
    window = {r: [{"labels": labels[list(mb.rows)]} for mb in plan if mb.rank == r] for r in range(ranks)}
    local_counts = [sum((s["labels"][..., 1:] != IGNORE_INDEX).sum() for s in window[r]) for r in range(ranks)]
    total = 0.0
    for r in range(ranks):
        standin = trainer_standin(average_tokens_across_devices, ranks, local_counts)
        num_items = Trainer._get_num_items_in_batch(standin, window[r], torch.device("cpu"))
        if r == 0:
            assert num_items == (sum(local_counts) if average_tokens_across_devices else local_counts[0])
        for mb in (mb for mb in plan if mb.rank == r and mb.rows):
            rows = list(mb.rows)
            if num_items_in_batch:
                loss = ForCausalLMLoss(logits[rows], labels[rows], logits.shape[-1], num_items_in_batch=num_items)
                loss = loss * (ranks if average_tokens_across_devices else 1)
            else:
                loss = ForCausalLMLoss(logits[rows], labels[rows], logits.shape[-1]) / micro_batches
            total = total + loss / ranks  # DDP averages gradients over ranks
    (grad,) = torch.autograd.grad(total, logits)
    return grad


def weighted_gradient(batch, logits, weights):
    """d(sum w·l)/d(logits): the preset's weights on the same per-token cross-entropies."""
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch.tokens[:, 1:], reduction="none")
    (grad,) = torch.autograd.grad((weights[:, 1:].to(losses.dtype) * losses).sum(), logits)
    return grad


@needs_extra
@pytest.mark.parametrize("ranks, micro_batches", CONFIGS)
@pytest.mark.parametrize("num_items_in_batch, average_tokens_across_devices",
                         [(True, True), (True, False), (False, True)])
def test_transformers_causal_lm_loss_and_token_count_equal_the_preset(ranks, micro_batches, num_items_in_batch,
                                                                       average_tokens_across_devices):
    batch = chat_batch()
    logits = torch.randn(*batch.shape, 264, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                         requires_grad=True)
    real = transformers_gradient(batch, logits, ranks, micro_batches, num_items_in_batch,
                                 average_tokens_across_devices)
    options = dict(num_items_in_batch=num_items_in_batch, average_tokens_across_devices=average_tokens_across_devices)
    preset = weighted_gradient(batch, logits, effective_weights(batch, "transformers", ranks=ranks,
                                                                micro_batches=micro_batches, **options))
    assert rel_diff(preset, real) <= REL
    if ranks * micro_batches > 1:  # negative control: the naive per-micro-batch mean is a different objective
        naive = weighted_gradient(batch, logits, effective_weights(batch, "transformers", ranks=ranks,
                                  micro_batches=micro_batches, num_items_in_batch=False))
        fixed = weighted_gradient(batch, logits, effective_weights(batch, "transformers", ranks=ranks,
                                  micro_batches=micro_batches))
        assert rel_diff(naive, fixed) > 1e-2
    if ranks > 1:  # the rank-local count (average_tokens_across_devices=False) is neither global nor naive
        rank_local = weighted_gradient(batch, logits, effective_weights(batch, "transformers", ranks=ranks,
                                       micro_batches=micro_batches, average_tokens_across_devices=False))
        assert rel_diff(rank_local, fixed) > 1e-2


@needs_extra
def test_a_real_trainer_step_with_gradient_accumulation_equals_the_preset():
    """real_trainer: a real `Trainer` step, GA 3 over micro-batches of 2 rows (token counts differ), on a tiny GPT-2."""
    batch = chat_batch(n=6, seed=3)
    checks = {accepts: trainer_vs_preset(batch, 2, 3, num_items_in_batch=accepts) for accepts in (True, False)}
    for accepts, check in checks.items():
        assert check["rel_diff"] <= REL, accepts
    assert rel_diff(checks[False]["preset"], checks[True]["preset"]) > 1e-2  # negative control: naive vs fixed


@needs_extra
@pytest.mark.timeout(300)
def test_a_real_ddp_trainer_step_under_torchrun_equals_the_preset_for_both_token_averaging_settings(tmp_path):
    """Two gloo processes under torchrun, each a real `Trainer` with GA 2 (real_trainer.ddp_check): the DDP
    gradient equals the preset's with `average_tokens_across_devices` True (1/N) and False (1/(R·N_r)), and the
    two presets differ (the rank-local count is a different objective on a length-skewed batch)."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", LOSSREDUCE_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "lossreduce_demo.real_trainer", "--out", str(out)],
                         capture_output=True, text=True, timeout=280, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["average_tokens_across_devices=True"] <= REL
    assert result["average_tokens_across_devices=False"] <= REL
    assert result["presets_differ_by"] > 1e-2


# ---------------------------------------------------------------- TRL GRPO


def grpo_standin(loss_type, ranks, micro_batches, steps_per_generation, max_completion_length, logps):
    """The attributes `GRPOTrainer._compute_loss` reads (TRL 1.16), on-policy (no old log-probs), beta 0."""
    from collections import defaultdict

    from trl import GRPOTrainer

    args = SimpleNamespace(delta=None, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, vespo_k_pos=2.0,
                           vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0, use_bias_correction_kl=False,
                           steps_per_generation=steps_per_generation)
    return SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=0.0, loss_type=loss_type, epsilon_low=0.2,
        epsilon_high=5.0 if loss_type == "cispo" else 0.28,  # cispo: ε_max, 5.0 recommended (>= 1: no clamp at 1)
        args=args, use_vllm=False, model=SimpleNamespace(training=True), max_completion_length=max_completion_length,
        current_gradient_accumulation_steps=micro_batches, _entropy_bonus_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)), get_gamma_weights=GRPOTrainer.get_gamma_weights,
        accelerator=SimpleNamespace(num_processes=ranks, gather=lambda t: t, reduce=lambda t, reduction: t,
                                    sync_gradients=True))


def trl_weights(batch, loss_type, ranks, micro_batches, steps_per_generation, max_completion_length):
    """-d(loss)/d(log-prob) under TRL's own `_compute_loss` with advantage 1 on every completion: the weight map.
    Rows are dealt as TRL deals a generation batch (a contiguous slice per process, split into S steps);
    `num_items_in_batch` is what `_generate_and_score_completions` computes, the generation batch's loss tokens
    gathered over processes; DDP averages over ranks."""
    from trl import GRPOTrainer

    S = steps_per_generation
    plan = Plan(ranks, max(S, micro_batches)).deal(batch.shape[0])
    mask = batch.loss_mask.long()
    weights = torch.zeros(batch.shape, dtype=torch.float64)
    for mb in (mb for mb in plan if mb.rows):
        rows = list(mb.rows)
        window = [i for m in plan if m.step // S == mb.step // S for i in m.rows]
        logps = torch.zeros(len(rows), batch.shape[1], dtype=torch.float64, requires_grad=True)
        inputs = {"prompt_ids": batch.tokens[rows, :0], "prompt_mask": mask[rows, :0],
                  "completion_ids": batch.tokens[rows], "completion_mask": mask[rows],
                  "advantages": torch.ones(len(rows), dtype=torch.float64),
                  "num_items_in_batch": mask[window].sum()}
        standin = grpo_standin(loss_type, ranks, micro_batches, S, max_completion_length, logps)
        loss = GRPOTrainer._compute_loss(standin, None, inputs)
        (grad,) = torch.autograd.grad(loss, logps)
        weights[rows] = -grad / ranks
    return weights


TRL_CASES = [(R, K, S) for R, K in CONFIGS for S in sorted({K, 2 * K} | ({1} if K > 1 else set()))]


@needs_extra
@pytest.mark.parametrize("loss_type", frameworks.TRL_LOSS_TYPES)
@pytest.mark.parametrize("ranks, micro_batches, steps_per_generation", TRL_CASES)
def test_trl_grpo_compute_loss_equals_the_preset_for_every_loss_type(loss_type, ranks, micro_batches,
                                                                      steps_per_generation):
    batch = skewed_completions(masked=[4])  # one truncated completion under mask_truncated_completions
    options = dict(loss_type=loss_type, max_completion_length=32, steps_per_generation=steps_per_generation)
    real = trl_weights(batch, loss_type, ranks, micro_batches, steps_per_generation, 32)
    preset = effective_weights(batch, "trl-grpo", ranks=ranks, micro_batches=micro_batches, **options)
    assert rel_diff(preset, real) <= REL


@needs_extra
def test_trl_negative_controls_grpo_is_not_dapo_and_bnpo_is_not_dapo_with_accumulation():
    batch = skewed_completions(masked=[4])
    real = {t: trl_weights(batch, t, 2, 2, 2, 32) for t in ("grpo", "bnpo", "dapo", "dr_grpo")}
    assert rel_diff(real["grpo"], real["dapo"]) > 1e-2
    assert rel_diff(real["bnpo"], real["dapo"]) > 1e-2  # trl #3178 -> #3938: "dapo" that was really bnpo
    # dr_grpo divides by a constant: its per-token weight does not depend on the completion's length
    per_row = real["dr_grpo"].sum(1) / batch.loss_mask.sum(1).clamp(min=1)
    assert torch.allclose(per_row[batch.loss_mask.any(1)], per_row[0].expand(11), rtol=1e-12)


def test_trl_counts_a_fully_masked_completion_in_b_and_the_difference_is_one_in_sixteen():
    """The issue's example: 1 of 16 completions masked; grpo's per-row mean counts it, so every other weight
    is 15/16 of what it would be if the masked row were dropped."""
    lengths = [3, 5, 8, 13] * 4
    with_masked = effective_weights(completion_batch(lengths, masked=[0]), "trl-grpo", loss_type="grpo")
    dropped = effective_weights(completion_batch(lengths[1:]), "trl-grpo", loss_type="grpo")
    torch.testing.assert_close(with_masked[1:, : dropped.shape[1]], dropped * 15 / 16, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- source formulas (library not importable here)


def masked_sum(x, mask):
    return (x * mask).sum()


def verl_objective(losses, batch, ranks, micro_batches, mode, loss_scale_factor=None):
    """verl 0.9.1 engine path, restated: `forward_backward_batch` all-reduces the mini-batch's loss tokens
    (batch_num_tokens), `ppo_loss` passes dp_size, global_batch_size = the mini-batch's sequence count and
    loss_scale_factor to `agg_loss` (core_algos.py), whose formulas are applied per micro-batch; micro-batch
    losses are summed (no / K), DDP averages over ranks. The horizon default is the micro-batch's padded
    response width (nested tensors padded to the longest response)."""
    mask = batch.loss_mask.to(losses.dtype)
    batch_num_tokens, global_batch_size = mask.sum(), batch.shape[0]
    total = 0.0
    for mb in (mb for mb in Plan(ranks, micro_batches).deal(batch.shape[0]) if mb.rows):
        loss_mat, loss_mask = losses[list(mb.rows)], mask[list(mb.rows)]
        seq_sum, seq_len = (loss_mat * loss_mask).sum(-1), loss_mask.sum(-1)
        has_tokens = (seq_len > 0).to(losses.dtype)
        if mode == "token-mean":
            loss = masked_sum(loss_mat, loss_mask) / batch_num_tokens * ranks
        elif mode == "token-sum":
            loss = masked_sum(loss_mat, loss_mask) * ranks
        elif mode == "seq-mean-token-mean":
            loss = masked_sum(seq_sum / (seq_len + 1e-8), has_tokens) / global_batch_size * ranks
        else:
            loss = masked_sum(seq_sum, has_tokens) / global_batch_size * ranks
            if mode == "seq-mean-token-sum-norm":
                horizon = int(seq_len.max())  # the padded response width of this micro-batch
                loss = loss / (loss_scale_factor if loss_scale_factor is not None else horizon)
        total = total + loss / ranks
    return total


@pytest.mark.parametrize("ranks, micro_batches", CONFIGS)
@pytest.mark.parametrize("mode, loss_scale_factor", [(m, None) for m in frameworks.VERL_LOSS_AGG_MODES]
                         + [("seq-mean-token-sum-norm", 64.0)])
def test_verl_agg_loss_engine_path_source_formula_equals_the_preset(ranks, micro_batches, mode,
                                                                     loss_scale_factor):
    """Source formula (verl imports ray, not installed here): see verl_objective."""
    batch = skewed_completions(masked=[4])
    losses = torch.zeros(batch.shape, dtype=torch.float64, requires_grad=True)
    (real,) = torch.autograd.grad(verl_objective(losses, batch, ranks, micro_batches, mode, loss_scale_factor),
                                  losses)
    preset = effective_weights(batch, "verl", ranks=ranks, micro_batches=micro_batches, loss_agg_mode=mode,
                               loss_scale_factor=loss_scale_factor)
    assert rel_diff(preset, real) <= REL  # seq-mean-token-mean: verl adds 1e-8 to each count (~1e-9 relative)
    if mode.startswith("seq-mean"):  # negative control: B without the masked row (1 of 12) is another map
        scheme = replace(recipe("verl", loss_agg_mode=mode, loss_scale_factor=loss_scale_factor).scheme,
                         count_empty=False)
        not_counted, _, _ = reductions.effective_weights(batch, scheme, Plan(ranks, micro_batches))
        assert rel_diff(not_counted, real) > 1e-2


def per_micro_batch_objective(losses, batch, ranks, micro_batches, micro_loss):
    """Sum over micro-batches of micro_loss(losses, mask, tokens_in_step), DDP's mean over ranks."""
    mask = batch.loss_mask.to(losses.dtype)
    total = 0.0
    for mb in (mb for mb in Plan(ranks, micro_batches).deal(batch.shape[0]) if mb.rows):
        total = total + micro_loss(losses[list(mb.rows)], mask[list(mb.rows)], mask.sum()) / ranks
    return total


SOURCE_FORMULAS = {
    # Megatron-LM core 0.16.1 schedules.py forward_step_calc_loss: (sum, num_tokens) / clamp(num_tokens, 1) / K;
    # DDP gradient_scaling_factor 1/dp_size (distributed_data_parallel.py)
    ("megatron", False): lambda K, R: lambda loss, m, n: masked_sum(loss, m) / m.sum().clamp(min=1) / K,
    # calculate_per_token_loss=True: no division, scaling 1.0, then finalize_model_grads scales by 1/num_tokens
    # all-reduced over DP and micro-batches: the R * (1/R) below is DDP's unscaled sum
    ("megatron", True): lambda K, R: lambda loss, m, n: masked_sum(loss, m) * R / n,
    # torchtune 0.6.1 full_finetune_distributed.py: loss_fn mean × current_num_tokens, scale_grads(world_size / N)
    ("torchtune", None): lambda K, R: lambda loss, m, n: masked_sum(loss, m) / m.sum() * m.sum() * R / n,
    # nanoGPT train.py: F.cross_entropy mean per micro-batch, loss / gradient_accumulation_steps
    ("nanogpt", None): lambda K, R: lambda loss, m, n: masked_sum(loss, m) / m.sum() / K,
    # open-instruct finetune.py: outputs.loss (mean) or CrossEntropyLoss(reduction="sum"); accelerate's
    # Accelerator.backward divides by gradient_accumulation_steps
    ("open-instruct", "mean"): lambda K, R: lambda loss, m, n: masked_sum(loss, m) / m.sum() / K,
    ("open-instruct", "sum"): lambda K, R: lambda loss, m, n: masked_sum(loss, m) / K,
}
SOURCE_OPTIONS = {"megatron": "calculate_per_token_loss", "open-instruct": "reduce_loss"}


@pytest.mark.parametrize("ranks, micro_batches", CONFIGS)
@pytest.mark.parametrize("name, value", list(SOURCE_FORMULAS))
def test_megatron_torchtune_nanogpt_open_instruct_source_formulas_equal_the_presets(ranks, micro_batches, name,
                                                                                     value):
    """Source formulas (these libraries are not installed here): see SOURCE_FORMULAS."""
    batch = chat_batch()
    losses = torch.zeros(batch.shape, dtype=torch.float64, requires_grad=True)
    formula = SOURCE_FORMULAS[name, value](micro_batches, ranks)
    (real,) = torch.autograd.grad(per_micro_batch_objective(losses, batch, ranks, micro_batches, formula), losses)
    options = {SOURCE_OPTIONS[name]: value} if name in SOURCE_OPTIONS else {}
    preset = effective_weights(batch, name, ranks=ranks, micro_batches=micro_batches, **options)
    assert rel_diff(preset, real) <= 1e-12
    if name == "megatron" and ranks * micro_batches > 1:  # negative control: the default is the naive mean
        other = effective_weights(batch, name, ranks=ranks, micro_batches=micro_batches,
                                  calculate_per_token_loss=not value)
        assert rel_diff(other, preset) > 1e-2


# ---------------------------------------------------------------- the README table


def test_the_readme_framework_table_is_the_presets_formula_table():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for line in frameworks.option_table_markdown().splitlines():
        assert line in readme, f"README is missing or has a different row: {line}"


def test_weight_formulas_name_the_window_each_preset_normalises_over():
    assert weight_formula(recipe("transformers")) == "1/N"
    assert weight_formula(recipe("transformers", average_tokens_across_devices=False)) == "1/(R·N_r)"
    assert weight_formula(recipe("megatron")) == "1/(K·R·N_rk)"
    assert weight_formula(recipe("trl-grpo", loss_type="dr_grpo")) == "1/(K·R·M_rk·L)"
    assert weight_formula(recipe("trl-grpo", micro_batches=4, steps_per_generation=2), 4) == "S/(K·N_S)"
    assert weight_formula(recipe("verl", loss_agg_mode="seq-mean-token-sum-norm")) == "1/(M·L_rk)"


# ---------------------------------------------------------------- notebook 07's exercises


@pytest.mark.parametrize("check, right, wrong", [
    ("check_1", 3, 1),
    ("check_2", ["dapo", "cispo", "vespo", "dr_grpo", "luspo"], ["dapo", "cispo", "vespo"]),
    ("check_3", 64, 512),
    ("bug_1", 124 / 128, 1.0),
    ("bug_2", 5.5, 1.0),
    ("bug_3", 4, 1),
    ("bug_4", 9, 1),
    ("bug_5", "logged/8", "logged"),
])
def test_notebook_07_checkers_accept_the_solution_and_reject_a_wrong_answer(check, right, wrong, capsys):
    """The answers of exercises/solutions.md; the checkers recompute them from the presets and restated bugs."""
    from lossreduce_demo.exercises import nb07

    logged = nb07.logged()
    value = {"logged/8": logged / 8, "logged": logged}
    checker = getattr(nb07, check)
    assert checker(value.get(right, right) if isinstance(right, str) else right) is True
    assert checker(value.get(wrong, wrong) if isinstance(wrong, str) else wrong) is False
    assert checker(None) is None and "Not answered yet" in capsys.readouterr().out


def test_the_restated_bugs_differ_from_the_presets_they_break():
    """Negative controls for the find-the-bug exercises: each buggy weight map is not the library's fixed one."""
    from lossreduce_demo.exercises import nb07

    batch = completion_batch([4, 4, 40, 40])
    buggy = nb07.weights_of(lambda losses, mask: nb07.verl_623_loss(losses, mask, mini_batch_rows=4), batch)
    assert rel_diff(buggy, effective_weights(batch, "verl", micro_batches=2)) > 1e-2
    batch = completion_batch([6, 12, 30, 48])
    horizon = nb07.weights_of(nb07.verl_3741_loss, batch)
    fixed = effective_weights(batch, "verl", micro_batches=2, loss_agg_mode="seq-mean-token-sum-norm",
                              loss_scale_factor=48.0)
    assert rel_diff(horizon, fixed) > 1e-2
