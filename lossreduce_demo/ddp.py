"""The data-parallel step, on its own: what one rank runs for one optimizer step under DDP.

Each rank takes its contiguous shard of the global batch (`reductions.Plan.deal`), splits it into K
micro-batches, and runs backward on sum(w * l) per micro-batch, under DDP's `no_sync()` for all but the last, so
DDP all-reduces the accumulated gradient once and divides it by R.

- `global`: before backward the ranks all-reduce (SUM) their `BatchStats` (4 numbers: loss tokens, samples,
  turns, sum n_i^alpha) and every micro-batch is scaled by R to undo DDP's mean (transformers, verl do the
  same). Result: exactly the single-process full-batch gradient.
- `local`: each micro-batch normalised by its own counts, times 1/K (the naive `loss / grad_accum`).
- `rank`: each rank counts over its own K micro-batches but does not all-reduce (transformers with
  `average_tokens_across_devices=False`).

Processes, experiments and the command line live in `lossreduce_demo.distributed`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .layouts import Batch, token_losses
from .reductions import (
    BatchStats,
    Plan,
    Scheme,
    batch_stats,
    micro_batch_weights,
    power_exponent,
    resolve_l_max,
    with_length_ref,
)


def all_reduce(values, op, device) -> list[float]:
    """A few numbers summed (or maxed) over every rank, in float64."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def global_l_max(shard: Batch, scheme: Scheme, device) -> Scheme:
    """seq-mean-token-sum-norm's L_max (when not a given constant) as the MAX over ranks of each shard's
    longest sample: the same as resolve_l_max on the global batch, for both normalisations. Likewise
    length-power's reference length (the longest sample, or for alpha < 0 the shortest, as -MAX of -n)."""
    if power_exponent(scheme) is not None and scheme.length_ref is None:  # length-power, delta-l
        sign = 1.0 if power_exponent(scheme) >= 0 else -1.0
        mine = sign * with_length_ref(shard, scheme).length_ref if shard.loss_mask.any() else -math.inf
        (ref,) = all_reduce([mine], dist.ReduceOp.MAX, device)
        return replace(scheme, length_ref=sign * ref if math.isfinite(ref) else 1.0)
    if scheme.name != "seq-mean-token-sum-norm" or scheme.l_max is not None or scheme.l_max_scope != "batch":
        return scheme
    (l_max,) = all_reduce([resolve_l_max(shard, scheme).l_max], dist.ReduceOp.MAX, device)
    return replace(scheme, l_max=l_max)


def global_stats(shard: Batch, scheme: Scheme, device) -> BatchStats:
    """The fix: all-reduce (SUM) the shard's additive counts, so every rank divides by the global batch's."""
    return BatchStats(*all_reduce(batch_stats(shard, scheme).as_tuple(), dist.ReduceOp.SUM, device))


def ddp_backward(ddp: DDP, batch: Batch, scheme: Scheme, plan: Plan, device) -> float:
    """This rank's share of one optimizer step: its K micro-batches, no_sync on all but the last. Afterwards every
    rank holds DDP's averaged gradient. `batch` is the global batch; returns this rank's weighted loss."""
    rank, ranks = dist.get_rank(), dist.get_world_size()
    if plan.ranks != ranks:
        raise ValueError(f"plan.ranks={plan.ranks} but the process group has {ranks} ranks")
    mine = [mb for mb in plan.deal(batch.tokens.shape[0]) if mb.rank == rank]
    shard = batch.select([i for mb in mine for i in mb.rows]).to(device)
    scheme = global_l_max(shard, scheme, device)
    if plan.normalization == "rank":  # the rank's own window: its own length-power reference length
        scheme = with_length_ref(shard, scheme)
    stats = {"global": lambda: global_stats(shard, scheme, device), "rank": lambda: batch_stats(shard, scheme),
             "local": lambda: None}[plan.normalization]()  # rank: the shard's own counts; local: each micro-batch's
    total = 0.0
    for mb in mine:
        micro = batch.select(list(mb.rows)).to(device)
        w = micro_batch_weights(micro, scheme, plan, stats)  # × R under global: undoes DDP's mean over ranks
        with contextlib.nullcontext() if mb.step == plan.micro_batches - 1 else ddp.no_sync():
            loss = (w.to(next(ddp.parameters()).dtype) * token_losses(ddp, micro)).sum()
            loss.backward()  # DDP all-reduces (mean over ranks) on the last micro-batch only
        total += float(loss.detach())
    return total


def wrap_ddp(model) -> DDP:
    """DDP over this process group; on a GPU, pinned to this rank's device."""
    device = next(model.parameters()).device
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
