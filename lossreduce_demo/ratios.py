"""Importance ratios of off-policy RL per token and per sequence, and which tokens each clipping rule silences (E10).

After the first of several updates on one batch, the policy π_θ differs from the one that sampled it, π_old.
Every response token has a log-ratio δ_t = log π_θ(o_t) − log π_old(o_t) (ρ_t = e^δ_t). Three ways to use it:

- token-level PPO / GRPO / DAPO: per token −min(ρ_t A, clip(ρ_t, 1−ε_low, 1+ε_high) A), aggregated by a weight map;
- GSPO (arXiv 2507.18071): one ratio per response, s_i = exp(mean_t δ_t) = (π_θ(o_i)/π_old(o_i))^(1/|o_i|),
  per response −min(s_i A_i, clip(s_i, 1−ε_low, 1+ε_high) A_i), averaged over responses (its gradient puts
  s_i A_i / |o_i| on every token of response i: seq-mean-token-mean's weights times s_i A_i);
- CISPO (MiniMax-M1, arXiv 2506.13585): per token −sg(clip(ρ_t, 1−ε_low, 1+ε_high)) A log π_θ(o_t), aggregated by
  token-mean (the paper divides by Σ_i |o_i|); the clipped ratio is a constant weight, so no token loses its
  gradient (the paper sets no lower bound: ε_low = ∞ here by default).

All tensors are (B, T) on the policy's target grid with a boolean `mask` of response tokens; advantages are (B,).
"""

from __future__ import annotations

import math

import pandas as pd
import torch

RULES = ("token", "gspo", "cispo")


