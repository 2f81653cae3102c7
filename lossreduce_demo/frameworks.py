"""Your framework, exactly: the loss-reduction options of real training libraries as per-token weight maps.

Each preset maps a library's options to the core's terms (`reductions`: a scheme × a normalisation window ×
whether empty samples count × where L_max comes from) and so to the weight `w = dJ/dl` the optimiser effectively
applies to every token, for any ranks × micro-batches plan (rows dealt as `reductions.Plan.deal` deals
them, DDP's mean over ranks included):

    >>> from lossreduce_demo.frameworks import effective_weights
    >>> w = effective_weights(batch, "trl-grpo", ranks=2, micro_batches=4, loss_type="dr_grpo",
    ...                       max_completion_length=64)                                      # doctest: +SKIP

`FRAMEWORKS` maps each name to its options (`FRAMEWORKS["verl"]["loss_agg_mode"].allowed`, `.default`); every
preset's docstring names the library version and the functions it reflects. The presets read the libraries'
source (tests/test_frameworks.py runs transformers' Trainer and TRL's `GRPOTrainer._compute_loss` against them;
verl, Megatron-LM, torchtune and open-instruct are checked against their source formulas).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from . import reductions
from .errors import OptionError
from .layouts import Batch
from .reductions import Scheme


@dataclass(frozen=True)
class Recipe:
    """A preset in the core's terms: the arguments of `reductions.effective_weights`, and the option as the
    library spells it. `max_sample_tokens`: the library cannot produce a longer sample (TRL truncates
    completions at `max_completion_length`)."""

    scheme: Scheme
    normalization: str
    spelled: str
    window_steps: int | None = None
    max_sample_tokens: int | None = None


class Option:
    """One option of a preset: its default and the values the library accepts (a tuple, or a rule)."""

    def __init__(self, default, allowed: tuple | None = None, *, rule: str = "",
                 accepts: Callable[[Any], bool] | None = None):
        self.default, self.allowed, self.rule, self._accepts = default, allowed, rule, accepts

    def __contains__(self, value) -> bool:
        if self.allowed is not None:
            return any(value == a and type(value) is type(a) for a in self.allowed)
        return value is None and self.default is None or (self._accepts is not None and self._accepts(value))

    def __iter__(self) -> Iterator:
        return iter(self.allowed or ())

    def describe(self) -> str:
        return ", ".join(map(str, self.allowed)) if self.allowed is not None else self.rule

    def parse(self, text: str):
        """A command-line value: true/false, None, a whole number or a number."""
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered == "none":
            return None
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


BOOL = (True, False)


class Framework(Mapping):
    """A named preset: option name → `Option`; `recipe(micro_batches, **options)` resolves it."""

    def __init__(self, name: str, version: str, build: Callable[..., Recipe], options: dict[str, Option]):
        self.name, self.version, self._build, self.options = name, version, build, options
        self.__doc__ = build.__doc__

    def __getitem__(self, option: str) -> Option:
        return self.options[option]

    def __iter__(self) -> Iterator[str]:
        return iter(self.options)

    def __len__(self) -> int:
        return len(self.options)

    def __repr__(self) -> str:
        return f"Framework({self.name!r}, options={list(self.options)})"

    def values(self, **options) -> dict:
        """The options with defaults filled in, each checked against the allowed values."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            listed = ", ".join(self.options) or "none"
            raise OptionError(f"{self.name} has no option {unknown[0]!r}; its options: {listed}")
        out = {name: options.get(name, opt.default) for name, opt in self.options.items()}
        for name, value in out.items():
            if value not in self.options[name]:
                raise OptionError(f"{self.name}: {name}={value!r} is not allowed; allowed: "
                                 f"{self.options[name].describe()}")
        return out

    def recipe(self, micro_batches: int = 1, **options) -> Recipe:
        return self._build(micro_batches=micro_batches, **self.values(**options))


