"""What notebook 04's Train button runs: the tiny GPT learns the E1 branch chats under several schemes.

`train_branch(...)` (also usable from a notebook cell without the button): one `train.train` call with one run
per scheme on the same data, then P("L") at the branch per run against its prediction
(`experiments.sft.predicted_p_long`, stated before training) and the held-out loss per reply length. The widget
itself is `widgets.TrainingApp`. At the default size (100 steps, 512 chats) a click takes ~5–15 s on a 2-core CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import plots, synth
from .config import pick, set_torch_threads
from .experiments.sft import normalization_unit
from .experiments.sft import predicted_p_long as predicted_p_long_of_scheme
from .reductions import Scheme
from .train import Run, TrainConfig, TrainResult, final_metric, token_probability_metric, train

P_LONG_TOKEN = ord(synth.BRANCH_LONG[0])  # "L": the first reply token decides the branch
RUNS = {  # what the app offers; labels are the run names in the history
    "token-mean": Run("token-mean", name="token-mean"),
    "seq-mean-token-mean": Run("seq-mean-token-mean", name="seq-mean-token-mean"),
    "length-power α=½": Run(Scheme("length-power", alpha=0.5), name="length-power α=½"),
    "token-sum": Run("token-sum", name="token-sum"),
    "token-mean (naive GA, micro-batch 1)": Run("token-mean", "local", micro_batches=16,
                                                 name="token-mean (naive GA, micro-batch 1)"),
}
DEFAULT_RUNS = ("token-mean", "seq-mean-token-mean", "length-power α=½", "token-sum")
BATCH = 16  # samples per optimizer step


def predicted_p_long(run: Run, long_fraction: float, batch_size: int = BATCH) -> float:
    """P("L") the run should learn at the branch (`experiments.sft.predicted_p_long` for its normalisation unit)."""
    return predicted_p_long_of_scheme(run.scheme, long_fraction, normalization_unit(run, batch_size))


@dataclass
class BranchRun:
    result: TrainResult
    long_fraction: float  # measured in the training set (predictions use it)
    table: pd.DataFrame  # one row per run: run, scheme, normalization, predicted, measured P("L")
    seconds: float


def app_config(steps: int | None = None, seed: int = 0, progress: bool = True) -> TrainConfig:
    """Adam at 1e-2 decaying to 5e-4: P("L") settles near its optimum in ~100 steps (24 in fast mode)."""
    return TrainConfig(steps=pick(100, 24) if steps is None else steps, micro_batch_size=BATCH, lr=1e-2, lr_decay=0.05,
                       eval_every=pick(5, 4), seed=seed, progress=progress)


def train_branch(runs=DEFAULT_RUNS, long_fraction: float = 0.2, steps: int | None = None, seed: int = 0,
                 progress: bool = True) -> BranchRun:
    """Train one tiny GPT per run (names of RUNS or Run objects) on the branch chats; measure P("L").
    steps=None: the default (100, fast mode 24)."""
    set_torch_threads()
    unknown = [r for r in runs if isinstance(r, str) and r not in RUNS]
    if unknown:
        raise ValueError(f"unknown run {unknown[0]!r}; choose among {', '.join(map(repr, RUNS))} or pass Run objects")
    runs = [RUNS[r] if isinstance(r, str) else r for r in runs]
    if not runs:
        raise ValueError("choose at least one scheme")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps={steps!r}: must be an integer >= 1 (or None for the default)")
    if not 0 <= long_fraction <= 1:
        raise ValueError(f"long_fraction={long_fraction!r}: must be in [0, 1]")
    started = time.time()
    train_set = synth.make_branch_chats(pick(512, 128), long_fraction=long_fraction, seed=1000 + seed)
    probes = synth.make_branch_chats(pick(32, 8), seed=2000 + seed)  # prompts only: the reply is not read
    heldout = synth.make_branch_chats(pick(64, 32), long_fraction=0.5, seed=3000 + seed)  # both lengths well measured
    f = float(np.mean([synth.is_long_branch(c) for c in train_set]))
    predicted = {r.label: predicted_p_long(r, f) for r in runs}  # stated before training
    metric = token_probability_metric(probes, P_LONG_TOKEN, "p_long")
    result = train(train_set, runs, app_config(steps, seed, progress), heldout=heldout, task_metrics=metric)
    measured = final_metric(result.history, "p_long")
    table = pd.DataFrame([dict(run=r.label, scheme=r.scheme.label, normalization=r.normalization,
                               predicted=predicted[r.label], measured=float(measured[r.label])) for r in runs])
    return BranchRun(result, f, table, time.time() - started)


def bucket_losses(history: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """Held-out token-mean loss per (reply-length bucket, run) at `step` (default: the last evaluation)."""
    rows = history[(history.metric == "heldout_loss") & history.bucket.notna()]
    step = rows.step.max() if step is None else step
    return rows[rows.step == step].pivot_table(index="bucket", columns="run", values="value", sort=False)


def figures(run: BranchRun) -> dict:
    """{name: Figure}: P("L") per run (measured vs predicted) and the held-out loss by reply length."""
    table = run.table.assign(metric="p_long", value=run.table.measured)
    return {"p_long": plots.p_long_figure(table, f'Learned P("L") at the branch (long fraction {run.long_fraction:.2f})'),
            "loss_by_length": plots.loss_by_length_figure(run.result.history)}
