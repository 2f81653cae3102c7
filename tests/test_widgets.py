"""Widget apps driven programmatically (no frontend): controls change `.state` as the maths says, odd values give a
message and never NaN, and no pyplot figure is left open. One test drives a slider through a real kernel's comm."""

from __future__ import annotations

import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from lossreduce_demo import widgets
from lossreduce_demo.reductions import SCHEMES
from lossreduce_demo.synth import FAMILIES


@pytest.fixture(autouse=True)
def no_pyplot_figures_left():
    yield
    assert plt.get_fignums() == []


def assert_valid(app):
    assert "Invalid" not in app.state["message"], app.state["message"]
    assert widgets.state_is_finite(app.state)
    assert app.figures and all(isinstance(f, Figure) for f in app.figures.values())


def assert_invalid(app, *words):
    assert app.state["message"].startswith("Invalid setting")
    assert all(w in app.state["message"] for w in words), app.state["message"]
    assert "Invalid setting" in app.message.value and app.figures == {}


# ---------------------------------------------------------------- FormatsExplorer


def test_formats_explorer_cost_grows_with_turns_and_bad_row_length_is_reported():
    app = widgets.FormatsExplorer(family="fixed", short_mean=8)
    assert_valid(app)
    ratios = [app.set(turns=t)["split_over_multiturn_tokens"] for t in (1, 2, 3, 4)]
    assert ratios[0] == 1.0 and "same rows" in app.set(turns=1)["message"]
    assert all(a < b for a, b in zip(ratios, ratios[1:]))
    assert all(abs(r - (t + 1) / 2) < 0.15 * (t + 1) / 2 for r, t in zip(ratios, (1, 2, 3, 4)))
    waste = app.set(turns=3)["waste"].set_index("layout")
    assert waste.loss_tokens.nunique() == 1  # same targets in every layout
    assert waste.tokens["split"] > waste.tokens["multiturn"] == waste.tokens["packed"]  # packing only moves tokens
    app.row_len.value = 32  # shorter than a conversation: packing is impossible
    assert_invalid(app, "longer than the limit of 32")
    app.row_len.value = 192
    assert_valid(app)


# ---------------------------------------------------------------- WeightExplorer


def test_weight_explorer_schemes_move_weight_between_short_and_long():
    app = widgets.WeightExplorer(layout="multiturn")
    lengths = app.state["profile"].length
    spread = lengths.max() / lengths.min()
    assert spread > 3
    assert app.set(scheme="token-mean")["shortest_over_longest"] == pytest.approx(1.0)
    token_share = app.state["share_longer_half"]
    assert token_share == pytest.approx(app.state["tokens_longer_half"])
    seq = app.set(scheme="seq-mean-token-mean")
    assert seq["shortest_over_longest"] == pytest.approx(spread)
    assert seq["relative_longest"] < 1 < seq["relative_shortest"]  # long responses' tokens lose weight
    assert seq["share_longer_half"] < token_share
    for alpha in (0.0, 0.5, 1.0):
        assert app.set(scheme="length-power", alpha=alpha)["shortest_over_longest"] == pytest.approx(spread ** (1 - alpha))
    assert not app.alpha.disabled and app.l_max.disabled
    assert_valid(app)


def test_weight_explorer_every_scheme_and_layout_is_finite():
    app = widgets.WeightExplorer(n_conversations=6)
    app.draw_figures = False
    for layout in ("split", "multiturn", "packed"):
        for scheme in SCHEMES:
            state = app.set(layout=layout, scheme=scheme)
            assert widgets.state_is_finite(state) and "Invalid" not in state["message"], (layout, scheme)
            assert state["profile"].share.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("odd, note", [
    ({"long_fraction": 0.0}, None),
    ({"long_fraction": 1.0}, None),
    ({"turns": 1, "scheme": "turn-mean"}, "turn-mean = seq-mean-token-mean"),
    ({"scheme": "length-power", "alpha": -1.0}, "favours short responses"),
    ({"scheme": "length-power", "alpha": 2.0}, "favours long responses"),
    ({"scheme": "seq-mean-token-sum-norm", "l_max": 1}, "shorter than the longest response"),
    ({"family": "fixed", "short_mean": 5}, "same number of loss tokens"),
])
def test_weight_explorer_odd_values_give_notes_not_nan(odd, note):
    app = widgets.WeightExplorer(n_conversations=8)
    state = app.set(**odd)
    assert_valid(app)
    if note:
        assert note in state["message"] and note in app.message.value