# ---------------------------------------------------------------- the presets


def transformers_preset(*, num_items_in_batch: bool, average_tokens_across_devices: bool,
                        micro_batches: int) -> Recipe:
    """transformers 5.24.0 `Trainer` with a causal LM (`Trainer._get_num_items_in_batch`, `Trainer.compute_loss`,
    `Trainer.training_step`; the model's `loss_utils.ForCausalLMLoss`).

    `num_items_in_batch=True` (the model accepts loss kwargs, as every causal LM does): the Trainer counts the
    labels of the rank's whole GA window after the causal shift (`labels[..., 1:] != -100`), the loss is
    `sum / num_items_in_batch` and not divided by the GA steps. With `average_tokens_across_devices=True`
    (the 5.x default) the count is gathered over ranks and the loss multiplied by the number of processes:
    weight 1/N, the full-batch token mean. With False each rank divides by its own count: 1/(R·N_rank).
    `num_items_in_batch=False` (a model without loss kwargs): the model's mean per micro-batch, `loss / K`:
    the naive 1/(K·R·n_rk) of transformers #24725."""
    if not num_items_in_batch:
        normalization = "local"
    else:
        normalization = "global" if average_tokens_across_devices else "rank"
    spelled = (f"TrainingArguments(gradient_accumulation_steps={micro_batches}, average_tokens_across_devices="
               f"{average_tokens_across_devices}), model {'accepts' if num_items_in_batch else 'without'} "
               "num_items_in_batch")
    return Recipe(Scheme("token-mean"), normalization, spelled)


TRL_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
TRL_DEFAULT_MAX_COMPLETION_LENGTH = 512  # GRPOConfig.max_completion_length in TRL 1.16


def trl_grpo_preset(*, loss_type: str, max_completion_length: int, steps_per_generation: int | None,
                    micro_batches: int) -> Recipe:
    """TRL 1.16.0 `GRPOTrainer._compute_loss` (trl/trainer/grpo_trainer.py), aggregation only: on-policy, the
    ratio is 1 and every loss type's per-token gradient is −A·∇log π (sapo's soft gate and vespo's φ are 1 there;
    cispo's clamp at `epsilon_high` is inactive for ε_max >= 1, the recommended 5.0).

    `grpo`, `sapo`: each row's token mean, mean over the micro-batch's rows (M_rk, an empty completion counts),
    `/ K`: 1/(K·R·M_rk·n_i). `bnpo`: token mean of the micro-batch, `/ K`: 1/(K·R·N_rk). `dr_grpo`:
    sum / (rows · max_completion_length), `/ K`: 1/(K·R·M_rk·L). `luspo`: each row's token sum, mean over rows,
    `/ K`: 1/(K·R·M_rk). `dapo`, `cispo`, `vespo`: sum / (num_items_in_batch / R · K / S), where
    num_items_in_batch counts the generation batch (S = steps_per_generation accumulation steps, all ranks):
    1/N when S = K (the default), S/(K·N_S) otherwise. TRL's `GRPOTrainer` sets `loss_is_scaled_for_ga`, so the
    Trainer does not divide by K again; DDP averages over ranks. With S > K the batch is one generation batch
    spanning S/K optimizer steps."""
    steps = micro_batches if steps_per_generation is None else steps_per_generation
    scheme = {
        "grpo": Scheme("seq-mean-token-mean", count_empty=True),
        "sapo": Scheme("seq-mean-token-mean", count_empty=True),
        "bnpo": Scheme("token-mean"),
        "dr_grpo": Scheme("seq-mean-token-sum-norm", l_max=max_completion_length, count_empty=True),
        "luspo": Scheme("seq-mean-token-sum", count_empty=True),
    }.get(loss_type, Scheme("token-mean"))
    normalization = "global" if loss_type in ("dapo", "cispo", "vespo") else "local"
    spelled = (f"GRPOConfig(loss_type={loss_type!r}, max_completion_length={max_completion_length}, "
               f"gradient_accumulation_steps={micro_batches}, steps_per_generation={steps})")
    return Recipe(scheme, normalization, spelled, window_steps=steps, max_sample_tokens=max_completion_length)


