"""One optimizer step of the real `transformers.Trainer` next to the `transformers` preset (the `[frameworks]` extra).

A 2-layer, d=16 GPT-2 built from a config (random init, no download) trains one step on a laid-out batch with
gradient accumulation; a callback's `on_pre_optimizer_step` reads the accumulated gradient. The same model and
init, one forward on the whole batch and backward on `sum(w * per-token loss)` with the preset's weights `w`, gives
the gradient the preset predicts. Used by notebook 07 and tests/test_frameworks.py.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch
import torch.nn.functional as F

from .layouts import IGNORE_INDEX, Batch, make_layout
from .reductions import Plan
from .tokenizer import BOS, EOT, PAD, VOCAB_SIZE


def missing_extra() -> str | None:
    """None when transformers can be imported, else the one line telling how to get it."""
    try:
        import transformers  # noqa: F401
    except ImportError as error:
        return (f"the [frameworks] extra is not installed ({error}); pip install -e '.[frameworks]' "
                "(make test installs it)")
    return None


def tiny_gpt2(n_positions: int, seed: int = 0):
    """GPT-2 with 2 layers, d=16, 2 heads on the suite's byte vocabulary, dropout off, from a fixed seed."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB_SIZE, n_positions=n_positions, n_embd=16, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=BOS, eos_token_id=EOT,
                        pad_token_id=PAD)
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # what transformers falls back to anyway, named so it need not warn
    return model


def causal_lm_labels(batch: Batch) -> torch.Tensor:
    """What a collator gives the Trainer: labels = input ids, -100 where the token is not trained on."""
    return torch.where(batch.loss_mask, batch.tokens, IGNORE_INDEX)


def trainer_order(n_rows: int, ranks: int, micro_batches: int) -> list[int]:
    """The dataset order under which the Trainer deals rows as `reductions.Plan.deal` does: its sequential
    sampler yields batches in order and accelerate gives batch g to process g % R, so batch k·R + r must hold the
    rows of rank r's micro-batch k."""
    plan = {(mb.rank, mb.step): mb.rows for mb in Plan(ranks, micro_batches).deal(n_rows)}
    return [i for k in range(micro_batches) for r in range(ranks) for i in plan[r, k]]


def trainer_step_gradient(batch: Batch, micro_batch_size: int, micro_batches: int, *,
                          model_accepts_loss_kwargs: bool = True, average_tokens_across_devices: bool = True,
                          seed: int = 0) -> torch.Tensor:
    """The gradient a real `Trainer` accumulates over one optimizer step of `micro_batches` micro-batches of
    `micro_batch_size` rows on each process (under torchrun: DDP's averaged one; rows dealt as
    `reductions.Plan.deal` deals them; clipping off). `model_accepts_loss_kwargs=False` makes it treat the model as
    one without loss kwargs (no `num_items_in_batch`: the per-micro-batch mean)."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    class GradientProbe(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grad = torch.cat([p.grad.flatten().clone() for p in model.parameters()])

    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    if batch.shape[0] != ranks * micro_batches * micro_batch_size:
        raise ValueError(f"{batch.shape[0]} rows: need ranks × micro_batches × micro_batch_size = "
                         f"{ranks} × {micro_batches} × {micro_batch_size} (every micro-batch full)")
    labels, attention = causal_lm_labels(batch), (batch.segment_id >= 0).long()
    rows = [{"input_ids": batch.tokens[i], "attention_mask": attention[i], "labels": labels[i]}
            for i in trainer_order(batch.shape[0], ranks, micro_batches)]
    probe = GradientProbe()
    with tempfile.TemporaryDirectory() as workdir:
        args = TrainingArguments(output_dir=workdir, per_device_train_batch_size=micro_batch_size,
                                 gradient_accumulation_steps=micro_batches, max_steps=1, use_cpu=True, report_to=[],
                                 train_sampling_strategy="sequential", logging_strategy="no", save_strategy="no",
                                 disable_tqdm=True, learning_rate=1e-3, max_grad_norm=0.0, seed=seed,
                                 average_tokens_across_devices=average_tokens_across_devices,
                                 ddp_find_unused_parameters=False)
        trainer = Trainer(model=tiny_gpt2(batch.shape[1], seed), args=args, train_dataset=rows, callbacks=[probe])
        trainer.remove_callback(PrinterCallback)  # no metrics dict printed after the step
        trainer.model_accepts_loss_kwargs = model_accepts_loss_kwargs
        trainer.train()
    return probe.grad


def weighted_gradient(batch: Batch, weights: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The same model and init, one forward on the whole batch, backward on sum(w · per-token loss)."""
    model = tiny_gpt2(batch.shape[1], seed)
    logits = model(input_ids=batch.tokens, attention_mask=(batch.segment_id >= 0).long()).logits
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch.tokens[:, 1:], reduction="none")
    (weights[:, 1:].float() * losses).sum().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def trainer_vs_preset(batch: Batch, micro_batch_size: int, micro_batches: int, *,
                      num_items_in_batch: bool = True) -> dict:
    """The real Trainer's gradient, the preset's, and their relative difference ‖real − preset‖ / ‖preset‖."""
    from .frameworks import effective_weights

    real = trainer_step_gradient(batch, micro_batch_size, micro_batches, model_accepts_loss_kwargs=num_items_in_batch)
    weights = effective_weights(batch, "transformers", micro_batches=micro_batches,
                                num_items_in_batch=num_items_in_batch)
    preset = weighted_gradient(batch, weights)
    return {"real": real, "preset": preset, "rel_diff": float((real - preset).norm() / preset.norm())}


def ddp_check(out: str, micro_batches: int = 2, micro_batch_size: int = 2) -> None:
    """Under `torchrun --nproc_per_node=R`: one real DDP Trainer step (gloo) per `average_tokens_across_devices`
    setting on a length-skewed batch; rank 0 writes {setting: relative difference to the preset's gradient} and
    the two presets' own difference (the negative control) as JSON to `out`."""
    from .frameworks import effective_weights
    from .outputs import check_output_file, replacing
    from .synth import make_chats

    out = check_output_file(out)  # before the work
    ranks, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    chats = sorted(make_chats(ranks * micro_batches * micro_batch_size, seed=5), key=lambda c: len(str(c)))
    batch = make_layout(chats, "multiturn")  # short conversations on rank 0, long ones on the last rank
    result, presets = {}, {}
    for average in (True, False):
        real = trainer_step_gradient(batch, micro_batch_size, micro_batches, average_tokens_across_devices=average)
        weights = effective_weights(batch, "transformers", ranks=ranks, micro_batches=micro_batches,
                                    average_tokens_across_devices=average)
        presets[average] = weighted_gradient(batch, weights)
        result[f"average_tokens_across_devices={average}"] = float((real - presets[average]).norm()
                                                                  / presets[average].norm())
    result["presets_differ_by"] = float((presets[True] - presets[False]).norm() / presets[True].norm())
    if rank == 0:
        with replacing(out) as tmp:
            tmp.write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a real DDP Trainer step vs the transformers preset (torchrun)")
    parser.add_argument("--out", required=True, help="JSON written by rank 0")
    ddp_check(parser.parse_args().out)
