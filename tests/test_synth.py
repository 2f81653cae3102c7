"""Synthetic chats: deterministic, lengths as specified, replies right, shipped data reproducible."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossreduce_demo.chats import load_chats
from lossreduce_demo.hf_tokenizer import SHIPPED_TOKENIZER
from lossreduce_demo.synth import (
    BRANCH_LONG,
    BRANCH_PROMPT,
    BRANCH_SHORT,
    SHIPPED,
    TASKS,
    LengthSpec,
    answer,
    is_long_branch,
    make_branch_chats,
    make_chats,
)
from lossreduce_demo.tokenizer import render

ROOT = Path(__file__).resolve().parent.parent
PROPERTY = settings(max_examples=200, deadline=None)


def test_same_seed_same_chats_other_seed_other_chats():
    assert make_chats(30, seed=7) == make_chats(30, seed=7)
    assert make_chats(30, seed=7) != make_chats(30, seed=8)
    assert make_branch_chats(30, seed=7) == make_branch_chats(30, seed=7)


length_specs = st.builds(
    LengthSpec,
    family=st.sampled_from(["fixed", "uniform", "lognormal", "bimodal"]),
    mean=st.floats(0.5, 80),
    low=st.integers(1, 20),
    high=st.integers(20, 90),
    sigma=st.floats(0, 2),
    short_mean=st.floats(0.5, 20),
    long_mean=st.floats(10, 90),
    long_fraction=st.floats(0, 1),
    turn_growth=st.floats(0.5, 2),
    max_len=st.integers(1, 100),
)


@PROPERTY
@given(spec=length_specs, seed=st.integers(0, 2**32), turn=st.integers(0, 4))
def test_length_spec_samples_stay_in_range(spec, seed, turn):
    rng = random.Random(seed)
    for _ in range(20):
        n = spec.sample(rng, turn)
        assert isinstance(n, int) and 1 <= n <= spec.max_len
        g = spec.turn_growth**turn
        if spec.family == "fixed":
            assert n == min(max(round(spec.mean * g), 1), spec.max_len)
        elif spec.family == "uniform":
            assert min(max(round(spec.low * g), 1), spec.max_len) <= n <= min(round(spec.high * g), spec.max_len)
        elif spec.family == "bimodal":
            lo = min(spec.short_mean, spec.long_mean) * 0.75 * g
            hi = max(spec.short_mean, spec.long_mean) * 1.25 * g
            assert min(max(math.floor(lo), 1), spec.max_len) <= n <= min(max(math.ceil(hi), 1), spec.max_len)


def test_bimodal_long_fraction_is_respected():
    spec = LengthSpec("bimodal", short_mean=4, long_mean=40, long_fraction=0.25)
    rng = random.Random(0)
    draws = [spec.sample(rng) for _ in range(4000)]
    assert all(3 <= n <= 5 or 30 <= n <= 50 for n in draws)
    assert abs(sum(n >= 30 for n in draws) / len(draws) - 0.25) < 0.03


@pytest.mark.parametrize("kwargs, field", [
    (dict(mean=-3.0), "mean"),
    (dict(mean=math.nan), "mean"),
    (dict(short_mean=math.inf), "short_mean"),
    (dict(long_fraction=1.5), "long_fraction"),
    (dict(long_fraction=math.nan), "long_fraction"),
    (dict(sigma=-1.0), "sigma"),
    (dict(family="gaussian"), "family"),
    (dict(low=5, high=2), "low"),
    (dict(max_len=0), "max_len"),
    (dict(turn_growth=0.0), "turn_growth"),
])
def test_odd_length_specs_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"{field}="):
        LengthSpec(**kwargs)


@PROPERTY
@given(n=st.integers(1, 12), seed=st.integers(0, 10**6), max_tokens=st.integers(48, 200),  # room for the longest system prompt + a session
       turns=st.tuples(st.integers(1, 3), st.integers(3, 6)), spec=length_specs)
def test_every_reply_is_the_answer_and_fits_max_tokens(n, seed, max_tokens, turns, spec):
    chats = make_chats(n, lengths=spec, turns=turns, max_tokens=max_tokens, seed=seed)
    assert len(chats) == n
    for conv in chats:
        assert len(render(conv)) <= max_tokens
        assert 1 <= conv.n_assistant_turns <= turns[1]
        msgs = [m for m in conv.messages if m.role != "system"]
        assert [m.role for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        for user, reply in zip(msgs[::2], msgs[1::2]):
            task, letters = user.content.split(" ")
            assert task in TASKS and letters.isalpha() and len(letters) >= 1
            assert reply.content == answer(task, letters)


def test_answer_by_hand_and_unknown_task():
    assert (answer("copy", "qhxk"), answer("rev", "qhxk"), answer("next", "qhxz")) == ("qhxk", "kxhq", "riya")
    with pytest.raises(ValueError, match="unknown task"):
        answer("sort", "abc")
    with pytest.raises(ValueError, match="max_tokens"):
        make_chats(2, max_tokens=6)
    with pytest.raises(ValueError, match="turns"):
        make_chats(2, turns=(3, 1))


def test_branch_chats_have_the_two_replies_in_the_asked_proportion():
    chats = make_branch_chats(2000, long_fraction=0.2, context_turns=2, context_len=4, seed=3)
    assert abs(sum(map(is_long_branch, chats)) / len(chats) - 0.2) < 0.03
    for conv in chats[:50]:
        r = render(conv)
        assert conv.messages[-2].content == BRANCH_PROMPT
        assert conv.messages[-1].content == (BRANCH_LONG if is_long_branch(conv) else BRANCH_SHORT)
        assert r.loss_tokens_per_turn() == [5, 5, 60 if is_long_branch(conv) else 5]


@given(short=st.integers(2, 40), long=st.integers(2, 100), turns=st.integers(0, 2))
@settings(max_examples=25, deadline=None)
def test_branch_replies_have_the_asked_loss_tokens(short, long, turns):
    chats = make_branch_chats(40, long_fraction=0.5, context_turns=turns, short_len=short, long_len=long, seed=1)
    for conv in chats:
        expected = long if is_long_branch(conv) else short
        assert render(conv).loss_tokens_per_turn() == [5] * turns + [expected]
        assert conv.messages[-1].content[0] == ("L" if is_long_branch(conv) else "S")


@pytest.mark.parametrize("bad", [1, 0, 2.5, True])
def test_branch_reply_lengths_below_two_tokens_are_rejected(bad):
    with pytest.raises(ValueError, match="long_len=.*integer >= 2"):
        make_branch_chats(4, long_len=bad)


def test_make_data_regenerates_the_shipped_files_byte_for_byte(tmp_path):
    out = tmp_path / "data"
    done = subprocess.run([sys.executable, "-m", "lossreduce_demo", "make-data", "--out-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([*SHIPPED, SHIPPED_TOKENIZER])
    for name in SHIPPED:
        assert (out / name).read_bytes() == (ROOT / "data" / name).read_bytes(), name
        load_chats(out / name)  # and they load cleanly
    tokenizer_files = sorted(p.name for p in (ROOT / "data" / SHIPPED_TOKENIZER).iterdir())
    assert tokenizer_files == ["tokenizer.json", "tokenizer_config.json"]
    for name in tokenizer_files:  # the shipped tokenizer, trained anew on the shipped chats
        assert (out / SHIPPED_TOKENIZER / name).read_bytes() == (ROOT / "data" / SHIPPED_TOKENIZER / name).read_bytes()
