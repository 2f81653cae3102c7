"""The training loop: one tiny GPT per `Run`, trained one after another on the same data in the same order.

One optimizer step, nanoGPT-shaped (`train_step`):

    for _, micro, w in reductions.micro_batches(batch, scheme, plan):  # R ranks × K micro-batches, their weights
        losses = token_losses(model, micro)                 # forward -> per-token loss (rows, T), unreduced
        (w * losses).sum().backward()                       # gradients add up over the micro-batches
    optimizer.step()                                        # torch.optim.AdamW or torch.optim.SGD

`global` normalization divides every micro-batch by the whole step's counts and gives exactly the full-batch
gradient; `local` divides by the micro-batch's own counts and by K (the naive `loss / grad_accum`); `rank` by its
rank's counts over its K micro-batches (a count that is not all-reduced).

Data order is a seeded permutation of the samples (conversations for multiturn/packed, turn-rows for split),
consumed `micro_batch_size × grad_accum × ranks` at a time, so every (bsz, ga) split of the same global batch size
sees the same samples at the same optimizer step, and every run of one `train` call sees the same batches.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .layouts import (
    ALL_LAYOUTS,
    PACKED_LAYOUTS,
    Batch,
    make_layout,
    packed_layout,
    rows_as_samples,
    token_losses,
)
from .model import GPT, TINY, GPTConfig
from .reductions import (
    LENGTH_BUCKETS,
    NORMALIZATIONS,
    Plan,
    Scheme,
    as_scheme,
    length_bucket_labels,
    micro_batches,
)
from .tokenizer import PAD, render

OPTIMIZERS = ("adamw", "sgd")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
HISTORY_COLUMNS = ["seed", "run", "scheme", "normalization", "layout", "micro_batch_size", "grad_accum", "ranks",
                   "optimizer", "lr", "step", "metric", "bucket", "value"]


class TrainingDiverged(ValueError):
    """The loss (or a weight) became NaN or infinite: the learning rate is too large for this objective."""


def _check_int(owner: str, name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{owner}.{name}={value!r}: must be an integer >= {low}")


def _check_lr(owner: str, lr) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"{owner}.lr={lr!r}: must be a finite number > 0")


@dataclass(frozen=True)
class Run:
    """One trained model: how its loss is reduced, and optionally its own learning rate or micro-batch split."""

    scheme: Scheme | str = "token-mean"
    normalization: str = "global"  # global: denominators of the whole global batch; local: per micro-batch
    lr: float | None = None  # None: TrainConfig.lr
    micro_batches: int | None = None  # K of this run (None: TrainConfig.grad_accum); rows per micro-batch follow
    name: str | None = None  # label in the history (default: scheme label + normalization)

    def __post_init__(self):
        object.__setattr__(self, "scheme", as_scheme(self.scheme))
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; choose one of {NORMALIZATIONS}")
        if self.lr is not None:
            _check_lr("Run", self.lr)
        if self.micro_batches is not None:
            _check_int("Run", "micro_batches", self.micro_batches)

    @property
    def label(self) -> str:
        split = f", K={self.micro_batches}" if self.micro_batches else ""
        return self.name or f"{self.scheme.label} ({self.normalization}{split})"

    def plan(self, config: TrainConfig) -> Plan:
        return Plan(config.ranks, self.micro_batches or config.grad_accum, self.normalization)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200  # optimizer steps
    micro_batch_size: int = 16  # samples per micro-batch (packed: conversations per micro-batch on average)
    grad_accum: int = 1  # micro-batches per rank per step (K)
    ranks: int = 1  # simulated data-parallel ranks (R)
    layout: str = "multiturn"  # split | multiturn | packed
    row_len: int | None = None  # packed row length (default: the model's context + 1)
    optimizer: str = "adamw"  # adamw (torch.optim.AdamW) | sgd (torch.optim.SGD, no momentum)
    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW
    eps: float = 1e-8  # AdamW
    weight_decay: float = 0.0  # AdamW, on matrices only; 0 keeps the closed-form optima of docs/science.md exact
    lr_decay: float = 1.0  # final lr as a fraction of lr, linear decay over the steps (1 = constant)
    seed: int = 0  # model init and data order
    eval_every: int = 10  # held-out metrics every this many steps (and at the last step)
    model: GPTConfig = field(default_factory=lambda: TINY)
    dtype: str = "float32"  # float32 | float64 (E2's comparisons: rounding ~1e-16 instead of ~1e-7)
    progress: bool = True  # tqdm bar
    sample_is_row: bool = False  # packed layouts: each row one sample, so seq-means are per-row means (E9)

    def __post_init__(self):
        for name in ("steps", "micro_batch_size", "grad_accum", "ranks", "eval_every"):
            _check_int("TrainConfig", name, getattr(self, name))
        if self.row_len is not None:
            _check_int("TrainConfig", "row_len", self.row_len)
        if self.layout not in ALL_LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {', '.join(ALL_LAYOUTS)}")
        if self.sample_is_row and self.layout not in PACKED_LAYOUTS:
            raise ValueError(f"sample_is_row needs a packed layout ({', '.join(PACKED_LAYOUTS)}), not {self.layout!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"TrainConfig.dtype={self.dtype!r}: choose one of {', '.join(DTYPES)}")
        _check_lr("TrainConfig", self.lr)
        betas = self.betas
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"TrainConfig.betas={betas!r}: must be two numbers in [0, 1)")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"TrainConfig.eps={self.eps!r}: must be a finite number > 0")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            raise ValueError(f"TrainConfig.weight_decay={self.weight_decay!r}: must be a finite number >= 0")
        if not (isinstance(self.lr_decay, (int, float)) and 0 < self.lr_decay <= 1):
            raise ValueError(f"TrainConfig.lr_decay={self.lr_decay!r}: must be in (0, 1]")

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.ranks


@dataclass
class TrainResult:
    history: pd.DataFrame  # tidy: HISTORY_COLUMNS, one row per (run, step, metric, bucket)
    runs: list[Run]
    config: TrainConfig
    models: list[GPT]  # final weights, one model per run (eval mode)

    def run_model(self, i: int) -> GPT:
        return self.models[i]


# ------------------------------------------------------------------------------------------------ data


class TrainingData:
    """A dataset laid out once; `global_batch_at(step)` cuts the step's samples out cheaply."""

    def __init__(self, conversations, layout: str, global_batch: int, seed: int, max_len: int,
                 row_len: int | None = None, sample_is_row: bool = False):
        self.layout, self.global_batch, self.max_len = layout, global_batch, max_len
        self.row_len, self.sample_is_row = row_len or max_len, sample_is_row
        self.rendered = [render(c) for c in conversations]
        if layout in PACKED_LAYOUTS:
            self.full, self.n_samples = None, len(self.rendered)
            packed_layout(self.rendered, self.row_len)  # validates lengths once
        else:
            self.full = make_layout(self.rendered, layout, max_len=max_len)
            self.n_samples = self.full.tokens.shape[0]
        if self.n_samples == 0:
            raise ValueError("no training samples")
        self.generator = np.random.default_rng(seed)
        self.order = np.zeros(0, dtype=np.int64)

    def samples(self, step: int) -> np.ndarray:
        """Sample indices of optimizer step `step` (0-based): epochs of seeded permutations, read in order."""
        need = (step + 1) * self.global_batch
        while len(self.order) < need:
            self.order = np.concatenate([self.order, self.generator.permutation(self.n_samples)])
        return self.order[step * self.global_batch: need]

    def global_batch_at(self, step: int) -> Batch:
        idx = self.samples(step)
        if self.layout in PACKED_LAYOUTS:
            rows = make_layout([self.rendered[i] for i in idx], self.layout, row_len=self.row_len)
            return rows_as_samples(rows) if self.sample_is_row else rows
        return self.full.select(idx).trimmed()


