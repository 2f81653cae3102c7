"""E1, E2, E4, E5 in fast mode: predictions, the direction of the effects, reproducible CSVs, the CLI."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from lossreduce_demo import synth
from lossreduce_demo.experiments import COLUMNS, run_experiment, sft
from lossreduce_demo.layouts import make_layout
from lossreduce_demo.tokenizer import VOCAB_SIZE


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setenv("LOSSREDUCE_FAST", "1")


def test_predictions_match_science_md():
    seq_mean = (0.2 / 60) / (0.2 / 60 + 0.8 / 5)  # constant denominators: the closed form
    assert sft.predicted_p_long("seq-mean-token-mean", 0.2, 16) == pytest.approx(seq_mean, rel=1e-12)
    assert sft.predicted_p_long("token-sum", 0.2, 16) == pytest.approx(0.2, rel=1e-12)
    naive = [sft.predicted_p_long("token-mean", 0.2, b) for b in (1, 2, 4, 8, 16)]
    assert naive == pytest.approx([0.0204, 0.0404, 0.0758, 0.1233, 0.1618], abs=5e-4)
    assert sft.predicted_p_long("token-mean", 0.2, 1024) == pytest.approx(0.2, abs=2e-3)  # large batch -> f
    # length-power α=½ sits between seq-mean (α=0) and token-mean (α=1)
    assert seq_mean < sft.predicted_p_long(sft.Scheme("length-power", alpha=0.5), 0.2, 16) < naive[-1]
    e4 = sft.e4_predictions(0.2)
    assert e4[("B", "seq-mean-token-mean")] == pytest.approx(0.0508, abs=5e-4)
    assert e4[("A", "seq-mean-token-mean")] == pytest.approx(seq_mean, rel=1e-12)  # per-turn means: the closed form
    assert e4[("B", "turn-mean")] == pytest.approx(seq_mean, rel=1e-12)
    assert 0.17 < e4[("A", "token-mean")] < 0.2 and 0.17 < e4[("B", "token-mean")] < 0.2


def test_e1_short_run_seq_mean_learns_a_smaller_prior(tmp_path):
    first = run_experiment("e1", seeds=1, out_dir=tmp_path / "a")
    p = first.table[first.table.metric == "p_long"].set_index("run").value
    assert p["seq-mean-token-mean (global)"] < 0.6 * p["token-mean (global)"]
    assert p["seq-mean-token-mean (global)"] < 0.6 * p["token-sum (global)"]
    mass = first.table[first.table.metric == "branch_mass"].set_index("run").value
    given = first.table[first.table.metric == "p_long_given_branch"].set_index("run").value
    assert ((mass > 0) & (mass <= 1)).all() and (given >= p - 1e-9).all()
    assert list(first.table.columns[: len(COLUMNS)]) == COLUMNS
    assert first.verdict.passed.iloc[:-1].isna().all()  # fast mode: not judged
    assert first.verdict.what.str.contains("fast mode").iloc[:-1].all()
    second = run_experiment("e1", seeds=1, out_dir=tmp_path / "b")
    assert first.csv_path.read_bytes() == second.csv_path.read_bytes()
    assert first.png_path.stat().st_size > 10_000


def test_e2_short_run_naive_gap_grows_and_global_has_none():
    table = sft.run_e2(seeds=1).table
    dist = table[table.metric == "rel_weight_distance"]
    mixed = dist[dist.format == "mixed lengths"].pivot_table(index="grad_accum", columns="normalization",
                                                             values="value")
    assert (mixed["local"].diff().dropna() > 0).all()  # grows with ga 1, 2, 4, 8, 16
    assert (mixed["global"] <= 1e-4).all()
    assert (mixed["local"].loc[[4, 8, 16]] > 100 * mixed["global"].loc[[4, 8, 16]]).all()
    equal = dist[(dist.format == "equal lengths") & (dist.grad_accum > 1)].value
    assert (equal > 0).all()  # float64 rounding (~1e-13), kept in the table, not rounded to 0
    gap = table[table.metric == "naive_global_gap"].set_index(["format", "grad_accum"]).value
    assert (gap.loc["equal lengths"] <= 1e-6).all()  # equal lengths: naive = global
    assert (gap.loc["mixed lengths"].loc[[4, 8, 16]] > 1e-3).all()


def test_unigram_baseline_is_the_cross_entropy_of_the_training_frequencies():
    train_set, heldout = synth.make_branch_chats(64, seed=1), synth.make_branch_chats(16, seed=2)
    batch = make_layout(train_set, "multiturn")
    counts = Counter(batch.tokens[batch.loss_mask].tolist())
    total = sum(counts.values()) + VOCAB_SIZE  # add-one smoothing over the vocabulary
    held = make_layout(heldout, "multiturn")
    expected = -np.mean([math.log((counts[t] + 1) / total) for t in held.tokens[held.loss_mask].tolist()])
    assert sft.unigram_loss(train_set, heldout) == pytest.approx(expected, rel=1e-12)


def test_e4_e5_short_runs_are_tidy():
    for result in (sft.run_e4(seeds=1), sft.run_e5(seeds=1)):
        assert list(result.table.columns[: len(COLUMNS)]) == COLUMNS
        assert {"what", "predicted", "measured", "passed"} <= set(result.verdict.columns)
        assert result.table.value.notna().all()
