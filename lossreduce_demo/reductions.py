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
    delta-l (delta_l_alpha)   n_i^(-a)         sum_j n_j^(-a)   (a = delta_l_alpha)

and the loss is sum(w * l). length-power and delta-l compute both with lengths divided by a reference length c (the longest
sample of the normalisation window when the denominator's exponent is >= 0, the shortest otherwise; c cancels), so
the largest power is 1
and no power over- or underflows: every finite alpha gives finite weights that sum to 1 (the log-sum-exp shift,
written with powers). Numerators only need the token's own sample or turn, which never straddles
micro-batches; denominators are sums over a *window* of micro-batches (`BatchStats`):

    normalization   window the counts span                   micro-batch loss × c      weight after DDP's 1/R
    global          the whole step (all ranks, all K steps)  c = R                     numerator / D_step
    rank            this rank's K accumulation steps         c = 1                     numerator / (R · D_rank)
    local           the micro-batch itself                   c = 1/K                   numerator / (K · R · D_rk)

"local" is the gradient-accumulation / data-parallel bug, "global" the fix (exactly the full-batch gradient),
"rank" what a framework does when it counts over its GA window but does not all-reduce the count (transformers
with `average_tokens_across_devices=False`). A global window may also span only `window_steps` consecutive
accumulation steps (TRL's `steps_per_generation`): c = R·S/K. Two more choices live in `Scheme`: whether
samples without loss tokens count in B (`count_empty`) and where L_max comes from (`l_max`, `l_max_scope`).

delta-l is ΔL Normalization (He et al., arXiv 2509.07558): sample i's summed gradient g_i gets the weight
x_i = n_i^-a / sum_j n_j^-a, so sum_i x_i = 1 (unbiased for E[g_i] when that does not depend on length) and, with
Var(g_i) ∝ n_i, a = 1 minimises the variance. Per token it is length-power with alpha = 1 - a times the batch scalar
sum_j n_j^(1-a) / sum_j n_j^-a: at a = 1 seq-mean-token-mean times the batch's harmonic-mean length, at a = 0
exactly seq-mean-token-sum (docs/science.md §6.1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from .errors import OptionError
from .layouts import Batch

SCHEMES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
    "token-sum",
    "turn-mean",
    "length-power",
    "delta-l",
)
NORMALIZATIONS = ("global", "local", "rank")
L_MAX_SCOPES = ("batch", "micro-batch")
WEIGHT_DTYPE = torch.float64


@dataclass(frozen=True)
class Scheme:
    """A reduction scheme; `alpha` is used by length-power, `l_max` by seq-mean-token-sum-norm (None: the longest
    sample's loss-token count, in the global batch fixed before micro-batching, or with
    `l_max_scope="micro-batch"` in each micro-batch: verl's padded response width). `count_empty`: samples
    without any loss token count in B (TRL's `per_token_loss.size(0)`, verl's `global_batch_size`). L_max is a
    token count (>= 1). `length_ref`: length-power's and delta-l's reference length c (None: taken from the batch or
    window). `delta_l_alpha` is delta-l's α (1: its minimum-variance setting, 0: seq-mean-token-sum)."""

    name: str = "token-mean"
    alpha: float = 0.5
    l_max: float | None = None
    l_max_scope: str = "batch"
    count_empty: bool = False
    length_ref: float | None = None
    delta_l_alpha: float = 1.0

    def __post_init__(self):
        if self.name not in SCHEMES:
            raise ValueError(f"unknown scheme {self.name!r}; choose one of {', '.join(SCHEMES)}")
        if isinstance(self.alpha, bool) or not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)):
            raise ValueError(f"alpha={self.alpha!r}: must be a finite number")
        if not (isinstance(self.delta_l_alpha, (int, float)) and math.isfinite(self.delta_l_alpha)):
            raise ValueError(f"delta_l_alpha={self.delta_l_alpha!r}: must be a finite number")
        if self.l_max is not None and not (math.isfinite(self.l_max) and self.l_max >= 1):
            raise ValueError(f"l_max={self.l_max!r}: must be a token count >= 1")
        if self.length_ref is not None and not (math.isfinite(self.length_ref) and self.length_ref >= 1):
            raise ValueError(f"length_ref={self.length_ref!r}: must be a token count >= 1")
        if self.l_max_scope not in L_MAX_SCOPES:
            raise ValueError(f"l_max_scope={self.l_max_scope!r}: choose one of {', '.join(L_MAX_SCOPES)}")

    @property
    def label(self) -> str:
        if self.name == "length-power":
            return f"length-power α={self.alpha:g}"
        if self.name == "delta-l":
            return f"delta-l α={self.delta_l_alpha:g}"
        label = self.name
        if self.name == "seq-mean-token-sum-norm":
            label += f" L={self.l_max:g}" if self.l_max is not None else \
                (" L=longest per micro-batch" if self.l_max_scope == "micro-batch" else "")
        return label + (" (empty samples in B)" if self.count_empty else "")


