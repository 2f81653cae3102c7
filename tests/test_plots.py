"""Every plot function of lossreduce_demo.plots returns a readable Figure (tests/figure_checks.py: ≥ 2 labelled
ticks on every data axis, bars from 0 on linear axes, legends off the data, no text cut off) with labelled axes and
its headline number, and leaves pyplot alone; the per-sample profiles behind them add up.

The training, RL and data-parallel plots get tidy tables in the shapes the package produces (columns of
train.HISTORY_COLUMNS / experiments.COLUMNS / rl.wide_metrics), with values in the ranges the README reports,
including the awkward ones (a ratio staying within 0.93–1.14 on a log axis, exact zeros, nearly equal bars).
"""

from __future__ import annotations

import inspect
import io
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from figure_checks import assert_readable, decoded, figure_problems, figure_text
from hypothesis import example, given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from lossreduce_demo import plots, report, rl, synth
from lossreduce_demo.layouts import LAYOUTS, make_layout, multiturn_layout
from lossreduce_demo.notebook import data_path
from lossreduce_demo.plots import beyond as beyond_plots
from lossreduce_demo.plots import rl as rl_plots
from lossreduce_demo.reductions import LENGTH_BUCKETS, SCHEMES, Plan, Scheme, effective_weights, token_weights

CONVS = synth.make_chats(6, turns=(1, 3), seed=3)
BATCH = multiturn_layout(CONVS)
WEIGHTS = {s: token_weights(BATCH, s) for s in SCHEMES}


def _eff():
    w, rank, step = effective_weights(BATCH, "token-mean", Plan(2, 2, "local"))
    return plots.effective_vs_ideal(BATCH, w, WEIGHTS["token-mean"], rank=rank, step=step)


def _history() -> pd.DataFrame:
    """A train() history: two runs whose bucket curves coincide (seq-mean and naive GA with micro-batch 1)."""
    rows = []
    runs = {"token-mean": 1.0, "seq-mean-token-mean": 0.8, "token-mean (naive GA, micro-batch 1)": 0.8}
    for run, factor in runs.items():
        for step in range(0, 101, 10):
            decay = np.exp(-step / 30)
            for metric, value in (("heldout_loss", 0.05 + 4 * decay), ("p_long", 0.02 + 0.15 * decay * factor)):
                rows.append(dict(seed=0, run=run, scheme=run.split(" (")[0], step=step, metric=metric, bucket=None,
                                 value=value))
            for bucket, base in (("1-8", 0.02), ("33-64", 0.15 * factor)):
                rows.append(dict(seed=0, run=run, scheme=run.split(" (")[0], step=step, metric="heldout_loss",
                                 bucket=bucket, value=base + 4 * decay))
    return pd.DataFrame(rows)


def _p_long_table() -> pd.DataFrame:
    cases = {"seq-mean-token-mean": (0.018, 0.019), "token-mean": (0.151, 0.148), "token-sum": (0.186, 0.186)}
    return pd.DataFrame([dict(run=run, scheme=run, metric="p_long", seed=seed, value=m + 0.002 * seed, predicted=p)
                         for run, (m, p) in cases.items() for seed in range(3)])


def _e2_table() -> pd.DataFrame:
    rows = []
    for data in ("mixed lengths", "equal lengths"):
        for ga, naive in zip((1, 2, 4, 8, 16), (0, 0.06, 0.25, 0.34, 0.40)):
            for norm, value in (("local", naive if data == "mixed lengths" else 1e-5), ("global", 1e-5 if ga > 1 else 0)):
                rows.append(dict(format=data, normalization=norm, grad_accum=ga, micro_batch_size=16 // ga,
                                 metric="rel_weight_distance", value=value, predicted=None))
    for mb, (value, pred) in zip((1, 2, 4, 8), ((0.018, 0.020), (0.036, 0.038), (0.068, 0.072), (0.105, 0.117))):
        rows.append(dict(format="mixed lengths", normalization="local", micro_batch_size=mb, grad_accum=16 // mb,
                         metric="p_long", value=value, predicted=pred))
    return pd.DataFrame(rows)


