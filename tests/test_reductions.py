"""Reduction schemes as per-token weights (docs/science.md §2–4), checked against an independent oracle.

Batches are built directly from per-sample lists of assistant-turn lengths (loss tokens per turn), so samples
and turns with no loss token at all are easy to make.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lossreduce_demo.chats import conversation
from lossreduce_demo.layouts import Batch
from lossreduce_demo.reductions import (
    SCHEMES,
    BatchStats,
    Plan,
    Scheme,
    as_scheme,
    batch_stats,
    effective_weights,
    resolve_l_max,
    token_weights,
    with_length_ref,
)
from lossreduce_demo.report import weights_summary, weights_table

PROMPT, TARGET = 97, 98  # token ids are irrelevant to weights; only the labels matter


def make_batch(samples: list[list[int]], header: int = 1) -> Batch:
    """One row per sample: <bos>, then per turn `header` prompt tokens and `n` loss tokens (n may be 0)."""
    rows = []
    turn_offset = 0
    for i, turns in enumerate(samples):
        tok, mask, turn_id, turn_in, role = [PROMPT], [0], [-1], [-1], [1]
        for j, n in enumerate(turns):
            tok += [PROMPT] * header + [TARGET] * n
            mask += [0] * header + [1] * n
            turn_id += [-1] * header + [turn_offset + j] * n
            turn_in += [-1] * header + [j] * n
            role += [3] * header + [4] * n
        turn_offset += len(turns)
        rows.append((tok, mask, turn_id, turn_in, role, i))
    T = max(len(r[0]) for r in rows)

    def grid(k, pad):
        out = np.full((len(rows), T), pad, dtype=np.int64)
        for b, r in enumerate(rows):
            out[b, : len(r[0])] = r[k] if k < 5 else [r[5]] * len(r[0])
        return torch.from_numpy(out)

    seg = grid(5, -1).clamp(max=0)  # 0 on tokens, -1 on padding
    pos = torch.arange(T).expand(len(rows), T).clone() * (seg >= 0)
    return Batch(tokens=grid(0, 256), loss_mask=grid(1, 0).bool(), sample_id=grid(5, -1), conversation_id=grid(5, -1),
                 turn_id=grid(2, -1), turn_in_conversation=grid(3, -1), role=grid(4, 0), segment_id=seg,
                 position=pos, layout="multiturn")


def oracle_weights(samples: list[list[int]], scheme: Scheme, header: int = 1) -> np.ndarray:
    """The weights of docs/science.md §2 computed from the turn lengths alone (no torch, no shared code)."""
    n_i = [sum(s) for s in samples]
    N = sum(n_i)
    B_g = sum(n > 0 for n in n_i)
    T_g = sum(n > 0 for s in samples for n in s)
    l_max = scheme.l_max if scheme.l_max is not None else max(n_i, default=1) or 1
    T = max(1 + sum(header + n for n in s) for s in samples)
    out = np.zeros((len(samples), T))
    for b, turns in enumerate(samples):
        t = 1
        for n in turns:
            t += header
            for _ in range(n):
                out[b, t] = {
                    "token-mean": 1 / max(N, 1),
                    "seq-mean-token-mean": 1 / (B_g * n_i[b]),
                    "seq-mean-token-sum": 1 / B_g,
                    "seq-mean-token-sum-norm": 1 / (B_g * l_max),
                    "token-sum": 1.0,
                    "turn-mean": 1 / (T_g * n),
                    "length-power": n_i[b] ** (scheme.alpha - 1)
                    / sum(m**scheme.alpha for m in n_i if m > 0),
                    "delta-l": n_i[b] ** -scheme.delta_l_alpha
                    / sum(m**-scheme.delta_l_alpha for m in n_i if m > 0),
                }[scheme.name]
                t += 1
    return out


turn_lengths = st.lists(st.integers(0, 12), min_size=0, max_size=4)
sample_lists = st.lists(turn_lengths, min_size=1, max_size=10)
schemes = st.builds(
    Scheme,
    st.sampled_from(SCHEMES),
    alpha=st.floats(-1.0, 2.0, allow_nan=False),
    l_max=st.none() | st.floats(1.0, 100.0, allow_nan=False),
    delta_l_alpha=st.floats(-1.0, 2.0, allow_nan=False),
)
ranks = st.integers(1, 4)
micro = st.integers(1, 4)
PROPERTY = settings(max_examples=200, deadline=None)


def n_loss(samples) -> int:
    return sum(sum(s) for s in samples)


# ------------------------------------------------------------------ single-batch weights


@PROPERTY
@given(samples=sample_lists, scheme=schemes)
def test_weights_match_the_formula_of_each_scheme(samples, scheme):
    w = token_weights(make_batch(samples), scheme)
    assert w.dtype == torch.float64
    np.testing.assert_allclose(w.numpy(), oracle_weights(samples, scheme), rtol=1e-12, atol=0)


@PROPERTY
@given(samples=sample_lists, scheme=schemes)
def test_weights_are_finite_nonnegative_and_sum_as_the_scheme_says(samples, scheme):
    batch = make_batch(samples)
    w = token_weights(batch, scheme)
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert (w[~batch.loss_mask] == 0).all()
    N = n_loss(samples)
    n_i = [sum(s) for s in samples]
    B_g = sum(n > 0 for n in n_i)
    if N == 0:
        assert (w == 0).all()
        return
    l_max = scheme.l_max if scheme.l_max is not None else max(n_i)
    expected = {
        "token-mean": 1.0,
        "seq-mean-token-mean": 1.0,
        "turn-mean": 1.0,
        "length-power": 1.0,
        "seq-mean-token-sum": N / B_g,
        "seq-mean-token-sum-norm": N / (B_g * l_max),
        "token-sum": float(N),
        "delta-l": sum(n ** (1 - scheme.delta_l_alpha) for n in n_i if n > 0)
        / sum(n**-scheme.delta_l_alpha for n in n_i if n > 0),
    }[scheme.name]
    assert float(w.sum()) == pytest.approx(expected, rel=1e-12)


def sample_weights(batch: Batch, w: torch.Tensor) -> torch.Tensor:
    """The weight x_i each sample's summed gradient gets (every scheme here is constant within a sample)."""
    n_i = batch.loss_mask.sum(1)
    return torch.where(n_i > 0, w.sum(1) / n_i.clamp(min=1), 0.0)


