"""Reduction schemes as per-token weight maps (docs/science.md §2–3).

Every scheme gives token t of sample i the weight  w = numerator(i, t) / denominator(batch):

    scheme                    numerator        denominator
    token-mean                1                N      loss tokens in the batch
    seq-mean-token-mean       1 / n_i          B_g    samples with >= 1 loss token
    seq-mean-token-sum        1                B_g
    seq-mean-token-sum-norm   1 / L_max        B_g
    token-sum                 1                1
    turn-mean                 1 / n_turn       T_g    assistant turns with >= 1 loss token
    length-power (alpha)      n_i^(alpha-1)    sum_j n_j^alpha

and the loss is sum(w * l). Numerators only need the token's own sample or turn, which never straddles
micro-batches; denominators are sums over the batch (`BatchStats`). Normalising each micro-batch by its *own*
denominator ("local") is the gradient-accumulation / data-parallel bug; using the global batch's ("global")
is the fix, and gives exactly the full-batch gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .layouts import Batch

SCHEMES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
    "token-sum",
    "turn-mean",
    "length-power",
)
NORMALIZATIONS = ("global", "local")
WEIGHT_DTYPE = torch.float64


@dataclass(frozen=True)
class Scheme:
    """A reduction scheme; `alpha` is used by length-power, `l_max` by seq-mean-token-sum-norm
    (None: the longest sample's loss-token count in the global batch, fixed before micro-batching)."""

    name: str = "token-mean"
    alpha: float = 0.5
    l_max: float | None = None

    def __post_init__(self):
        if self.name not in SCHEMES:
            raise ValueError(f"unknown scheme {self.name!r}; choose one of {', '.join(SCHEMES)}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)):
            raise ValueError(f"alpha={self.alpha!r}: must be a finite number")
        if self.l_max is not None and not (math.isfinite(self.l_max) and self.l_max > 0):
            raise ValueError(f"l_max={self.l_max!r}: must be a number > 0")

    @property
    def label(self) -> str:
        if self.name == "length-power":
            return f"length-power α={self.alpha:g}"
        if self.name == "seq-mean-token-sum-norm" and self.l_max is not None:
            return f"{self.name} L={self.l_max:g}"
        return self.name


def as_scheme(scheme) -> Scheme:
    return scheme if isinstance(scheme, Scheme) else Scheme(str(scheme))


@dataclass(frozen=True)
class BatchStats:
    """The additive counts every denominator is built from (all-reduce them with a SUM across ranks)."""

    n_tokens: float  # N: loss tokens
    n_samples: float  # B_g: samples with at least one loss token
    n_turns: float  # T_g: assistant turns with at least one loss token
    power_sum: float  # sum_i n_i^alpha over samples with loss tokens (length-power)

    def __add__(self, other: BatchStats) -> BatchStats:
        return BatchStats(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.n_tokens, self.n_samples, self.n_turns, self.power_sum)


def _counts(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Loss tokens per id (ids >= 0 where mask), as a dense vector indexed by id."""
    ids = ids[mask]
    if ids.numel() == 0:
        return torch.zeros(0, dtype=WEIGHT_DTYPE, device=mask.device)
    return torch.bincount(ids, minlength=int(ids.max()) + 1).to(WEIGHT_DTYPE)


def batch_stats(batch: Batch, scheme: Scheme) -> BatchStats:
    mask = batch.loss_mask
    per_sample, per_turn = _counts(batch.sample_id, mask), _counts(batch.turn_id, mask)
    present = per_sample[per_sample > 0]
    return BatchStats(
        n_tokens=float(mask.sum()),
        n_samples=float(present.numel()),
        n_turns=float((per_turn > 0).sum()),
        power_sum=float((present**scheme.alpha).sum()) if scheme.name == "length-power" else 0.0,
    )


def resolve_l_max(batch: Batch, scheme: Scheme) -> Scheme:
    """Fix L_max of seq-mean-token-sum-norm to the longest sample of this (global) batch when not given."""
    if scheme.name != "seq-mean-token-sum-norm" or scheme.l_max is not None:
        return scheme
    longest = float(_counts(batch.sample_id, batch.loss_mask).max()) if batch.loss_mask.any() else 1.0
    return replace(scheme, l_max=longest)


def token_numerators(batch: Batch, scheme: Scheme) -> torch.Tensor:
    """(B, T) numerator of every token's weight; 0 off the loss mask."""
    mask = batch.loss_mask
    out = torch.zeros(mask.shape, dtype=WEIGHT_DTYPE, device=mask.device)
    if not mask.any():
        return out
    name = scheme.name
    if name in ("token-mean", "seq-mean-token-sum", "token-sum"):
        out[mask] = 1.0
    elif name == "seq-mean-token-sum-norm":
        if scheme.l_max is None:
            raise ValueError("seq-mean-token-sum-norm needs l_max: call resolve_l_max on the global batch first")
        out[mask] = 1.0 / scheme.l_max
    elif name == "turn-mean":
        out[mask] = 1.0 / _counts(batch.turn_id, mask)[batch.turn_id[mask]]
    else:  # seq-mean-token-mean, length-power
        n_i = _counts(batch.sample_id, mask)[batch.sample_id[mask]]
        out[mask] = 1.0 / n_i if name == "seq-mean-token-mean" else n_i ** (scheme.alpha - 1.0)
    return out


def denominator(scheme: Scheme, stats: BatchStats) -> float:
    name = scheme.name
    if name == "token-mean":
        return stats.n_tokens
    if name == "token-sum":
        return 1.0
    if name == "turn-mean":
        return stats.n_turns
    if name == "length-power":
        return stats.power_sum
    return stats.n_samples


def token_weights(batch: Batch, scheme, stats: BatchStats | None = None) -> torch.Tensor:
    """(B, T) weights w with loss = sum(w * l). `stats` defaults to the batch's own counts.

    A batch without loss tokens gets all-zero weights (never NaN)."""
    scheme = resolve_l_max(batch, as_scheme(scheme))
    stats = stats if stats is not None else batch_stats(batch, scheme)
    denom = denominator(scheme, stats)
    numer = token_numerators(batch, scheme)
    return numer / denom if denom > 0 else numer * 0.0


# ---------------------------------------------------------------- micro-batch plans (GA × DP)


@dataclass(frozen=True)
class MicroBatch:
    rank: int
    step: int  # accumulation step k on that rank
    rows: tuple[int, ...]


def micro_batch_plan(n_rows: int, ranks: int = 1, micro_batches: int = 1) -> list[MicroBatch]:
    """Deal rows in order: rank r gets the r-th contiguous shard, split into K contiguous micro-batches
    (sizes differ by at most one when rows do not divide evenly; a micro-batch may be empty)."""
    if ranks < 1 or micro_batches < 1:
        raise ValueError(f"ranks={ranks}, micro_batches={micro_batches}: both must be >= 1")
    plan = []
    for r, shard in enumerate(np.array_split(np.arange(n_rows), ranks)):
        for k, rows in enumerate(np.array_split(shard, micro_batches)):
            plan.append(MicroBatch(r, k, tuple(int(i) for i in rows)))
    return plan


def micro_batch_coefficient(normalization: str, ranks: int, micro_batches: int) -> float:
    """What a micro-batch's loss is multiplied by before backward, so that summing gradients over K steps
    and DDP's mean over R ranks give the intended objective."""
    if normalization == "global":
        return float(ranks)  # global denominators already divide by the whole batch; undo DDP's 1/R
    if normalization == "local":
        return 1.0 / micro_batches  # the usual `loss / grad_accum_steps`
    raise ValueError(f"unknown normalization {normalization!r}; choose global or local")


def micro_batch_weights(micro: Batch, scheme: Scheme, normalization: str, global_stats: BatchStats,
                        ranks: int, micro_batches: int) -> torch.Tensor:
    """The weights a micro-batch's loss applies to its own tokens, coefficient included (before DDP's 1/R)."""
    stats = global_stats if normalization == "global" else batch_stats(micro, scheme)
    return token_weights(micro, scheme, stats) * micro_batch_coefficient(normalization, ranks, micro_batches)


def effective_weights(batch: Batch, scheme, *, ranks: int = 1, micro_batches: int = 1,
                      normalization: str = "global") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights the optimiser effectively applies, w = dJ/dl, with J = (1/R) sum_r sum_k c_rk * loss_rk.

    Returns (weights, rank, micro_batch): three (B, T) tensors, the last two telling where each row went."""
    scheme = resolve_l_max(batch, as_scheme(scheme))
    global_stats = batch_stats(batch, scheme)
    weights = torch.zeros(batch.tokens.shape, dtype=WEIGHT_DTYPE)
    rank_of = torch.full(batch.tokens.shape, -1, dtype=torch.long)
    step_of = torch.full(batch.tokens.shape, -1, dtype=torch.long)
    for mb in micro_batch_plan(batch.tokens.shape[0], ranks, micro_batches):
        if not mb.rows:
            continue
        rows = list(mb.rows)
        w = micro_batch_weights(batch.select(rows), scheme, normalization, global_stats, ranks, micro_batches)
        weights[rows] = w / ranks  # DDP averages gradients over ranks
        rank_of[rows], step_of[rows] = mb.rank, mb.step
    return weights, rank_of, step_of