def _e4_table() -> pd.DataFrame:
    cases = {("A", "seq-mean-token-mean"): 0.02, ("A", "token-mean"): 0.18, ("B", "turn-mean"): 0.02,
             ("B", "seq-mean-token-mean"): 0.05, ("B", "token-mean"): 0.18}
    return pd.DataFrame([dict(format=f, scheme=sc, metric="p_long", seed=0, value=v * 1.05, predicted=v)
                         for (f, sc), v in cases.items()])


def _e5_table() -> pd.DataFrame:
    rows = [dict(metric="sgd_final_heldout_loss", scheme=sc, lr=lr, seed=0, value=v)
            for sc, best in (("token-mean", 0.5), ("token-sum", 0.5 / 250))
            for lr in (1e-4, 1e-3, 1e-2, 1e-1, 1.0) for v in [min(10.0, 0.2 + abs(np.log10(lr / best)))]]
    rows += [dict(metric="final_heldout_loss", scheme=sc, seed=s, value=0.101 + 0.001 * s)
             for sc in ("token-sum", "token-sum / C", "token-mean") for s in range(3)]
    return pd.DataFrame(rows)


def _turn_buckets() -> pd.DataFrame:
    rows = []
    for scheme, short in (("token-mean", 0.3), ("seq-mean-token-mean", 0.75)):
        for bucket, token_share in (("1-8", 0.29), ("9-16", 0.2), ("33-64", 0.51)):
            share = short if bucket == "1-8" else (1 - short) * token_share / 0.71
            rows.append(dict(scheme=scheme, normalization="global", bucket=bucket, token_share=token_share,
                             weight_share=share, gradient_share=share))
    return pd.DataFrame(rows)


def _rl_wide(task) -> pd.DataFrame:
    """Per-step metrics of three recipes × two seeds: GRPO's ratio climbs to ~4, the others stay in 0.93–1.14."""
    rows = []
    for algorithm, scheme, top in (("GRPO", "seq-mean-token-mean", 4.4), ("DAPO", "token-mean", 1.14),
                                   ("Dr. GRPO", "seq-mean-token-sum-norm", 0.93)):
        for seed in range(2):
            for step in range(0, 60, 2):
                t = step / 58
                rows.append(dict(algorithm=algorithm, scheme=scheme, seed=seed, step=step,
                                 expected_reward=0.2 + 0.65 * t ** (0.8 + 0.2 * seed),
                                 long_short_wrong_ratio=1 + (top - 1) * t, long_short_right_ratio=1 + (0.12 - 1) * t
                                 if algorithm == "GRPO" else 1 - 0.1 * t,
                                 mean_length_wrong=16 + 8 * t * (algorithm == "GRPO"),
                                 mean_length_right=13 - 5 * t * (algorithm == "GRPO"),
                                 entropy_wrong=1.2 + 0.2 * t * (algorithm == "GRPO")))
    return pd.DataFrame(rows)


def _dp_errors() -> pd.DataFrame:
    values = {"token-mean": 2.4e-1, "seq-mean-token-mean": 0.0, "token-sum": 0.5, "turn-mean": 2.6e-2,
              "length-power": 1.5e-1}
    rows = []
    for scheme, local in values.items():
        for norm, value in (("global", 1.1e-16), ("local", local)):
            rows.append(dict(scheme=scheme, normalization=norm, data="skewed", metric="max_rel_grad_diff",
                             value=value, dtype="float64", step=0, seed=0))
    return pd.DataFrame(rows)


def _dp_distance() -> pd.DataFrame:
    rows = [dict(scheme=scheme, normalization=norm, step=step, seed=0, metric="rel_weight_distance",
                 value=(1e-15 if norm == "global" else final * step / 8), dtype="float64")
            for scheme, final in (("token-mean", 8e-2), ("token-sum", 2e-5), ("seq-mean-token-mean", 0.0))
            for norm in ("global", "local") for step in range(1, 9)]
    return pd.DataFrame(rows)


def _e3_table() -> pd.DataFrame:
    return pd.concat([_dp_errors(), _dp_distance()], ignore_index=True)


E8_SCHEMES = ("token-mean", "seq-mean-token-mean", "length-power α=0.5", "seq-mean-token-sum", "delta-l α=0.5",
              "delta-l α=1")