VERL_LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
                       "seq-mean-token-sum-norm")


def verl_preset(*, loss_agg_mode: str, loss_scale_factor: float | None, micro_batches: int) -> Recipe:
    """verl 0.9.1 `agg_loss` (verl/trainer/ppo/core_algos.py) on the engine path (verl/workers/utils/losses.py
    `ppo_loss`, verl/workers/engine/fsdp/transformer_impl.py `forward_backward_batch`): the mini-batch's loss
    tokens are all-reduced over the data-parallel group (`batch_num_tokens`), `global_batch_size` is the
    mini-batch's sequence count (`ppo_mini_batch_size × rollout.n`, a fully masked response included), every
    micro-batch loss is multiplied by `dp_size` and not divided by the GA steps, DDP averages.

    token-mean 1/N; token-sum 1; seq-mean-token-sum 1/M; seq-mean-token-mean 1/(M·n_i);
    seq-mean-token-sum-norm 1/(M·L) with L = `loss_scale_factor`, or when None `loss_mask.shape[-1]`: the
    micro-batch's padded response width (the nested batch padded to its longest response)."""
    scheme = Scheme(loss_agg_mode, l_max=loss_scale_factor, l_max_scope="micro-batch",
                    count_empty=loss_agg_mode.startswith("seq-mean"))
    spelled = f"actor.loss_agg_mode={loss_agg_mode}, actor.loss_scale_factor={loss_scale_factor}"
    return Recipe(scheme, "global", spelled)


def megatron_preset(*, calculate_per_token_loss: bool, micro_batches: int) -> Recipe:
    """Megatron-LM core 0.16.1 (megatron/core/pipeline_parallel/schedules.py `forward_step_calc_loss`,
    megatron/core/distributed/finalize_model_grads.py, distributed_data_parallel.py).

    Default (`calculate_per_token_loss=False`): the loss function returns (sum, num_tokens), the schedule divides
    by max(num_tokens, 1) and by num_microbatches, DDP scales the reduced gradient by 1/dp_size: 1/(K·R·n_rk).
    True: no per-micro-batch division, gradient scaling 1.0 in DDP, then `finalize_model_grads` divides by the
    token count all-reduced over data-parallel ranks and micro-batches: 1/N."""
    normalization = "global" if calculate_per_token_loss else "local"
    return Recipe(Scheme("token-mean"), normalization,
                  f"TransformerConfig(calculate_per_token_loss={calculate_per_token_loss})")


def torchtune_preset(*, micro_batches: int) -> Recipe:
    """torchtune 0.6.1 recipes/full_finetune_distributed.py `train` (and full_finetune_single_device.py):
    each micro-batch's mean loss × its token count (a sum), `num_tokens` summed over the GA steps and
    all-reduced, then `training.scale_grads(model, world_size / num_tokens)`: 1/N.

    The recipe counts `labels != ignore_index` before the shift; this suite's batches never label position 0,
    so that count is the loss-token count (a labelled position 0 would over-count by one per row, the bug of
    transformers #46204)."""
    return Recipe(Scheme("token-mean"), "global", "recipes/full_finetune_distributed.py")


def nanogpt_preset(*, micro_batches: int) -> Recipe:
    """karpathy/nanoGPT train.py: `loss = loss / gradient_accumulation_steps` on the model's
    `F.cross_entropy(..., ignore_index=-1)` mean per micro-batch, DDP averaging: 1/(K·R·n_rk) — what most
    hand-written loops do."""
    return Recipe(Scheme("token-mean"), "local", f"loss = loss / gradient_accumulation_steps ({micro_batches})")


