"""One training loop for every reduction scheme, layout, normalization and micro-batch plan.

`train(conversations, runs, config)` trains one tiny GPT per `Run` (a scheme + a normalization + optionally its own
learning rate or micro-batch split) on the SAME data in the same order. The runs' parameters are stacked along a
leading "run" axis (`torch.func.stack_module_state`) and run together by `grouped_forward` (model.py's maths with
batched matmuls over that axis), so S schemes cost far less than S separate trainings; every update is elementwise,
so each run keeps its own weights and its own optimizer state and the result equals S separate runs.

One optimizer step = `ranks × grad_accum` micro-batches of `micro_batch_size` samples, dealt by
`reductions.micro_batch_plan`. Every micro-batch is a real forward/backward on `sum(w · l)` with the run's weights
w = `reductions.effective_weights` (global stats = the whole global batch's counts, local = the micro-batch's own;
DDP's 1/R included); gradients add up over micro-batches (= GA, and DDP's mean over ranks), then the optimizer steps.
A run with its own `micro_batches=K` is normalised as if split into K micro-batches, while the forward passes follow
the config's split: the same gradient, since sum over micro-batches of sum(w · l) is sum(w · l) either way.

Data order is a seeded permutation of the samples (conversations for multiturn/packed, turn-rows for split),
consumed `micro_batch_size × grad_accum × ranks` at a time, so every (bsz, ga) split of the same global batch size
sees the same samples at the same optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import stack_module_state
from tqdm.auto import tqdm

from .layouts import LAYOUTS, Batch, make_layout, packed_layout
from .model import GPT, IGNORE_INDEX, TINY, GPTConfig
from .reductions import NORMALIZATIONS, Scheme, as_scheme, effective_weights, micro_batch_plan
from .report import LENGTH_BUCKETS, length_bucket_labels
from .tokenizer import PAD, render

OPTIMIZERS = ("adamw", "sgd")
HISTORY_COLUMNS = ["seed", "run", "scheme", "normalization", "layout", "micro_batch_size", "grad_accum", "ranks",
                   "optimizer", "lr", "step", "metric", "bucket", "value"]


@dataclass(frozen=True)
class Run:
    """One trained model: how its loss is reduced, and optionally its own learning rate."""

    scheme: Scheme | str = "token-mean"
    normalization: str = "global"  # global: denominators of the whole global batch; local: per micro-batch
    lr: float | None = None  # None: TrainConfig.lr
    micro_batches: int | None = None  # K this run normalises for (None: TrainConfig.grad_accum), see train()
    name: str | None = None  # label in the history (default: scheme label + normalization)

    def __post_init__(self):
        object.__setattr__(self, "scheme", as_scheme(self.scheme))
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; choose one of {NORMALIZATIONS}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r}: must be a finite number > 0")
        if self.micro_batches is not None and int(self.micro_batches) < 1:
            raise ValueError(f"micro_batches={self.micro_batches!r}: must be >= 1")

    @property
    def label(self) -> str:
        split = f", K={self.micro_batches}" if self.micro_batches else ""
        return self.name or f"{self.scheme.label} ({self.normalization}{split})"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200  # optimizer steps
    micro_batch_size: int = 16  # samples per micro-batch (packed: conversations per micro-batch on average)
    grad_accum: int = 1  # micro-batches per rank per step (K)
    ranks: int = 1  # simulated data-parallel ranks (R)
    layout: str = "multiturn"  # split | multiturn | packed
    row_len: int | None = None  # packed row length (default: the model's context + 1)
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0  # 0 keeps the closed-form optima of docs/science.md exact
    lr_decay: float = 1.0  # final lr as a fraction of lr, linear decay over the steps (1 = constant)
    seed: int = 0  # model init and data order
    eval_every: int = 10  # held-out metrics every this many steps (and at the last step)
    model: GPTConfig = field(default_factory=lambda: TINY)
    progress: bool = True  # tqdm bar

    def __post_init__(self):
        for name in ("steps", "micro_batch_size", "grad_accum", "ranks", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 1")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r}: must be a finite number > 0")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay={self.lr_decay!r}: must be in (0, 1]")

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.ranks


@dataclass
class TrainResult:
    history: pd.DataFrame  # tidy: HISTORY_COLUMNS, one row per (run, step, metric, bucket)
    runs: list[Run]
    config: TrainConfig
    params: dict[str, torch.Tensor]  # final parameters, stacked: name -> (S, ...)
    model: GPT  # the module whose structure `params` fill (its own weights are the initial ones)

    def run_params(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i].detach() for k, v in self.params.items()}

    def run_model(self, i: int) -> GPT:
        """A plain GPT holding run i's final weights."""
        model = GPT(self.model.cfg)
        model.load_state_dict(self.run_params(i))
        return model.eval()


