"""E10 (docs/science.md §6.3): token vs sequence importance ratios in off-policy RL (GSPO, CISPO).

The toy policy of `rl` answers with one of four templates of random letters, 4 / 9 / 18 / 36 tokens long, rewarded
differently. Every batch of 8 groups × 8 responses is used for 4 updates (off-policy after the first). Three rules
train from the same warm start: token-level PPO clipping (ε = 0.2, token-mean: DAPO-style), GSPO (one
length-normalised ratio per response, ε = 3e-4 / 4e-4 as in the paper, mean over responses) and CISPO (the clipped
ratio as a stop-gradient weight, ε_high = 0.2, no lower bound, token-mean). At updates 2–4 of every batch the
statistics of `ratios.update_statistics` are collected; the verdict reads them against response length. The
spread statistics leave out each response's first token, the template's marker: it is the policy's decision and
moves far more than any other token, so with it the 4-token template's ratios would measure the decision, not
the length.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch

from .. import ratios, rl
from ..config import fast_mode, pick, set_torch_threads
from . import ExperimentResult
from .sft import _finish, _judge, _verdict

E10_TASK = rl.Task("e10", "2+3=?", (
    rl.Template("A", "A", 4, 0.2, False, 0.25, random_body=True, answer="7"),
    rl.Template("B", "B", 9, 0.8, True, 0.25, random_body=True),
    rl.Template("C", "C", 18, 0.4, False, 0.25, random_body=True, answer="7"),
    rl.Template("D", "D", 36, 0.6, True, 0.25, random_body=True),
), long_wrong="C", short_wrong="A", long_right="D", short_right="B")

UPDATES = 4  # updates per batch: statistics are read at updates 2..UPDATES
WARM_START_STEPS = (160, 60)  # SFT steps of the warm start (default, fast mode)
RULE_CONFIGS = {  # rule -> RLConfig overrides (scheme, advantage, clip range, SGD learning rate)
    "token": dict(scheme="token-mean", ratio="token", clip_eps=0.2, lr=0.03),
    "gspo": dict(scheme="seq-mean-token-mean", ratio="gspo", clip_eps=3e-4, clip_eps_high=4e-4, lr=0.02),
    "cispo": dict(scheme="token-mean", ratio="cispo", clip_eps=math.inf, clip_eps_high=0.2, lr=0.03),
}
SLOPE_SEQUENCE = (0.8, 2.4)  # Var(log Π ρ_t) ∝ n^s: between independent tokens (1) and a shared shift (2)
SLOPE_GSPO_MAX = 0.2  # Var(log s_i) must not grow with n
SLOPE_TOKEN = 0.6  # the token log-ratios' variance grows far less than the sequence's (flat: 0)
RUNS_NEEDED = 2 / 3  # a slope check passes when it holds in at least 2/3 of the (rule, seed) runs


def warm_start(seed: int):
    """The policy every rule starts from: SFT on the four templates (cached per seed by `rl.warm_start`)."""
    return rl.warm_start(E10_TASK, seed, steps=pick(*WARM_START_STEPS))


def rule_config(rule: str) -> rl.RLConfig:
    return rl.RLConfig(advantage="grpo", steps=pick(20, 4), groups=8, group_size=8, updates_per_batch=UPDATES,
                       **RULE_CONFIGS[rule])


def collect(rule: str, seed: int, start, progress: bool = False, config: rl.RLConfig | None = None) -> pd.DataFrame:
    """Train one rule from `start` (config: `rule_config(rule)` unless given) and return every response's
    statistics at updates 2..UPDATES."""
    cfg = config or rule_config(rule)
    responses: list[dict] = []

    def on_update(update, logp, old_logp, advantage, mask):
        if update >= 2:
            first = torch.zeros_like(mask).scatter(1, mask.int().argmax(1, keepdim=True), True)  # the marker
            stats = ratios.update_statistics(logp, old_logp, advantage, mask, rl_clip_ranges(),
                                             spread_mask=mask & ~first)
            responses.extend(dict(zip(stats, values)) | dict(update=update) for values in zip(*stats.values()))

    rl.train_policy(E10_TASK, cfg, seed, start, progress=progress, on_update=on_update)
    return pd.DataFrame(responses).assign(rule=rule, seed=seed)


def rl_clip_ranges() -> dict[str, tuple[float, float]]:
    """(ε_low, ε_high) of each rule as trained here: what `update_statistics` counts zero gradients with."""
    return {rule: (cfg["clip_eps"], cfg.get("clip_eps_high", cfg["clip_eps"])) for rule, cfg in RULE_CONFIGS.items()}


def by_length_table(responses: pd.DataFrame) -> pd.DataFrame:
    """`ratios.statistics_by_length` per (rule, seed) of `collect`'s responses, on the templates' own lengths
    (a response that matched no template, rare after the warm start, is left out)."""
    responses = responses[responses.length.isin([t.length for t in E10_TASK.templates])]
    return pd.concat([ratios.statistics_by_length(g.drop(columns=["rule", "seed", "update"]).to_dict("list"))
                      .assign(rule=rule, seed=seed) for (rule, seed), g in responses.groupby(["rule", "seed"])],
                     ignore_index=True)


def zero_gradient_fraction(by_length: pd.DataFrame, rule: str) -> float:
    """Fraction of response tokens (A ≠ 0) with zero gradient in the runs trained with `rule`, under its own clipping."""
    own = by_length[by_length.rule == rule]
    return float((own[f"zero_{rule}_fraction"] * own.tokens).sum() / own.tokens.sum())


E10_PREDICTION = (
    "E10 predicted (updates 2–4 of each batch, per response length n): the token log-ratios' variance does not "
    "grow like the sequence's (slope ≤ 0.6; flat: 0); Var(log Π_t ρ_t) grows with n (log-log slope in [0.8, 2.4]: n σ² + n² Var(shared shift)); GSPO's "
    "length-normalised log s_i = mean_t δ_t does not grow (slope ≤ 0.2; exactly the sequence variance / n²). Zero-"
    "gradient tokens (responses with A ≠ 0): CISPO exactly 0; token-level PPO (ε = 0.2) a small fraction, flat in n; "
    "GSPO (ε = 3e-4 / 4e-4) most of them, ≥ 10× token-level PPO (the paper: two orders of magnitude), more often "
    "for short responses.")


def run_e10(seeds: int = 3, progress: bool = True) -> ExperimentResult:
    from ..plots.beyond import e10_figure

    set_torch_threads()
    print(E10_PREDICTION)
    started, frames = time.time(), []
    for seed in range(seeds):
        start = warm_start(seed)
        for rule in RULE_CONFIGS:
            frames.append(collect(rule, seed, start, progress=progress and not fast_mode()))
    by_length = by_length_table(pd.concat(frames, ignore_index=True))
    rows = []
    for r in by_length.itertuples():
        base = dict(experiment="e10", seed=r.seed, scheme=RULE_CONFIGS[r.rule]["scheme"], rule=r.rule,
                    format="rl-groups", normalization="global", grad_accum=1, length=r.length)
        for metric in ("var_token_log_ratio", "var_seq_log_ratio", "var_gspo_log_ratio", "zero_token_fraction",
                       "zero_gspo_fraction", "zero_cispo_fraction"):
            rows.append(base | dict(metric=metric, value=getattr(r, metric)))
    slopes = _slopes(by_length)
    for s in slopes.itertuples():
        rows.append(dict(experiment="e10", seed=s.seed, scheme=RULE_CONFIGS[s.rule]["scheme"], rule=s.rule,
                         format="rl-groups", metric=f"slope_{s.quantity}", value=s.slope))
    verdict = _e10_verdict(by_length, slopes)
    return _finish("e10", rows, [], verdict, e10_figure(by_length), started)


def _slopes(by_length: pd.DataFrame) -> pd.DataFrame:
    from ..variance import loglog_slope

    rows = []
    for (rule, seed), g in by_length.groupby(["rule", "seed"]):
        for quantity in ("token", "seq", "gspo"):
            rows.append(dict(rule=rule, seed=seed, quantity=quantity,
                             slope=loglog_slope(g.length, g[f"var_{quantity}_log_ratio"])))
    return pd.DataFrame(rows)


def _e10_verdict(by_length: pd.DataFrame, slopes: pd.DataFrame) -> pd.DataFrame:
    verdict = []
    wide = slopes.pivot_table(index=["rule", "seed"], columns="quantity", values="slope")
    checks = (("seq", "log Π_t ρ_t", lambda v: SLOPE_SEQUENCE[0] <= v <= SLOPE_SEQUENCE[1], f"in {list(SLOPE_SEQUENCE)}"),
              ("gspo", "GSPO's log s_i", lambda v: v <= SLOPE_GSPO_MAX, f"≤ {SLOPE_GSPO_MAX}"),
              ("token", "token log-ratios", lambda v: v <= SLOPE_TOKEN, f"≤ {SLOPE_TOKEN}"))
    for quantity, text, ok, band in checks:
        values = wide[quantity]
        held = float(values.map(ok).mean())
        verdict.append(dict(what=f"slope of Var({text}) vs n {band} (in ≥ 2/3 of the rule × seed runs; held in "
                                 f"{held:.0%})", predicted=np.nan, measured=float(values.median()),
                            passed=_judge(held >= RUNS_NEEDED - 1e-9)))
    own = {rule: by_length[by_length.rule == rule] for rule in RULE_CONFIGS}

    def fraction(rule):
        return zero_gradient_fraction(by_length, rule)

    verdict.append(dict(what="CISPO: fraction of tokens (A ≠ 0) with zero gradient = 0", predicted=0.0,
                        measured=fraction("cispo"), passed=_judge(fraction("cispo") == 0.0)))
    token, gspo = fraction("token"), fraction("gspo")
    verdict.append(dict(what="token-level PPO (ε 0.2): zero-gradient fraction in (0, 0.5)", predicted=np.nan,
                        measured=token, passed=_judge(0 < token < 0.5)))
    verdict.append(dict(what="GSPO (ε 3e-4 / 4e-4): zero-gradient fraction ≥ 10× token-level PPO's",
                        predicted=np.nan, measured=gspo / token if token else math.inf,
                        passed=_judge(token > 0 and gspo >= 10 * token)))
    short, long = own["gspo"].length.min(), own["gspo"].length.max()
    at = own["gspo"].groupby("length").zero_gspo_fraction.mean()
    verdict.append(dict(what=f"GSPO zero-gradient fraction, n = {short} vs n = {long} (descriptive)",
                        predicted=np.nan, measured=float(at[short] - at[long]), passed=pd.NA))
    return _verdict(verdict)
