"""Who moves the weights: per-sample gradients under every reduction scheme (torch.func).

Every scheme's weight is constant within an assistant turn (docs/science.md §2), so one vmap over `grad` gives the
gradient G_u of each turn's own token-loss sum, u = (row, turn), and then any scheme's gradient is a weighted sum
    g_scheme = Σ_u w_u G_u,   sample i's part  g_i = Σ_{u in i} w_u G_u,
with w_u read from `reductions.effective_weights` (GA / DP / local normalization included). One backward per turn
serves all schemes.

Views (tidy DataFrames): each sample's share of the step (`sample_shares`), the cosine of each scheme's gradient
to the global token-mean one (`scheme_cosines`), and the share of the step by response length (`bucket_shares`).
A sample's share is its projection on the total, <g_i, g>/‖g‖², so shares add up to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from .layouts import Batch
from .reductions import FULL_BATCH, LENGTH_BUCKETS, Plan, as_scheme, effective_weights, length_bucket_labels

REFERENCE = "token-mean"  # the global token-mean gradient every scheme is compared with


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def unit_gradients(model, batch: Batch, masks: torch.Tensor, rows: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(U, P) flattened gradients of sum_t masks[u, t] · l[rows[u], t], one per unit, with vmap(grad)."""
    params = _params(model)
    inputs = batch.model_inputs()

    def unit_loss(p, idx, targets, positions, attn, mask):
        one = lambda x: None if x is None else x[None]
        _, loss = functional_call(model, p, args=(), kwargs=dict(idx=one(idx), targets=one(targets),
                                                                 positions=one(positions), attn_mask=one(attn)))
        return (F.pad(loss[0], (1, 0)) * mask).sum()

    attn = inputs["attn_mask"]
    dims = (None, 0, 0, 0, None if attn is None else 0, 0)
    per_unit = vmap(grad(unit_loss), in_dims=dims)
    out = []
    for start in range(0, len(rows), chunk):
        r = rows[start: start + chunk]
        g = per_unit(params, inputs["idx"][r], inputs["targets"][r], inputs["positions"][r],
                     None if attn is None else attn[r], masks[start: start + chunk].to(torch.float32))
        out.append(torch.cat([g[k].reshape(len(r), -1) for k in params], dim=1))
    return torch.cat(out)


def per_sample_gradients(model, batch: Batch) -> tuple[torch.Tensor, np.ndarray]:
    """(n_samples, P) gradient of each sample's own token-loss sum (every loss token weight 1), and sample ids."""
    ids = np.unique(batch.sample_id[batch.loss_mask].numpy())
    masks = torch.stack([(batch.sample_id == i) & batch.loss_mask for i in ids])  # (n, B, T)
    rows = masks.any(2).float().argmax(1)  # a sample never straddles rows
    return unit_gradients(model, batch, masks[torch.arange(len(ids)), rows], rows), ids


@dataclass
class TurnGradients:
    """Per-turn gradients of one batch and the table of turns they belong to."""

    grads: torch.Tensor  # (U, P) float64
    turns: pd.DataFrame  # unit, row, sample, turn, n_tokens, bucket
    batch: Batch

    def weights(self, scheme, plan: Plan = FULL_BATCH) -> np.ndarray:
        """(U,) weight of each turn's tokens under a scheme and micro-batch plan (checked constant within the turn)."""
        w, _, _ = effective_weights(self.batch, scheme, plan)
        out = np.zeros(len(self.turns))
        for u, (row, turn) in enumerate(zip(self.turns.row, self.turns.turn)):
            vals = w[row][(self.batch.turn_id[row] == turn) & self.batch.loss_mask[row]]
            if float(vals.max() - vals.min()) > 1e-12 * float(vals.abs().max()):
                raise ValueError(f"scheme {as_scheme(scheme).label}: weight not constant within turn {turn}")
            out[u] = float(vals[0])
        return out