def test_weight_explorer_invalid_setting_is_reported_then_recovers():
    app = widgets.WeightExplorer(n_conversations=8)
    app.set(family="uniform", short_mean=30, long_mean=5)
    assert_invalid(app, "low=30", "high=5")
    app.long_mean.value = 40
    assert_valid(app)
    assert app.state["profile"].length.between(31, 41).all()  # uniform 30..40 characters + <|eot|>


def test_extreme_long_fractions_shift_the_step():
    app = widgets.WeightExplorer(scheme="token-mean")
    all_short = app.set(long_fraction=0.0)["profile"].length.mean()
    all_long = app.set(long_fraction=1.0)["profile"].length.mean()
    assert all_long > 3 * all_short


# ---------------------------------------------------------------- AccumulationExplorer


def test_global_normalisation_is_exact_for_every_scheme_and_split():
    app = widgets.AccumulationExplorer(normalization="global")
    app.draw_figures = False
    for scheme in SCHEMES:
        for ranks, k in ((1, 4), (2, 2), (4, 5)):
            state = app.set(scheme=scheme, ranks=ranks, micro_batches=k)
            assert state["max_rel_error"] < 1e-12, (scheme, ranks, k)
            assert state["total_weight"] == pytest.approx(state["ideal_total_weight"])


def test_local_normalisation_errs_with_skewed_lengths_only():
    app = widgets.AccumulationExplorer(scheme="token-mean", normalization="local", micro_batches=4)
    assert app.state["max_rel_error"] > 0.05
    assert app.set(sort_by_length=True)["max_rel_error"] > 0.05
    assert app.set(micro_batches=1)["max_rel_error"] < 1e-12  # one micro-batch is the full batch
    # negative control: equal lengths, one turn, no system prompt difference in loss tokens
    assert app.set(family="fixed", micro_batches=4)["max_rel_error"] < 1e-12
    seq = app.set(family="bimodal", scheme="seq-mean-token-mean")
    assert seq["max_rel_error"] < 1e-12  # 16 rows / 4 micro-batches: equal sample counts survive naive GA
    assert app.set(micro_batches=5)["max_rel_error"] > 0.05  # 16 rows / 5: unequal sample counts do not
    assert_valid(app)
    assert "Invalid" not in app.state["message"]


def test_more_micro_batches_than_rows_is_a_note():
    app = widgets.AccumulationExplorer(n_conversations=4)
    state = app.set(ranks=4, micro_batches=16, normalization="global")
    assert "empty" in state["message"] and state["max_rel_error"] < 1e-12
    assert_valid(app)


def test_dashboard_tabs_hold_both_apps():
    dash = widgets.Dashboard(n_conversations=8)
    assert dash.widget.children == (dash.weights.widget, dash.accumulation.widget)
    dash.accumulation.normalization.value = "global"
    assert dash.state["accumulation"]["max_rel_error"] < 1e-12
    dash.weights.scheme.value = "token-mean"
    assert dash.update()["weights"]["shortest_over_longest"] == pytest.approx(1.0)


# ---------------------------------------------------------------- a real kernel: the slider's comm


