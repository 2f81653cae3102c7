"""E6 (DAPO analogue) and E7 (Dr. GRPO): the length bias of GRPO's per-sequence mean, measured on the toy policy.

Each seed warm-starts one policy and runs every recipe (GRPO, DAPO, Dr. GRPO) from that same start. A check
passes overall when it passes in at least 2 of 3 seeds (generally: ceil(2/3 of the seeds)).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd

from .. import rl
from ..config import set_torch_threads
from . import ExperimentResult, tidy

E6_ALGORITHMS = ("GRPO", "DAPO", "Dr. GRPO")
E7_ALGORITHMS = ("GRPO", "Dr. GRPO")
REASON_LEVEL = 0.8  # E6 compares at the first step where pi(REASON) >= 0.8
RIGHT_LEVEL = 0.95  # E7 looks at the learning phase: steps until pi(right) >= 0.95
BAND_E6, BAND_E7 = (0.8, 1.25), (0.85, 1.15)


def run_task(task: rl.Task, algorithms, seeds: int, progress: bool = True) -> pd.DataFrame:
    """Tidy per-step metrics of every (seed, algorithm) run; seeds 0..seeds-1."""
    set_torch_threads()
    frames = []
    for seed in range(seeds):
        start = rl.warm_start(task, seed)
        for name in algorithms:
            cfg = rl.algorithm_config(name)
            table = rl.train_policy(task, cfg, seed, start, progress=progress)
            table.insert(0, "algorithm", name)
            frames.append(table)
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "experiment", task.name)
    return out


def _first_step(wide: pd.DataFrame, column: str, level: float) -> int | None:
    hit = wide.loc[wide[column] >= level, "step"]
    return int(hit.iloc[0]) if len(hit) else None


def _until(w: pd.DataFrame, share: str, level: float) -> tuple[int | None, pd.DataFrame]:
    """The first step where `share` reaches `level` (None if never), and the steps up to it (all if never)."""
    k = _first_step(w, share, level)
    return k, w[w["step"] <= (k if k is not None else w["step"].max())]


def _band_check(ratio: pd.Series, band: tuple[float, float]) -> tuple[float, bool]:
    """The ratio furthest from 1 (in log terms) over a window, and whether the whole window stays in `band`."""
    lo, hi = ratio.min(), ratio.max()
    return (lo if abs(math.log(lo)) > abs(math.log(hi)) else hi), bool(band[0] <= lo and hi <= band[1])


def _around(wide: pd.DataFrame, step: int, column: str, half: int = 2) -> float:
    """Mean of a sampled metric over steps step-half .. step+half (sampled metrics are noisy)."""
    values = wide.loc[wide["step"].between(step - half, step + half), column].dropna()
    return float(values.mean()) if len(values) else math.nan


def _needed(seeds: int) -> int:
    return max(1, math.ceil(2 * seeds / 3))


def _verdict_row(check: str, algorithm: str, predicted: str, per_seed: list[tuple[float, bool]],
                 seeds: int) -> dict:
    n_pass = sum(ok for _, ok in per_seed)
    return dict(check=check, algorithm=algorithm, predicted=predicted,
                measured=", ".join(f"{v:.3g} {'✓' if ok else '✗'}" for v, ok in per_seed),
                seeds_passed=f"{n_pass}/{len(per_seed)}", passed=n_pass >= _needed(seeds))


def _summary_rows(experiment: str, checks: list[dict]) -> list[dict]:
    return [dict(experiment=experiment, seed=c["seed"], scheme=rl.ALGORITHMS[c["algorithm"]][0],
                 algorithm=c["algorithm"], metric=c["metric"], value=c["value"], predicted=c["predicted"],
                 passed=c["passed"]) for c in checks]


def _table(experiment: str, runs: pd.DataFrame, checks: list[dict]) -> pd.DataFrame:
    per_step = runs.assign(normalization="global", format="rl-groups", grad_accum=1)
    rows = per_step.to_dict("records") + _summary_rows(experiment, checks)
    return tidy(rows)


E6_PREDICTION = (f"E6 predicted: GRPO (seq-mean-token-mean) pi(GIB)/pi(GUESS) >= 1.5 (~3) once pi(REASON) >= "
                 f"{REASON_LEVEL}; DAPO (token-mean) and Dr. GRPO (1/L_max) stay in {list(BAND_E6)}; wrong answers "
                 "are longer and higher-entropy under GRPO than under DAPO at the same reward.")
E7_PREDICTION = (f"E7 predicted: GRPO long-wrong/short-wrong peaks > 1.5 and long-right/short-right falls < 0.9 "
                 f"(until pi(right) >= {RIGHT_LEVEL}); Dr. GRPO keeps both in {list(BAND_E7)}.")


def e6_checks(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Per-seed checks of E6 and the verdict table."""
    wide = rl.wide_metrics(runs)
    checks = []
    for (algorithm, seed), w in wide.groupby(["algorithm", "seed"]):
        w = w.sort_values("step")
        k, upto = _until(w, "share_REASON", REASON_LEVEL)
        at = float(w.loc[w["step"] == k, "long_short_wrong_ratio"].iloc[0]) if k is not None else math.nan
        if algorithm == "GRPO":
            checks.append(dict(seed=seed, algorithm=algorithm, metric="ratio_at_reason80", value=at,
                               predicted=">= 1.5", passed=k is not None and at >= 1.5))
        else:
            worst, inside = _band_check(upto["long_short_wrong_ratio"], BAND_E6)
            checks.append(dict(seed=seed, algorithm=algorithm, metric="ratio_worst_until_reason80", value=worst,
                               predicted=f"in {list(BAND_E6)}", passed=k is not None and inside))
        for metric in ("mean_length_wrong", "entropy_wrong"):
            checks.append(dict(seed=seed, algorithm=algorithm, metric=f"{metric}_at_reason80",
                               value=_around(w, k, metric) if k is not None else math.nan, predicted="",
                               passed=None))
    seeds = wide["seed"].nunique()
    rows = []
    for algorithm in [a for a in E6_ALGORITHMS if a in set(wide["algorithm"])]:
        own = [c for c in checks if c["algorithm"] == algorithm and c["passed"] is not None]
        what = "pi(GIB)/pi(GUESS) at pi(REASON)=0.8" if algorithm == "GRPO" else \
            "pi(GIB)/pi(GUESS) until pi(REASON)=0.8 (furthest from 1)"
        rows.append(_verdict_row(what, algorithm, own[0]["predicted"], [(c["value"], c["passed"]) for c in own],
                                 seeds))
    for metric, what in (("mean_length_wrong", "wrong-answer length"), ("entropy_wrong", "wrong-answer entropy")):
        sample = {c["seed"]: c["value"] for c in checks if c["metric"] == f"{metric}_at_reason80"
                  and c["algorithm"] == "GRPO"}
        token = {c["seed"]: c["value"] for c in checks if c["metric"] == f"{metric}_at_reason80"
                 and c["algorithm"] == "DAPO"}
        per_seed = [(sample[s] - token[s], bool(sample[s] > token[s])) for s in sorted(sample) if s in token]
        for s, (diff, ok) in zip(sorted(sample), per_seed):
            checks.append(dict(seed=s, algorithm="GRPO", metric=f"{metric}_gap_vs_DAPO", value=diff,
                               predicted="> 0", passed=ok))
        rows.append(_verdict_row(f"{what}: GRPO minus DAPO at pi(REASON)=0.8", "GRPO vs DAPO", "> 0", per_seed,
                                 seeds))
    return pd.DataFrame(rows), checks


