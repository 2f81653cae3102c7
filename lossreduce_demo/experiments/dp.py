"""E3 of docs/science.md: data parallel in real processes (torch.distributed, gloo, DistributedDataParallel).

Two ranks, rank 0 mostly short replies, rank 1 mostly long. For every scheme, `global` (all-reduce the counts
before backward) and `local` (each rank's own mean) train a few AdamW steps next to single-process training on
the same global batches, same init. All runs of all seeds go through ONE spawn of the two processes.

Prediction (before running), from the core's weight maps alone (`reductions.local_vs_global`):
  global: gradient and weights equal single-process to <= 1e-6 (fp64 here, so what is left is rounding);
  local, weights differ token by token ("shape": token-mean, turn-mean, length-power on skewed data):
      gradient off by > 1e-3 and weights drift > 1e-3 from single-process;
  local, weights a constant multiple s of the right ones ("scale": token-sum, s = 1/R): gradient off by
      exactly |s - 1|, and AdamW, blind to a constant scale up to eps, keeps the weights within 1e-3;
  local, same weights ("exact": seq-mean schemes with equal samples per rank): <= 1e-6.
"""

from __future__ import annotations

import pandas as pd

from ..config import pick
from ..distributed import dp_training, global_batch
from ..reductions import SCHEMES, Plan, local_vs_global
from . import ExperimentResult, tidy

RANKS = 2
LR = 3e-3
TOL_EQUAL = 1e-6  # "equal to single-process"
TOL_VISIBLE = 1e-3  # "visibly different"


def predictions(seeds, steps: int, ranks: int = RANKS, rows_per_rank: int = 8) -> pd.DataFrame:
    """Per (seed, scheme, normalization): what to expect of step 0's gradient and of the last step's weights,
    from the weight maps of the batches the run will see."""
    rows = []
    for seed in seeds:
        batches = [global_batch("skewed", ranks, rows_per_rank, seed, step=s) for s in range(steps)]
        for scheme in SCHEMES:
            relations = [local_vs_global(b, scheme, Plan(ranks)) for b in batches]
            first, scale = relations[0]
            kinds = {kind for kind, _ in relations}
            for norm in ("global", "local"):
                if norm == "global" or first == "exact":
                    grad = ("≤1e-06", lambda v: v <= TOL_EQUAL)
                elif first == "scale":
                    target = abs(scale - 1)
                    grad = (f"={target:.6g}", lambda v, t=target: abs(v - t) <= 1e-6 * t)
                else:
                    grad = (f">{TOL_VISIBLE:g}", lambda v: v > TOL_VISIBLE)
                if norm == "global" or kinds == {"exact"}:
                    weights = ("≤1e-06", lambda v: v <= TOL_EQUAL)
                elif "shape" in kinds:
                    weights = (f">{TOL_VISIBLE:g}", lambda v: v > TOL_VISIBLE)
                else:  # only a constant scale: AdamW normalises it away (up to eps)
                    weights = (f"<{TOL_VISIBLE:g}", lambda v: v < TOL_VISIBLE)
                kind = "exact" if norm == "global" else ("shape" if "shape" in kinds else first)
                rows.append(dict(seed=seed, scheme=scheme, normalization=norm, relation=kind,
                                 grad_predicted=grad[0], grad_check=grad[1],
                                 weight_predicted=weights[0], weight_check=weights[1]))
    return pd.DataFrame(rows)


def run_e3(seeds: int = 3, steps: int | None = None, rows_per_rank: int | None = None) -> ExperimentResult:
    """E3 with `seeds` seeds (model init and data), `steps` AdamW steps (8; fast mode 3), `rows_per_rank`
    conversations per rank and step (8; fast mode 4). fp64, so that only the reduction can make a difference."""
    from ..plots.dp import plot_e3

    steps, rows_per_rank = steps or pick(8, 3), rows_per_rank or pick(8, 4)
    seed_list = tuple(range(seeds))
    expect = predictions(seed_list, steps, RANKS, rows_per_rank).set_index(["seed", "scheme", "normalization"])
    for (seed, scheme, norm), row in expect.iterrows():
        if seed == 0:
            print(f"E3 predicted  {scheme:24s} {norm:6s} ({row.relation}): gradient diff {row.grad_predicted}, "
                  f"weight distance after {steps} steps {row.weight_predicted}")

    runs = dp_training(SCHEMES, ranks=RANKS, steps=steps, seeds=seed_list, rows_per_rank=rows_per_rank, lr=LR,
                       dtype="float64")
    rows = []
    for r in runs.itertuples(index=False):
        e = expect.loc[(r.seed, r.scheme, r.normalization)]
        predicted = passed = pd.NA
        if r.metric == "max_rel_grad_diff":
            predicted, passed = e.grad_predicted, bool(e.grad_check(r.value))
        elif r.step == steps:
            predicted, passed = e.weight_predicted, bool(e.weight_check(r.value))
        rows.append(dict(experiment="e3", seed=r.seed, scheme=r.scheme, normalization=r.normalization,
                         format="multiturn", micro_batch_size=rows_per_rank, grad_accum=r.micro_batches,
                         metric=r.metric, value=r.value, predicted=predicted, passed=passed, step=r.step,
                         ranks=r.ranks, dtype=r.dtype, relation=e.relation))
    table = tidy(rows)
    verdict = verdict_table(table)
    result = ExperimentResult("e3", table, verdict, plot_e3(table))
    print(f"E3: {runs.attrs['wall_s']:.1f} s for {len(SCHEMES) * 2 * seeds} runs of {steps} steps on {RANKS} ranks")
    return result


def verdict_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (metric, scheme, normalization): predicted, the worst seed, passed on every seed."""
    checked = table[table.passed.notna()]
    rows = []
    for (metric, scheme, norm), g in checked.groupby(["metric", "scheme", "normalization"], sort=False):
        pred = g.predicted.iloc[0]
        worst = g.value.min() if str(pred).startswith(">") else g.value.max()
        what = "gradient at step 0" if metric == "max_rel_grad_diff" else f"weights after step {int(g.step.max())}"
        rows.append(dict(check=f"{what} vs single process", metric=metric, scheme=scheme, normalization=norm,
                         relation=g.relation.iloc[0], predicted=pred, measured=float(worst),
                         seeds=len(g), passed=bool(g.passed.astype(bool).all())))
    frame = pd.DataFrame(rows)
    order = {name: i for i, name in enumerate(SCHEMES)}
    return frame.sort_values(["metric", "scheme", "normalization"],
                             key=lambda c: c.map(order) if c.name == "scheme" else c, ignore_index=True)


__all__ = ["run_e3", "predictions", "verdict_table"]