# ------------------------------------------------------------------------------------------------ data


def _trim(batch: Batch) -> Batch:
    """Drop the all-padding columns at the end of a batch (rows were padded to the dataset's longest)."""
    used = (batch.segment_id >= 0).any(0)
    width = int(used.nonzero().max()) + 1 if used.any() else 1
    if width == batch.tokens.shape[1]:
        return batch
    return Batch(**{k: v[:, :width] for k, v in vars(batch).items() if k != "layout"}, layout=batch.layout)


class TrainingData:
    """A dataset laid out once; `global_batch(step)` cuts the step's samples out cheaply."""

    def __init__(self, conversations, layout: str, global_batch: int, seed: int, max_len: int,
                 row_len: int | None = None):
        self.layout, self.global_batch, self.max_len = layout, global_batch, max_len
        self.row_len = row_len or max_len
        self.rendered = [render(c) for c in conversations]
        if layout == "packed":
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
        if self.layout == "packed":
            return packed_layout([self.rendered[i] for i in idx], self.row_len)
        return _trim(self.full.select(idx))


# ------------------------------------------------------------------------------------------------ optimizer


class StackedOptimizer:
    """AdamW or SGD over stacked parameters (leading run axis), with one learning rate per run.

    Every operation is elementwise, so run s's slice follows exactly the update it would get alone."""

    def __init__(self, params: dict[str, torch.Tensor], lrs: torch.Tensor, cfg: TrainConfig):
        self.params, self.cfg, self.t = params, cfg, 0
        self.lrs = lrs
        self.state = {k: (torch.zeros_like(p), torch.zeros_like(p)) for k, p in params.items()}

    def _lr(self, p: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        scale = 1 - (1 - cfg.lr_decay) * (self.t - 1) / max(cfg.steps - 1, 1)  # linear decay, 1 -> lr_decay
        return scale * self.lrs.view(-1, *([1] * (p.dim() - 1)))  # (S, 1, ...) broadcast over the parameter

    @torch.no_grad()
    def step(self) -> None:
        cfg = self.cfg
        self.t += 1
        b1, b2 = cfg.betas
        for k, p in self.params.items():
            g, lr = p.grad, self._lr(p)
            if cfg.optimizer == "sgd":
                p.sub_(lr * g)
                continue
            m, v = self.state[k]
            if cfg.weight_decay and p.dim() >= 3:  # decoupled decay on matrices only (stacked: 1 + 2 dims)
                p.mul_(1 - lr * cfg.weight_decay)
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(cfg.eps)
            p.sub_(lr * (m / (1 - b1**self.t)) / denom)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None


# ------------------------------------------------------------------------------------------------ model


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (S, N, in) @ weight (S, out, in)^T + bias (S, out) -> (S, N, out): one batched matmul for all runs."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = F.layer_norm(x, x.shape[-1:]) * weight[:, None, :]
    return y + bias[:, None, :] if bias is not None else y


def grouped_forward(cfg: GPTConfig, params: dict[str, torch.Tensor], idx: torch.Tensor,
                    targets: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                    positions: torch.Tensor | None = None, return_logits: bool = True):
    """`GPT.forward` for S models at once, with stacked parameters (name -> (S, ...)).

    The same maths as model.py, written with batched matmuls over the leading run axis (a "grouped" model):
    on a CPU this is much faster than vmap over functional_call. Returns logits (S, B, T, V) and the
    unreduced per-token loss (S, B, T) (None without targets). Dropout is not supported (the toy uses 0).
    return_logits=False (with targets): logits None, and the output layer runs on the target positions only
    (0 loss elsewhere), which saves its work on prompts and padding during training."""
    P = params
    S, (B, T), C, nh = P["wte.weight"].shape[0], idx.shape, cfg.d_model, cfg.n_head
    if T > cfg.context_len:
        raise ValueError(f"sequence length {T} exceeds context_len {cfg.context_len}")
    pos = positions if positions is not None else torch.arange(T).expand(B, T)
    x = (P["wte.weight"][:, idx] + P["wpe.weight"][:, pos]).reshape(S, B * T, C)  # (S, B*T, C)
    if attn_mask is not None:
        mask = attn_mask.view(B, 1, T, T) | torch.eye(T, dtype=torch.bool)  # every query sees itself
        mask = mask.expand(S, B, 1, T, T).reshape(S * B, 1, T, T)
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        h = _layer_norm(x, P[p + "ln_1.weight"], P.get(p + "ln_1.bias"))
        q, k, v = _linear(h, P[p + "attn.c_attn.weight"], P.get(p + "attn.c_attn.bias")).split(C, dim=2)
        q, k, v = (t.reshape(S * B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))  # (S*B, nh, T, hs)
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(S, B * T, C)
        x = x + _linear(y, P[p + "attn.c_proj.weight"], P.get(p + "attn.c_proj.bias"))
        h = _layer_norm(x, P[p + "ln_2.weight"], P.get(p + "ln_2.bias"))
        h = F.gelu(_linear(h, P[p + "mlp.c_fc.weight"], P.get(p + "mlp.c_fc.bias")))
        x = x + _linear(h, P[p + "mlp.c_proj.weight"], P.get(p + "mlp.c_proj.bias"))
    x = _layer_norm(x, P["ln_f.weight"], P.get("ln_f.bias"))
    if targets is not None and not return_logits:  # output layer and loss on the target positions only
        flat = targets.reshape(-1)
        keep = (flat != IGNORE_INDEX).nonzero().squeeze(1)
        kept = torch.bmm(x[:, keep], P["wte.weight"].transpose(1, 2))  # (S, n, V)
        kept_loss = F.cross_entropy(kept.flatten(0, 1), flat[keep].repeat(S), reduction="none").view(S, -1)
        return None, x.new_zeros(S, B * T).index_copy(1, keep, kept_loss).view(S, B, T)
    logits = torch.bmm(x, P["wte.weight"].transpose(1, 2))
    logits = logits.view(S, B, T, -1)  # (S, B, T, V), lm_head tied to wte as in model.py
    if targets is None:
        return logits, None
    loss = F.cross_entropy(logits.flatten(0, 2), targets.expand(S, B, T).flatten(), ignore_index=IGNORE_INDEX,
                           reduction="none")
    return logits, loss.view(S, B, T)


def length_groups(batch: Batch, slot_cost: int = 256) -> list[torch.Tensor]:
    """Split a batch's rows into at most two groups by length when that saves more padded token slots than
    `slot_cost` (the price of a second forward). Rows never interact, so per-token losses are unchanged."""
    lengths = (batch.segment_id >= 0).sum(1)
    order = torch.argsort(lengths, stable=True)
    ordered = lengths[order]
    n = len(order)
    best, cut = n * int(ordered[-1]), n
    for i in range(1, n):  # rows order[:i] padded to ordered[i-1], the rest to ordered[-1]
        cost = i * int(ordered[i - 1]) + (n - i) * int(ordered[-1]) + slot_cost
        if cost < best:
            best, cut = cost, i
    if cut == n:
        return [torch.arange(n)]
    return [order[:cut].sort().values, order[cut:].sort().values]


def stacked_forward(model: GPT, params: dict[str, torch.Tensor], batch: Batch, return_logits: bool = True):
    """Logits (S, B, T-1, V) (None if not return_logits) and per-token losses on the batch grid (S, B, T) of every
    run in `params`."""
    logits, loss = grouped_forward(model.cfg, params, **batch.model_inputs(), return_logits=return_logits)
    return logits, F.pad(loss, (1, 0))


def _init_params(cfg: TrainConfig, n_runs: int) -> tuple[GPT, dict[str, torch.Tensor]]:
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model)
    params, _ = stack_module_state([model] * n_runs)  # every run starts from the same initial weights
    return model, {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


# ------------------------------------------------------------------------------------------------ metrics


def distinct_rows(batch: Batch) -> tuple[Batch, torch.Tensor]:
    """The batch's distinct rows and, per row, the index of its distinct row: rows with the same tokens, positions,
    segments and loss mask have the same losses, so evaluate `distinct` once and read `values[:, inverse]`."""
    key = torch.cat([batch.tokens, batch.position, batch.segment_id, batch.loss_mask.long()], 1).long()
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    n = len(inverse)
    first = torch.full((int(inverse.max()) + 1 if n else 0,), n).scatter_reduce(0, inverse, torch.arange(n), "amin")
    return batch.select(first), inverse


def heldout_metrics(model: GPT, params, batch: Batch, edges=LENGTH_BUCKETS) -> dict[tuple[str, str | None], torch.Tensor]:
    """Token-mean loss and next-token accuracy on a fixed batch, overall and per response-length bucket
    (the assistant turn's loss-token count). Each value is an (S,) tensor."""
    mask = batch.loss_mask
    turn_len = torch.zeros_like(batch.turn_id)
    ids = batch.turn_id[mask]
    turn_len[mask] = torch.bincount(ids)[ids] if ids.numel() else ids
    distinct, inverse = distinct_rows(batch)  # repeated chats are evaluated once
    loss = torch.zeros((len(next(iter(params.values()))), *distinct.loss_mask.shape))
    correct = torch.zeros(loss.shape, dtype=torch.bool)
    with torch.no_grad():
        for rows in length_groups(distinct):
            part = _trim(distinct.select(rows))
            logits, part_loss = stacked_forward(model, params, part)
            T = part.tokens.shape[1]
            loss[:, rows, :T] = part_loss
            correct[:, rows, 1:T] = logits.argmax(-1) == part.tokens[None, :, 1:]
    loss, correct = loss[:, inverse], correct[:, inverse]
    out = {}
    groups = [("all", mask)] + [(label, mask & (turn_len > lo) & (turn_len <= hi))
                                for label, lo, hi in zip(length_bucket_labels(edges), edges[:-1], edges[1:])]
    for label, m in groups:
        if not m.any():
            continue
        n = m.sum()
        bucket = None if label == "all" else label
        out[("heldout_loss", bucket)] = (loss * m).sum((1, 2)).double() / n
        out[("heldout_accuracy", bucket)] = (correct & m).sum((1, 2)).double() / n
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
    (e.g. P("L") at the branch). Returns a callable for `train(task_metrics=...)`."""
    batch = make_layout(probes, layout)
    if layout == "split":  # keep the row of each conversation's last turn
        last = [int(rows[-1]) for rows in pd.Series(range(len(batch.tokens))).groupby(
            batch.conversation_id[:, 0].numpy()).apply(list)]
        batch = batch.select(last)
    pos = first_reply_position(batch, turn)
    batch = _trim(batch.select(torch.arange(len(pos))))
    width = int(pos.max()) + 1  # only the prompts are needed (causal: what follows them cannot matter)
    column = torch.arange(width)[None]
    batch = Batch(**{k: v[:, :width] for k, v in vars(batch).items() if k not in ("layout", "tokens", "loss_mask")},
                  tokens=torch.where(column < pos[:, None], batch.tokens[:, :width], PAD),
                  loss_mask=column == pos[:, None], layout=batch.layout)  # the mask marks the probed position
    batch, inverse = distinct_rows(batch)  # a repeated prompt is evaluated once
    pos = batch.loss_mask.int().argmax(1)

    def metric(model: GPT, params) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            logits, _ = stacked_forward(model, params, batch)  # (S, B, T-1, V): index t-1 predicts token t
        probs = logits[:, torch.arange(len(pos)), pos - 1].softmax(-1)[..., token]  # (S, distinct prompts)
        return {name: probs[:, inverse].double().mean(1)}

    return metric


# ------------------------------------------------------------------------------------------------ the loop


def train(
    conversations: Sequence,
    runs: Sequence[Run | str] = ("token-mean",),
    config: TrainConfig = TrainConfig(),
    *,
    heldout: Sequence | None = None,
    task_metrics: Callable | Sequence[Callable] = (),
    labels: dict | None = None,
    data: TrainingData | None = None,
) -> TrainResult:
    """Train one model per run on the same data; return the tidy history and the final weights.

    conversations: chats.Conversation list (the training set; its order is shuffled by config.seed).
    runs: Run objects or scheme names (global normalization).
    heldout: conversations for the fixed held-out token-mean loss / accuracy (overall and per length bucket).
    task_metrics: callables `(model, params) -> {metric: (S,) tensor}`, evaluated with the held-out metrics,
        e.g. `token_probability_metric(probes, ord("L"), "p_long")`.
    labels: extra constant columns for the history (e.g. {"seed": 3}).
    data: a prepared TrainingData (to reuse its layout across trainings with the same global batch and seed).

    History metrics: `objective` (sum of w·l over the step, what the scheme reports; every step),
    `train_token_loss` (token-mean loss of the step's global batch; every step), `heldout_loss`,
    `heldout_accuracy` (bucket = response-length bucket, or empty for all tokens) and the task metrics
    (every eval_every steps and at the last step).
    """
    runs = [r if isinstance(r, Run) else Run(r) for r in runs]
    if not runs:
        raise ValueError("need at least one run")
    cfg = config
    data = data or TrainingData(conversations, cfg.layout, cfg.global_batch, cfg.seed, cfg.model.context_len + 1,
                                cfg.row_len)
    if data.global_batch != cfg.global_batch:
        raise ValueError(f"data was prepared for a global batch of {data.global_batch}, config needs {cfg.global_batch}")
    heldout_batch = make_layout(heldout, "multiturn", max_len=cfg.model.context_len + 1) if heldout else None
    task_metrics = [task_metrics] if callable(task_metrics) else list(task_metrics)

    if cfg.model.dropout:
        raise ValueError("train() runs the grouped model, which has no dropout: use GPTConfig(dropout=0)")
    S, R, K = len(runs), cfg.ranks, cfg.grad_accum
    model, params = _init_params(cfg, S)
    model.train()
    optimizer = StackedOptimizer(params, torch.tensor([r.lr or cfg.lr for r in runs]), cfg)
    step_rows: list[tuple[int, str, str | None, torch.Tensor]] = []

    def evaluate(step: int) -> None:
        model.eval()
        found = {}
        if heldout_batch is not None:
            found.update(heldout_metrics(model, params, heldout_batch))
        for fn in task_metrics:
            found.update({(name, None): v for name, v in fn(model, params).items()})
        for (name, bucket), values in found.items():
            step_rows.append((step, name, bucket, values.detach().double()))
        model.train()

    for step in tqdm(range(cfg.steps), desc="train", disable=not cfg.progress, leave=False):
        batch = data.global_batch_at(step)
        weights = torch.stack([  # (S, G, T): w = dJ/dl of every run, DDP's 1/R included
            effective_weights(batch, r.scheme, ranks=R, micro_batches=r.micro_batches or K,
                              normalization=r.normalization)[0] for r in runs]).float()
        objective = torch.zeros(S, dtype=torch.float64)
        token_loss_sum = torch.zeros(S, dtype=torch.float64)
        for mb in micro_batch_plan(batch.tokens.shape[0], R, K):  # real GA: one backward per micro-batch
            for rows in length_groups(batch.select(list(mb.rows))) if mb.rows else ():
                rows = torch.tensor(mb.rows)[rows]  # short and long rows run separately: less padding
                part = _trim(batch.select(rows))
                _, losses = stacked_forward(model, params, part, return_logits=False)  # (S, rows, T_part)
                per_run = (weights[:, rows, : part.tokens.shape[1]] * losses).sum((1, 2))  # (S,)
                per_run.sum().backward()  # runs are independent: d(sum)/d(params_s) = d(loss_s)/d(params_s)
                objective += per_run.detach().double()
                token_loss_sum += (losses.detach() * part.loss_mask).sum((1, 2)).double()
        optimizer.step()
        optimizer.zero_grad()
        step_rows.append((step, "objective", None, objective))
        step_rows.append((step, "train_token_loss", None, token_loss_sum / max(int(batch.loss_mask.sum()), 1)))
        if (step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1:
            evaluate(step + 1)

    history = _history(step_rows, runs, cfg, labels or {})
    return TrainResult(history, runs, cfg, {k: v.detach() for k, v in params.items()}, model.eval())


def _history(step_rows, runs: list[Run], cfg: TrainConfig, labels: dict) -> pd.DataFrame:
    S = len(runs)
    k_of = [r.micro_batches or cfg.grad_accum for r in runs]
    steps = np.repeat([r[0] for r in step_rows], S)
    metrics = np.repeat([r[1] for r in step_rows], S)
    buckets = np.repeat(np.array([r[2] for r in step_rows], dtype=object), S)
    values = torch.stack([r[3] for r in step_rows]).numpy().reshape(-1) if step_rows else np.zeros(0)
    run_index = np.tile(np.arange(S), len(step_rows))
    frame = pd.DataFrame({
        "seed": labels.get("seed", cfg.seed),
        "run": np.array([r.label for r in runs], dtype=object)[run_index],
        "scheme": np.array([r.scheme.label for r in runs], dtype=object)[run_index],
        "normalization": np.array([r.normalization for r in runs], dtype=object)[run_index],
        "layout": cfg.layout,
        "micro_batch_size": np.array([cfg.global_batch // (cfg.ranks * ks) for ks in k_of])[run_index],
        "grad_accum": np.array(k_of)[run_index],
        "ranks": cfg.ranks, "optimizer": cfg.optimizer,
        "lr": np.array([r.lr or cfg.lr for r in runs])[run_index],
        "step": steps, "metric": metrics, "bucket": buckets, "value": values,
    })
    for key, value in labels.items():
        frame[key] = value
    return frame[HISTORY_COLUMNS + [c for c in frame.columns if c not in HISTORY_COLUMNS]]


def final_metric(history: pd.DataFrame, metric: str, last_fraction: float = 0.25) -> pd.Series:
    """Per run: `metric` averaged over the evaluations in the last `last_fraction` of training."""
    rows = history[(history.metric == metric) & history.bucket.isna()]
    cutoff = rows.step.max() * (1 - last_fraction)
    return rows[rows.step >= cutoff].groupby("run", sort=False).value.mean()


def relative_distance(params: dict[str, torch.Tensor], i: int, ref: dict[str, torch.Tensor], j: int = 0) -> float:
    """‖W_i − W_ref‖ / ‖W_ref‖ over all parameters (stacked dicts, runs i and j)."""
    num = sum(float(((params[k][i] - ref[k][j]).double() ** 2).sum()) for k in ref)
    den = sum(float((ref[k][j].double() ** 2).sum()) for k in ref)
    return math.sqrt(num / den)