def e7_checks(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Per-seed checks of E7 and the verdict table."""
    wide = rl.wide_metrics(runs)
    checks = []
    for (algorithm, seed), w in wide.groupby(["algorithm", "seed"]):
        w = w.sort_values("step")
        _, upto = _until(w, "share_right", RIGHT_LEVEL)
        wrong, right = upto["long_short_wrong_ratio"], upto["long_short_right_ratio"]
        if algorithm == "GRPO":
            checks.append(dict(seed=seed, algorithm=algorithm, metric="wrong_ratio_peak", value=wrong.max(),
                               predicted="> 1.5", passed=bool(wrong.max() > 1.5)))
            checks.append(dict(seed=seed, algorithm=algorithm, metric="right_ratio_min", value=right.min(),
                               predicted="< 0.9", passed=bool(right.min() < 0.9)))
        else:
            for metric, ratio in (("wrong_ratio", wrong), ("right_ratio", right)):
                worst, inside = _band_check(ratio, BAND_E7)
                checks.append(dict(seed=seed, algorithm=algorithm, metric=f"{metric}_worst", value=worst,
                                   predicted=f"in {list(BAND_E7)}", passed=inside))
    seeds = wide["seed"].nunique()
    labels = {"wrong_ratio_peak": "long-wrong/short-wrong peak", "right_ratio_min": "long-right/short-right min",
              "wrong_ratio_worst": "long-wrong/short-wrong (furthest from 1)",
              "right_ratio_worst": "long-right/short-right (furthest from 1)"}
    rows = []
    for (algorithm, metric), group in pd.DataFrame(checks).groupby(["algorithm", "metric"], sort=False):
        rows.append(_verdict_row(labels[metric], algorithm, group["predicted"].iloc[0],
                                 list(zip(group["value"], group["passed"])), seeds))
    return pd.DataFrame(rows), checks


def _run(name: str, task, algorithms, prediction: str, checks, seeds: int, progress: bool) -> ExperimentResult:
    from ..plots import rl as rl_plots

    print(prediction)
    runs = run_task(task, algorithms, seeds, progress)
    verdict, check_rows = checks(runs)
    print(f"{name.upper()} verdict: {int(verdict['passed'].sum())}/{len(verdict)} checks passed "
          "(each in >= 2 of 3 seeds)")
    figure = rl_plots.experiment_figure(rl.wide_metrics(runs), task)
    return ExperimentResult(name, _table(name, runs, check_rows), verdict, figure)


def run_e6(seeds: int = 3, progress: bool = True) -> ExperimentResult:
    return _run("e6", rl.E6_TASK, E6_ALGORITHMS, E6_PREDICTION, e6_checks, seeds, progress)


def run_e7(seeds: int = 3, progress: bool = True) -> ExperimentResult:
    return _run("e7", rl.E7_TASK, E7_ALGORITHMS, E7_PREDICTION, e7_checks, seeds, progress)


def per_step(table: pd.DataFrame) -> pd.DataFrame:
    """The per-step rows of an experiment table, one column per metric (drops the summary rows)."""
    runs = table[table["step"].notna()]
    keys = ["experiment", "algorithm", "scheme", "advantage", "seed", "step", "metric", "value"]
    return rl.wide_metrics(runs[keys].astype({"value": float}))


def ratio_at(table: pd.DataFrame, share: str = "share_REASON", level: float = REASON_LEVEL,
             ratio: str = "long_short_wrong_ratio") -> pd.DataFrame:
    """`ratio` at the first step where `share` >= level: one row per seed, one column per algorithm (NaN if the
    level was never reached)."""
    wide = per_step(table)
    rows = {}
    for (algorithm, seed), w in wide.groupby(["algorithm", "seed"]):
        k = _first_step(w.sort_values("step"), share, level)
        rows.setdefault(seed, {})[algorithm] = (float(w.loc[w["step"] == k, ratio].iloc[0]) if k is not None
                                                else math.nan)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("seed")


def optimizer_comparison(task: rl.Task = rl.E6_TASK, seed: int = 0, algorithms=("GRPO", "DAPO"),
                         level: float = REASON_LEVEL, start=None) -> pd.DataFrame:
    """Each algorithm under plain SGD (its own learning rate) and under Adam (`rl.ADAM_LR`), from the same warm
    start, taken at the first step where π(right) reaches `level` (the last step if never): one row per run with
    the length-bias ratio there and where it sits (`rl.ratio_by_parameters`)."""
    start = start if start is not None else rl.warm_start(task, seed)
    rows = []
    for optimizer in ("sgd", "adam"):
        for name in algorithms:
            policies: dict[int, rl.GPT] = {}  # the policy after every update

            def keep(step, _row, policy, policies=policies):
                policies[step] = copy.deepcopy(policy)

            table = rl.train_policy(task, rl.algorithm_config(name, optimizer=optimizer), seed, start, callback=keep,
                                    progress=False)
            wide = rl.wide_metrics(table).sort_values("step")
            step = _first_step(wide, "share_right", level)
            step = int(wide["step"].max()) if step is None else step
            rows.append(dict(optimizer=optimizer, algorithm=name, step=step, reached=bool(
                wide.loc[wide["step"] == step, "share_right"].iloc[0] >= level),
                **rl.ratio_by_parameters(start, policies.get(step, start), task)))
    return pd.DataFrame(rows)


def weight_ratio(task: rl.Task = rl.E6_TASK) -> pd.DataFrame:
    """Per-token weight of the long wrong answer over the short wrong one, per scheme (exact, no training)."""
    frame = rl.weights_by_template(task)
    pivot = frame.pivot(index="scheme", columns="template", values="weight_per_token")
    return pd.DataFrame({"scheme": pivot.index,
                         "long_over_short": np.asarray(pivot[task.long_wrong] / pivot[task.short_wrong])})