def turn_gradients(model, batch: Batch) -> TurnGradients:
    """Gradients of every assistant turn's own token-loss sum (one vmap(grad) over turns)."""
    mask = batch.loss_mask
    pairs = sorted({(int(r), int(t)) for r, t in zip(*mask.nonzero(as_tuple=True)) for t in [batch.turn_id[r, t]]})
    rows = torch.tensor([r for r, _ in pairs])
    masks = torch.stack([mask[r] & (batch.turn_id[r] == t) for r, t in pairs])  # (U, T)
    n_tokens = masks.sum(1).numpy()
    edges = LENGTH_BUCKETS
    buckets = pd.cut(n_tokens, bins=list(edges), labels=length_bucket_labels(edges)).astype(str)
    turns = pd.DataFrame(dict(unit=range(len(pairs)), row=rows.numpy(), turn=[t for _, t in pairs],
                              sample=[int(batch.sample_id[r, masks[u].nonzero()[0, 0]]) for u, (r, _) in
                                      enumerate(pairs)],
                              n_tokens=n_tokens, bucket=buckets))
    return TurnGradients(unit_gradients(model, batch, masks, rows).double(), turns, batch)


def _scheme_rows(tg: TurnGradients, schemes, plan: Plan):
    for scheme in schemes:
        scheme = as_scheme(scheme)
        yield scheme, torch.from_numpy(tg.weights(scheme, plan))


def scheme_gradient(tg: TurnGradients, scheme, plan: Plan = FULL_BATCH) -> torch.Tensor:
    """(P,) total gradient of a scheme: Σ_u w_u G_u."""
    return torch.from_numpy(tg.weights(scheme, plan)) @ tg.grads


def sample_shares(tg: TurnGradients, schemes, plan: Plan = FULL_BATCH) -> pd.DataFrame:
    """One row per (scheme, sample): n_tokens, grad_norm ‖g_i‖, share <g_i, g>/‖g‖² (sums to 1 over samples),
    norm_share ‖g_i‖ / Σ_j ‖g_j‖."""
    out = []
    samples = tg.turns.groupby("sample", sort=True)
    for scheme, w in _scheme_rows(tg, schemes, plan):
        contrib = w[:, None] * tg.grads  # (U, P)
        total = contrib.sum(0)
        per_sample = torch.stack([contrib[torch.tensor(g.unit.to_numpy())].sum(0) for _, g in samples])
        norms = per_sample.norm(dim=1)
        share = per_sample @ total / total.dot(total).clamp_min(1e-300)
        for (sample, g), nrm, sh in zip(samples, norms, share):
            out.append(dict(scheme=scheme.label, normalization=plan.normalization, sample=sample,
                            n_tokens=int(g.n_tokens.sum()), grad_norm=float(nrm), share=float(sh),
                            norm_share=float(nrm / norms.sum().clamp_min(1e-300))))
    return pd.DataFrame(out)


def scheme_cosines(tg: TurnGradients, schemes, plan: Plan = FULL_BATCH) -> pd.DataFrame:
    """One row per scheme: cosine of its total gradient to the global token-mean gradient, and its norm."""
    ref = scheme_gradient(tg, REFERENCE)
    out = []
    for scheme, w in _scheme_rows(tg, schemes, plan):
        g = w @ tg.grads
        cos = float(g.dot(ref) / (g.norm() * ref.norm()).clamp_min(1e-300))
        out.append(dict(scheme=scheme.label, normalization=plan.normalization, micro_batches=plan.micro_batches,
                        ranks=plan.ranks, cosine_to_token_mean=cos, grad_norm=float(g.norm())))
    return pd.DataFrame(out)


def bucket_shares(tg: TurnGradients, schemes, plan: Plan = FULL_BATCH) -> pd.DataFrame:
    """One row per (scheme, response-length bucket): share of the step <Σ_{u in bucket} w_u G_u, g>/‖g‖²,
    the bucket's share of loss tokens, and its share of the total weight."""
    out = []
    tokens = tg.turns.groupby("bucket", sort=False).n_tokens.sum()
    for scheme, w in _scheme_rows(tg, schemes, plan):
        total = w @ tg.grads
        proj = (tg.grads @ total) * w / total.dot(total).clamp_min(1e-300)  # (U,) each turn's projection share
        mass = w * torch.tensor(tg.turns.n_tokens.to_numpy(), dtype=torch.float64)
        for bucket in [b for b in length_bucket_labels(LENGTH_BUCKETS) if b in tokens.index]:
            g = tg.turns[tg.turns.bucket == bucket]
            idx = torch.tensor(g.unit.to_numpy().copy())
            out.append(dict(scheme=scheme.label, normalization=plan.normalization, bucket=bucket,
                            n_turns=len(g), token_share=float(tokens[bucket] / tokens.sum()),
                            weight_share=float(mass[idx].sum() / mass.sum()), gradient_share=float(proj[idx].sum())))
    return pd.DataFrame(out)