def _e8_by_length() -> pd.DataFrame:
    lengths = np.array([2.5, 4.5, 7, 10.5, 15, 22, 33, 50])
    return pd.DataFrame([dict(data=data, seed=0, bucket=f"b{i}", length=n, samples=20, var_sum=40 * n**1.1,
                              var_mean=40 * n**-0.9 * k) for data, k in (("copy", 1.0), ("noisy tail", 0.9))
                         for i, n in enumerate(lengths)])


def _e8_steps() -> pd.DataFrame:
    rows = []
    for data in ("copy", "noisy tail"):
        for i, scheme in enumerate(E8_SCHEMES):
            rows.append(dict(data=data, seed=0, scheme=scheme, variance=10 - i, noise=1 - 0.05 * i,
                             relative_variance=4 - 0.4 * i, token_noise=0.005 + 0.001 * i,
                             cosine_to_sequence_mean=1 - 0.08 * i))
    return pd.DataFrame(rows)


def _e8_curves() -> pd.DataFrame:
    return pd.DataFrame([dict(scheme=scheme, seed=seed, step=step, value=3.1 + 1.3 * np.exp(-step / (10 + 2 * i)),
                              threshold=3.17) for i, scheme in enumerate(E8_SCHEMES[:2]) for seed in range(2)
                         for step in range(5, 105, 5)])


def _e8_profile() -> pd.DataFrame:
    from lossreduce_demo.layouts import completion_batch
    from lossreduce_demo.variance import weights_by_length

    schemes = [Scheme("token-mean"), Scheme("seq-mean-token-mean"), Scheme("delta-l", delta_l_alpha=0.5)]
    return weights_by_length(completion_batch([2, 3, 5, 8, 13, 21, 34, 55]), schemes)


def _delta_l_curves() -> pd.DataFrame:
    a = np.arange(0, 1.51, 0.25)
    return pd.DataFrame({"a": a, "variance_vs_a0": 1 - 0.6 * a + 0.25 * a**2,
                         "noise_to_signal_per-sequence": 1 - 0.5 * a + 0.2 * a**2,
                         "noise_to_signal_per-token": 1 + 0.4 * a**2})


def _e9_parts():
    from lossreduce_demo.experiments.packing import LAYOUT_RUNS, per_row_weight_table

    rows = [dict(metric="mean_heldout_loss", format=layout, seed=0, value=v)
            for layout, v in zip(LAYOUT_RUNS, (0.52, 0.521, 0.58))]
    rows += [dict(metric="p_long", scheme=name, format="packed", seed=0, value=v, predicted=pred)
             for name, v, pred in (("token-mean", 0.155, 0.162), ("seq-mean over conversations", 0.019, 0.0204),
                                   ("per-row mean", 0.105, 0.114))]
    curves = pd.DataFrame([dict(format=layout, seed=0, step=step, value=v + 2 * np.exp(-step / 30))
                           for layout, v in zip(LAYOUT_RUNS, (0.52, 0.521, 0.58)) for step in range(10, 160, 10)])
    return pd.DataFrame(rows), curves, per_row_weight_table(seed=6)


def _e10_by_length() -> pd.DataFrame:
    rows = []
    for rule, zero in (("token", 0.03), ("gspo", 0.7), ("cispo", 0.0)):
        for n in (4, 9, 18, 36):
            rows.append(dict(rule=rule, seed=0, length=n, responses=40, tokens=40 * n, var_token_log_ratio=0.01,
                             var_seq_log_ratio=0.01 * n**1.3, var_gspo_log_ratio=0.01 * n**-0.7,
                             zero_token_fraction=0.03, zero_gspo_fraction=zero - 0.005 * n, zero_cispo_fraction=0.0))
    return pd.DataFrame(rows)