def as_scheme(scheme) -> Scheme:
    return scheme if isinstance(scheme, Scheme) else Scheme(str(scheme))


@dataclass(frozen=True)
class BatchStats:
    """The additive counts every denominator is built from (all-reduce them with a SUM across ranks)."""

    n_tokens: float  # N: loss tokens
    n_samples: float  # B_g: samples with at least one loss token (every sample with `count_empty`)
    n_turns: float  # T_g: assistant turns with at least one loss token
    power_sum: float  # sum_i (n_i / c)^e over samples with loss tokens (e = power_exponent, c = length_ref)

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
    """The batch's counts. A length-power scheme without `length_ref` takes this batch's own: fix it on the whole
    window first (`with_length_ref`) when the stats of several micro-batches are to be added."""
    if power_exponent(scheme) is not None and scheme.length_ref is None:
        scheme = with_length_ref(batch, scheme)
    mask = batch.loss_mask
    per_sample, per_turn = _counts(batch.sample_id, mask), _counts(batch.turn_id, mask)
    present = per_sample[per_sample > 0]
    samples = batch.sample_id[batch.sample_id >= 0].unique().numel() if scheme.count_empty else present.numel()
    return BatchStats(
        n_tokens=float(mask.sum()),
        n_samples=float(samples),
        n_turns=float((per_turn > 0).sum()),
        power_sum=float(((present / scheme.length_ref) ** power_exponent(scheme)).sum())
        if power_exponent(scheme) is not None else 0.0,
    )


def power_exponent(scheme: Scheme) -> float | None:
    """The exponent e of the denominator sum_j n_j^e: alpha (length-power), -delta_l_alpha (delta-l), else None."""
    if scheme.name == "length-power":
        return scheme.alpha
    if scheme.name == "delta-l":
        return -scheme.delta_l_alpha
    return None


def with_length_ref(batch: Batch, scheme: Scheme) -> Scheme:
    """length-power or delta-l with its reference length taken from `batch` (the longest sample with loss tokens
    when the denominator's exponent is >= 0, the shortest otherwise; 1 without any); other schemes unchanged."""
    exponent = power_exponent(scheme)
    if exponent is None:
        return scheme
    lengths = _counts(batch.sample_id, batch.loss_mask)
    lengths = lengths[lengths > 0]
    ref = float(lengths.max() if exponent >= 0 else lengths.min()) if lengths.numel() else 1.0
    return replace(scheme, length_ref=ref)


def resolve_l_max(batch: Batch, scheme: Scheme) -> Scheme:
    """Fix L_max of seq-mean-token-sum-norm to the longest sample of this batch when not given."""
    if scheme.name != "seq-mean-token-sum-norm" or scheme.l_max is not None:
        return scheme
    longest = float(_counts(batch.sample_id, batch.loss_mask).max()) if batch.loss_mask.any() else 1.0
    return replace(scheme, l_max=longest)


def resolve_step_l_max(batch: Batch, scheme: Scheme) -> Scheme:
    """L_max fixed once for the whole step (`l_max_scope="batch"`); left to each micro-batch otherwise."""
    return resolve_l_max(batch, scheme) if scheme.l_max_scope == "batch" else scheme


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
    elif name == "seq-mean-token-mean":
        out[mask] = 1.0 / _counts(batch.sample_id, mask)[batch.sample_id[mask]]
    else:  # length-power: n^(alpha-1) = (n/c)^(alpha-1) / c * c^alpha, and c^alpha cancels with the denominator's
        if scheme.length_ref is None:
            raise ValueError(f"{name} needs length_ref: call with_length_ref on the window first")
        ref, n_i = scheme.length_ref, _counts(batch.sample_id, mask)[batch.sample_id[mask]]
        if name == "delta-l":  # n^-a = (n/c)^-a * c^-a, and c^-a cancels with the denominator's
            out[mask] = (n_i / ref) ** -scheme.delta_l_alpha
        else:
            out[mask] = (n_i / ref) ** (scheme.alpha - 1.0) / ref
    return out


def denominator(scheme: Scheme, stats: BatchStats) -> float:
    name = scheme.name
    if name == "token-mean":
        return stats.n_tokens
    if name == "token-sum":
        return 1.0
    if name == "turn-mean":
        return stats.n_turns
    if name in ("length-power", "delta-l"):
        return stats.power_sum
    return stats.n_samples