def log_ratios(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """δ_t = log π_θ − log π_old on response tokens, 0 elsewhere."""
    return torch.where(mask, logp - old_logp, 0.0)


def sequence_log_ratio(delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) log of the unnormalised sequence ratio Π_t ρ_t = Σ_t δ_t."""
    return (delta * mask).sum(1)


def gspo_log_ratio(delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) log of GSPO's length-normalised ratio s_i: the mean of δ_t over the response."""
    return sequence_log_ratio(delta, mask) / mask.sum(1).clamp(min=1)


def _check(eps_low: float, eps_high: float) -> None:
    if not (eps_low > 0 and eps_high > 0 and not math.isnan(eps_low) and not math.isnan(eps_high)):
        raise ValueError(f"clip range eps_low={eps_low!r}, eps_high={eps_high!r}: both must be > 0")


def clipped_surrogate(logp, old_logp, advantage, eps_low: float = 0.2, eps_high: float = 0.2) -> torch.Tensor:
    """PPO's per-token loss −min(ρ A, clip(ρ, 1−ε_low, 1+ε_high) A), ρ = exp(logp − old_logp), unreduced;
    `advantage` broadcasts against logp (one per response: shape (B, 1))."""
    _check(eps_low, eps_high)
    rho = torch.exp(logp - old_logp)
    return -torch.minimum(rho * advantage, rho.clamp(1 - eps_low, 1 + eps_high) * advantage)


def token_ppo_loss(logp, old_logp, advantage, mask, eps_low: float = 0.2, eps_high: float = 0.2) -> torch.Tensor:
    """(B, T) per-token clipped surrogate, advantage (B,), 0 off the mask (aggregate with a weight map)."""
    return torch.where(mask, clipped_surrogate(logp, old_logp, advantage[:, None], eps_low, eps_high), 0.0)


def gspo_loss(logp, old_logp, advantage, mask, eps_low: float = 3e-4, eps_high: float = 4e-4) -> torch.Tensor:
    """GSPO's objective as a scalar: mean over responses of −min(s A, clip(s) A), s = exp(mean δ)."""
    _check(eps_low, eps_high)
    s = torch.exp(gspo_log_ratio(log_ratios(logp, old_logp, mask), mask))
    per_response = -torch.minimum(s * advantage, s.clamp(1 - eps_low, 1 + eps_high) * advantage)
    present = mask.any(1)
    return per_response[present].sum() / present.sum().clamp(min=1)


def cispo_loss(logp, old_logp, advantage, mask, eps_high: float = 0.2, eps_low: float = math.inf) -> torch.Tensor:
    """(B, T) per-token CISPO loss −sg(clip(ρ, 1−ε_low, 1+ε_high)) A log π_θ, 0 off the mask."""
    _check(eps_low, eps_high)
    weight = torch.exp(logp - old_logp).detach().clamp(max(1 - eps_low, 0.0), 1 + eps_high)
    return torch.where(mask, -weight * advantage[:, None] * logp, 0.0)


def zero_gradient_tokens(rule: str, logp, old_logp, advantage, mask, eps_low: float, eps_high: float) -> torch.Tensor:
    """(B, T) bool: response tokens whose gradient the rule sets exactly to zero (A = 0 counts too).

    token: (A > 0 and ρ_t > 1+ε_high) or (A < 0 and ρ_t < 1−ε_low); gspo: every token of response i when
    (A_i > 0 and s_i > 1+ε_high) or (A_i < 0 and s_i < 1−ε_low); cispo: only tokens with A = 0."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    a = advantage[:, None].expand_as(mask)
    delta = log_ratios(logp, old_logp, mask)
    if rule == "token":
        ratio = torch.exp(delta)
    elif rule == "gspo":
        ratio = torch.exp(gspo_log_ratio(delta, mask))[:, None].expand_as(mask)
    else:
        return mask & (a == 0)
    clipped = ((a > 0) & (ratio > 1 + eps_high)) | ((a < 0) & (ratio < 1 - eps_low))
    return mask & (clipped | (a == 0))


CLIP_RANGES = {"token": (0.2, 0.2), "gspo": (3e-4, 4e-4), "cispo": (math.inf, 0.2)}  # (ε_low, ε_high) per rule


def update_statistics(logp, old_logp, advantage, mask, clip_ranges=CLIP_RANGES, spread_mask=None) -> dict:
    """What one off-policy update sees, per response: its length, the log of its sequence ratio Σ_t δ_t and of
    GSPO's mean_t δ_t, the sum and sum of squares of its token log-ratios (all over `spread_mask`, default `mask`:
    the tokens whose spread is measured), and for every rule the number of its tokens (of `mask`) with zero
    gradient. Plain lists of floats (one per response), for a tidy table."""
    spread_mask = mask if spread_mask is None else spread_mask
    delta = log_ratios(logp, old_logp, spread_mask)
    lengths = mask.sum(1)
    out = dict(length=lengths.tolist(), advantage=advantage.tolist(),
               spread_tokens=spread_mask.sum(1).tolist(),
               seq_log_ratio=sequence_log_ratio(delta, spread_mask).tolist(),
               gspo_log_ratio=gspo_log_ratio(delta, spread_mask).tolist(),
               token_sum=(delta * spread_mask).sum(1).tolist(), token_square_sum=(delta**2 * spread_mask).sum(1).tolist())
    for rule, (low, high) in clip_ranges.items():
        out[f"zero_{rule}"] = zero_gradient_tokens(rule, logp, old_logp, advantage, mask, low, high).sum(1).tolist()
    return out


def statistics_by_length(responses) -> pd.DataFrame:
    """Per response length, over the responses of one or more updates (a DataFrame of update_statistics rows):
    the variance of the token log-ratios, of the sequence log-ratio and of GSPO's, and per rule the fraction of
    tokens of responses with a non-zero advantage whose gradient is zero."""
    frame = pd.DataFrame(responses)
    rows = []
    for length, g in frame.groupby("length"):
        tokens, spread = g.length.sum(), g.spread_tokens.sum()
        token_mean = g.token_sum.sum() / spread
        row = dict(length=int(length), responses=len(g), tokens=int(tokens),
                   var_token_log_ratio=float(g.token_square_sum.sum() / spread - token_mean**2),
                   var_seq_log_ratio=float(g.seq_log_ratio.var()), var_gspo_log_ratio=float(g.gspo_log_ratio.var()))
        moving = g[g.advantage != 0]
        for column in [c for c in frame.columns if c.startswith("zero_")]:
            row[f"{column}_fraction"] = float(moving[column].sum() / max(moving.length.sum(), 1))
        rows.append(row)
    return pd.DataFrame(rows)
