"""docs/science.md E1, E2, E4, E5: the tiny GPT trained under different reductions (supervised fine-tuning).

Each `run_eN(seeds)` states its prediction before training (closed form, or an exact sum over the binomial
composition of a batch), trains, and returns an ExperimentResult: a tidy table (experiments.COLUMNS), a verdict
(what, predicted, measured, passed) and a figure. In fast mode (LOSSREDUCE_FAST=1) runs are shrunk to seconds and
pass/fail is not judged (passed = NA, and the verdict says so): short runs have not converged.
"""

from __future__ import annotations

import dataclasses
import math
import time
from math import comb

import numpy as np
import pandas as pd

from .. import synth
from ..config import fast_mode, pick
from ..model import set_torch_threads
from ..reductions import Scheme
from ..train import (
    Run,
    TrainConfig,
    TrainingData,
    final_metric,
    relative_distance,
    token_probability_metric,
    train,
)
from . import ExperimentResult, tidy

L_SHORT = len(synth.BRANCH_SHORT) + 1  # 5 loss tokens (reply + <|eot|>)
L_LONG = len(synth.BRANCH_LONG) + 1  # 60
P_LONG_TOKEN = ord("L")
P_SHORT_TOKEN = ord("S")
E1_STEPS, E1_LR_DECAY = 600, 0.01  # E1 measures a converged optimum (see run_e1); fast mode: 12 steps, constant lr
SPLITS = ((16, 1), (8, 2), (4, 4), (2, 8), (1, 16))  # (micro-batch size, grad accum) of E2


# ------------------------------------------------------------------------------------------ predictions


def p_long_closed_form(f: float, weight_long: float, weight_short: float) -> float:
    """Optimum of the branch's weighted cross-entropy when a long reply's branch token gets `weight_long` and a
    short one's `weight_short` (denominators that do not depend on the batch): p* = f·wL / (f·wL + (1−f)·wS)."""
    return f * weight_long / (f * weight_long + (1 - f) * weight_short)


def p_long_token_mean(f: float, unit: int, *, branch_share: float = 1.0, context_tokens: int = 0,
                      other_row_tokens: int = 0) -> float:
    """Optimum of the branch under a token-mean normalised over a random `unit` of rows (a micro-batch for local
    normalization, the global batch for global): every token gets 1/N with N the unit's loss-token count.

    The expected gradient at the branch logit vanishes at p* = E[k/N] / E[m/N], where m ~ Bin(unit, branch_share)
    rows hold the branch (plus `context_tokens` loss tokens of earlier turns), k ~ Bin(m, f) of them long, and the
    other rows hold `other_row_tokens` loss tokens each (format A's context turns). Exact sum over (m, k)."""
    top = bottom = 0.0
    for m in range(unit + 1):
        pm = comb(unit, m) * branch_share**m * (1 - branch_share) ** (unit - m)
        if pm == 0 or m == 0:
            continue
        for k in range(m + 1):
            pk = pm * comb(m, k) * f**k * (1 - f) ** (m - k)
            n = (unit - m) * other_row_tokens + m * context_tokens + k * L_LONG + (m - k) * L_SHORT
            top += pk * k / n
            bottom += pk * m / n
    return top / bottom


def long_fraction(convs) -> float:
    return float(np.mean([synth.is_long_branch(c) for c in convs]))


# ------------------------------------------------------------------------------------------ helpers


def _verdict(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["what", "predicted", "measured", "passed"])
    if fast_mode():
        frame["passed"] = pd.NA
        frame["what"] = frame["what"] + " [fast mode: not judged]"
    frame["passed"] = frame["passed"].astype("boolean")
    return frame


def _judge(ok: bool):
    return pd.NA if fast_mode() else bool(ok)


def _branch_sets(seed: int, context_turns: int = 0):
    n = pick(512, 128)
    train_set = synth.make_branch_chats(n, context_turns=context_turns, seed=1000 + seed)
    probes = synth.make_branch_chats(pick(32, 8), context_turns=context_turns, seed=2000 + seed)
    heldout = synth.make_branch_chats(pick(64, 16), context_turns=context_turns, seed=3000 + seed)
    return train_set, probes, heldout


