"""E8–E10 in fast mode: predictions, tidy reproducible CSVs and figures (notebook 08's experiments)."""

from __future__ import annotations

import pytest

from lossreduce_demo.experiments import COLUMNS, packing, run_experiment


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setenv("LOSSREDUCE_FAST", "1")


def test_e8_fast_run_is_tidy_reproducible_and_not_judged(tmp_path):
    first = run_experiment("e8", seeds=1, out_dir=tmp_path / "a")
    table = first.table
    assert list(table.columns[: len(COLUMNS)]) == COLUMNS
    slopes = table[table.metric == "slope_var_sum"]
    assert set(slopes.format) == {"copy", "noisy tail"} and (slopes.value > 0).all()
    assert set(table[table.metric == "relative_variance"].scheme) >= {"token-mean", "delta-l α=1"}
    assert first.verdict.passed.isna().all()
    second = run_experiment("e8", seeds=1, out_dir=tmp_path / "b")
    assert first.csv_path.read_bytes() == second.csv_path.read_bytes()
    assert first.png_path.stat().st_size > 10_000


def test_packing_rows_and_the_per_row_mean_prediction():
    short, long = packing._branch_tokens()
    assert (short, long) == (13, 68)
    # 9 shorts fill 117 of 129 tokens; a long one (68) starts a new row, 4 more shorts join it (68 + 52 = 120)
    assert packing.pack_rows([False] * 9 + [True] + [False] * 4, short, long) == [(9, 0), (5, 1)]
    assert packing.pack_rows([True, True], short, long) == [(1, 1), (1, 1)]
    p = packing.p_long_per_row_mean(0.2)
    assert 0.0204 < p < 0.1618  # between seq-mean over conversations and token-mean (docs/science.md §6.2)
    assert p == pytest.approx(0.1144, abs=5e-4)
    assert packing.p_long_per_row_mean(0.0) == 0.0 and packing.p_long_per_row_mean(1.0) == pytest.approx(1.0)


def test_notebook_08_exercises_accept_the_solutions_and_reject_wrong_answers(capsys):
    from lossreduce_demo.exercises import nb08

    assert nb08.check_1(0.8) and nb08.check_2(1 / 160) and nb08.check_3(1.188 ** 0.25)
    assert not nb08.check_1(0.5) and not nb08.check_2(1 / 125) and not nb08.check_3(1.188)
    assert nb08.check_1(None) is None and "Not answered" in capsys.readouterr().out


def test_e9_and_e10_fast_runs_are_tidy_and_not_judged(tmp_path):
    e9 = run_experiment("e9", seeds=1, out_dir=tmp_path)
    assert set(e9.table[e9.table.metric == "mean_heldout_loss"].format) == {"multiturn", "packed", "packed-causal"}
    p = e9.table[e9.table.metric == "p_long"].set_index("scheme").predicted
    assert p["seq-mean over conversations"] < p["per-row mean"] < p["token-mean"]
    e10 = run_experiment("e10", seeds=1, out_dir=tmp_path)
    lengths = set(e10.table[e10.table.metric == "var_seq_log_ratio"].length.dropna().astype(int))
    assert lengths <= {4, 9, 18, 36} and len(lengths) >= 2
    cispo = e10.table[(e10.table.metric == "zero_cispo_fraction") & (e10.table.rule == "cispo")]
    assert len(cispo) and (cispo.value == 0).all()  # CISPO never silences a token with an advantage
    for result in (e9, e10):
        assert list(result.table.columns[: len(COLUMNS)]) == COLUMNS and result.verdict.passed.isna().all()
        assert result.png_path.stat().st_size > 10_000