# name -> (make the figure, a pattern its text must contain: the headline number)
CASES = {
    "token_strip": (lambda: plots.token_strip(synth.GEORGE_WASHINGTON), r"\d+ tokens, \d+ of them loss tokens"),
    "layout_diagram": (lambda: plots.layout_diagram(make_layout(CONVS, "split")), r"\d+% padding"),
    "layout_diagrams": (lambda: plots.layout_diagrams({n: make_layout(CONVS, n, row_len=192) for n in LAYOUTS}),
                        r"\d+% padding"),
    "waste_bars": (lambda: plots.waste_bars({n: make_layout(CONVS, n, row_len=192) for n in LAYOUTS}), r"\d% pad"),
    "attention_mask_plot": (lambda: plots.attention_mask_plot(make_layout(CONVS, "packed", row_len=192)), None),
    "weight_heatmap": (lambda: plots.weight_heatmap(BATCH, WEIGHTS["turn-mean"], title="turn-mean"), None),
    "weight_heatmap_grid": (lambda: plots.weight_heatmap_grid(BATCH, WEIGHTS), r"Σw = \d"),
    "weight_vs_length": (lambda: plots.weight_vs_length({s: (BATCH, w) for s, w in WEIGHTS.items()}),
                         r"shortest ÷ longest \d"),
    "share_by_bucket": (lambda: plots.share_by_bucket(
        {s: report.bucket_shares(report.length_profile(BATCH, WEIGHTS[s])) for s in SCHEMES[:3]}), None),
    "effective_vs_ideal": (_eff, r"max relative error \d"),
    "tokenization_lengths": (lambda: plots.tokenization_lengths(
        {"byte template": [5, 12, 30, 41, 60], "BPE": [3, 6, 14, 20, 26]}), r"0\.47× the loss tokens"),
    "training_curves": (lambda: plots.training_curves(_history()), None),
    "bucket_curves": (lambda: plots.bucket_curves(_history(), "token-mean"), None),
    "p_long_figure": (lambda: plots.p_long_figure(_p_long_table()), r"0\.15\d\npred\. 0\.148"),
    "e2_figure": (lambda: plots.e2_figure(_e2_table()), r"GA 16: naive 0\.4"),
    "e4_figure": (lambda: plots.e4_figure(_e4_table()), r"pred\. 0\.050"),
    "e5_figure": (lambda: plots.e5_figure(_e5_table()), r"0\.102"),
    "gradient_share_figure": (lambda: plots.gradient_share_figure(_turn_buckets()), None),
    "loss_by_length_figure": (lambda: plots.loss_by_length_figure(_history()), r"= seq-mean-token-mean: drawn on top"),
    "plot_dp_gradient_errors": (lambda: plots.plot_dp_gradient_errors(_dp_errors()), r"2\.4e-01"),
    "plot_dp_weight_distance": (lambda: plots.plot_dp_weight_distance(_dp_distance()), None),
    "plot_e3": (lambda: plots.plot_e3(_e3_table()), r"5\.0e-01"),
    "rl.ratio_curves": (lambda: rl_plots.ratio_curves(_rl_wide(rl.E6_TASK)), r"matched reward 0\.\d+: GRPO 4"),
    "rl.length_curves": (lambda: rl_plots.length_curves(_rl_wide(rl.E6_TASK)), None),
    "rl.experiment_figure": (lambda: rl_plots.experiment_figure(_rl_wide(rl.E7_TASK), rl.E7_TASK),
                             r"GRPO 0\.1\d"),
    "rl.template_weights": (lambda: rl_plots.template_weights(rl.weights_by_template(rl.E6_TASK)), r"0\.1×"),
    "beyond.variance_vs_length": (lambda: beyond_plots.variance_vs_length(_e8_by_length()), r"slope \+1\.10"),
    "beyond.weight_profile": (lambda: beyond_plots.weight_profile(_e8_profile()), None),
    "beyond.family_variance": (lambda: beyond_plots.family_variance(_e8_steps(), ("seq-mean-token-sum",
                                                                                    "delta-l α=0.5", "delta-l α=1")),
                               r"0\.\d\d"),
    "beyond.e8_figure": (lambda: beyond_plots.e8_figure(_e8_by_length(), _e8_steps(), _e8_curves(), _e8_profile()),
                         r"target 3\.17"),
    "beyond.e9_figure": (lambda: beyond_plots.e9_figure(*_e9_parts()), r"pred\. 0\.114"),
    "beyond.e10_figure": (lambda: beyond_plots.e10_figure(_e10_by_length()), r"slope \+1\.30"),
    "beyond.delta_l_figure": (lambda: beyond_plots.delta_l_figure(_e8_profile(), _delta_l_curves(), 1.0),
                              r"0\.65"),
}
HELPERS = {"relative_weights", "new_figure", "png_bytes", "png_of_rgba", "made_by", "redraws", "refit_view",
           "without_layout_engine", "InViewLocator", "fixed_margins", "legend_width", "tick_labels",
           "y_label_room", "show", "scheme_color", "readable_log_scale", "draw_gradient_errors",
           "draw_weight_distance", "draw_metric", "matched_reward_ratios", "matched_reward_title"}