def _config(seed: int, **kw) -> TrainConfig:
    base = dict(steps=pick(200, 12), micro_batch_size=16, eval_every=pick(5, 4), seed=seed, progress=not fast_mode(),
                lr_decay=pick(0.1, 1.0))  # lr decays 10x: p_long settles at the optimum instead of jittering
    base.update(kw)
    return TrainConfig(**base)


def _p_long_rows(result, experiment: str, seed: int, predictions: dict, fmt: str = "") -> list[dict]:
    measured = final_metric(result.history, "p_long")
    rows = []
    for run in result.runs:
        k = run.micro_batches or result.config.grad_accum
        rows.append(dict(experiment=experiment, seed=seed, scheme=run.scheme.label, normalization=run.normalization,
                         format=fmt, micro_batch_size=result.config.global_batch // k, grad_accum=k,
                         metric="p_long", value=float(measured[run.label]), predicted=predictions[run.label],
                         run=run.label))
    return rows


def _curves(result, experiment: str, seed: int, metrics=("p_long", "heldout_loss"), fmt: str = "") -> pd.DataFrame:
    h = result.history
    h = h[h.metric.isin(metrics) & h.bucket.isna()]
    return pd.DataFrame(dict(experiment=experiment, seed=seed, scheme=h.scheme, normalization=h.normalization,
                             format=fmt, micro_batch_size=h.micro_batch_size, grad_accum=h.grad_accum,
                             metric=h.metric + "_curve", value=h.value, run=h.run, step=h.step))


def _finish(name: str, rows: list[dict], curves: list[pd.DataFrame], verdict: pd.DataFrame, figure,
            started: float) -> ExperimentResult:
    table = pd.concat([tidy(rows)] + curves, ignore_index=True)
    table = tidy(table.to_dict("records"))
    table["value"] = table["value"].astype(float).round(8)  # byte-identical CSVs for the same seed
    verdict = pd.concat([verdict, pd.DataFrame([dict(what=f"wall time {time.time() - started:.0f} s",
                                                     predicted=np.nan, measured=np.nan, passed=pd.NA)])],
                        ignore_index=True)
    verdict["passed"] = verdict["passed"].astype("boolean")
    return ExperimentResult(name, table, verdict, figure)


# ------------------------------------------------------------------------------------------ E1


E1_RUNS = (
    Run("seq-mean-token-mean", "global"),
    Run("token-mean", "global"),  # = per-micro-batch token-mean at batch 16
    Run("token-mean", "local", micro_batches=16),  # naive GA with micro-batch 1
    Run("token-sum", "global"),  # constant denominator
)


def e1_predictions(f: float, batch: int = 16) -> dict[str, float]:
    """Predicted P("L") per E1 run: the optimum of each run's expected weighted cross-entropy at the branch."""
    seq_mean = p_long_closed_form(f, 1 / L_LONG, 1 / L_SHORT)
    return {
        E1_RUNS[0].label: seq_mean,
        E1_RUNS[1].label: p_long_token_mean(f, batch),
        E1_RUNS[2].label: p_long_token_mean(f, 1),
        E1_RUNS[3].label: f,
    }


