"""Gradient noise against response length, and the bias and variance of each scheme's mini-batch step (E8).

ΔL Normalization (He et al., arXiv 2509.07558) models the gradient g_i of sample i's summed token loss as
Var(g_i) ≈ V·n_i (n_i loss tokens, token gradients roughly uncorrelated), so the per-sample mean g_i / n_i has
variance V / n_i. Everything here works on the Gram matrix K_ij = <g_i, g_j> of per-sample gradients
(`gradients.per_sample_gradients`, torch.func): any step Σ_i x_i g_i has ‖Σ x_i g_i‖² = xᵀKx, so the noise of
thousands of random mini-batches costs n×n arithmetic instead of thousands of backward passes.

- `sample_gram`: K and n_i of a batch of single-turn samples.
- `variance_by_length`: per length bucket, the total variance E‖g − E g‖² of g_i and of g_i / n_i, and
  `loglog_slope` fits their slopes against n (predicted +1 and −1).
- `draw_minibatches` + `minibatch_steps`: per scheme, over random mini-batches drawn from the pool: the bias of the mean step against
  the scheme's own full-pool step, the relative variance E‖ĝ − Eĝ‖² / ‖Eĝ‖², and the cosine of the mean step to
  the sequence-level objective E_i[g_i] (the target ΔL says it estimates without bias).
- `predicted_relative_variance`: what the noise model predicts from the lengths alone, for a signal per token
  (E[g_i] = n_i μ, supervised copying) or per sequence (E[g_i] = μ, one reward per response).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .gradients import per_sample_gradients
from .layouts import Batch
from .reductions import Scheme, as_scheme, token_weights

LENGTH_EDGES = (1, 3, 5, 8, 12, 18, 27, 40, 60)  # loss tokens per bucket: (lo, hi], about ×1.5 apart
SIGNALS = ("per-token", "per-sequence")


def sample_gram(model, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(n, n) float64 Gram matrix of the per-sample gradients of a batch of single-turn rows, and each row's
    loss-token count n_i (rows in batch order)."""
    if not bool((batch.loss_mask.any(1)).all()):
        raise ValueError("every row needs at least one loss token")
    grads, ids = per_sample_gradients(model, batch)
    if len(ids) != batch.tokens.shape[0]:
        raise ValueError("sample_gram needs one sample per row (single-turn multiturn layout)")
    g = grads.double()
    return (g @ g.T).numpy(), batch.loss_mask.sum(1).numpy().astype(float)


def _total_variance(gram: np.ndarray, scale: np.ndarray) -> float:
    """Unbiased E‖v − mean v‖² of the vectors v_i = scale_i g_i, from their Gram matrix."""
    k = gram * np.outer(scale, scale)
    m = len(scale)
    return float((np.trace(k) / m - k.sum() / m**2) * m / (m - 1))


def variance_by_length(gram: np.ndarray, lengths: np.ndarray, edges=LENGTH_EDGES, min_samples: int = 4) -> pd.DataFrame:
    """One row per length bucket with >= min_samples samples: mean length, samples, total variance of the
    summed gradient g_i (`var_sum`) and of the per-sample mean g_i / n_i (`var_mean`)."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        idx = np.flatnonzero((lengths > lo) & (lengths <= hi))
        if len(idx) < min_samples:
            continue
        sub, n = gram[np.ix_(idx, idx)], lengths[idx]
        rows.append(dict(bucket=f"{lo + 1}–{hi}", length=float(n.mean()), samples=len(idx),
                         var_sum=_total_variance(sub, np.ones(len(idx))), var_mean=_total_variance(sub, 1 / n)))
    return pd.DataFrame(rows)


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y against log x."""
    x, y = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(x, y, 1)[0])


def sample_weights(batch: Batch, scheme) -> np.ndarray:
    """(rows,) weight x_i each single-turn row's summed gradient gets under a scheme (its per-token weight)."""
    w = token_weights(batch, scheme)
    return (w.sum(1) / batch.loss_mask.sum(1).clamp(min=1)).numpy()


def weights_by_length(pool: Batch, schemes) -> pd.DataFrame:
    """Per scheme and response length: a token's share of the pool's total weight relative to token-mean's (the
    weight map's shape, scale removed: delta-l a lies on length-power 1 − a, between seq-mean-token-mean ∝ 1/n
    and token-mean, flat)."""
    lengths = pool.loss_mask.sum(1).numpy()
    rows = []
    for scheme in map(as_scheme, schemes):
        x = sample_weights(pool, scheme)
        ratio = x / (x * lengths).sum() * lengths.sum()
        frame = pd.DataFrame(dict(length=lengths, ratio=ratio)).groupby("length", as_index=False).ratio.mean()
        rows.append(frame.assign(scheme=scheme.label))
    return pd.concat(rows, ignore_index=True)


@dataclass
class MiniBatches:
    """Random mini-batches of a pool of single-turn rows and every scheme's sample weights on them."""

    lengths: np.ndarray  # (n,) loss tokens of each pool row
    draws: np.ndarray  # (n_batches, B) rows of each mini-batch (drawn without replacement)
    weights: dict[str, np.ndarray]  # scheme label -> (n_batches, B) weights x_i in each mini-batch
    full: dict[str, np.ndarray]  # scheme label -> (n,) weights of the same scheme on the whole pool


