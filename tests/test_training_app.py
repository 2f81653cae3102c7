"""Notebook 04's Train app (`widgets.TrainingApp` over `training_app`): the live closed-form prediction for every
setting of the length distribution and plan, a real (fast-mode) training behind the click, clear messages for
settings that do not fit, and a failed click shown as such."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossreduce_demo import training_app as ta
from lossreduce_demo import widgets
from lossreduce_demo.experiments.sft import predicted_p_long


def closed_form(f, w_long, w_short):
    """Constant denominators: p* = f·w_L / (f·w_L + (1−f)·w_S), w the weight of a reply's first token."""
    return f * w_long / (f * w_long + (1 - f) * w_short)


def test_predictions_at_the_default_setting_are_the_known_numbers():
    table = ta.predictions(("seq-mean-token-mean", "token-sum", "token-mean"), long_fraction=0.2).set_index("run")
    assert table.predicted["seq-mean-token-mean"] == pytest.approx(closed_form(0.2, 1 / 60, 1 / 5), rel=1e-12)
    assert table.predicted["token-sum"] == pytest.approx(0.2, rel=1e-12)
    assert table.predicted["token-mean"] == pytest.approx(0.1618, abs=5e-5)  # the batch-of-16 correlation


@given(short=st.integers(2, 30), extra=st.integers(0, 40), f=st.floats(0.05, 0.95), turns=st.integers(0, 2),
       k=st.sampled_from(ta.GA_STEPS))