def test_weight_explorer_reacts_to_a_comm_update_in_a_real_kernel(tmp_path):
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    cells = [
        "from lossreduce_demo import widgets\napp = widgets.WeightExplorer(n_conversations=8, scheme='token-mean')\n"
        "print(app.scheme.model_id, app.alpha.model_id, app.scheme.options.index('length-power'))",
        "import json\nprint(json.dumps({'scheme': app.state['scheme'], 'ratio': app.state['shortest_over_longest'],"
        " 'spread': float(app.state['profile'].length.max() / app.state['profile'].length.min()),"
        " 'figures': sorted(app.figures), 'message': app.state['message']}))",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel"))
    client = NotebookClient(nb, km=km, timeout=120, kernel_name="python3")
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        scheme_id, alpha_id, index = nb.cells[0].outputs[0]["text"].split()
        kc = client.kc
        # what the browser sends when you pick a scheme (a Dropdown syncs its index) and drag the α slider
        for comm_id, change in ((scheme_id, {"index": int(index)}), (alpha_id, {"value": 0.0})):
            content = {"comm_id": comm_id, "data": {"method": "update", "state": change, "buffer_paths": []}}
            kc.shell_channel.send(kc.session.msg("comm_msg", content))
        client.execute_cell(nb.cells[1], 1)  # shell messages run in order: both updates have been handled
    state = json.loads(nb.cells[1].outputs[0]["text"])
    assert state["scheme"] == "length-power α=0" and state["message"] == ""
    assert math.isclose(state["ratio"], state["spread"]) and state["spread"] > 1  # α = 0 is seq-mean-token-mean
    assert state["figures"] == ["buckets", "heatmap", "length"]


# ---------------------------------------------------------------- FrameworkExplorer (notebook 07)


def test_framework_explorer_lists_each_frameworks_options_as_the_library_spells_them():
    from lossreduce_demo.frameworks import FRAMEWORKS, option_settings, spell

    app = widgets.FrameworkExplorer(micro_batches=4, ranks=2)
    for name in FRAMEWORKS:
        app.framework.value = name
        assert [label for label, _ in app.option.options] == [spell(s) for s in option_settings(name)]
        assert app.state["framework"] == name and app.state["option"] == option_settings(name)[0]
        assert widgets.state_is_finite(app.state) and app.state["message"] == ""
    app.framework.value = "trl-grpo"
    assert "loss_type='dr_grpo'" in [label for label, _ in app.option.options]


def test_framework_explorer_error_is_the_presets_own_and_zero_where_the_library_is_exact():
    from lossreduce_demo.frameworks import effective_weights

    app = widgets.FrameworkExplorer(framework="transformers", micro_batches=4, ranks=2)
    assert app.state["max_rel_error"] < 1e-12 and app.state["formula"] == "1/N"
    assert "exact" in app.headline.value and "average_tokens_across_devices=True" in app.headline.value
    naive = app.set(option=2)  # num_items_in_batch=False: the per-micro-batch mean / K
    batch = app.batch()
    w = effective_weights(batch, "transformers", ranks=2, micro_batches=4, num_items_in_batch=False)
    ideal = effective_weights(batch, "transformers", num_items_in_batch=False)
    expected = float(((w - ideal).abs()[batch.loss_mask] / ideal[batch.loss_mask]).max())
    assert naive["max_rel_error"] == pytest.approx(expected, rel=1e-12) and expected > 0.5
    assert f"{expected:.1%}" in app.headline.value
    # verl's default Dr. GRPO horizon is each micro-batch's padded width: not the full batch's
    horizon = app.set(framework="verl", option=4)
    assert horizon["formula"] == "1/(M·L_rk)" and horizon["max_rel_error"] > 1
    assert app.set(ranks=1, micro_batches=1)["max_rel_error"] < 1e-12


def test_framework_explorer_a_masked_completion_still_counts_in_trl_grpos_b():
    """grpo's per-row mean counts the fully masked row: the other rows keep exactly their weights (M = 16 either
    way); a scheme that drops it from B (reductions' default) would raise them by 16/15."""
    app = widgets.FrameworkExplorer(framework="trl-grpo", option={"loss_type": "grpo"}, micro_batches=1, ranks=1)
    with_masked = app.state["per_sample"].set_index("sample").effective
    without = app.set(mask_truncated=False)["per_sample"].set_index("sample").effective
    assert widgets.TRUNCATED_ROW not in with_masked.index and widgets.TRUNCATED_ROW in without.index
    assert (with_masked / without.loc[with_masked.index]).to_numpy() == pytest.approx([1.0] * len(with_masked))


# ---------------------------------------------------------------- DeltaLExplorer (notebook 08)


def test_delta_l_explorer_predicts_the_quietest_unbiased_step_at_a_one():
    app = widgets.DeltaLExplorer()
    curves = app.state["curves"]
    assert curves.loc[curves.variance_vs_a0.idxmin(), "a"] == 1.0 and curves.variance_vs_a0.iloc[0] == 1.0
    one = app.state["noise_to_signal_per_sequence"], app.state["noise_to_signal_per_token"]
    assert one[0] < 1 < one[1]  # 1/n beats token-mean only when the signal comes once per sequence
    assert f"step variance {app.state['variance_vs_a0']:.2f}× that of a=0" in app.state["message"]
    zero = app.set(a=0.0)
    assert zero["variance_vs_a0"] == 1.0 and widgets.state_is_finite(zero)
    narrow = app.set(spread=0.2, a=1.0)  # nearly equal lengths: the weighting hardly matters
    assert narrow["variance_vs_a0"] > 0.9 > one[0]
    assert set(app.figures) == {"delta_l"} and isinstance(app.figures["delta_l"], Figure)


# ---------------------------------------------------------------- headline numbers as text, fixed layout on redraw


def test_every_explorer_shows_its_headline_number_as_text():
    """The numbers the README and the app's text promise, beside the plots (not only inside them)."""
    weights, accumulation = widgets.WeightExplorer(), widgets.AccumulationExplorer()
    assert "weighs 8.75× one of the longest" in weights.headline.value
    assert "26.8%" in accumulation.headline.value
    accumulation.normalization.value = "global"
    assert "0.0%" in accumulation.headline.value and "exact" in accumulation.headline.value
    formats = widgets.FormatsExplorer()
    assert f"{formats.state['split_over_multiturn_tokens']:.2f}× the tokens" in formats.headline.value
    assert "packed" in formats.headline.value and "%" in formats.headline.value
    weights.set(family="uniform", short_mean=30, long_mean=4)  # invalid: the headline goes with the figures
    assert weights.headline.value == ""


# a 5-letter reply is 6 loss tokens (its end-of-turn token too); multi-turn: a sample is the whole conversation
@pytest.mark.parametrize("layout, turns, tokens", [("multiturn", 1, 6), ("multiturn", 3, 18), ("split", 3, 6)])
def test_weight_headline_at_equal_lengths_says_every_token_weighs_the_same(layout, turns, tokens):
    app = widgets.WeightExplorer(family="fixed", short_mean=5, layout=layout, turns=turns, scheme="seq-mean-token-mean")
    headline = app.headline.value
    assert f"every sample has {tokens} loss tokens" in headline and "the same weight" in headline, headline
    assert "shortest ÷ longest 1×" in headline and "longer half" not in headline and "0%" not in headline
    app.set(family="bimodal")  # mixed lengths: the longer half is back
    assert "longer half" in app.headline.value and "every sample has" not in app.headline.value


def test_dashboard_tab_labels_fit_their_tabs():
    titles = widgets.Dashboard(n_conversations=4).widget.titles
    assert all(len(t) <= 18 for t in titles), titles  # ~144 px per tab in JupyterLab and Voilà


@pytest.mark.parametrize("control, value", [("long_fraction", 0.5), ("scheme", "token-sum"), ("turns", 2),
                                            ("layout", "split"), ("family", "fixed"), ("long_fraction", 0.0)])
def test_a_redraw_with_the_first_layout_stays_readable(control, value):
    """LayoutCache: the second figure reuses the first one's axes positions (no constrained layout) and still has
    every tick labelled and no text cut off."""
    from figure_checks import assert_readable

    from lossreduce_demo.plots import LayoutCache

    app, cache = widgets.WeightExplorer(), LayoutCache()
    for name, fig in app.figures.items():
        assert_readable(fig)  # drawn with constrained layout
        cache.remember(name, fig)
    app.set(**{control: value})
    for name, fig in app.figures.items():
        cache.reuse(name, fig)  # the heatmap's colour bar too, unless its tick labels got longer
        assert_readable(fig)


def test_rl_train_click_prints_the_ratio_at_matched_reward(monkeypatch):
    """Notebook 05's Train path with a stand-in trainer: the headline gives each recipe's ratio at matched reward."""
    from lossreduce_demo import rl

    monkeypatch.setattr(rl, "warm_start", lambda task, seed: "start")

    def fake_train(task, cfg, seed, start, callback, progress):
        top = {"seq-mean-token-mean": 3.0}.get(cfg.scheme, 1.0)
        for step in range(6):
            callback(step, {"step": step, "expected_reward": 0.2 + 0.1 * step,
                            "long_short_wrong_ratio": 1 + (top - 1) * step / 5}, None)

    monkeypatch.setattr(rl, "train_policy", fake_train)
    app = widgets.RLTrainingApp(rl.E6_TASK)
    app.draw_figures = False
    app.button.click()
    assert "at matched reward 0.70: GRPO 3" in app.headline.value and "done" in app.message.value


def constrained_heatmap(app) -> Figure:
    """The weight explorer's heatmap drawn into a constrained-layout figure (its colour bar taking room from the
    axes), whose height follows the rows: a figure for LayoutCache to lay out (the explorer's own has fixed margins)."""
    from lossreduce_demo import plots
    from lossreduce_demo.reductions import token_weights

    batch = app.batch()
    fig, ax = plots.new_figure(width=7.5, height=max(2.8, 1.2 + 0.16 * batch.shape[0]))
    return plots.weight_heatmap(batch, token_weights(batch, app.scheme.value), ax=ax)


def test_the_same_figure_again_reuses_its_layout():
    from lossreduce_demo.plots import LayoutCache

    app, delta_l, cache = widgets.AccumulationExplorer(), widgets.DeltaLExplorer(), LayoutCache()
    figures = {**delta_l.figures, "heatmap": constrained_heatmap(app)}  # both laid out by constrained layout
    for name, fig in figures.items():
        fig.draw_without_rendering()  # constrained layout places the axes
        cache.remember(name, fig)
    app.update()
    delta_l.update()
    figures = {**delta_l.figures, "heatmap": constrained_heatmap(app)}
    assert {name for name, fig in figures.items() if cache.reuse(name, fig)} == {"delta_l", "heatmap"}
    assert all(fig.get_layout_engine() is None for fig in figures.values())  # fixed: no layout pass at all


def test_a_layout_is_kept_per_figure_shape():
    """A heatmap's height follows its rows: going back to a format seen before reuses that row count's layout
    (the positions constrained layout gives a fresh figure), a new row count is laid out afresh."""
    from lossreduce_demo.plots import LayoutCache

    app, cache = widgets.WeightExplorer(turns=2), LayoutCache()
    for layout in ("multiturn", "split"):  # 16 and 32 rows: two heights
        app.layout.value = layout
        figure = constrained_heatmap(app)
        figure.draw_without_rendering()
        cache.remember("heatmap", figure)
    app.layout.value = "packed"
    assert not cache.reuse("heatmap", constrained_heatmap(app))
    app.layout.value = "multiturn"
    again = constrained_heatmap(app)
    assert cache.reuse("heatmap", again)
    fresh = constrained_heatmap(widgets.WeightExplorer(turns=2))
    fresh.draw_without_rendering()
    np.testing.assert_allclose([ax.get_position().bounds for ax in again.axes],
                               [ax.get_position().bounds for ax in fresh.axes], atol=1e-9)


def test_a_layout_refused_for_longer_labels_leaves_the_figure_as_drawn_afresh():
    """Longer colour-bar labels (0.25 after 0.5): no reuse, and constrained layout places the axes exactly as on a
    figure the cache never touched (the trial positions are undone and every axes stays in the layout)."""
    from lossreduce_demo.plots import LayoutCache

    app, cache = widgets.WeightExplorer(), LayoutCache()
    first = constrained_heatmap(app)
    first.draw_without_rendering()
    cache.remember("heatmap", first)
    app.set(long_fraction=0.5)
    refused = constrained_heatmap(app)
    assert not cache.reuse("heatmap", refused)
    fresh = constrained_heatmap(widgets.WeightExplorer(long_fraction=0.5))
    for fig in (refused, fresh):
        fig.draw_without_rendering()
    np.testing.assert_allclose([ax.get_position().bounds for ax in refused.axes],
                               [ax.get_position().bounds for ax in fresh.axes], atol=1e-9)


@pytest.mark.parametrize("n_conversations, turns", [(1, 1), (2, 1), (12, 5)])
def test_formats_diagram_with_fixed_margins_stays_readable_from_one_row_to_sixty(n_conversations, turns):
    """The formats diagram is laid out with fixed margins (no constrained layout): from the smallest to the
    tallest setting no label is cut off and every axis keeps its labelled ticks."""
    from figure_checks import assert_readable, labelled_ticks

    fig = widgets.FormatsExplorer(n_conversations=n_conversations, turns=turns).figures["layouts"]
    assert fig.get_layout_engine() is None
    assert_readable(fig)
    fig.draw_without_rendering()
    for ax in fig.axes:  # whole rows only: a one-row panel shows row 0, not −0.5, 0, 0.5
        rows = labelled_ticks(ax.yaxis)
        assert rows and all(r.is_integer() for r in rows), rows


def test_one_category_exception_of_the_tick_check_is_narrow():
    """A fixed-tick axis spanning one category passes with its one labelled tick; spanning two it does not."""
    from figure_checks import figure_problems

    from lossreduce_demo import plots

    fig, ax = plots.new_figure()
    ax.plot([0, 1], [0, 0])
    ax.set_ylim(0.5, -0.5)
    ax.set_yticks([0])
    assert figure_problems(fig) == []
    ax.set_ylim(1.5, -0.5)
    assert any("y axis (linear) has 1 labelled tick" in p for p in figure_problems(fig)), figure_problems(fig)


def test_layout_cache_refuses_a_layout_made_for_a_shorter_legend():
    """A training app redraws as runs arrive: a legend with more or longer entries than the remembered layout's
    would be pushed off the figure's edge, so it is laid out afresh; the same legend reuses the layout."""
    import io

    from lossreduce_demo.plots import LayoutCache, new_figure

    def ratio_figure(names):
        fig, ax = new_figure(width=6)
        for i, name in enumerate(names):
            ax.plot([0, 1], [i, i + 1], label=name)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return fig

    cache = LayoutCache()
    first = ratio_figure(["GRPO"])
    first.savefig(io.BytesIO(), format="png")
    cache.remember("ratio", first)
    assert not cache.reuse("ratio", ratio_figure(["GRPO", "DAPO", "Dr. GRPO (seq-mean-token-sum-norm)"]))
    assert cache.reuse("ratio", ratio_figure(["GRPO"]))


def test_longer_half_is_half_the_samples_even_when_most_share_the_longest_length():
    import pandas as pd

    from lossreduce_demo.widgets import _extremes

    lengths = [5, 30, 30, 30]  # median 30: nothing is longer than the median
    profile = pd.DataFrame({"length": lengths, "relative": [1.0] * 4, "share": [n / 95 for n in lengths]})
    state = _extremes(profile)
    assert state["tokens_longer_half"] == pytest.approx(60 / 95)  # two of the 30-token samples
    assert state["share_longer_half"] == pytest.approx(60 / 95)


WEIGHT_SETTINGS = [{"turns": 1}, {"turns": 5}, {"layout": "packed"}, {"turns": 5, "layout": "packed"},
                   {"layout": "split", "turns": 5}, {"family": "fixed", "short_mean": 5},
                   {"scheme": "length-power", "alpha": 2.0, "short_mean": 1, "long_mean": 60},
                   {"scheme": "seq-mean-token-sum-norm", "long_fraction": 1.0}]


@pytest.mark.parametrize("settings", WEIGHT_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_weight_explorer_figures_with_fixed_margins_stay_readable(settings):
    """The weight explorer's three figures are laid out with fixed margins in inches (no layout pass on a first
    visit): at 1 and 5 turns, packed, split, equal lengths and the widest colour scale, every axis keeps ≥ 2
    labelled ticks and no text (legend, colour bar labels, titles) leaves the figure."""
    from figure_checks import assert_readable

    app = widgets.WeightExplorer(**settings)
    assert set(app.figures) == {"heatmap", "length", "buckets"}
    for fig in app.figures.values():
        assert fig.get_layout_engine() is None
        assert_readable(fig)


@pytest.mark.parametrize("name", ["heatmap", "length", "buckets"])
def test_fixed_margin_checks_catch_a_margin_too_small(name):
    """Negative control: the same figure with its left margin squeezed to 0.05 in (no room for the y tick labels
    and the y label) is reported."""
    from figure_checks import figure_problems

    from lossreduce_demo.plots import fixed_margins

    fig = widgets.WeightExplorer(turns=5).figures[name]
    fixed_margins(fig, left=0.05, right=3.0, top=0.3, bottom=0.5)
    assert any("cut off by the figure's edge" in p for p in figure_problems(fig)), figure_problems(fig)


def test_ratio_train_click_reports_zero_gradient_fractions_and_a_failure_in_the_app(monkeypatch):
    """Notebook 08's Train path with a stand-in E10: the status names each rule's zero-gradient fraction; a trainer
    that fails shows "⚠ Failed" in the app (no traceback) and the button is usable again."""
    import pandas as pd

    from lossreduce_demo.experiments import importance_ratios as e10

    monkeypatch.setattr(e10, "warm_start", lambda seed: "start")
    monkeypatch.setattr(e10, "collect", lambda rule, seed, start, config: pd.DataFrame({"rule": [rule]}))
    monkeypatch.setattr(e10, "by_length_table", lambda responses: responses)
    monkeypatch.setattr(e10, "zero_gradient_fraction", lambda table, rule: {"cispo": 0.0}.get(rule, 0.125))
    app = widgets.RatioTrainingApp()
    app.draw_figures = False
    app.button.click()
    assert app.state["zero_gradient_fraction"]["cispo"] == 0.0
    assert "done: zero-gradient tokens token 12.5%, gspo 12.5%, cispo 0.0%" in app.message.value
    monkeypatch.setattr(e10, "warm_start", lambda seed: 1 / 0)
    app.button.click()
    assert "⚠ Failed" in app.message.value and "ZeroDivisionError" in app.message.value
    assert not app.button.disabled


@pytest.mark.parametrize("family", FAMILIES)
def test_length_controls_a_family_ignores_are_greyed_out_and_the_others_move_the_chats(family):
    """A greyed-out slider would change nothing (the explorer's numbers stay the same); every enabled one does."""
    app = widgets.FormatsExplorer(family=family)
    app.draw_figures = False
    for name, value in (("short_mean", 8), ("long_mean", 45), ("long_fraction", 0.75)):
        control = getattr(app, name)
        before = app.state["waste"].to_dict()
        control.value = value
        assert control.disabled == (app.state["waste"].to_dict() == before), (family, name)


# ---------------------------------------------------------------- showing figures in a frontend


def test_each_figure_is_shown_as_soon_as_it_is_made():
    """In a kernel, an update sends each figure's PNG to its Image widget before the next figure is made (the
    browser shows the first while the rest are drawn), the PNG of that figure; an invalid setting clears them."""
    from IPython.core.interactiveshell import InteractiveShell

    from lossreduce_demo import plots

    InteractiveShell.instance()  # get_ipython() now finds a shell: the app draws into its Image widgets
    try:
        app = widgets.WeightExplorer()
        assert list(app.images) == ["heatmap", "length", "buckets"]
        assert app.figure_area.children == tuple(app.images.values())
        made_when_shown = {}
        for name, image in app.images.items():
            image.observe(lambda change, name=name: made_when_shown.setdefault(name, list(app.figures)), "value")
        app.long_fraction.value = 0.5
        assert made_when_shown == {"heatmap": ["heatmap"], "length": ["heatmap", "length"],
                                   "buckets": ["heatmap", "length", "buckets"]}
        for name, fig in app.figures.items():
            assert app.images[name].value == plots.png_bytes(fig)
        app.set(family="uniform", short_mean=30, long_mean=4)  # low > high: no figure
        assert app.figures == {} and app.figure_area.children == ()
    finally:
        InteractiveShell.clear_instance()


def test_a_redraw_frees_the_figures_it_replaced_and_apps_freeze_what_lives_before_them():
    """In a kernel, each redraw collects the figures it replaced (reference cycles that Python's automatic full
    collections would otherwise free, 0.1–0.3 s, in the middle of a later redraw): with automatic collection off, the
    old figure is gone right after the next update. An app made in a kernel freezes the objects alive then
    (gc.freeze) after collecting the garbage, an earlier app's frozen cycles included."""
    import gc
    import weakref

    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.instance()
    gc.disable()
    try:
        class Cycle:
            pass

        dropped = Cycle()
        dropped.me = dropped
        app = widgets.WeightExplorer()  # collects, then freezes what lives (`dropped` among them)
        assert gc.get_freeze_count() > 0
        frozen_cycle = weakref.ref(dropped)
        del dropped
        old = weakref.ref(app.figures["length"])
        app.long_fraction.value = 0.5
        assert app.figures["length"] is old()  # the same schemes: redrawn in place
        app.scheme.value = "token-mean"  # one scheme drawn instead of two: a new figure
        assert old() is None, "the replaced figure outlived the redraw"
        assert frozen_cycle() is not None  # frozen: no collection sees it...
        widgets.WeightExplorer()
        assert frozen_cycle() is None  # ...until the next app is made
    finally:
        gc.enable()
        gc.unfreeze()
        InteractiveShell.clear_instance()


def test_the_dashboards_two_apps_share_one_freeze(monkeypatch):
    """Each collection and freeze costs a kernel ~0.24 s: the Voilà dashboard's two apps pay it once, apps made
    one by one each pay it."""
    import gc

    from IPython.core.interactiveshell import InteractiveShell

    freezes = []
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(True))
    InteractiveShell.instance()
    try:
        widgets.Dashboard(n_conversations=4)
        assert len(freezes) == 1
        widgets.WeightExplorer(n_conversations=4), widgets.AccumulationExplorer(n_conversations=4)
        assert len(freezes) == 3
    finally:
        InteractiveShell.clear_instance()


WALKS = {  # every control of an explorer whose figures redraw in place, and back to a first structure
    widgets.WeightExplorer: [
        ("scheme", "seq-mean-token-sum"), ("long_fraction", 0.5), ("turns", 2), ("layout", "split"),
        ("layout", "packed"), ("scheme", "turn-mean"), ("family", "fixed"), ("short_mean", 12),
        ("scheme", "length-power"), ("alpha", 1.7), ("scheme", "seq-mean-token-sum-norm"), ("l_max", 100),
        ("family", "lognormal"), ("layout", "multiturn"), ("long_fraction", 0.0), ("scheme", "token-mean"),
        ("scheme", "seq-mean-token-mean")],  # one scheme drawn, then two again
    widgets.FormatsExplorer: [
        ("short_mean", 6), ("short_mean", 8), ("long_mean", 40), ("long_fraction", 0.5), ("row_len", 160),
        ("turns", 2), ("n_conversations", 6), ("family", "fixed"), ("short_mean", 10), ("family", "lognormal"),
        ("short_mean", 12), ("row_len", 256)],
    widgets.AccumulationExplorer: [
        ("micro_batches", 2), ("ranks", 1), ("normalization", "global"), ("normalization", "local"),
        ("sort_by_length", True), ("scheme", "token-mean"), ("long_fraction", 0.5), ("turns", 2),
        ("layout", "split"), ("family", "fixed"), ("micro_batches", 8)],
    widgets.FrameworkExplorer: [
        ("micro_batches", 2), ("ranks", 1), ("mask_truncated", False), ("framework", "verl"),
        ("framework", "transformers"), ("ranks", 4), ("micro_batches", 1)],
}
SIZES = {widgets.WeightExplorer: {"n_conversations": 8}, widgets.FormatsExplorer: {"n_conversations": 4},
         widgets.AccumulationExplorer: {"n_conversations": 8}, widgets.FrameworkExplorer: {}}


def redraw_walk(monkeypatch, explorer) -> tuple[set, list]:
    """The explorer, in a kernel, walks its WALKS; after each step every figure's PNG is compared with a new
    figure's of the same setting. (names of the figures redrawn in place at least once, [(step, name) that differ])"""
    from figure_checks import decoded

    from lossreduce_demo import plots

    monkeypatch.setattr(widgets, "_frontend", lambda: True)
    monkeypatch.setattr(widgets, "_freeze_live_objects", lambda: None)
    walk, size = WALKS[explorer], SIZES[explorer]
    app = explorer(**size)
    in_place, differ = set(), []
    for step, (control, value) in enumerate(walk):
        before = dict(app.figures)
        with monkeypatch.context() as kernel_less:  # the same setting drawn on new figures
            kernel_less.setattr(widgets, "_frontend", lambda: False)
            fresh = explorer(**size)
            fresh.set(**{c: v for c, v in walk[:step + 1]})
        app.set(**{control: value})
        in_place |= {name for name, fig in app.figures.items() if before.get(name) is fig}
        differ += [(step, name) for name, fig in fresh.figures.items()
                   if not np.array_equal(decoded(app.images[name].value), decoded(plots.png_bytes(fig)))]
    return in_place, differ


@pytest.mark.parametrize("explorer", list(WALKS), ids=lambda e: e.__name__)
def test_a_redraw_in_place_shows_what_a_new_figure_shows(monkeypatch, explorer):
    """The analytic explorers of 01, 02, 03 and 07 redraw their figures in place (new data in the old artists:
    a third less time per update); pixel for pixel they are what new figures of the same setting show, at every
    step."""
    in_place, differ = redraw_walk(monkeypatch, explorer)
    assert in_place == set(explorer().figures)
    assert not differ


def test_a_redraw_in_place_that_kept_the_old_view_would_be_seen(monkeypatch):
    """The control: with the limits not refitted to the new data, the walk finds figures that differ."""
    from lossreduce_demo import plots

    monkeypatch.setattr(plots, "refit_view", lambda ax: None)
    monkeypatch.setattr(plots.weights, "refit_view", lambda ax: None)
    _, differ = redraw_walk(monkeypatch, widgets.WeightExplorer)
    assert {name for _, name in differ} >= {"length", "buckets"}