def run_e1(seeds: int = 3) -> ExperimentResult:
    """E1, learned length prior: P("L") at the branch under seq-mean, token-mean (global batch 16),
    naive micro-batch-1 token-mean, and token-sum.

    Measured at convergence: with Adam the branch's P("L") keeps oscillating (about ±0.03, period ~30 steps, from
    the batch-to-batch count of long replies) and at 200 steps is still ~5% under its optimum (P("L") + P("S") ≈
    0.987); E1_STEPS steps with the lr decayed to 1% and the mean over the last quarter (150 steps, several
    periods) land within a few % of the prediction. Also reported: P("L") + P("S") (`branch_mass`) and
    P("L") / (P("L") + P("S")) (`p_long_given_branch`), descriptive; the verdict reads P("L") itself."""
    from ..plots.training import p_long_figure

    set_torch_threads()
    started, rows, curves, extra = time.time(), [], [], []
    for seed in range(seeds):
        train_set, probes, heldout = _branch_sets(seed)
        predictions = e1_predictions(long_fraction(train_set))  # stated before training
        metrics = [token_probability_metric(probes, P_LONG_TOKEN, "p_long"),
                   token_probability_metric(probes, P_SHORT_TOKEN, "p_short")]
        cfg = _config(seed, steps=pick(E1_STEPS, 12), lr_decay=pick(E1_LR_DECAY, 1.0))
        result = train(train_set, E1_RUNS, cfg, heldout=heldout, task_metrics=metrics)
        rows += _p_long_rows(result, "e1", seed, predictions)
        curves.append(_curves(result, "e1", seed))
        p_long, p_short = final_metric(result.history, "p_long"), final_metric(result.history, "p_short")
        for row in rows[-len(E1_RUNS):]:
            run = row["run"]
            extra += [row | dict(metric="branch_mass", value=float(p_long[run] + p_short[run]), predicted=1.0),
                      row | dict(metric="p_long_given_branch", value=float(p_long[run] / (p_long[run] + p_short[run])))]
    frame = tidy(rows)
    verdict = []
    for run in E1_RUNS:
        sel = frame[frame.run == run.label]
        low = run.scheme.name == "seq-mean-token-mean" or run.normalization == "local"
        ok = (sel.value <= 0.04).all() if low else (sel.value >= 0.14).all()
        verdict.append(dict(what=f"p_long {run.label} {'<= 0.04' if low else '>= 0.14'} (every seed)",
                            predicted=float(sel.predicted.mean()), measured=float(sel.value.mean()),
                            passed=_judge(ok)))
    for row in rows:
        row["passed"] = _judge(row["value"] <= 0.04 if row["predicted"] < 0.05 else row["value"] >= 0.14)
    verdict = _verdict(verdict)
    figure = p_long_figure(tidy(rows), "E1: learned P(long) at the branch")
    return _finish("e1", rows + extra, curves, verdict, figure, started)


# ------------------------------------------------------------------------------------------ E2


def _equal_length_sets(seed: int):
    spec = synth.LengthSpec("fixed", mean=8)
    make = lambda n, s: synth.make_chats(n, lengths=spec, turns=(1, 1), seed=s)
    return make(pick(512, 64), 4000 + seed), make(pick(64, 8), 5000 + seed)