def draw_minibatches(pool: Batch, schemes, batch_size: int = 16, n_batches: int = 2000, seed: int = 0) -> MiniBatches:
    n = pool.tokens.shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size}: must be between 1 and the pool's {n} rows")
    rng = np.random.default_rng(seed)
    draws = np.stack([rng.choice(n, batch_size, replace=False) for _ in range(n_batches)])
    schemes = [as_scheme(s) for s in schemes]
    lengths = pool.loss_mask.sum(1).numpy().astype(float)
    weights = {s.label: _closed_form_weights(s, lengths[draws]) for s in schemes}
    for s in schemes:  # any other scheme (or an empty row): token_weights on every mini-batch
        if weights[s.label] is None:
            weights[s.label] = np.stack([sample_weights(pool.select(idx), s) for idx in draws])
    full = {s.label: sample_weights(pool, s) for s in schemes}
    return MiniBatches(lengths, draws, weights, full)


def _closed_form_weights(scheme, n: np.ndarray) -> np.ndarray | None:
    """(n_batches, B) sample weights x_i of the plain token-mean, seq-mean-token-mean and delta-l schemes
    straight from the rows' lengths n (n_batches, B): 1 / Σ_j n_j, 1 / (B n_i) and n_i^-a / Σ_j n_j^-a (what
    `sample_weights` gives on each mini-batch, without building one). None for any other scheme or an empty row."""
    if (n < 1).any() or scheme not in (Scheme("token-mean"), Scheme("seq-mean-token-mean"),
                                       Scheme("delta-l", delta_l_alpha=scheme.delta_l_alpha)):
        return None
    if scheme.name == "token-mean":
        return np.broadcast_to(1 / n.sum(1, keepdims=True), n.shape).copy()
    if scheme.name == "seq-mean-token-mean":
        return 1 / (n.shape[1] * n)
    log_power = -scheme.delta_l_alpha * np.log(n)
    power = np.exp(log_power - log_power.max(1, keepdims=True))  # the largest power is 1: no overflow
    return power / power.sum(1, keepdims=True)


def predicted_relative_variance(batches: MiniBatches, signal: str) -> pd.DataFrame:
    """What the noise model predicts from the lengths alone (no gradients): token gradients independent with
    variance V each (Var(g_i) = V n_i) and E[g_i] = n_i μ (signal "per-token") or μ ("per-sequence"). A step
    Σ x_i g_i then has noise variance V · noise, noise = E[Σ x_i² n_i], mean s·μ with s = Σ x_i n_i (or Σ x_i),
    and relative variance (V / ‖μ‖²) · token_noise + scale_spread, with token_noise = noise / E[s]² and
    scale_spread = Var(s) / E[s]² (the step's length changing from batch to batch)."""
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; choose one of {', '.join(SIGNALS)}")
    n = batches.lengths[batches.draws]  # (n_batches, B)
    rows = []
    for label, x in batches.weights.items():
        noise = (x**2 * n).sum(1)
        scale = (x * n).sum(1) if signal == "per-token" else x.sum(1)
        rows.append(dict(scheme=label, noise=noise.mean(), token_noise=noise.mean() / scale.mean() ** 2,
                         scale_spread=scale.var() / scale.mean() ** 2))
    return pd.DataFrame(rows)


def minibatch_steps(gram: np.ndarray, batches: MiniBatches) -> pd.DataFrame:
    """Bias and variance of each scheme's mini-batch step against the same scheme on the whole pool.

    Columns: scheme, variance E‖ĝ − E ĝ‖², bias ‖E ĝ − g_pool‖ / ‖g_pool‖, mc_error (that bias's Monte-Carlo error,
    √(Var / n_batches) / ‖g_pool‖), relative_variance E‖ĝ − E ĝ‖² / ‖E ĝ‖², and cosine_to_sequence_mean (of E ĝ
    to E_i[g_i], the sequence-level gradient ΔL estimates)."""
    n, (n_batches, _) = len(gram), batches.draws.shape
    blocks = gram[batches.draws[:, :, None], batches.draws[:, None, :]]  # (n_batches, B, B)
    sequence_mean = np.full(n, 1 / n)
    norm = lambda x: math.sqrt(max(float(x @ gram @ x), 0.0))
    rows = []
    for label, x in batches.weights.items():
        mean = np.zeros(n)
        np.add.at(mean, batches.draws, x / n_batches)
        second = float(np.einsum("bi,bij,bj->", x, blocks, x)) / n_batches
        variance = max(second - norm(mean) ** 2, 0.0)
        full = batches.full[label]
        rows.append(dict(scheme=label, variance=variance, bias=norm(mean - full) / norm(full),
                         mc_error=math.sqrt(variance / n_batches) / norm(full),
                         relative_variance=variance / norm(mean) ** 2,
                         cosine_to_sequence_mean=float(mean @ gram @ sequence_mean) / (norm(mean) * norm(sequence_mean))))
    return pd.DataFrame(rows)
