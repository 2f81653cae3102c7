"""Notebook 04's "Train" button: the tiny GPT learns the E1 branch chats under several schemes at once.

`train_branch(...)` is what the button runs (and what a notebook cell can run without it): one `train.train` call
with one run per scheme on the same data, then P("L") at the branch per run against its prediction
(`predicted_p_long`, stated before training) and the held-out loss per reply length. `TrainingApp` wraps it in
ipywidgets: scheme choice, long fraction, steps, a Train button, a tqdm bar while it trains, figures after.
Nothing trains until the click. At the default size (100 steps, 512 chats) a click takes ~3–12 s on a 2-core CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from math import comb

import numpy as np
import pandas as pd

from . import plots, synth
from .config import pick
from .layouts import multiturn_layout
from .model import set_torch_threads
from .reductions import Scheme, effective_weights
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
    """P("L") that minimises the run's expected weighted cross-entropy at the branch token.

    The branch logit's expected gradient vanishes at p* = E[Σ_long w] / E[Σ_all w], w the weight of each reply's
    first token. The weights come from `reductions.effective_weights` on every composition of a normalisation
    unit (the global batch, or one micro-batch under local normalization) with k ~ Bin(unit, f) long replies,
    so batch-dependent denominators (token-mean's N) are exact: token-mean at batch 16 gives 0.162 for f = 0.2,
    seq-mean-token-mean (f/60)/(f/60 + (1−f)/5) = 0.0204, token-sum f."""
    if not 0 <= long_fraction <= 1:
        raise ValueError(f"long_fraction={long_fraction!r}: must be in [0, 1]")
    k_mb = run.micro_batches or 1
    unit = batch_size // k_mb if run.normalization == "local" else batch_size
    top = bottom = 0.0
    for k in range(unit + 1):
        prob = comb(unit, k) * long_fraction**k * (1 - long_fraction) ** (unit - k)
        if prob == 0:
            continue
        convs = synth.make_branch_chats(unit, long_fraction=0.0)[k:] + synth.make_branch_chats(k, long_fraction=1.0)
        batch = multiturn_layout(convs)
        w, _, _ = effective_weights(batch, run.scheme)
        first = batch.loss_mask.float().argmax(1)  # (unit,) position of each reply's first token
        branch_w = w[np.arange(unit), first].numpy()
        top += prob * branch_w[unit - k:].sum()
        bottom += prob * branch_w.sum()
    return float(top / bottom)


@dataclass
class BranchRun:
    result: TrainResult
    long_fraction: float  # measured in the training set (predictions use it)
    table: pd.DataFrame  # one row per run: run, scheme, normalization, predicted, measured P("L")
    seconds: float


def app_config(steps: int | None = None, seed: int = 0, progress: bool = True) -> TrainConfig:
    """Adam at 1e-2 decaying to 5e-4: P("L") settles near its optimum in ~100 steps (24 in fast mode)."""
    return TrainConfig(steps=steps or pick(100, 24), micro_batch_size=BATCH, lr=1e-2, lr_decay=0.05,
                       eval_every=pick(5, 4), seed=seed, progress=progress)


def train_branch(runs=DEFAULT_RUNS, long_fraction: float = 0.2, steps: int | None = None, seed: int = 0,
                 progress: bool = True) -> BranchRun:
    """Train one tiny GPT per run (names of RUNS or Run objects) on the branch chats; measure P("L")."""
    set_torch_threads()
    runs = [RUNS[r] if isinstance(r, str) else r for r in runs]
    if not runs:
        raise ValueError("choose at least one scheme")
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


class TrainingApp:
    """Schemes, long fraction and steps, a Train button, and an Output that shows the result after training.

    `.train()` is the button's callback (usable from code); `.state` holds the last BranchRun's table."""

    def __init__(self, runs=DEFAULT_RUNS, long_fraction: float = 0.2, steps: int | None = None, seed: int = 0):
        import ipywidgets as W

        style = {"description_width": "initial"}
        self.seed = seed
        self.runs = W.SelectMultiple(options=list(RUNS), value=tuple(runs), rows=len(RUNS), description="schemes",
                                     style=style, layout=W.Layout(width="420px"))
        self.long_fraction = W.FloatSlider(value=long_fraction, min=0.05, max=0.5, step=0.05, style=style,
                                           description="long fraction", continuous_update=False)
        self.steps = W.IntSlider(value=steps or pick(100, 24), min=4, max=400, step=4, style=style,
                                 description="optimizer steps", continuous_update=False)
        self.button = W.Button(description="Train", icon="play", button_style="primary",
                               tooltip="train one tiny GPT per chosen scheme on the branch chats")
        self.status = W.Label("Nothing trains until you click Train.")
        self.output = W.Output()
        self.state: dict = {}
        self.figures: dict = {}
        self.button.on_click(lambda _: self.train())
        self.widget = W.VBox([W.HBox([self.runs, W.VBox([self.long_fraction, self.steps])]),
                              W.HBox([self.button, self.status]), self.output])

    def train(self) -> BranchRun | None:
        from IPython.display import clear_output, display

        self.button.disabled = True
        chosen, f, steps = list(self.runs.value), self.long_fraction.value, self.steps.value
        self.status.value = f"training {len(chosen)} models for {steps} steps…"
        try:
            with self.output:
                clear_output()
                try:
                    run = train_branch(chosen, long_fraction=f, steps=steps, seed=self.seed)
                except ValueError as error:  # e.g. no scheme chosen: say so, keep no stale figures
                    self.state, self.figures = {"message": str(error)}, {}
                    self.status.value = f"⚠ {error}"
                    return None
                self.state, self.figures = {"table": run.table, "seconds": run.seconds, "message": ""}, figures(run)
                clear_output(wait=True)
                for fig in self.figures.values():
                    display(fig)
            self.status.value = f"trained in {run.seconds:.1f} s: click again after changing a setting"
            return run
        finally:
            self.button.disabled = False

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