def run_e2(seeds: int = 3) -> ExperimentResult:
    """E2, gradient accumulation: the same 16 samples per step split as (bsz, ga); naive (local) vs global
    normalization; relative weight distance to the (16, 1) run after 60 Adam steps, on mixed-length and
    equal-length data; and learned P("L") under naive micro-batches of 1, 2, 4, 8."""
    from ..plots.training import e2_figure

    set_torch_threads()
    started, rows, curves = time.time(), [], []
    steps = pick(60, 4)
    runs = (Run("token-mean", "local"), Run("token-mean", "global"))
    for seed in range(seeds):
        branch, probes, branch_heldout = _branch_sets(seed)
        for data_name, (train_set, heldout) in (("mixed lengths", (branch, branch_heldout)),
                                               ("equal lengths", _equal_length_sets(seed))):
            reference = None
            for bsz, ga in SPLITS:
                result = train(train_set, runs, _config(seed, steps=steps, micro_batch_size=bsz, grad_accum=ga,
                                                        eval_every=steps, lr_decay=1.0), heldout=heldout)
                if reference is None:
                    reference = result.params  # (16, 1): local and global are the same run
                h = result.history
                rows.append(dict(experiment="e2", seed=seed, scheme="token-mean", normalization="local vs global",
                                 format=data_name, micro_batch_size=bsz, grad_accum=ga, data=data_name,
                                 metric="naive_global_gap", value=relative_distance(result.params, 0, result.params, 1)))
                for i, run in enumerate(runs):
                    base = dict(experiment="e2", seed=seed, scheme=run.scheme.label, normalization=run.normalization,
                                format=data_name, micro_batch_size=bsz, grad_accum=ga, data=data_name)
                    rows.append(base | dict(metric="rel_weight_distance",
                                            value=relative_distance(result.params, i, reference, 0)))
                    for metric in ("objective", "train_token_loss", "heldout_loss"):
                        sel = h[(h.run == run.label) & (h.metric == metric) & h.bucket.isna()]
                        last = sel[sel.step >= sel.step.max() - 9].value.mean()  # last 10 steps (or last eval)
                        rows.append(base | dict(metric=f"final_{metric}", value=float(last)))
        # learned P(L) under naive micro-batches b = 1, 2, 4, 8 (one training, same data, batch 16)
        f = long_fraction(branch)
        p_runs = [Run("token-mean", "local", micro_batches=16 // b) for b in (1, 2, 4, 8)]
        predictions = {r.label: p_long_token_mean(f, 16 // r.micro_batches) for r in p_runs}
        result = train(branch, p_runs, _config(seed), heldout=branch_heldout,
                       task_metrics=token_probability_metric(probes, P_LONG_TOKEN, "p_long"))
        rows += _p_long_rows(result, "e2", seed, predictions)
        curves.append(_curves(result, "e2", seed))
    frame = tidy(rows)
    verdict = []
    dist = frame[frame.metric == "rel_weight_distance"]
    for data_name in ("mixed lengths", "equal lengths"):
        d = dist[dist.format == data_name].groupby(["normalization", "grad_accum"]).value.mean()
        naive, glob = d["local"], d["global"]
        if data_name == "mixed lengths":
            grows = bool(np.all(np.diff(naive.loc[[2, 4, 8, 16]].to_numpy()) > 0))
            verdict.append(dict(what="naive distance grows with ga (2, 4, 8, 16)", predicted=np.nan,
                                measured=float(naive.loc[16]), passed=_judge(grows)))
            ratio = float((glob.loc[[2, 4, 8, 16]] * 100 <= naive.loc[[2, 4, 8, 16]]).all())
            verdict.append(dict(what="global distance <= naive / 100 at every ga", predicted=1.0, measured=ratio,
                                passed=_judge(ratio == 1.0)))
        else:
            gaps = frame[(frame.metric == "naive_global_gap") & (frame.format == data_name)].value
            verdict.append(dict(what="equal lengths: ‖W(naive) − W(global)‖/‖W(global)‖ <= 1e-6 at every ga",
                                predicted=0.0, measured=float(gaps.max()), passed=_judge(gaps.max() <= 1e-6)))
            verdict.append(dict(what="equal lengths: distance to (16, 1) at ga 16 (float noise, both)",
                                predicted=np.nan, measured=float(naive.loc[16]), passed=pd.NA))
    final = frame[(frame.format == "mixed lengths") & frame.metric.str.startswith("final_")]
    final = final.groupby(["grad_accum", "normalization", "metric"]).value.mean()
    for metric in ("final_objective", "final_train_token_loss", "final_heldout_loss"):
        verdict.append(dict(what=f"{metric}: naive ga 16 (measured) vs (16, 1) (predicted column)",
                            predicted=float(final[(1, "local", metric)]), measured=float(final[(16, "local", metric)]),
                            passed=pd.NA))
    p = frame[frame.metric == "p_long"].groupby("micro_batch_size")[["value", "predicted"]].mean()
    ordered = bool(np.all(np.diff(p.value.to_numpy()) > 0))
    verdict.append(dict(what="naive P(L) increases with micro-batch size 1 < 2 < 4 < 8", predicted=np.nan,
                        measured=float(p.value.iloc[-1]), passed=_judge(ordered)))
    for b, r in p.iterrows():
        verdict.append(dict(what=f"naive P(L), micro-batch {b}", predicted=float(r.predicted),
                            measured=float(r.value), passed=pd.NA))
    return _finish("e2", rows, curves, _verdict(verdict), e2_figure(frame), started)


# ------------------------------------------------------------------------------------------ E4


def e4_predictions(f: float, turns_per_conversation: int = 3, batch: int = 16) -> dict[tuple[str, str], float]:
    """Predicted P("L") per (format, scheme) with the branch as the last of `turns_per_conversation` turns, every
    earlier turn a copy of 4 letters (5 loss tokens). Format A draws 3·batch turn-rows per step, B batch chats."""
    c = L_SHORT * (turns_per_conversation - 1)  # loss tokens of the context turns
    per_turn = p_long_closed_form(f, 1 / L_LONG, 1 / L_SHORT)
    return {
        ("A", "seq-mean-token-mean"): per_turn,
        ("A", "token-mean"): p_long_token_mean(f, turns_per_conversation * batch,
                                               branch_share=1 / turns_per_conversation, other_row_tokens=L_SHORT),
        ("B", "seq-mean-token-mean"): p_long_closed_form(f, 1 / (L_LONG + c), 1 / (L_SHORT + c)),
        ("B", "turn-mean"): per_turn,
        ("B", "token-mean"): p_long_token_mean(f, batch, context_tokens=c),
    }


def run_e4(seeds: int = 3) -> ExperimentResult:
    """E4, formats × schemes with the branch at turn 3: format A (split) vs B (multiturn + loss mask)."""
    from ..plots.training import e4_figure

    set_torch_threads()
    started, rows, curves = time.time(), [], []
    formats = {"A": ("split", ("seq-mean-token-mean", "token-mean"), 48),
               "B": ("multiturn", ("seq-mean-token-mean", "turn-mean", "token-mean"), 16)}
    for seed in range(seeds):
        train_set, probes, heldout = _branch_sets(seed, context_turns=2)
        predictions = e4_predictions(long_fraction(train_set))  # stated before training
        metric = token_probability_metric(probes, P_LONG_TOKEN, "p_long")
        for fmt, (layout, schemes, batch) in formats.items():
            runs = [Run(s) for s in schemes]
            result = train(train_set, runs, _config(seed, layout=layout, micro_batch_size=batch),
                           heldout=heldout, task_metrics=metric)
            rows += _p_long_rows(result, "e4", seed, {r.label: predictions[(fmt, r.scheme.name)] for r in runs},
                                 fmt=fmt)
            curves.append(_curves(result, "e4", seed, fmt=fmt))
    frame = tidy(rows)
    checks = {("A", "seq-mean-token-mean"): ("<= 0.04", lambda v: v <= 0.04),
              ("B", "turn-mean"): ("<= 0.04", lambda v: v <= 0.04),
              ("B", "seq-mean-token-mean"): ("in [0.03, 0.08]", lambda v: 0.03 <= v <= 0.08),
              ("A", "token-mean"): (">= 0.14", lambda v: v >= 0.14),
              ("B", "token-mean"): (">= 0.14", lambda v: v >= 0.14)}
    verdict = []
    for (fmt, scheme), (text, ok) in checks.items():
        sel = frame[(frame.format == fmt) & (frame.scheme == scheme)]
        verdict.append(dict(what=f"p_long format {fmt}, {scheme} {text} (every seed)",
                            predicted=float(sel.predicted.mean()), measured=float(sel.value.mean()),
                            passed=_judge(all(ok(v) for v in sel.value))))
    for row in rows:
        text, ok = checks[(row["format"], row["scheme"])]
        row["passed"] = _judge(ok(row["value"]))
    return _finish("e4", rows, curves, _verdict(verdict), e4_figure(tidy(rows)), started)


# ------------------------------------------------------------------------------------------ E5


def run_e5(seeds: int = 3) -> ExperimentResult:
    """E5, sum vs mean vs optimizer (Tülu 3): under Adam, token-sum and token-sum / C train almost identically;
    under SGD the best learning rate of the sum is the mean's divided by the loss tokens per batch."""
    from ..plots.training import e5_figure

    set_torch_threads()
    started, rows, curves = time.time(), [], []
    lr_grid = [float(x) for x in 10.0 ** np.arange(-4.0, 0.51, pick(0.5, 2.0))]
    for seed in range(seeds):
        train_set = synth.make_chats(pick(512, 64), seed=6000 + seed)
        heldout = synth.make_chats(pick(64, 8), seed=7000 + seed)
        cfg = _config(seed, steps=pick(80, 6), eval_every=pick(10, 3), lr_decay=1.0)
        data = TrainingData(train_set, cfg.layout, cfg.global_batch, cfg.seed, cfg.model.context_len + 1)
        tokens_per_batch = float(np.mean([int(data.global_batch_at(s).loss_mask.sum()) for s in range(cfg.steps)]))
        c = round(tokens_per_batch)
        # Adam: sum vs sum / C (a constant: seq-mean-token-sum-norm with L = C / batch gives w = 1 / C)
        adam_runs = [Run("token-sum", name="token-sum"),
                     Run(Scheme("seq-mean-token-sum-norm", l_max=c / cfg.global_batch), name="token-sum / C"),
                     Run("token-mean", name="token-mean")]
        adam = train(train_set, adam_runs, cfg, heldout=heldout)
        adam_loss = final_metric(adam.history, "heldout_loss")
        dist = relative_distance(adam.params, 1, adam.params, 0)
        base = dict(experiment="e5", seed=seed, normalization="global", micro_batch_size=cfg.micro_batch_size,
                    grad_accum=1, optimizer="adamw")
        curve = adam.history[(adam.history.metric == "heldout_loss") & adam.history.bucket.isna()]
        curve = curve.pivot_table(index="step", columns="run", values="value")
        gap = float(((curve["token-sum"] - curve["token-sum / C"]).abs() / curve["token-sum / C"]).max())
        rows.append(base | dict(scheme="token-sum vs token-sum / C", metric="adam_heldout_curve_gap", value=gap,
                                predicted=0.0, passed=_judge(gap <= 0.01)))
        rows.append(base | dict(scheme="token-sum vs token-sum / C", metric="rel_weight_distance", value=dist))
        for run in adam_runs:
            rows.append(base | dict(scheme=run.label, metric="final_heldout_loss", value=float(adam_loss[run.label]),
                                    lr=cfg.lr))
        curves.append(_curves(adam, "e5", seed, metrics=("heldout_loss",)))
        # SGD: the same learning-rate grid for token-mean and token-sum
        sgd_runs = [Run(s, lr=lr, name=f"{s} lr={lr:.0e}") for s in ("token-mean", "token-sum") for lr in lr_grid]
        sgd = train(train_set, sgd_runs, dataclasses.replace(cfg, optimizer="sgd", eval_every=cfg.steps // 2),
                    heldout=heldout)
        sgd_loss = final_metric(sgd.history, "heldout_loss").fillna(np.inf)
        best = {}
        for scheme in ("token-mean", "token-sum"):
            losses = {run.lr: float(sgd_loss[run.label]) for run in sgd_runs if run.scheme.name == scheme}
            losses = {lr: (v if math.isfinite(v) else math.inf) for lr, v in losses.items()}
            best[scheme] = min(losses, key=losses.get)
            for lr, v in losses.items():
                rows.append(base | dict(optimizer="sgd", scheme=scheme, metric="sgd_final_heldout_loss",
                                        value=min(v, 1e6), lr=lr))
        ratio = best["token-mean"] / best["token-sum"]
        rows.append(base | dict(optimizer="sgd", scheme="token-mean / token-sum", metric="best_lr_ratio",
                                value=ratio, predicted=tokens_per_batch,
                                passed=_judge(abs(math.log10(ratio / tokens_per_batch)) <= 0.5 + 1e-9)))
        rows.append(base | dict(scheme="token-sum", metric="loss_tokens_per_batch", value=tokens_per_batch))
    frame = tidy(rows)
    d = frame[frame.metric == "adam_heldout_curve_gap"]
    w = frame[frame.metric == "rel_weight_distance"]
    r = frame[frame.metric == "best_lr_ratio"]
    within = bool((np.abs(np.log10(r.value / r.predicted)) <= 0.5 + 1e-9).all())
    verdict = [
        dict(what="Adam: held-out loss of sum vs sum/C differs <= 1% at every evaluation (every seed)",
             predicted=0.0, measured=float(d.value.max()), passed=_judge(bool((d.value <= 0.01).all()))),
        dict(what="Adam: ‖W(sum) − W(sum/C)‖/‖W(sum)‖ (eps and float noise, amplified; descriptive)",
             predicted=0.0, measured=float(w.value.max()), passed=pd.NA),
        dict(what="SGD: best lr(mean) / best lr(sum) within half a decade of loss tokens per batch (every seed)",
             predicted=float(r.predicted.mean()), measured=float(np.exp(np.log(r.value).mean())),
             passed=_judge(within)),
    ]
    return _finish("e5", rows, curves, _verdict(verdict), e5_figure(frame), started)