@settings(max_examples=25, deadline=None)
def test_app_prediction_follows_every_control_and_matches_the_closed_form(short, extra, f, turns, k):
    long = short + extra
    app = widgets.TrainingApp(schemes=("seq-mean-token-mean", "token-sum", "token-mean"))
    app.draw_figures = False
    app.set(short_len=short, long_len=long, long_fraction=f, context_turns=turns, layout="multiturn",
            grad_accum=k, normalization="local")
    table = app.predicted.set_index("run")
    f_set = ta.long_fraction(ta.training_set(app.setting()))  # the training set's own fraction
    # seq-mean over a whole conversation: the context turns' 5·turns tokens dilute 1/n_i; token-sum: no batch term
    n_long, n_short = long + 5 * turns, short + 5 * turns
    assert table.predicted["seq-mean-token-mean"] == pytest.approx(closed_form(f_set, 1 / n_long, 1 / n_short))
    assert table.predicted["token-sum"] == pytest.approx(f_set)
    assert table.predicted["token-mean"] == pytest.approx(
        predicted_p_long("token-mean", f_set, 16 // k, context_turns=turns, short_len=short, long_len=long))
    assert not app.state, "a control change must not train"


def test_turn_mean_in_multiturn_equals_seq_mean_in_split_format_a():
    app = widgets.TrainingApp(schemes=("turn-mean", "seq-mean-token-mean"), context_turns=2, long_len=40)
    multiturn = app.predicted.set_index("run").predicted
    app.layout.value = "split"  # one sample per turn: seq-mean of A = turn-mean of B
    split = app.predicted.set_index("run").predicted
    assert split["seq-mean-token-mean"] == pytest.approx(multiturn["turn-mean"], rel=1e-9)
    assert multiturn["seq-mean-token-mean"] > 2 * multiturn["turn-mean"]  # B's context turns dilute the penalty


def test_naive_accumulation_with_micro_batches_of_one_is_seq_mean():
    app = widgets.TrainingApp(schemes=("token-mean", "seq-mean-token-mean"), grad_accum=16, normalization="local")
    p = app.predicted.set_index("run").predicted
    assert p["token-mean"] == pytest.approx(p["seq-mean-token-mean"], rel=1e-12)
    app.normalization.value = "global"
    assert app.predicted.set_index("run").predicted["token-mean"] > 5 * p["token-mean"]


@pytest.mark.parametrize("values, match", [
    (dict(long_len=3), "long_len=3 &lt; short_len=5: the long reply must not be the shorter one"),
    (dict(long_len=100, context_turns=4), "tokens; the model"),
    (dict(schemes=()), "choose at least one scheme"),
])
def test_settings_that_do_not_fit_are_one_clear_message_and_disable_train(values, match):
    app = widgets.TrainingApp()
    app.set(**values)
    assert match in app.prediction.value and app.predicted.empty and app.button.disabled
    assert "nan" not in app.prediction.value.lower()
    app.set(long_len=60, context_turns=0, schemes=ta.DEFAULT_SCHEMES)  # back to a valid setting
    assert not app.button.disabled and len(app.predicted) == 3


@pytest.mark.parametrize("kw, match", [(dict(steps=0), "steps=0"), (dict(steps=2.5), "steps=2.5"),
                                       (dict(long_fraction=1.5), "long_fraction"), (dict(grad_accum=3), "grad_accum=3"),
                                       (dict(layout="rows"), "layout='rows'"), (dict(short_len=1), "short_len=1"),
                                       (dict(long_fraction=math.nan), "long_fraction=nan")])
def test_branch_setting_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        ta.BranchSetting(**kw)


def test_clicking_train_trains_shows_progress_and_the_result_beside_the_prediction(monkeypatch):
    monkeypatch.setenv("LOSSREDUCE_FAST", "1")
    app = widgets.TrainingApp(schemes=("token-mean", "seq-mean-token-mean"), steps=8)
    assert app.button.description == "Train" and not app.state and "Nothing trains" in app.message.value
    predicted = app.predicted.set_index("run").predicted
    statuses = []
    app.message.observe(lambda change: statuses.append(change.new), names="value")
    app.button.click()
    assert "training token-mean (scheme 1/2): step 1/8" in statuses[1]  # [0]: preparing the data
    assert "training seq-mean-token-mean (scheme 2/2): step 8/8" in statuses[-2] and " s</div>" in statuses[-2]
    table = app.state["table"].set_index("run")
    assert list(table.index) == ["token-mean", "seq-mean-token-mean"]
    assert table.predicted.to_dict() == pytest.approx(predicted.to_dict(), rel=1e-12)  # the same training set
    assert table.measured["seq-mean-token-mean"] < table.measured["token-mean"]
    assert app.progress.value == app.progress.max == 16  # 2 runs × 8 steps
    assert "measured" in app.result.value and "trained in" in app.message.value and not app.button.disabled
    assert {"p_long", "loss_by_length"} <= set(app.figures)
    app.long_fraction.value = 0.5
    assert "settings changed" in app.result.value and not app.headline.value  # the old result is not the headline


def test_the_headline_after_a_click_states_every_scheme_measured_vs_predicted(monkeypatch):
    monkeypatch.setenv("LOSSREDUCE_FAST", "1")
    schemes = ("token-sum", "length-power α=½", "turn-mean")
    app = widgets.TrainingApp(schemes=schemes, steps=4, short_len=3, long_len=20)
    app.draw_figures = False
    assert not app.headline.value  # nothing trained yet
    app.button.click()
    table = app.state["table"].set_index("run")
    parts = app.headline.value.removeprefix("<b>").removesuffix("</b>").split("; ")
    assert parts == [f'{run}: P(&quot;L&quot;) {table.measured[run]:.3f} measured vs {table.predicted[run]:.3f} '
                     f'predicted' + (f" (trained in {app.state['seconds']:.1f} s)" if run == schemes[-1] else "")
                     for run in schemes]


def test_a_click_that_fails_shows_the_error_and_not_done(monkeypatch):
    app = widgets.TrainingApp(steps=4)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(ta, "train_branch", broken)
    app.button.click()
    assert "Failed" in app.message.value and "out of memory" in app.message.value
    assert "trained in" not in app.message.value and not app.figures and not app.button.disabled