def test_p_long_numbers_sit_beside_what_they_label_when_measured_and_predicted_are_far_apart():
    """A short (fast-mode) run measures 0.021 against a prediction of 0.135: each number is written at its own
    height (close ones share one label above both: CASES)."""
    table = pd.DataFrame([dict(run=run, metric="p_long", seed=s, value=value, predicted=predicted)
                          for run, value, predicted in (("token-mean", 0.021, 0.135), ("token-sum", 0.18, 0.186))
                          for s in range(2)])
    fig = plots.p_long_figure(table)
    at = {t.get_text(): t.xy[1] for t in fig.axes[0].texts}
    assert at == {"0.021": pytest.approx(0.021), "pred. 0.135": pytest.approx(0.135),
                  "0.180\npred. 0.186": pytest.approx(0.186)}
    assert_readable(fig)


def test_e2_says_which_curves_coincide_and_draws_each_distance_where_it_is():
    """Equal lengths: naive = global, so one curve hides the other (its legend entry says so); a distance of 2e-14
    is drawn at 2e-14, and an exact 0 at 1e-17, said on the figure."""
    table = _e2_table()
    mixed_global = (table.format == "mixed lengths") & (table.normalization == "global")
    table.loc[mixed_global & (table.grad_accum == 16), "value"] = 2e-14
    table.loc[mixed_global & (table.grad_accum == 2), "value"] = 0.0
    fig = plots.e2_figure(table)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"global, equal lengths", "naive (local), equal lengths (= global, on top)",
                          "global, mixed lengths", "naive (local), mixed lengths"}
    drawn = dict(zip(lines["global, mixed lengths"].get_xdata(), lines["global, mixed lengths"].get_ydata()))
    assert drawn[16] == 2e-14 and drawn[2] == 1e-17 and drawn[4] == 1e-5
    assert [t.get_text() for t in ax.texts] == ["0 (bit-identical) drawn at 1e-17"]
    assert_readable(fig)
    assert lines["naive (local), mixed lengths"].get_linestyle() == "-"


def test_every_plot_function_has_a_case():
    """A new plot function must be added to CASES (and so to the readability checks)."""
    public = {name for name, fn in inspect.getmembers(plots, inspect.isfunction) if not name.startswith("_")}
    for prefix, module in (("rl", rl_plots), ("beyond", beyond_plots)):
        public |= {f"{prefix}.{name}" for name, fn in inspect.getmembers(module, inspect.isfunction)
                   if fn.__module__ == module.__name__ and not name.startswith("_")}
    missing = {n for n in public if n.split(".")[-1] not in HELPERS} - set(CASES)
    assert not missing, f"plot functions without a readability case: {sorted(missing)}"


@pytest.mark.parametrize("name", CASES)
def test_plot_returns_readable_labelled_figure_without_pyplot(name):
    make, headline = CASES[name]
    open_before = plt.get_fignums()
    fig = make()
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert axes
    assert any(ax.get_xlabel() for ax in axes), name
    for ax in axes:  # a y label on the axes itself or on one sharing its y axis (grids label the first column)
        assert any(a.get_ylabel() for a in ax.get_shared_y_axes().get_siblings(ax)), name
    for bar in (ax for ax in fig.axes if ax.get_label() == "<colorbar>"):
        assert bar.get_ylabel() or bar.get_xlabel()  # colour bars say what the colour means
    assert_readable(fig)
    if headline:
        assert re.search(headline, figure_text(fig)), f"{name}: no headline number /{headline}/ in\n{figure_text(fig)}"
    assert plt.get_fignums() == open_before


