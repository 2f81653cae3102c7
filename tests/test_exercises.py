"""Exercise checkers: a right answer written to 2 significant figures passes, a near one hears "close" (give more
digits, or check the rounding), a wrong one gets the method hint; every notebook's checkers accept their own solution."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lossreduce_demo import exercises
from lossreduce_demo.exercises import check_number, close, near, significant_figures, within_precision


@pytest.mark.parametrize("answer, figures", [(0.78, 2), (0.02, 1), ("0.020", 2), (3.1, 2), (120, 2), (182, 3), (1e-5, 1),
                                             (np.float64(3.71), 3), (0.004, 1)])
def test_significant_figures_as_written(answer, figures):
    assert significant_figures(answer) == figures


@pytest.mark.parametrize("answer, expected", [(0.78, 0.7843), (0.02, 0.0204), (3.1, 3.14), (0.804, 41 / 51),
                                              (np.float64(0.33), 1 / 3), ("0.020", 0.0204), (8.2, 41 / 5)])
def test_two_significant_figures_are_right(answer, expected, capsys):
    assert check_number(answer, expected, "right", "wrong", rel=1e-3) is True
    assert capsys.readouterr().out.startswith("✅")


@pytest.mark.parametrize("answer, expected, said", [
    (3, 3.4, "Close — give more digits"), (0.3, 1 / 3, "Close — give more digits"),  # one figure: right at it
    (0.79, 0.7843, "Close — check your rounding"), (0.021, 0.0204, "Close — check your rounding"),  # two, one off
    (3.2, 3.118, "Close — check your rounding"), ("3.0", 3.118, "Close — check your rounding"),
])
def test_near_answers_hear_close_and_what_to_fix(answer, expected, said, capsys):
    assert check_number(answer, expected, "right", "the method hint", rel=1e-3) is False
    out = capsys.readouterr().out
    assert said in out and "the method hint" not in out


@pytest.mark.parametrize("answer", [0.5, 0.0, -0.0204, "abc", None, float("nan"), True])
def test_wrong_answers_get_the_hint(answer, capsys):
    assert check_number(answer, 0.0204, "right", "the method hint", rel=1e-3) is False
    out = capsys.readouterr().out
    assert out.startswith("❌") and "the method hint" in out


def test_exact_answers_stay_exact(capsys):
    assert check_number(182, 182, "right", "wrong", rel=0) is True
    assert check_number(180, 182, "right", "wrong", rel=0) is False
    assert "Close" not in capsys.readouterr().out  # counts are right or wrong, never "close"


@given(st.floats(1e-6, 1e6), st.integers(2, 6))
def test_the_value_rounded_to_any_precision_of_2_or_more_figures_passes(expected, figures):
    written = float(f"{expected:.{figures}g}")
    assert within_precision(written, expected) and close(written, expected)


@given(st.floats(1e-6, 1e6), st.floats(0.011, 0.04))
def test_an_answer_off_by_more_than_its_precision_fails_but_is_near(expected, off):
    written = f"{expected * (1 + off):#.4g}"  # written to 4 figures ("1.600e+05"): ≥ 1.1 % off is outside them
    assert not close(written, expected, rel=1e-3)
    assert near(written, expected)
    assert not near(-float(written), expected) and not near(expected * 2, expected)


@given(st.floats(1e-3, 1e3).filter(lambda x: x != 0))
def test_numpy_scalars_and_strings_read_like_the_float(expected):
    text = f"{expected:.3g}"
    assert close(np.float64(text), expected) == close(float(text), expected) == close(text, expected)


def _nb00_values():
    from lossreduce_demo.exercises.nb00 import TURN_LOSSES, _turn_lengths

    n = _turn_lengths()
    doubled = [n[0], n[1], 2 * n[2]]
    return sum(k * loss for k, loss in zip(doubled, TURN_LOSSES)) / sum(doubled), n[2] / n[1]


SOLUTIONS = {  # (notebook, check) -> an answer a learner would write, to 2 significant figures
    ("nb00", 2): lambda: float(f"{_nb00_values()[0]:.2g}"),
    ("nb00", 3): lambda: float(f"{_nb00_values()[1]:.2g}"),
    ("nb02", 1): lambda: 0.02,  # 0.0204
    ("nb02", 3): lambda: 0.80,  # 41/51
    ("nb04", 1): lambda: 0.0092,  # 0.00917
    ("nb04", 3): lambda: 0.002,
    ("nb05", 2): lambda: 0.0042,  # 1/240
    ("nb05", 3): lambda: 1.5,
    ("nb08", 1): lambda: 0.8,
    ("nb08", 2): lambda: 0.00625,
    ("nb08", 3): lambda: 1.04,  # 1.0440
}


@pytest.mark.parametrize("module, number", SOLUTIONS)
def test_notebook_checkers_accept_a_two_figure_answer(module, number, capsys):
    checker = getattr(importlib.import_module(f"lossreduce_demo.exercises.{module}"), f"check_{number}")
    assert checker(SOLUTIONS[module, number]()) is True, capsys.readouterr().out


def test_pending_answers_print_the_hint(capsys):
    assert exercises.pending(None, "a hint") is True
    assert "a hint" in capsys.readouterr().out
    assert exercises.pending(0.5, "x") is False