def open_instruct_preset(*, reduce_loss: str, micro_batches: int) -> Recipe:
    """allenai/open-instruct open_instruct/finetune.py (commit 00f6b60) with accelerate 1.15
    (`Accelerator.backward` divides by gradient_accumulation_steps), DDP averaging.

    `reduce_loss="mean"`: the model's `outputs.loss`, a token mean per micro-batch: 1/(K·R·n_rk).
    `"sum"`: `CrossEntropyLoss(reduction="sum")` over the shifted labels: 1/(K·R) on every token — equal
    weights (a constant scale that Adam hides and SGD does not)."""
    scheme = "token-mean" if reduce_loss == "mean" else "token-sum"
    return Recipe(Scheme(scheme), "local", f"--reduce_loss {reduce_loss}")


FRAMEWORKS: dict[str, Framework] = {
    "transformers": Framework("transformers", "transformers 5.24.0", transformers_preset, {
        "num_items_in_batch": Option(True, BOOL),
        "average_tokens_across_devices": Option(True, BOOL),
    }),
    "trl-grpo": Framework("trl-grpo", "TRL 1.16.0", trl_grpo_preset, {
        "loss_type": Option("dapo", TRL_LOSS_TYPES),
        "max_completion_length": Option(TRL_DEFAULT_MAX_COMPLETION_LENGTH, rule="a whole number >= 1",
                                        accepts=_positive_int),
        "steps_per_generation": Option(None, rule="a whole number >= 1 (None: micro_batches)",
                                       accepts=_positive_int),
    }),
    "verl": Framework("verl", "verl 0.9.1", verl_preset, {
        "loss_agg_mode": Option("token-mean", VERL_LOSS_AGG_MODES),
        "loss_scale_factor": Option(None, rule="a number > 0 (None: the padded response width)",
                                    accepts=_positive_number),
    }),
    "megatron": Framework("megatron", "Megatron-LM core 0.16.1", megatron_preset, {"calculate_per_token_loss": Option(False, BOOL)}),
    "torchtune": Framework("torchtune", "torchtune 0.6.1", torchtune_preset, {}),
    "nanogpt": Framework("nanogpt", "nanoGPT train.py", nanogpt_preset, {}),
    "open-instruct": Framework("open-instruct", "open-instruct 00f6b60", open_instruct_preset,
                               {"reduce_loss": Option("mean", ("mean", "sum"))}),
}


def framework(name: str) -> Framework:
    if name not in FRAMEWORKS:
        raise OptionError(f"unknown framework {name!r}; choose one of {', '.join(FRAMEWORKS)}")
    return FRAMEWORKS[name]


def recipe(name: str, *, micro_batches: int = 1, **options) -> Recipe:
    """The preset `name` with `options` (defaults filled in, every value checked) in the core's terms."""
    return framework(name).recipe(micro_batches=micro_batches, **options)


def check_batch(batch: Batch, rec: Recipe) -> None:
    """Reject a batch the library could not have produced (a completion longer than TRL's limit)."""
    if rec.max_sample_tokens is None or not batch.loss_mask.any():
        return
    longest = int(torch.bincount(batch.sample_id[batch.loss_mask]).max())
    if longest > rec.max_sample_tokens:
        raise OptionError(f"a sample has {longest} loss tokens, more than max_completion_length="
                         f"{rec.max_sample_tokens} (the library truncates completions there)")


