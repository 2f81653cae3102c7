"""What notebook 04's Train app runs: the tiny GPT learns a branch task under several schemes.

A `BranchSetting` is the whole response-length distribution and how it is trained on: the short and long reply
lengths, the long fraction, the copy turns before the branch, the format (split / multiturn / packed), the GA steps K
and the normalisation. `predictions(schemes, setting)` gives each scheme's P("L") at the branch in closed form
(`experiments.sft.predicted_p_long`, no training: the app shows it live); `train_branch(schemes, setting)` trains
one tiny GPT per scheme on the same data (one `train.train` call) and measures P("L") beside the prediction, with
the held-out loss per reply length. The widget itself is `widgets.TrainingApp`. The models have one transformer
block (`BRANCH_MODEL`): the branch task needs no depth, and it halves a click. At the default setting (3 schemes,
100 steps, 512 chats) a click costs ~6 s of CPU on one thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import pandas as pd

from . import plots, synth
from .config import pick, set_torch_threads
from .experiments.sft import predicted_p_long
from .layouts import LAYOUTS
from .model import TINY
from .reductions import Scheme
from .tokenizer import render
from .train import Run, TrainConfig, TrainResult, final_metric, token_probability_metric, train

P_LONG_TOKEN = ord(synth.BRANCH_LONG[0])  # "L": the first reply token decides the branch
SCHEMES = {  # what the app offers: label -> scheme
    "token-mean": Scheme("token-mean"),
    "seq-mean-token-mean": Scheme("seq-mean-token-mean"),
    "turn-mean": Scheme("turn-mean"),
    "length-power α=½": Scheme("length-power", alpha=0.5),
    "token-sum": Scheme("token-sum"),
}
DEFAULT_SCHEMES = ("token-mean", "seq-mean-token-mean", "token-sum")  # a click at the defaults: ≤ 15 s
BRANCH_MODEL = replace(TINY, n_layer=1)  # one block learns the branch as well as two (P("L") as close), at half the cost
CONVERSATIONS_PER_STEP = 16
GA_STEPS = (1, 2, 4, 8, 16)  # the divisors of CONVERSATIONS_PER_STEP: every micro-batch holds whole samples
NORMALIZATIONS = ("global", "local")


@dataclass(frozen=True)
class BranchSetting:
    """The branch task's length distribution and training plan. Each step trains on 16 conversations: 16 rows in
    multiturn/packed, 16 × (context_turns + 1) turn-rows in split (format A), dealt into `grad_accum` micro-batches;
    `global` normalisation divides every micro-batch by the step's counts, `local` by its own (`loss / K`)."""

    short_len: int = synth.BRANCH_SHORT_LEN  # loss tokens of a short reply ("S…" + <|eot|>)
    long_len: int = synth.BRANCH_LONG_LEN  # loss tokens of a long reply ("L…" + <|eot|>)
    long_fraction: float = 0.2
    context_turns: int = 0  # copy turns (5 loss tokens each) before the branch
    layout: str = "multiturn"  # split | multiturn | packed
    grad_accum: int = 1  # K
    normalization: str = "global"  # global | local
    steps: int | None = None  # optimizer steps (None: 100, fast mode 24)

    def __post_init__(self):
        for name, low, high in (("short_len", 2, 100), ("long_len", 2, 100), ("context_turns", 0, 6)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise ValueError(f"{name}={value!r}: must be an integer in [{low}, {high}]")
        if self.long_len < self.short_len:
            raise ValueError(f"long_len={self.long_len} < short_len={self.short_len}: the long reply must not be "
                             "the shorter one")
        f = self.long_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (math.isfinite(f) and 0 <= f <= 1):
            raise ValueError(f"long_fraction={f!r}: must be a number in [0, 1]")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r}: choose one of {', '.join(LAYOUTS)}")
        if self.grad_accum not in GA_STEPS:
            raise ValueError(f"grad_accum={self.grad_accum!r}: choose one of {', '.join(map(str, GA_STEPS))} "
                             f"(micro-batches of whole samples out of {CONVERSATIONS_PER_STEP} conversations)")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={self.normalization!r}: choose one of {', '.join(NORMALIZATIONS)}")
        steps = self.steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
            raise ValueError(f"steps={steps!r}: must be an integer >= 1 (or None for the default)")
        longest = len(render(self.chats(1, seed=0, long_fraction=1.0)[0]).tokens)
        if longest > BRANCH_MODEL.context_len + 1:
            raise ValueError(f"a conversation with {self.context_turns} turn(s) before the branch and a "
                             f"{self.long_len}-token long reply has {longest} tokens; the model reads at most "
                             f"{BRANCH_MODEL.context_len + 1}: shorten the long reply or use fewer turns")

    def chats(self, n: int, seed: int, long_fraction: float | None = None) -> list:
        return synth.make_branch_chats(n, long_fraction=self.long_fraction if long_fraction is None else long_fraction,
                                       context_turns=self.context_turns, short_len=self.short_len,
                                       long_len=self.long_len, seed=seed)

    @property
    def rows_per_step(self) -> int:
        return CONVERSATIONS_PER_STEP * (self.context_turns + 1 if self.layout == "split" else 1)

    @property
    def unit(self) -> int:
        """Rows that share one denominator: the step's (global) or a micro-batch's (local). Packed rows hold
        several conversations: `local` then counts about 16 / K conversations per micro-batch."""
        return self.rows_per_step // (self.grad_accum if self.normalization == "local" else 1)

    def config(self, seed: int = 0, progress: bool = True) -> TrainConfig:
        """Adam at 1e-2 decaying to 5e-4: P("L") settles near its optimum in ~100 steps (24 in fast mode)."""
        steps = pick(100, 24) if self.steps is None else self.steps
        return TrainConfig(steps=steps, model=BRANCH_MODEL, layout=self.layout, micro_batch_size=self.rows_per_step // self.grad_accum,
                           grad_accum=self.grad_accum, lr=1e-2, lr_decay=0.05, eval_every=max(steps // 10, 1),
                           seed=seed, progress=progress)


def _schemes(schemes: Sequence) -> dict[str, Scheme]:
    unknown = [s for s in schemes if isinstance(s, str) and s not in SCHEMES]
    if unknown:
        raise ValueError(f"unknown scheme {unknown[0]!r}; choose among {', '.join(map(repr, SCHEMES))}")
    if not schemes:
        raise ValueError("choose at least one scheme")
    return {s if isinstance(s, str) else s.label: SCHEMES[s] if isinstance(s, str) else s for s in schemes}


def training_set(setting: BranchSetting, seed: int = 0) -> list:
    return setting.chats(pick(512, 128), seed=1000 + seed)


def long_fraction(convs) -> float:
    return float(np.mean([synth.is_long_branch(c) for c in convs]))


def predictions(schemes: Sequence = DEFAULT_SCHEMES, setting: BranchSetting = BranchSetting(),
                long_fraction: float | None = None) -> pd.DataFrame:
    """Closed-form P("L") per scheme for `setting` (at `long_fraction`, default the setting's): no training."""
    f = setting.long_fraction if long_fraction is None else long_fraction
    return pd.DataFrame([dict(run=label, scheme=scheme.label, normalization=setting.normalization,
                              predicted=predicted_p_long(scheme, f, setting.unit, context_turns=setting.context_turns,
                                                         layout=setting.layout, short_len=setting.short_len,
                                                         long_len=setting.long_len))
                         for label, scheme in _schemes(schemes).items()])


class Progress(NamedTuple):
    """Where a `train_branch` call is, after each optimizer step."""

    run: str  # the label of the scheme being trained
    step: int  # its optimizer steps done, 1..steps
    steps: int
    done: int  # optimizer steps done over all runs, 1..total
    total: int
    seconds: float  # since the call began


@dataclass
class BranchRun:
    result: TrainResult
    setting: BranchSetting
    long_fraction: float  # measured in the training set (predictions use it)
    table: pd.DataFrame  # one row per run: run, scheme, normalization, predicted, measured P("L")
    seconds: float


def train_branch(schemes: Sequence = DEFAULT_SCHEMES, setting: BranchSetting = BranchSetting(), seed: int = 0,
                 progress: bool = True, on_step: Callable[[Progress], None] | None = None) -> BranchRun:
    """Train one tiny GPT per scheme (labels of SCHEMES or Scheme objects) on the setting's branch chats and
    measure P("L") against its prediction (stated before training, at the training set's own long fraction).
    on_step(Progress): called after every optimizer step (the app's progress bar and status line)."""
    set_torch_threads()
    chosen = _schemes(schemes)
    started = time.time()
    train_set = training_set(setting, seed)
    probes = setting.chats(pick(32, 8), seed=2000 + seed)  # prompts only: the reply is not read
    heldout = setting.chats(32, seed=3000 + seed, long_fraction=0.5)  # both lengths well measured
    f = long_fraction(train_set)
    table = predictions(schemes, setting, f)  # stated before training
    runs = [Run(scheme, setting.normalization, name=label) for label, scheme in chosen.items()]
    metric = token_probability_metric(probes, P_LONG_TOKEN, "p_long")
    cfg = setting.config(seed, progress)
    total = cfg.steps * len(runs)
    labels = list(chosen)

    def step_done(run: int, step: int) -> None:
        on_step(Progress(labels[run], step + 1, cfg.steps, run * cfg.steps + step + 1, total, time.time() - started))

    callback = None if on_step is None else step_done
    result = train(train_set, runs, cfg, heldout=heldout, task_metrics=metric, on_step=callback)
    measured = final_metric(result.history, "p_long")
    table["measured"] = [float(measured[label]) for label in chosen]
    return BranchRun(result, setting, f, table, time.time() - started)


def bucket_losses(history: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """Held-out token-mean loss per (reply-length bucket, run) at `step` (default: the last evaluation)."""
    rows = history[(history.metric == "heldout_loss") & history.bucket.notna()]
    step = rows.step.max() if step is None else step
    return rows[rows.step == step].pivot_table(index="bucket", columns="run", values="value", sort=False)


def figure_makers(run: BranchRun) -> dict:
    """{name: function making the Figure}: P("L") per run (measured vs predicted) and the held-out loss by reply
    length (the Train app draws and shows them one at a time)."""
    table = run.table.assign(metric="p_long", value=run.table.measured)
    s = run.setting
    title = (f'Learned P("L"): replies {s.short_len}/{s.long_len} tokens, f = {run.long_fraction:.2f}\n'
             f'{s.context_turns} {"turn" if s.context_turns == 1 else "turns"} before, {s.layout}, '
             f'K = {s.grad_accum} {s.normalization}')
    return {"p_long": lambda _: plots.p_long_figure(table, title),
            "loss_by_length": lambda _: plots.loss_by_length_figure(run.result.history)}


def figures(run: BranchRun) -> dict:
    """{name: Figure}: figure_makers' figures, made."""
    return {name: make_figure(None) for name, make_figure in figure_makers(run).items()}