def test_readability_checks_catch_what_they_claim():
    """Negative controls for figure_checks: each defect of issue 12, drawn on purpose, is reported."""
    fig, ax = plots.new_figure()
    ax.plot([1, 2, 3], [0.9, 2.0, 4.4])  # the E6 ratio curves before: one labelled tick, "1.0"
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    assert any("y axis (log) has 1 labelled tick" in p for p in figure_problems(fig)), figure_problems(fig)
    plots.readable_log_scale(ax)
    assert figure_problems(fig) == []

    fig, ax = plots.new_figure()
    ax.bar([0, 1], [0.76, 1.0])
    ax.set_yscale("log")
    assert any("bars on a log axis" in p for p in figure_problems(fig))
    ax.set_yscale("linear")
    ax.set_ylim(0.7, 1.05)
    assert any("leaves out 0" in p for p in figure_problems(fig))

    fig, ax = plots.new_figure()
    ax.plot(np.linspace(0, 1, 50), np.linspace(0, 1, 50), label="a line through the middle")
    ax.legend(loc="center")
    assert any("legend covers" in p for p in figure_problems(fig))

    fig, ax = plots.new_figure(width=3)
    ax.bar(range(3), [1, 2, 3])
    ax.set_xticks(range(3), ["seq-mean-token-mean", "token-mean", "token-sum"])
    assert any("x tick labels overlap" in p for p in figure_problems(fig))

    fig, ax = plots.new_figure(width=3, height=2)
    ax.plot([0, 1], [0, 1])
    ax.set_title("a title far too long to fit on a figure only three inches wide, so it is cut off")
    fig.set_layout_engine("none")
    assert any("cut off" in p for p in figure_problems(fig))


@pytest.mark.parametrize("low, high", [(0.93, 1.14), (0.9, 4.4), (0.12, 1.16), (1e-17, 0.5), (3e-3, 2e-2),
                                       (1.0, 1.0 + 1e-6), (2.0, 7.0)])
def test_readable_log_locator_labels_two_ticks_in_any_view(low, high):
    ticks = plots.ReadableLogLocator().tick_values(low, high)
    assert len(ticks) >= 2 and all(low * (1 - 1e-9) <= t <= high * (1 + 1e-9) for t in ticks), ticks
    assert len(ticks) <= 10


@given(low=st.floats(1e-6, 1e6), factor=st.floats(1.05, 1e4))
@example(low=0.85, factor=4.5 / 0.85)  # E7's ratio panel: 0.9 | 1 | 2 | 3 | 4 before
@example(low=0.089, factor=5.0)
def test_readable_log_ticks_never_crowd_each_other(low, factor):
    """No two labels closer than a tenth of the view's span on the log axis (E7's 0.9 under 1 was)."""
    high = low * factor
    ticks = sorted(plots.ReadableLogLocator().tick_values(low, high))
    assert len(ticks) >= 2, ticks
    gaps = np.diff(np.log10(ticks))
    assert gaps.min() >= np.log10(factor) / 10 * (1 - 1e-6), ticks


def test_heatmap_of_all_zero_weights_draws_without_nan():
    zero = torch.zeros(BATCH.shape, dtype=torch.float64)
    rel = plots.relative_weights(BATCH, zero)
    assert np.all(rel[BATCH.loss_mask.numpy()] == 0)
    assert isinstance(plots.weight_heatmap(BATCH, zero), Figure)


chat_sets = st.builds(lambda n, seed, turns: synth.make_chats(n, turns=(1, turns), seed=seed),
                      st.integers(1, 8), st.integers(0, 10_000), st.integers(1, 4))


@given(convs=chat_sets, alpha=st.floats(-1, 2), scheme=st.sampled_from(SCHEMES))
def test_profiles_add_up(convs, alpha, scheme):
    batch = multiturn_layout(convs)
    weights = token_weights(batch, Scheme(scheme, alpha=alpha))
    profile = report.length_profile(batch, weights)
    assert profile.length.sum() == int(batch.loss_mask.sum()) and len(profile) == len(convs)
    assert np.isclose(profile.share.sum(), 1.0)
    assert np.isclose((profile.relative * profile.length).sum(), profile.length.sum())  # relative averages to 1
    rel = plots.relative_weights(batch, weights)
    assert np.isfinite(rel[batch.loss_mask.numpy()]).all()
    buckets = report.bucket_shares(profile)
    assert len(buckets) == len(LENGTH_BUCKETS) - 1
    assert np.isclose(buckets.share.sum(), 1.0) and np.isclose(buckets.token_share.sum(), 1.0)
    assert buckets.units.sum() == len(profile)