def placed_weights(batch: Batch, name: str, *, ranks: int = 1, micro_batches: int = 1,
                   **options) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`effective_weights` with the (rank, micro_batch) of every row, as `reductions.effective_weights`."""
    rec = recipe(name, micro_batches=micro_batches, **options)
    check_batch(batch, rec)
    plan = reductions.Plan(ranks, micro_batches, rec.normalization, rec.window_steps)
    return reductions.effective_weights(batch, rec.scheme, plan)


def effective_weights(batch: Batch, framework: str, *, ranks: int = 1, micro_batches: int = 1,
                      **options) -> torch.Tensor:
    """(B, T) weight w = dJ/dl that `framework` with `options` applies to every token of `batch`, trained on
    `ranks` data-parallel ranks × `micro_batches` accumulation steps (DDP's mean included)."""
    return placed_weights(batch, framework, ranks=ranks, micro_batches=micro_batches, **options)[0]


# ---------------------------------------------------------------- the weight of a token, in words


_NUMERATOR = {"seq-mean-token-mean": "n_i", "turn-mean": "n_turn"}
_COUNT = {"token-mean": "N", "token-sum": "", "seq-mean-token-sum": "B", "seq-mean-token-mean": "B",
          "seq-mean-token-sum-norm": "B", "turn-mean": "T", "length-power": "Σn^α"}


def weight_formula(rec: Recipe, micro_batches: int | None = None) -> str:
    """The weight of a token under `rec` in this notation: N loss tokens, B samples with loss tokens (M:
    every sample), n_i the token's sample, L = L_max; suffix _rk: the micro-batch's count, _r: the rank's GA
    window, _S: the S-step generation window; no suffix: the whole step. K accumulation steps, R ranks."""
    scheme, norm = rec.scheme, rec.normalization
    count = "M" if scheme.count_empty and _COUNT[scheme.name] == "B" else _COUNT[scheme.name]
    windowed = norm == "global" and rec.window_steps is not None and micro_batches is not None \
        and rec.window_steps != micro_batches
    suffix = {"global": "_S" if windowed else "", "rank": "_r", "local": "_rk"}[norm]
    factors = {"global": ["K"] if windowed else [], "rank": ["R"], "local": ["K", "R"]}[norm]
    if count:
        factors.append(count + suffix)
    if scheme.name == "seq-mean-token-sum-norm":
        factors.append("L_rk" if scheme.l_max is None and scheme.l_max_scope == "micro-batch" else "L")
    elif _NUMERATOR.get(scheme.name):
        factors.append(_NUMERATOR[scheme.name])
    top = "S" if windowed else "1"
    if not factors:
        return top
    return f"{top}/" + (factors[0] if len(factors) == 1 else "(" + "·".join(factors) + ")")


def option_settings(name: str) -> list[dict]:
    """Every combination of the preset's enumerated options (the open-ended ones at their defaults)."""
    fw = framework(name)
    finite = [k for k in fw if fw[k].allowed is not None]
    return [dict(zip(finite, values)) for values in itertools.product(*(fw[k].allowed for k in finite))]


def spell(options: dict) -> str:
    """Options as the library spells them: `loss_type='dr_grpo', max_completion_length=64`."""
    text = ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in options.items())
    return text or "(the recipe)"


def option_table(micro_batches: int = 4) -> list[dict]:
    """One row per preset and value of its enumerated options (others at their defaults), plus TRL's token-level
    losses with a generation batch of S != K steps: the option as the library spells it, the core's
    scheme × normalisation and the weight of a token (README's table)."""
    rows = []
    for name, fw in FRAMEWORKS.items():
        settings = option_settings(name)
        if name == "trl-grpo":
            settings.append({"loss_type": "dapo", "steps_per_generation": 2 * micro_batches})
        for options in settings:
            rec = fw.recipe(micro_batches=micro_batches, **options)
            rows.append({"framework": name, "option": spell(options), "version": fw.version,
                         "scheme": rec.scheme.label, "normalization": rec.normalization,
                         "weight": weight_formula(rec, micro_batches)})
    return rows


def option_table_markdown(micro_batches: int = 4) -> str:
    """`option_table` as the README's markdown rows (a test holds the README to it)."""
    return "\n".join(f"| `{r['framework']}` {r['version']} | `{r['option']}` | {r['scheme']} × {r['normalization']} "
                     f"| {r['weight']} |" for r in option_table(micro_batches))