@PROPERTY
@given(samples=sample_lists, a=st.floats(-1.0, 2.0, allow_nan=False))
def test_delta_l_sample_weights_sum_to_one_and_it_is_length_power_times_a_batch_scalar(samples, a):
    """ΔL's x_i = n_i^-a / sum_j n_j^-a: an unbiased combination of the samples' summed gradients (sum_i x_i = 1);
    per token the shape of length-power with alpha = 1 - a, scaled by sum_j n_j^(1-a) / sum_j n_j^-a."""
    batch = make_batch(samples)
    w = token_weights(batch, Scheme("delta-l", delta_l_alpha=a))
    n = torch.tensor([float(sum(s)) for s in samples], dtype=torch.float64)
    present = n[n > 0]
    if not len(present):
        assert (w == 0).all()
        return
    assert float(sample_weights(batch, w).sum()) == pytest.approx(1.0, rel=1e-12)
    scale = float((present ** (1 - a)).sum() / (present**-a).sum())
    torch.testing.assert_close(w, token_weights(batch, Scheme("length-power", alpha=1 - a)) * scale,
                               rtol=1e-12, atol=1e-300)


@PROPERTY
@given(samples=sample_lists)
def test_delta_l_limits_are_seq_mean_token_sum_and_seq_mean_times_the_harmonic_mean_length(samples):
    batch = make_batch(samples)
    dl = lambda a: token_weights(batch, Scheme("delta-l", delta_l_alpha=a))
    torch.testing.assert_close(dl(0.0), token_weights(batch, "seq-mean-token-sum"), rtol=1e-12, atol=1e-300)
    present = torch.tensor([float(sum(s)) for s in samples if sum(s) > 0], dtype=torch.float64)
    harmonic = len(present) / float((1 / present).sum()) if len(present) else 0.0
    torch.testing.assert_close(dl(1.0), token_weights(batch, "seq-mean-token-mean") * harmonic,
                               rtol=1e-12, atol=1e-300)


