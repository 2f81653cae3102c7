"""The notebook-04 Train button: exact predictions and a real (fast-mode) training behind the click."""

import pytest

from lossreduce_demo import training_app
from lossreduce_demo.experiments.sft import p_long_closed_form
from lossreduce_demo.train import Run


def test_predictions_match_closed_forms():
    f = 0.2
    seq_mean = training_app.predicted_p_long(Run("seq-mean-token-mean"), f)
    assert seq_mean == pytest.approx((f / 60) / (f / 60 + (1 - f) / 5), abs=1e-4)  # 0.0204
    assert seq_mean == pytest.approx(p_long_closed_form(f, 1 / 60, 1 / 5), rel=1e-6)
    assert training_app.predicted_p_long(Run("token-sum"), f) == pytest.approx(f)
    token_mean = training_app.predicted_p_long(Run("token-mean"), f)
    assert 0.155 < token_mean < 0.17  # batch 16: between the seq-mean and token-sum optima (0.162)


def test_clicking_train_trains_and_draws(monkeypatch):
    monkeypatch.setenv("LOSSREDUCE_FAST", "1")
    app = training_app.TrainingApp()
    assert app.button.description == "Train" and not app.state
    app.button.click()
    table = app.state["table"]
    measured = dict(zip(table.run, table.measured))
    assert all(0.0 <= p <= 1.0 for p in measured.values())
    assert "trained in" in app.status.value
    assert {"p_long", "loss_by_length"} <= set(app.figures)  # the two plots shown in the Output
