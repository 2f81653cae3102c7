"""Notebook 04's Train button (`widgets.TrainingApp` over `training_app.train_branch`): exact predictions, a real
(fast-mode) training behind the click, and clear errors for bad arguments."""

import pytest

from lossreduce_demo import training_app, widgets
from lossreduce_demo.experiments.sft import predicted_p_long
from lossreduce_demo.train import Run


def test_run_predictions_follow_each_runs_normalisation_unit():
    f = 0.2
    seq_mean = (f / 60) / (f / 60 + (1 - f) / 5)  # constant denominators: the closed form, 0.0204
    assert training_app.predicted_p_long(Run("seq-mean-token-mean"), f) == pytest.approx(seq_mean, rel=1e-12)
    assert training_app.predicted_p_long(Run("token-sum"), f) == pytest.approx(f, rel=1e-12)
    assert training_app.predicted_p_long(Run("token-mean"), f) == pytest.approx(0.1618, abs=5e-5)
    naive = Run("token-mean", "local", micro_batches=16)  # micro-batch 1: token-mean = seq-mean
    assert training_app.predicted_p_long(naive, f) == pytest.approx(seq_mean, rel=1e-12)
    assert training_app.predicted_p_long(Run("token-mean"), f) == predicted_p_long("token-mean", f, 16)


def test_clicking_train_trains_and_draws(monkeypatch):
    monkeypatch.setenv("LOSSREDUCE_FAST", "1")
    app = widgets.TrainingApp(runs=("token-mean", "seq-mean-token-mean"))
    assert app.button.description == "Train" and not app.state and "Nothing trains" in app.message.value
    app.button.click()
    table = app.state["table"].set_index("run")
    assert list(table.index) == ["token-mean", "seq-mean-token-mean"]
    assert table.predicted.to_dict() == pytest.approx(
        {r: training_app.predicted_p_long(training_app.RUNS[r], app.state["long_fraction"]) for r in table.index})
    # measured = the trained models' P("L") over the last quarter of the evaluations: the two schemes are ordered
    assert table.measured["seq-mean-token-mean"] < table.measured["token-mean"]
    assert "trained in" in app.message.value and not app.button.disabled
    assert {"p_long", "loss_by_length"} <= set(app.figures)  # the two plots shown in the Output


def test_no_scheme_chosen_is_a_message_not_a_traceback():
    app = widgets.TrainingApp()
    app.runs.value = ()
    state = app.update()
    assert "choose at least one scheme" in state["message"] and not app.figures


@pytest.mark.parametrize("kw, match", [(dict(runs=("nope",)), "unknown run 'nope'"), (dict(steps=0), "steps=0"),
                                       (dict(steps=2.5), "steps=2.5"), (dict(long_fraction=1.5), "long_fraction")])
def test_train_branch_rejects_bad_arguments_before_training(kw, match):
    with pytest.raises(ValueError, match=match):
        training_app.train_branch(**kw)