# ------------------------------------------------------------------------------------------------ the loop


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """torch.optim.AdamW (weight decay on matrices only, as nanoGPT) or plain torch.optim.SGD."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, scheme: Scheme,
               plan: Plan) -> tuple[float, float]:
    """One optimizer step on a global batch, dealt by `plan` into R ranks × K micro-batches (simulated ranks:
    their gradients add up here, scaled by 1/R as DDP's mean would). Returns (objective Σ w·l, Σ l over the
    step's loss tokens)."""
    if plan.steps > plan.micro_batches:
        raise ValueError(f"window_steps={plan.window_steps} spans several optimizer steps: not one train_step")
    objective = token_loss = 0.0
    for _, micro, w in micro_batches(batch, scheme, plan):  # each non-empty micro-batch and its weights
        losses = token_losses(model, micro)  # forward -> per-token loss (rows, T), unreduced
        loss = (w.to(losses.dtype) * losses).sum()
        loss.backward()  # .grad adds up over the micro-batches
        objective += loss.item()
        token_loss += float((losses.detach() * micro.loss_mask).sum())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return objective, token_loss


def train(
    conversations: Sequence,
    runs: Sequence[Run | str] = ("token-mean",),
    config: TrainConfig = TrainConfig(),
    *,
    heldout: Sequence | None = None,
    task_metrics: Callable | Sequence[Callable] = (),
    labels: dict | None = None,
    data: TrainingData | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train one model per run (one after another) on the same data; return the tidy history and the models.

    conversations: chats.Conversation list (the training set; its order is shuffled by config.seed).
    runs: Run objects or scheme names (global normalization). Every run starts from the same initial weights.
    heldout: conversations for the fixed held-out token-mean loss / accuracy (overall and per length bucket).
    task_metrics: callables `model -> {metric: float}`, evaluated with the held-out metrics,
        e.g. `token_probability_metric(probes, ord("L"), "p_long")`.
    labels: extra constant columns for the history (e.g. {"seed": 3}).
    data: a prepared TrainingData (to reuse its layout across trainings with the same global batch and seed).
    on_step: called as on_step(run_index, step) after every optimizer step (e.g. a widget's progress bar).

    History metrics: `objective` (Σ w·l over the step, what the scheme reports; every step),
    `train_token_loss` (token-mean loss of the step's global batch; every step), `heldout_loss`,
    `heldout_accuracy` (bucket = response-length bucket, or empty for all tokens) and the task metrics
    (every eval_every steps and at the last step). Raises TrainingDiverged (naming the run and step) when a loss
    or a weight becomes NaN or infinite.
    """
    runs = [r if isinstance(r, Run) else Run(r) for r in runs]
    if not runs:
        raise ValueError("need at least one run")
    cfg = config
    data = data or TrainingData(conversations, cfg.layout, cfg.global_batch, cfg.seed, cfg.model.context_len + 1,
                                cfg.row_len, cfg.sample_is_row)
    if data.global_batch != cfg.global_batch:
        raise ValueError(f"data was prepared for a global batch of {data.global_batch}, config needs {cfg.global_batch}")
    heldout_batch = make_layout(heldout, "multiturn", max_len=cfg.model.context_len + 1) if heldout else None
    task_metrics = [task_metrics] if callable(task_metrics) else list(task_metrics)
    frames, models = [], []
    for run in runs:
        step_done = None if on_step is None else functools.partial(on_step, len(models))
        model, rows = _train_run(data, run, cfg, heldout_batch, task_metrics, step_done)
        frames.append(_history(rows, run, cfg, labels or {}))
        models.append(model)
    return TrainResult(pd.concat(frames, ignore_index=True), runs, cfg, models)


def _train_run(data: TrainingData, run: Run, cfg: TrainConfig, heldout_batch: Batch | None,
               task_metrics: list[Callable], on_step: Callable[[int], None] | None = None) -> tuple[GPT, list[tuple]]:
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model).to(DTYPES[cfg.dtype]).train()
    lr, plan = run.lr or cfg.lr, run.plan(cfg)
    optimizer = make_optimizer(model, cfg, lr)
    decay = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, cfg.lr_decay, total_iters=max(cfg.steps - 1, 1))
    rows: list[tuple] = []  # (step, metric, bucket, value)
    for step in tqdm(range(cfg.steps), desc=run.label, disable=not cfg.progress, leave=False):
        batch = data.global_batch_at(step)
        objective, token_loss = train_step(model, optimizer, batch, run.scheme, plan)
        decay.step()
        if not math.isfinite(objective):
            raise TrainingDiverged(f"run {run.label!r} diverged at step {step + 1}: the loss is {objective} "
                                   f"({cfg.optimizer}, lr={lr:g}); lower the learning rate")
        rows += [(step, "objective", None, objective),
                 (step, "train_token_loss", None, token_loss / max(int(batch.loss_mask.sum()), 1))]
        if (step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1:
            rows += [(step + 1, name, bucket, value) for (name, bucket), value in
                     _evaluate(model, heldout_batch, task_metrics).items()]
        if on_step is not None:
            on_step(step)
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise TrainingDiverged(f"run {run.label!r} diverged at its last step: a weight is NaN or infinite "
                               f"({cfg.optimizer}, lr={lr:g}); lower the learning rate")
    return model.eval(), rows


def _evaluate(model: GPT, heldout_batch: Batch | None, task_metrics: list[Callable]) -> dict:
    model.eval()
    found = heldout_metrics(model, heldout_batch) if heldout_batch is not None else {}
    for fn in task_metrics:
        found.update({(name, None): value for name, value in fn(model).items()})
    model.train()
    return found


def _history(rows: list[tuple], run: Run, cfg: TrainConfig, labels: dict) -> pd.DataFrame:
    plan = run.plan(cfg)
    frame = pd.DataFrame(rows, columns=["step", "metric", "bucket", "value"]).astype({"bucket": object})
    frame = frame.assign(seed=labels.get("seed", cfg.seed), run=run.label, scheme=run.scheme.label,
                         normalization=run.normalization, layout=cfg.layout,
                         micro_batch_size=cfg.global_batch // (plan.ranks * plan.micro_batches),
                         grad_accum=plan.micro_batches, ranks=plan.ranks, optimizer=cfg.optimizer,
                         lr=run.lr or cfg.lr, **{k: v for k, v in labels.items() if k != "seed"})
    frame["value"] = frame["value"].astype(float)
    return frame[HISTORY_COLUMNS + [c for c in frame.columns if c not in HISTORY_COLUMNS]]


# ------------------------------------------------------------------------------------------------ metrics


@torch.no_grad()
def heldout_metrics(model: GPT, batch: Batch, edges=LENGTH_BUCKETS) -> dict[tuple[str, str | None], float]:
    """Token-mean loss and next-token accuracy on a fixed batch, overall and per response-length bucket
    (the assistant turn's loss-token count)."""
    logits, loss = model(**batch.model_inputs())
    loss = F.pad(loss, (1, 0)).double()  # (B, T): entry t is the loss of predicting token t
    correct = F.pad(logits.argmax(-1) == batch.tokens[:, 1:], (1, 0))
    mask = batch.loss_mask
    turn_len = torch.zeros_like(batch.turn_id)
    ids = batch.turn_id[mask]
    turn_len[mask] = torch.bincount(ids)[ids] if ids.numel() else ids
    groups = [("all", mask)] + [(label, mask & (turn_len > lo) & (turn_len <= hi))
                                for label, lo, hi in zip(length_bucket_labels(edges), edges[:-1], edges[1:])]
    out = {}
    for label, m in groups:
        if not m.any():
            continue
        bucket, n = (None if label == "all" else label), int(m.sum())
        out[("heldout_loss", bucket)] = float((loss * m).sum()) / n
        out[("heldout_accuracy", bucket)] = float((correct & m).sum()) / n
    return out


def first_reply_position(batch: Batch, turn: int = -1) -> torch.Tensor:
    """(B,) index of the first content token of each row's `turn`-th assistant turn (-1: the last one)."""
    pos = []
    for b in range(batch.tokens.shape[0]):
        turns = batch.turn_in_conversation[b][batch.loss_mask[b]]
        which = int(turns.max()) if turn == -1 else turn
        pos.append(int(((batch.turn_in_conversation[b] == which) & batch.loss_mask[b]).nonzero()[0]))
    return torch.tensor(pos)


def token_probability_metric(probes, token: int, name: str, turn: int = -1, layout: str = "multiturn"):
    """A task metric: mean probability of `token` as the first token of the probes' `turn`-th reply
    (e.g. P("L") at the branch). Returns a callable `model -> {name: float}` for `train(task_metrics=...)`."""
    batch = make_layout(probes, layout)
    if layout == "split":  # keep the row of each conversation's last turn
        last = [int(rows[-1]) for rows in pd.Series(range(len(batch.tokens))).groupby(
            batch.conversation_id[:, 0].numpy()).apply(list)]
        batch = batch.select(last)
    pos = first_reply_position(batch, turn)
    width = int(pos.max())  # only the prompts are needed (causal: what follows them cannot matter)
    column = torch.arange(width)[None]
    idx = torch.where(column < pos[:, None], batch.tokens[:, :width], PAD)  # the prompt before each reply
    positions = batch.position[:, :width]

    @torch.no_grad()
    def metric(model: GPT) -> dict[str, float]:
        logits, _ = model(idx, positions=positions)  # (B, width, V): index t predicts token t + 1
        probs = logits[torch.arange(len(pos)), pos - 1].double().softmax(-1)[:, token]
        return {name: float(probs.mean())}

    return metric


def final_metric(history: pd.DataFrame, metric: str, last_fraction: float = 0.25) -> pd.Series:
    """Per run: `metric` averaged over the evaluations in the last `last_fraction` of training."""
    rows = history[(history.metric == metric) & history.bucket.isna()]
    cutoff = rows.step.max() * (1 - last_fraction)
    return rows[rows.step >= cutoff].groupby("run", sort=False).value.mean()


def relative_distance(model: nn.Module, reference: nn.Module) -> float:
    """‖W − W_ref‖ / ‖W_ref‖ over all parameters."""
    pairs = list(zip(model.parameters(), reference.parameters()))
    num = sum(float(((p.detach().double() - q.detach().double()) ** 2).sum()) for p, q in pairs)
    den = sum(float((q.detach().double() ** 2).sum()) for _, q in pairs)
    return math.sqrt(num / den)