def token_weights(batch: Batch, scheme, stats: BatchStats | None = None) -> torch.Tensor:
    """(B, T) weights w with loss = sum(w * l). `stats` defaults to the batch's own counts.

    A batch without loss tokens gets all-zero weights (never NaN)."""
    scheme = resolve_l_max(batch, as_scheme(scheme))
    if power_exponent(scheme) is not None and scheme.length_ref is None:
        if stats is not None:
            raise ValueError(f"{scheme.name} with given stats needs the length_ref they were counted with: call "
                             "with_length_ref on the whole window first")
        scheme = with_length_ref(batch, scheme)
    stats = stats if stats is not None else batch_stats(batch, scheme)
    denom = denominator(scheme, stats)
    numer = token_numerators(batch, scheme)
    weights = numer / denom if denom > 0 else numer * 0.0
    if not (math.isfinite(denom) and bool(torch.isfinite(weights).all())):
        raise ValueError(f"{scheme.label}: weights are not finite (denominator {denom:g}); this is a bug")
    return weights


# ---------------------------------------------------------------- micro-batch plans (GA × DP)


@dataclass(frozen=True)
class Plan:
    """How one optimizer step's rows are split and normalised: R ranks (data parallel) × K micro-batches per rank
    (gradient accumulation), whose counts each micro-batch divides by (`normalization`: the window table above),
    and for a global count the accumulation steps its window spans (`window_steps` S, default K)."""

    ranks: int = 1
    micro_batches: int = 1
    normalization: str = "global"
    window_steps: int | None = None

    def __post_init__(self):
        for name in ("ranks", "micro_batches", "window_steps"):
            value = getattr(self, name)
            if value is None and name == "window_steps":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise OptionError(f"{name}={value!r}: must be an integer >= 1")
        if self.normalization not in NORMALIZATIONS:
            raise OptionError(f"unknown normalization {self.normalization!r}; choose one of "
                              f"{', '.join(NORMALIZATIONS)}")
        if self.steps % self.micro_batches and self.micro_batches % self.steps:
            raise OptionError(f"window_steps={self.steps}: must divide micro_batches={self.micro_batches} "
                              "or be a multiple of it")

    @property
    def steps(self) -> int:
        """S: the accumulation steps one global count spans (K unless `window_steps` says otherwise)."""
        return self.micro_batches if self.window_steps is None else self.window_steps

    @property
    def coefficient(self) -> float:
        """What a micro-batch's loss is multiplied by before backward, so that summing gradients over K steps
        and DDP's mean over R ranks give the intended objective."""
        if self.normalization == "global":  # global denominators already divide by the window; undo DDP's 1/R
            return float(self.ranks) * self.steps / self.micro_batches
        if self.normalization == "rank":
            return 1.0  # each rank's count over its own GA window, no loss / K (DDP's 1/R stays)
        return 1.0 / self.micro_batches  # local: the usual `loss / grad_accum_steps`

    def deal(self, n_rows: int) -> list[MicroBatch]:
        """Deal rows in order: rank r gets the r-th contiguous shard, split into K contiguous micro-batches
        (max(K, S) when a global window spans several optimizer steps; sizes differ by at most one when rows do
        not divide evenly; a micro-batch may be empty)."""
        plan = []
        for r, shard in enumerate(np.array_split(np.arange(n_rows), self.ranks)):
            for k, rows in enumerate(np.array_split(shard, max(self.micro_batches, self.steps))):
                plan.append(MicroBatch(r, k, tuple(int(i) for i in rows)))
        return plan

    def window(self, mb: MicroBatch) -> tuple:
        """Micro-batches with the same window pool their counts into one denominator."""
        if self.normalization == "global":
            return (mb.step // self.steps,)
        if self.normalization == "rank":
            return (mb.rank, mb.step // self.micro_batches)
        return (mb.rank, mb.step)


FULL_BATCH = Plan()  # one rank, one micro-batch: the whole global batch in one backward


@dataclass(frozen=True)
class MicroBatch:
    rank: int
    step: int  # accumulation step k on that rank
    rows: tuple[int, ...]


def windows(batch: Batch, scheme: Scheme, plan: Plan) -> dict[tuple, tuple[Scheme, BatchStats]]:
    """Every normalisation window of `plan`: the scheme fixed on it (length-power's reference length) and its
    pooled counts (global: what the ranks all-reduce)."""
    rows: dict[tuple, list[int]] = {}
    for mb in plan.deal(batch.tokens.shape[0]):
        if mb.rows:
            rows.setdefault(plan.window(mb), []).extend(mb.rows)
    out = {}
    for key, window_rows in rows.items():
        window = batch if len(window_rows) == batch.tokens.shape[0] else batch.select(window_rows)
        fixed = with_length_ref(window, scheme) if scheme.length_ref is None else scheme
        out[key] = (fixed, batch_stats(window, fixed))
    return out


def micro_batch_weights(micro: Batch, scheme: Scheme, plan: Plan, window: BatchStats | None) -> torch.Tensor:
    """The weights a micro-batch's loss applies to its own tokens, coefficient included (before DDP's 1/R).
    `window`: the pooled counts of its normalisation window (global: the step's, all-reduced; rank: its rank's
    K micro-batches'); local uses the micro-batch's own, and its own length-power reference length."""
    if plan.normalization == "local":
        scheme = with_length_ref(micro, scheme)
    stats = batch_stats(micro, scheme) if plan.normalization == "local" else window
    return token_weights(micro, scheme, stats) * plan.coefficient


def micro_batches(batch: Batch, scheme, plan: Plan = FULL_BATCH) -> Iterator[tuple[MicroBatch, Batch, torch.Tensor]]:
    """Every non-empty micro-batch of `plan` on a global batch: where it goes (MicroBatch: rank, step, rows), its
    rows (without trailing padding) and the weights its loss applies to them: w = dJ/dl with
    J = (1/R) sum_r sum_k c_rk * loss_rk (its window's counts, the coefficient c and DDP's 1/R included)."""
    scheme = resolve_step_l_max(batch, as_scheme(scheme))  # seq-mean-token-sum-norm's L_max: fixed on the step
    pooled = windows(batch, scheme, plan)
    for mb in plan.deal(batch.tokens.shape[0]):
        if mb.rows:
            micro = batch if len(mb.rows) == batch.tokens.shape[0] else batch.select(list(mb.rows)).trimmed()
            fixed, stats = pooled[plan.window(mb)]
            yield mb, micro, micro_batch_weights(micro, fixed, plan, stats) / plan.ranks  # DDP averages ranks


def effective_weights(batch: Batch, scheme, plan: Plan = FULL_BATCH) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights the optimiser effectively applies to every token of a global batch, w = dJ/dl (`micro_batches`).

    With `plan.window_steps` S > K the batch holds S/K optimizer steps (rows dealt into S micro-batches per rank,
    whatever the normalisation; TRL's generation batch) and each token's weight is the one it gets in its own
    step. Returns (weights, rank, micro_batch): three (B, T) tensors, the last two telling where each row went."""
    weights = torch.zeros(batch.tokens.shape, dtype=WEIGHT_DTYPE)
    rank_of = torch.full(batch.tokens.shape, -1, dtype=torch.long)
    step_of = torch.full(batch.tokens.shape, -1, dtype=torch.long)
    for mb, _, w in micro_batches(batch, scheme, plan):
        rows = list(mb.rows)
        weights[rows, : w.shape[1]] = w
        rank_of[rows], step_of[rows] = mb.rank, mb.step
    return weights, rank_of, step_of


def local_vs_global(batch: Batch, scheme, plan: Plan) -> tuple[str, float]:
    """Predict, from the weight maps alone (no training), how `plan`'s normalization (local or rank) relates to
    global under the same ranks and micro-batches: ("exact", 1) same weights; ("scale", s) = s * global
    everywhere, so the gradient is s times the right one (max_rel_grad_diff = |s - 1|; Adam undoes a constant
    scale up to eps); ("shape", nan) the weights differ token by token: a different objective. A global `plan`
    is compared with local."""
    other = "local" if plan.normalization == "global" else plan.normalization
    w_global, _, _ = effective_weights(batch, scheme, replace(plan, normalization="global"))
    w_local, _, _ = effective_weights(batch, scheme, replace(plan, normalization=other))
    top, tol = float(w_global.abs().max()), 1e-12
    if float((w_local - w_global).abs().max()) <= tol * top:
        return "exact", 1.0
    s = float((w_local * w_global).sum() / (w_global * w_global).sum())
    if float((w_local - s * w_global).abs().max()) <= tol * max(top * abs(s), 1e-300):
        return "scale", s
    return "shape", float("nan")


# ---------------------------------------------------------------- response-length buckets

LENGTH_BUCKETS = (0, 8, 16, 32, 64, float("inf"))  # loss tokens per sample (or turn); bucket i is (e_i, e_i+1]


def length_bucket_labels(edges=LENGTH_BUCKETS) -> list[str]:
    """Labels 1-8, 9-16, ..., >64: the names of the suite's response-length buckets (plots, training, gradients)."""
    return [f"{int(lo) + 1}-{int(hi)}" if hi != float("inf") else f">{int(lo)}" for lo, hi in zip(edges[:-1], edges[1:])]
