"""Every plot of plots/weights.py returns a Figure with labelled axes and leaves pyplot alone; the per-sample
profiles behind them (report.length_profile / bucket_shares) add up."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.figure import Figure

from lossreduce_demo import plots, report, synth
from lossreduce_demo.layouts import LAYOUTS, make_layout, multiturn_layout
from lossreduce_demo.reductions import SCHEMES, Scheme, effective_weights, token_weights

CONVS = synth.make_chats(6, turns=(1, 3), seed=3)
BATCH = multiturn_layout(CONVS)
WEIGHTS = {s: token_weights(BATCH, s) for s in SCHEMES}


def _eff():
    w, rank, step = effective_weights(BATCH, "token-mean", ranks=2, micro_batches=2, normalization="local")
    return plots.effective_vs_ideal(BATCH, w, WEIGHTS["token-mean"], rank=rank, step=step)


CASES = {
    "token_strip": lambda: plots.token_strip(synth.GEORGE_WASHINGTON),
    "layout_diagram": lambda: plots.layout_diagram(make_layout(CONVS, "split")),
    "layout_diagrams": lambda: plots.layout_diagrams({n: make_layout(CONVS, n, row_len=192) for n in LAYOUTS}),
    "waste_bars": lambda: plots.waste_bars({n: make_layout(CONVS, n, row_len=192) for n in LAYOUTS}),
    "attention_mask_plot": lambda: plots.attention_mask_plot(make_layout(CONVS, "packed", row_len=192)),
    "weight_heatmap": lambda: plots.weight_heatmap(BATCH, WEIGHTS["turn-mean"], title="turn-mean"),
    "weight_heatmap_grid": lambda: plots.weight_heatmap_grid(BATCH, WEIGHTS),
    "weight_vs_length": lambda: plots.weight_vs_length({s: (BATCH, w) for s, w in WEIGHTS.items()}),
    "share_by_bucket": lambda: plots.share_by_bucket(
        {s: report.bucket_shares(report.length_profile(BATCH, WEIGHTS[s])) for s in SCHEMES[:3]}),
    "effective_vs_ideal": _eff,
}


@pytest.mark.parametrize("name", CASES)
def test_plot_returns_labelled_figure_without_pyplot(name):
    open_before = plt.get_fignums()
    fig = CASES[name]()
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert axes
    assert any(ax.get_xlabel() for ax in axes), name
    for ax in axes:  # a y label on the axes itself or on one sharing its y axis (grids label the first column)
        assert any(a.get_ylabel() for a in ax.get_shared_y_axes().get_siblings(ax)), name
    for bar in (ax for ax in fig.axes if ax.get_label() == "<colorbar>"):
        assert bar.get_ylabel()  # colour bars say what the colour means
    assert plt.get_fignums() == open_before


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
    assert len(buckets) == len(report.LENGTH_BUCKETS) - 1
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
    assert report.data_path("george_washington.jsonl").exists()
    with pytest.raises(FileNotFoundError, match="default_chats.jsonl"):
        report.data_path("nope.jsonl")