@given(convs=chat_sets)
def test_profile_of_the_two_means(convs):
    batch = multiturn_layout(convs)
    token = report.length_profile(batch, token_weights(batch, "token-mean"))
    seq = report.length_profile(batch, token_weights(batch, "seq-mean-token-mean"))
    assert np.allclose(token.relative, 1.0)
    assert np.allclose(seq.share, 1.0 / len(seq))
    assert np.allclose(seq.relative, token.length.sum() / (len(seq) * seq.length))
    turns = report.length_profile(batch, token_weights(batch, "turn-mean"), by="turn")
    assert np.allclose(turns.share, 1.0 / len(turns))


def test_length_profile_rejects_unknown_unit():
    with pytest.raises(ValueError, match="by="):
        report.length_profile(BATCH, WEIGHTS["token-mean"], by="row")


def test_data_path_names_the_shipped_files_when_missing():
    assert data_path("george_washington.jsonl").exists()
    with pytest.raises(FileNotFoundError, match="default_chats.jsonl"):
        data_path("nope.jsonl")


def test_e7_summary_shows_the_right_answers_length_and_e6_the_entropy():
    """E7's templates are fixed text, so per-token entropy only measures length there: E7's last panel is the
    right answers' length, E6's the wrong answers' entropy."""
    e7 = rl_plots.experiment_figure(_rl_wide(rl.E7_TASK), rl.E7_TASK).axes[-1].get_ylabel()
    e6 = rl_plots.experiment_figure(_rl_wide(rl.E6_TASK), rl.E6_TASK).axes[-1].get_ylabel()
    assert "right answers" in e7 and "entropy" in e6


def test_house_figures_make_ticks_only_inside_the_view():
    """new_figure's axes (InViewLocator): matplotlib makes a tick for every location its locator returns, so the
    ticks it makes are the ones in view, still ≥ 2 labelled ones; matplotlib's AutoLocator makes more."""
    from matplotlib.ticker import AutoLocator

    fig, ax = plots.new_figure()
    ax.plot([0.3, 187.5], [-0.5, 14.2])
    fig.draw_without_rendering()
    for axis in (ax.xaxis, ax.yaxis):
        lo, hi = sorted(axis.get_view_interval())
        made = [tick.get_loc() for tick in axis.get_major_ticks()]
        assert len(made) >= 2 and all(lo <= loc <= hi for loc in made), (made, lo, hi)
        axis.set_major_locator(AutoLocator())
    fig.draw_without_rendering()
    assert any(not lo <= t.get_loc() <= hi for t in ax.yaxis.get_major_ticks())  # the control: one beyond the view


def test_notebooks_show_figures_as_the_png_the_widgets_show():
    """In IPython a Figure displays as plots.png_bytes' PNG, the one the apps' Image widgets show, and that PNG
    has the pixels of matplotlib's own PNG of the figure."""
    import base64

    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        plots._enable_inline_display()
        fig, ax = plots.new_figure()
        ax.plot([0, 1], [0, 1])
        shown = shell.display_formatter.format(fig)[0]["image/png"]
        shown = base64.b64decode(shown) if isinstance(shown, str) else shown  # IPython ≥ 9 hands out base64
        assert shown == plots.png_bytes(fig)
        own = io.BytesIO()
        fig.savefig(own, format="png", bbox_inches=None)
        assert np.array_equal(decoded(shown), decoded(own.getvalue()))
        ax.plot([0, 1], [1, 0])  # the control: another picture, other pixels
        assert not np.array_equal(decoded(plots.png_bytes(fig)), decoded(shown))
    finally:
        InteractiveShell.clear_instance()


@settings(max_examples=40)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_png_of_rgba_decodes_to_its_pixels(height, width, seed):
    """The widgets' fast PNG encoder (no row filters) is lossless: Pillow reads back every pixel, alpha included."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[: height // 2] = pixels[0, 0]  # flat areas too, as in a plot
    assert np.array_equal(decoded(plots.png_of_rgba(pixels)), pixels)