@PROPERTY
@given(samples=sample_lists, a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_a_larger_delta_l_alpha_moves_weight_from_long_to_short_samples(samples, a, b):
    """Between a = 0 (every token of every sample the same weight, token-mean's shape) and a = 1 (seq-mean's
    shape) the long-to-short per-token weight ratio (n_long / n_short)^-a falls monotonically."""
    batch = make_batch(samples)
    lo, hi = sorted((a, b))
    n = torch.tensor([float(sum(s)) for s in samples], dtype=torch.float64)
    if (n > 0).sum() < 2 or n.max() == n[n > 0].min():
        return
    long, short = int(n.argmax()), int(torch.where(n > 0, n, math.inf).argmin())

    def ratio(x):  # per-token weight of the longest sample over the shortest's
        weights = sample_weights(batch, token_weights(batch, Scheme("delta-l", delta_l_alpha=x)))
        return float(weights[long] / weights[short])

    assert ratio(hi) <= ratio(lo) * (1 + 1e-12)
    assert ratio(lo) == pytest.approx(float(n[long] / n[short]) ** -lo, rel=1e-9)


@PROPERTY
@given(samples=sample_lists, alpha=st.floats(-1.0, 2.0, allow_nan=False))
def test_length_power_interpolates_between_seq_mean_and_token_mean(samples, alpha):
    batch = make_batch(samples)
    lp = lambda a: token_weights(batch, Scheme("length-power", alpha=a))
    torch.testing.assert_close(lp(0.0), token_weights(batch, "seq-mean-token-mean"), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(lp(1.0), token_weights(batch, "token-mean"), rtol=1e-12, atol=1e-15)
    # alpha ranks long against short samples monotonically: per-token weight ∝ n^(alpha-1)
    w = lp(alpha)
    n_i = torch.tensor([float(sum(s)) for s in samples])
    per_token = torch.stack([w[b][batch.loss_mask[b]].max() if n_i[b] > 0 else torch.tensor(0.0)
                             for b in range(len(samples))])
    longer = n_i[:, None] > n_i[None, :]
    both = (n_i[:, None] > 0) & (n_i[None, :] > 0) & longer
    ratio = (per_token[:, None] / per_token[None, :].clamp_min(1e-300))[both]
    if alpha < 1:
        assert (ratio < 1 + 1e-12).all()
    elif alpha > 1:
        assert (ratio > 1 - 1e-12).all()


@PROPERTY
@given(samples=sample_lists, scheme=schemes, where=st.lists(st.integers(0, 10), min_size=1, max_size=4),
       empty_turns=st.integers(0, 3))
def test_samples_without_loss_tokens_weigh_zero_and_do_not_count(samples, scheme, where, empty_turns):
    with_empty = [list(s) for s in samples]
    inserted = []
    for pos in where:
        pos = min(pos, len(with_empty))
        with_empty.insert(pos, [0] * empty_turns)
        inserted = [i + (i >= pos) for i in inserted] + [pos]
    kept = [i for i in range(len(with_empty)) if i not in inserted]
    w_plain = token_weights(make_batch(samples), scheme)
    w_empty = token_weights(make_batch(with_empty), scheme)
    assert (w_empty[inserted] == 0).all()
    T = min(w_plain.shape[1], w_empty.shape[1])
    torch.testing.assert_close(w_empty[kept][:, :T], w_plain[:, :T], rtol=1e-12, atol=0)
    stats = batch_stats(make_batch(with_empty), scheme)
    assert stats.n_samples == sum(sum(s) > 0 for s in samples)
    assert stats.n_turns == sum(n > 0 for s in samples for n in s)


@PROPERTY
@given(shape=st.lists(st.integers(0, 3), min_size=1, max_size=6), scheme=schemes, R=ranks, K=micro,
       normalization=st.sampled_from(["global", "local"]))
def test_a_batch_without_loss_tokens_gets_all_zero_weights(shape, scheme, R, K, normalization):
    batch = make_batch([[0] * t for t in shape])
    assert (token_weights(batch, scheme) == 0).all()
    w, rank, step = effective_weights(batch, scheme, Plan(R, K, normalization))
    assert not torch.isnan(w).any() and (w == 0).all()


# ------------------------------------------------------------------ gradient accumulation × data parallel


def micro_batch_counts(samples, R, K, what: str) -> list[int]:
    """Per micro-batch count of loss tokens / samples with loss / turns with loss, from the turn lengths."""
    counts = []
    for mb in Plan(R, K).deal(len(samples)):
        rows = [samples[i] for i in mb.rows]
        counts.append({
            "tokens": n_loss(rows),
            "samples": sum(sum(s) > 0 for s in rows),
            "turns": sum(n > 0 for s in rows for n in s),
        }[what])
    return counts


@PROPERTY
@given(samples=sample_lists, scheme=schemes, R=ranks, K=micro)
def test_global_normalization_is_invariant_to_ranks_and_micro_batches(samples, scheme, R, K):
    batch = make_batch(samples)
    w, rank, step = effective_weights(batch, scheme, Plan(R, K, "global"))
    w1, _, _ = effective_weights(batch, scheme)
    torch.testing.assert_close(w, w1, rtol=0, atol=1e-12)
    torch.testing.assert_close(w1, token_weights(batch, scheme), rtol=0, atol=1e-12)
    # every row went to exactly one (rank, step) of the plan
    for mb in Plan(R, K).deal(len(samples)):
        for r in mb.rows:
            assert (rank[r] == mb.rank).all() and (step[r] == mb.step).all()


@PROPERTY
@given(n_rows=st.integers(0, 40), R=st.integers(1, 6), K=st.integers(1, 6))
def test_plan_deals_every_row_once_in_order_and_balanced(n_rows, R, K):
    plan = Plan(R, K).deal(n_rows)
    assert len(plan) == R * K
    assert [i for mb in plan for i in mb.rows] == list(range(n_rows))  # contiguous, in order, each row once
    per_rank = [sum(len(mb.rows) for mb in plan if mb.rank == r) for r in range(R)]
    assert max(per_rank) - min(per_rank) <= 1
    for r in range(R):
        sizes = [len(mb.rows) for mb in plan if mb.rank == r]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="ranks"):
        Plan(0, K)


@PROPERTY
@given(samples=sample_lists, scheme=schemes, R=ranks, K=micro)
def test_batch_stats_are_additive_over_micro_batches(samples, scheme, R, K):
    """What makes the global fix a single all-reduce: the full batch's counts are sums of the micro-batches'."""
    batch = make_batch(samples)
    scheme = with_length_ref(batch, as_scheme(scheme))  # length-power's reference fixed on the whole batch first
    total = BatchStats(0.0, 0.0, 0.0, 0.0)
    for mb in Plan(R, K).deal(len(samples)):
        if mb.rows:
            total = total + batch_stats(batch.select(list(mb.rows)), scheme)
    np.testing.assert_allclose(total.as_tuple(), batch_stats(batch, scheme).as_tuple(), rtol=1e-12)


@PROPERTY
@given(samples=sample_lists, R=ranks, K=micro,
       case=st.sampled_from([("token-mean", "tokens"), ("seq-mean-token-mean", "samples"),
                             ("seq-mean-token-sum", "samples"), ("seq-mean-token-sum-norm", "samples"),
                             ("turn-mean", "turns")]))
def test_local_normalization_is_right_exactly_when_every_micro_batch_has_the_same_denominator(samples, R, K, case):
    """docs/science.md §3's rule: naive per-micro-batch normalisation survives iff its denominator (a token, sample
    or turn count) is the same in every micro-batch; otherwise some tokens get the wrong weight."""
    name, counted = case
    batch = make_batch(samples)
    local, _, _ = effective_weights(batch, name, Plan(R, K, "local"))
    right, _, _ = effective_weights(batch, name, Plan(R, K, "global"))
    assert torch.isfinite(local).all() and (local >= 0).all()
    same_denominator = len(set(micro_batch_counts(samples, R, K, counted))) == 1
    assert torch.allclose(local, right, rtol=1e-12, atol=1e-15) == same_denominator


@PROPERTY
@given(samples=sample_lists, R=ranks, K=micro)
def test_local_token_sum_is_global_divided_by_k_times_r(samples, R, K):
    """A sum has no denominator to cancel the naive `loss / K` and DDP's mean over R, so it is shrunk by K·R."""
    batch = make_batch(samples)
    local, _, _ = effective_weights(batch, "token-sum", Plan(R, K, "local"))
    right, _, _ = effective_weights(batch, "token-sum", Plan(R, K, "global"))
    torch.testing.assert_close(local, right / (K * R), rtol=1e-12, atol=0)


@PROPERTY
@given(turns=st.lists(st.integers(1, 12), min_size=1, max_size=4), R=ranks, K=micro,
       per_micro=st.integers(1, 3), scheme=schemes)
def test_local_equals_global_with_equal_lengths_and_equal_micro_batches(turns, R, K, per_micro, scheme):
    """The negative control: identical samples, R·K·m of them, so every micro-batch looks the same."""
    batch = make_batch([turns] * (R * K * per_micro))
    local, _, _ = effective_weights(batch, scheme, Plan(R, K, "local"))
    right, _, _ = effective_weights(batch, scheme, Plan(R, K, "global"))
    if scheme.name == "token-sum":
        right = right / (K * R)  # see test_local_token_sum_is_global_divided_by_k_times_r
    torch.testing.assert_close(local, right, rtol=1e-12, atol=1e-15)


def test_local_token_mean_differs_when_micro_batch_token_counts_differ():
    batch = make_batch([[3], [30], [3, 4], [50]])  # 3+30 | 7+50 loss tokens with K=2
    local, _, _ = effective_weights(batch, "token-mean", Plan(micro_batches=2, normalization="local"))
    right = token_weights(batch, "token-mean")
    assert float(right.max()) == pytest.approx(1 / 90)
    assert float(local[0].max()) == pytest.approx(1 / (2 * 33))  # 1/(K·n_rk)
    assert float(local[2].max()) == pytest.approx(1 / (2 * 57))
    assert float(local.sum()) == pytest.approx(1.0)  # still sums to one: the mass moved, it did not vanish


# ------------------------------------------------------------------ hand-checked numbers


def test_transformers_24725_gradient_accumulation_numbers():
    """Two samples of 11 and 101 tokens (10 and 100 loss tokens), per-token losses 0.1 and 0.9, GA=2, batch 1."""
    batch = make_batch([[10], [100]], header=0)
    assert batch.tokens.shape == (2, 101) and int((batch.segment_id[0] >= 0).sum()) == 11
    per_token = torch.tensor([0.1, 0.9], dtype=torch.float64)
    losses = per_token[batch.sample_id.clamp(min=0)] * batch.loss_mask
    loss = lambda norm: float((effective_weights(batch, "token-mean", Plan(micro_batches=2, normalization=norm))[0] * losses).sum())
    assert loss("global") == pytest.approx(91 / 110, abs=1e-12)
    assert round(loss("global"), 6) == 0.827273
    assert loss("local") == pytest.approx(0.5, abs=1e-12)
    assert float((token_weights(batch, "token-mean") * losses).sum()) == pytest.approx(91 / 110, abs=1e-12)
    # with batch 1 naive token-mean *is* the sample-level mean
    naive, _, _ = effective_weights(batch, "token-mean", Plan(micro_batches=2, normalization="local"))
    torch.testing.assert_close(naive, token_weights(batch, "seq-mean-token-mean"), rtol=1e-12, atol=0)


FIVE_FIVE_FORTYONE = conversation(("user", "copy abcd"), ("assistant", "abcd"), ("user", "rev efgh"),
                                  ("assistant", "hgfe"), ("user", "long"), ("assistant", "x" * 40))


def turn_table(scheme, layout):
    per_sample, per_turn = weights_summary(weights_table([FIVE_FIVE_FORTYONE], scheme, layout=layout))
    return per_turn.set_index("turn")


def test_science_5_5_41_example():
    """docs/science.md §4: assistant turns of 5, 5 and 41 loss tokens."""
    a_mean = turn_table("seq-mean-token-mean", "split")
    assert a_mean.loss_tokens.tolist() == [5, 5, 41]
    assert a_mean.weight_per_token[0] / a_mean.weight_per_token[2] == pytest.approx(8.2, rel=1e-12)
    np.testing.assert_allclose(a_mean.share, [1 / 3] * 3, rtol=1e-12)
    for layout in ("split", "multiturn"):
        tok = turn_table("token-mean", layout)
        assert tok.share[2] == pytest.approx(41 / 51, rel=1e-12)
        assert round(100 * tok.share[2], 1) == 80.4
    # format B + sample mean is the same as token-mean for one conversation; turn-mean is A + sample-mean
    np.testing.assert_allclose(turn_table("seq-mean-token-mean", "multiturn").share, [5 / 51, 5 / 51, 41 / 51])
    np.testing.assert_allclose(turn_table("turn-mean", "multiturn").share, [1 / 3] * 3, rtol=1e-12)


# ------------------------------------------------------------------ scheme validation


@pytest.mark.parametrize("kwargs, field", [
    (dict(name="mean"), "unknown scheme"),
    (dict(name="length-power", alpha=math.nan), "alpha"),
    (dict(name="length-power", alpha=math.inf), "alpha"),
    (dict(name="delta-l", delta_l_alpha=math.nan), "delta_l_alpha"),
    (dict(name="seq-mean-token-sum-norm", l_max=-1.0), "l_max"),
    (dict(name="seq-mean-token-sum-norm", l_max=0.0), "l_max"),
    (dict(name="seq-mean-token-sum-norm", l_max=math.nan), "l_max"),
    (dict(name="seq-mean-token-sum-norm", l_max=0.5), "l_max"),  # a token count: at least 1
    (dict(name="seq-mean-token-sum-norm", l_max=5e-324), "l_max"),
    (dict(name="length-power", length_ref=0.5), "length_ref"),
])
def test_bad_scheme_parameters_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Scheme(**kwargs)


def test_l_max_defaults_to_the_longest_sample_of_the_global_batch():
    batch = make_batch([[3], [5, 2], [0]])
    assert resolve_l_max(batch, Scheme("seq-mean-token-sum-norm")).l_max == 7
    assert resolve_l_max(batch, Scheme("seq-mean-token-sum-norm", l_max=64)).l_max == 64
    # fixed on the global batch before micro-batching: K does not change it
    w, _, _ = effective_weights(batch, "seq-mean-token-sum-norm", Plan(micro_batches=3, normalization="local"))
    assert float(w[0].max()) == pytest.approx(1 / (3 * 1 * 7))  # 1/K · 1/(b_k · L_max), b_k = 1


# ------------------------------------------------------------------ the windows frameworks normalise over


def rank_counts(samples, R, K, what: str) -> list[int]:
    """Per rank: loss tokens or samples with loss over its K micro-batches."""
    per_micro = micro_batch_counts(samples, R, K, what)
    return [sum(per_micro[r * K:(r + 1) * K]) for r in range(R)]


@PROPERTY
@given(samples=sample_lists, R=ranks, K=micro,
       case=st.sampled_from([("token-mean", "tokens"), ("seq-mean-token-mean", "samples")]))
def test_rank_window_is_one_over_r_times_the_ranks_own_count(samples, R, K, case):
    """`rank`: each rank divides by its own count over its GA window, c = 1, DDP's mean: 1/(R·D_r). It equals
    global exactly when every rank has the same count, and differs otherwise."""
    name, counted = case
    batch = make_batch(samples)
    w, rank, _ = effective_weights(batch, name, Plan(ranks=R, micro_batches=K, normalization="rank"))
    right, _, _ = effective_weights(batch, name, Plan(ranks=R, micro_batches=K, normalization="global"))
    counts = rank_counts(samples, R, K, counted)
    for r in range(R):
        on_rank = (rank == r) & batch.loss_mask
        if counts[r]:
            scale = sum(counts) / (R * counts[r])  # global denominator / (R · the rank's own)
            torch.testing.assert_close(w[on_rank], right[on_rank] * scale, rtol=1e-12, atol=0)
    same = len({c for c in counts if c}) <= 1 and all(counts)
    assert torch.allclose(w, right, rtol=1e-12, atol=1e-15) == (same or not batch.loss_mask.any())


@PROPERTY
@given(samples=sample_lists, R=ranks, K=micro, steps=st.sampled_from([1, 2]))
def test_a_global_window_of_s_steps_divides_by_its_own_tokens_times_s_over_k(samples, R, K, steps):
    """TRL's generation batch: S consecutive accumulation steps on every rank pool their count, c = R·S/K."""
    S = steps if K % steps == 0 else K
    batch = make_batch(samples)
    w, _, step = effective_weights(batch, "token-mean", Plan(ranks=R, micro_batches=K, window_steps=S))
    for g in range(K // S):
        in_window = (step // S == g) & batch.loss_mask
        if in_window.any():
            torch.testing.assert_close(w[in_window], torch.full_like(w[in_window], S / (K * int(in_window.sum()))),
                                       rtol=1e-12, atol=0)


def test_count_empty_counts_every_sample_in_b_and_l_max_scope_takes_each_micro_batch_longest():
    batch = make_batch([[4], [0], [2], [6]])
    counted = token_weights(batch, Scheme("seq-mean-token-sum", count_empty=True))
    assert float(counted.max()) == pytest.approx(1 / 4)  # B = 4 samples, the empty one included
    assert float(token_weights(batch, "seq-mean-token-sum").max()) == pytest.approx(1 / 3)
    per_micro, _, _ = effective_weights(batch, Scheme("seq-mean-token-sum-norm", l_max_scope="micro-batch"), Plan(micro_batches=2))
    assert float(per_micro[0].max()) == pytest.approx(1 / (3 * 4))  # micro-batch {4, 0}: L = 4
    assert float(per_micro[3].max()) == pytest.approx(1 / (3 * 6))  # micro-batch {2, 6}: L = 6
    with pytest.raises(ValueError, match="l_max_scope='step'"):
        Scheme("seq-mean-token-sum-norm", l_max_scope="step")


# ------------------------------------------------------------------ length-power at any alpha


@PROPERTY
@given(samples=sample_lists, alpha=st.floats(-1e300, 1e300, allow_nan=False), R=ranks, K=micro,
       normalization=st.sampled_from(["global", "local", "rank"]))
def test_length_power_weights_are_finite_and_sum_to_one_for_every_finite_alpha(samples, alpha, R, K, normalization):
    """(n/c)^alpha with c the window's longest (alpha >= 0) or shortest (alpha < 0) sample: the largest power is 1,
    so nothing overflows and the sum never underflows. Every window with loss tokens has its full share: global
    weights sum to 1, rank ones to (ranks with loss tokens)/R, local ones to (micro-batches with loss tokens)/RK."""
    batch = make_batch(samples)
    w, rank, step = effective_weights(batch, Scheme("length-power", alpha=alpha), Plan(R, K, normalization))
    assert torch.isfinite(w).all() and (w >= 0).all()
    if not batch.loss_mask.any():
        return
    if normalization == "global":
        assert float(w.sum()) == pytest.approx(1.0, rel=1e-12)
    elif normalization == "rank":
        assert float(w.sum()) == pytest.approx(len(set(rank[batch.loss_mask].tolist())) / R, rel=1e-12)
    else:
        has_loss = {(int(r), int(k)) for r, k in zip(rank[batch.loss_mask], step[batch.loss_mask])}
        assert float(w.sum()) == pytest.approx(len(has_loss) / (R * K), rel=1e-12)


@PROPERTY
@given(samples=sample_lists, alpha=st.floats(-3.0, 3.0, allow_nan=False))
def test_length_power_equals_the_plain_formula_where_that_is_representable(samples, alpha):
    batch = make_batch(samples)
    n = {}
    for i in batch.sample_id[batch.loss_mask].tolist():
        n[i] = n.get(i, 0) + 1
    denominator = sum(v**alpha for v in n.values())
    expected = torch.zeros(batch.tokens.shape, dtype=torch.float64)
    for (b, t) in batch.loss_mask.nonzero().tolist():
        expected[b, t] = n[int(batch.sample_id[b, t])] ** (alpha - 1) / denominator
    torch.testing.assert_close(token_weights(batch, Scheme("length-power", alpha=alpha)), expected, rtol=1e-12,
                               atol=0)
