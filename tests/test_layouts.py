"""Chat template, the three layouts (split / multiturn / packed) and their cost in tokens."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lossreduce_demo.chats import ChatFormatError, Conversation, Message, conversation, load_chats
from lossreduce_demo.layouts import (
    ALL_LAYOUTS,
    CONTAMINATED,
    IGNORE_INDEX,
    LAYOUTS,
    layout_waste,
    make_layout,
    multiturn_layout,
    packed_causal_layout,
    packed_layout,
    rows_as_samples,
    split_layout,
)
from lossreduce_demo.model import GPT, GPTConfig
from lossreduce_demo.reductions import token_weights
from lossreduce_demo.synth import LengthSpec, make_chats
from lossreduce_demo.tokenizer import (
    ASSISTANT,
    BOS,
    EOT,
    PAD,
    ROLE_CODES,
    ROLE_HEADER,
    SPECIAL_TEXT,
    decode,
    encode,
    render,
    template_text,
)

PROPERTY = settings(max_examples=100, deadline=None)
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="[]"), max_size=8)
message = st.builds(Message, st.sampled_from(["system", "user", "assistant"]), text)


@st.composite
def conversations(draw, min_assistant=1):
    msgs = draw(st.lists(message, min_size=0, max_size=6))
    while sum(m.role == "assistant" for m in msgs) < min_assistant:
        msgs.append(Message("assistant", draw(text)))
    return Conversation(tuple(msgs))


def expected_render(conv):
    """Template and labels written out independently of tokenizer.render."""
    tokens, mask, turn = [BOS], [0], [-1]
    j = 0
    for m in conv.messages:
        body = list(m.content.encode("utf-8")) + [EOT]
        is_a = m.role == "assistant"
        tokens += [ROLE_HEADER[m.role]] + body
        mask += [0] + [int(is_a)] * len(body)
        turn += [j if is_a else -1] * (1 + len(body))
        j += is_a
    return tokens, mask, turn


# ------------------------------------------------------------------ template


@PROPERTY
@given(conv=conversations(min_assistant=0))
def test_render_puts_loss_on_assistant_content_and_its_eot_only(conv):
    r = render(conv)
    tokens, mask, turn = expected_render(conv)
    assert r.tokens == tokens and r.loss_mask == mask and r.turn == turn
    assert r.tokens[0] == BOS and r.role[0] == ROLE_CODES["bos"]
    assert all(r.loss_mask[t] == 0 for t, tok in enumerate(r.tokens) if tok == ASSISTANT)  # header is prompt
    assert r.n_turns == conv.n_assistant_turns
    assert r.loss_tokens_per_turn() == [len(encode(m.content)) + 1 for m in conv.messages if m.role == "assistant"]
    assert len(r.tokens) == len(r.role) == len(r.turn) == len(r.loss_mask)


@PROPERTY
@given(conv=conversations(min_assistant=0))
def test_template_text_marks_exactly_the_loss_spans(conv):
    marked, plain = template_text(conv), template_text(conv, mark_loss=False)
    assert plain == decode(render(conv).tokens)
    assert marked.replace("[[", "").replace("]]", "") == plain
    spans = [m.content + SPECIAL_TEXT[EOT] for m in conv.messages if m.role == "assistant"]
    assert marked.count("[[") == marked.count("]]") == len(spans)
    for span in spans:
        assert f"[[{span}" in marked


def test_template_text_by_hand():
    conv = conversation(("user", "hi"), ("assistant", "yo é"), system="be brief")
    assert template_text(conv) == ("<|bos|><|system|>be brief<|eot|><|user|>hi<|eot|><|assistant|>[[yo é<|eot|>]]")
    assert render(conv).loss_tokens_per_turn() == [6]  # y, o, space, é as two UTF-8 bytes, <|eot|>
    assert len(render(conv)) == 1 + (1 + 8 + 1) + (1 + 2 + 1) + (1 + 5 + 1)


@PROPERTY
@given(s=st.text(st.characters(blacklist_categories=("Cs",))))
def test_encode_decode_roundtrip(s):
    assert decode(encode(s)) == s
    assert all(0 <= i < 256 for i in encode(s))


# ------------------------------------------------------------------ layouts


def valid(batch, row):
    return batch.segment_id[row] >= 0


@PROPERTY
@given(convs=st.lists(conversations(), min_size=1, max_size=5))
def test_split_has_one_row_per_assistant_turn_with_its_whole_prefix(convs):
    batch = split_layout(convs)
    assert batch.layout == "split"
    assert batch.tokens.shape[0] == sum(c.n_assistant_turns for c in convs)
    row, turn_offset = 0, 0
    for c, conv in enumerate(convs):
        tokens, mask, turn = expected_render(conv)
        for j in range(conv.n_assistant_turns):
            end = max(t for t, tj in enumerate(turn) if tj == j) + 1
            keep = valid(batch, row)
            assert int(keep.sum()) == end and keep[:end].all()  # prefix, then padding only
            assert batch.tokens[row, :end].tolist() == tokens[:end]
            assert (batch.tokens[row, end:] == PAD).all()
            assert batch.loss_mask[row, :end].tolist() == [bool(m and tj == j) for m, tj in zip(mask, turn)][:end]
            assert (batch.sample_id[row, :end] == row).all() and (batch.conversation_id[row, :end] == c).all()
            assert set(batch.turn_id[row][batch.loss_mask[row]].tolist()) == {turn_offset + j}
            row += 1
        turn_offset += conv.n_assistant_turns


@PROPERTY
@given(convs=st.lists(conversations(), min_size=1, max_size=5))
def test_multiturn_has_one_row_per_conversation_with_every_turn_trained(convs):
    batch = make_layout(convs, "multiturn")
    assert batch.tokens.shape[0] == len(convs)
    for c, conv in enumerate(convs):
        tokens, mask, _ = expected_render(conv)
        assert batch.tokens[c, : len(tokens)].tolist() == tokens
        assert batch.loss_mask[c].tolist()[: len(mask)] == [bool(m) for m in mask]
        assert not batch.loss_mask[c, len(mask):].any()
        assert batch.position[c, : len(tokens)].tolist() == list(range(len(tokens)))


@PROPERTY
@given(convs=st.lists(conversations(), min_size=1, max_size=8), extra=st.integers(0, 60))
def test_packed_rows_fit_keep_order_and_attend_block_diagonally(convs, extra):
    lengths = [len(render(c)) for c in convs]
    row_len = max(lengths) + extra
    batch = packed_layout(convs, row_len)
    assert batch.tokens.shape[1] == row_len
    seen, used = [], []
    for row in range(batch.tokens.shape[0]):
        keep = valid(batch, row)
        assert keep.any()  # no empty row
        n = int(keep.sum())
        assert keep[:n].all()  # conversations first, padding at the end
        ids = batch.conversation_id[row, :n].tolist()
        start = 0
        for seg, c in enumerate(dict.fromkeys(ids)):  # each conversation whole and contiguous in its row
            tokens, mask, _ = expected_render(convs[c])
            span = slice(start, start + len(tokens))
            assert batch.tokens[row, span].tolist() == tokens
            assert batch.loss_mask[row, span].tolist() == [bool(m) for m in mask]
            assert batch.position[row, span].tolist() == list(range(len(tokens)))
            assert (batch.segment_id[row, span] == seg).all()
            start += len(tokens)
            seen.append(c)
        used.append(n)
    assert seen == list(range(len(convs)))  # conversation order kept
    first = [batch.conversation_id[r, 0].item() for r in range(batch.tokens.shape[0])]
    for r in range(1, len(used)):
        assert used[r - 1] + lengths[first[r]] > row_len  # a new row starts only when the next one does not fit
    # attention: causal, within the same conversation; padding sees nothing (the model adds the diagonal)
    seg = batch.segment_id
    T = row_len
    causal = torch.arange(T)[None, :] <= torch.arange(T)[:, None]
    expected = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] >= 0) & causal
    mask = batch.attention_mask()
    assert mask.shape == (batch.tokens.shape[0], 1, T, T)
    assert torch.equal(mask[:, 0], expected)
    assert torch.equal(mask[:, 0].any(-1), seg >= 0)  # only padding queries attend to nothing


@PROPERTY
@given(convs=st.lists(conversations(), min_size=1, max_size=8), extra=st.integers(0, 60))
def test_packed_causal_has_packed_rows_with_running_positions_and_no_boundaries(convs, extra):
    row_len = max(len(render(c)) for c in convs) + extra
    packed, causal = packed_layout(convs, row_len), packed_causal_layout(convs, row_len)
    for field in ("tokens", "loss_mask", "sample_id", "conversation_id", "turn_id", "segment_id", "role"):
        assert torch.equal(getattr(causal, field), getattr(packed, field)), field
    used = packed.segment_id >= 0
    running = torch.arange(row_len).expand_as(used)
    assert torch.equal(causal.position[used], running[used]) and (causal.position[~used] == 0).all()
    assert causal.layout == CONTAMINATED and causal.model_inputs()["attn_mask"] is None
    assert torch.equal(make_layout(convs, CONTAMINATED, row_len=row_len).position, causal.position)


CONTAMINATION_CHATS = make_chats(6, turns=(1, 2), seed=5)


def test_contaminated_rows_change_every_conversation_but_the_first_of_its_row():
    """Causal attention from position 0 is the same as the block-diagonal mask for a row's first conversation;
    every later one sees the conversations before it (and shifted positions), so its losses change."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(context_len=256)).eval()
    row_len = 200
    packed, causal = packed_layout(CONTAMINATION_CHATS, row_len), packed_causal_layout(CONTAMINATION_CHATS, row_len)
    assert int(packed.segment_id.max()) >= 1  # some row holds two conversations
    with torch.no_grad():
        loss = {b.layout: torch.nn.functional.pad(model(**b.model_inputs())[1], (1, 0)) for b in (packed, causal)}
    first = packed.loss_mask & (packed.segment_id == 0)
    later = packed.loss_mask & (packed.segment_id > 0)
    torch.testing.assert_close(loss[CONTAMINATED][first], loss["packed"][first], rtol=1e-5, atol=1e-6)
    differs = (loss[CONTAMINATED] - loss["packed"]).abs() > 1e-4
    for row, seg in {(int(r), int(s)) for r, s in zip(*later.nonzero(as_tuple=True)) for s in [packed.segment_id[r, s]]}:
        in_segment = later[row] & (packed.segment_id[row] == seg)
        assert differs[row][in_segment].any()


@PROPERTY
@given(convs=st.lists(conversations(), min_size=1, max_size=8), extra=st.integers(0, 60),
       layout=st.sampled_from(["split", "packed", CONTAMINATED]))
def test_token_mean_weights_do_not_depend_on_the_layout(convs, extra, layout):
    """Every loss token weighs 1/N however conversations are cut into rows (N counts tokens, not rows)."""
    row_len = max(len(render(c)) for c in convs) + extra
    reference, other = multiturn_layout(convs), make_layout(convs, layout, row_len=row_len)
    n = int(reference.loss_mask.sum())
    assert int(other.loss_mask.sum()) == n
    w_ref, w = token_weights(reference, "token-mean"), token_weights(other, "token-mean")
    torch.testing.assert_close(w[other.loss_mask], torch.full((n,), 1 / n, dtype=w.dtype), rtol=1e-12, atol=0)
    torch.testing.assert_close(w.sum(), w_ref.sum(), rtol=1e-12, atol=1e-12)


@PROPERTY
@given(convs=st.lists(conversations(), min_size=1, max_size=8), extra=st.integers(0, 60))
def test_the_per_row_mean_of_packed_rows_weighs_each_token_one_over_rows_times_row_tokens(convs, extra):
    """"sample = row": w = 1/(R·n_r). It is token-mean when every row has the same loss tokens and seq-mean over
    conversations when every row holds one conversation — in general neither."""
    row_len = max(len(render(c)) for c in convs) + extra
    packed = packed_layout(convs, row_len)
    per_row = token_weights(rows_as_samples(packed), "seq-mean-token-mean")
    n_r = packed.loss_mask.sum(1)
    rows_with_loss = int((n_r > 0).sum())
    expected = torch.where(packed.loss_mask, 1.0 / (rows_with_loss * n_r.clamp(min=1))[:, None].double(), 0.0)
    torch.testing.assert_close(per_row, expected, rtol=1e-12, atol=0)
    same_row_tokens = len(set(n_r[n_r > 0].tolist())) == 1
    one_per_row = all(len(set(packed.conversation_id[r][packed.loss_mask[r]].tolist())) <= 1
                      for r in range(packed.tokens.shape[0]))
    token_mean = token_weights(packed, "token-mean")
    seq_mean = token_weights(packed, "seq-mean-token-mean")
    assert torch.allclose(per_row, token_mean, rtol=1e-12, atol=1e-15) == same_row_tokens
    if one_per_row:
        torch.testing.assert_close(per_row, seq_mean, rtol=1e-12, atol=1e-15)


def test_the_per_row_mean_is_neither_token_mean_nor_seq_mean_on_branch_rows():
    """Two rows: one long branch reply with five short ones, and four short ones."""
    from lossreduce_demo.synth import make_branch_chats

    chats = make_branch_chats(40, seed=3)
    packed = packed_layout(chats, 129)
    per_row = token_weights(rows_as_samples(packed), "seq-mean-token-mean")
    for other in ("token-mean", "seq-mean-token-mean"):
        assert not torch.allclose(per_row, token_weights(packed, other), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_model_inputs_shift_targets_and_mask_padding(layout):
    convs = make_chats(5, turns=(1, 3), seed=11)
    batch = make_layout(convs, layout, row_len=128)
    inputs = batch.model_inputs()
    assert torch.equal(inputs["idx"], batch.tokens[:, :-1])
    assert torch.equal(inputs["targets"] != IGNORE_INDEX, batch.loss_mask[:, 1:])
    assert torch.equal(inputs["targets"][batch.loss_mask[:, 1:]], batch.tokens[:, 1:][batch.loss_mask[:, 1:]])
    assert (inputs["attn_mask"] is not None) == (layout == "packed")
    sub = batch.select([1, 0])
    assert torch.equal(sub.sample_id[0], batch.sample_id[1]) and sub.layout == batch.layout


def test_unknown_layout_is_rejected():
    with pytest.raises(ValueError, match="unknown layout"):
        make_layout(make_chats(2, seed=0), "interleaved")


# ------------------------------------------------------------------ too long


LONG = conversation(("user", "tell me"), ("assistant", "x" * 50), ("user", "more"), ("assistant", "y" * 50))


@pytest.mark.parametrize("layout, limit", [("split", dict(max_len=40)), ("multiturn", dict(max_len=100)),
                                           ("packed", dict(row_len=100))])
def test_too_long_conversations_raise_naming_the_conversation(layout, limit):
    convs = [conversation(("user", "hi"), ("assistant", "yo")), LONG]
    with pytest.raises(ChatFormatError) as err:
        make_layout(convs, layout, **limit)
    assert "conversation 1" in str(err.value) and err.value.field == "messages"
    assert "tokens, longer than the limit" in str(err.value)


def test_too_long_conversation_loaded_from_file_names_file_and_line(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
                    + '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "'
                    + "z" * 30 + '"}]}\n', encoding="utf-8")
    with pytest.raises(ChatFormatError) as err:
        packed_layout(load_chats(path), row_len=20)
    n_tokens = 1 + (1 + 1 + 1) + (1 + 30 + 1)  # <bos>, <user> a <eot>, <assistant> z*30 <eot>
    assert str(err.value).startswith(f"{path}:2: messages: the conversation has {n_tokens} tokens")


# ------------------------------------------------------------------ cost


def test_layout_waste_counts_are_consistent():
    convs = make_chats(48, lengths=LengthSpec(), turns=(2, 5), seed=12)
    rendered = [len(render(c)) for c in convs]
    w = {name: layout_waste(make_layout(convs, name, row_len=128)) for name in LAYOUTS}
    for x in w.values():
        assert x["slots"] == x["rows"] * x["row_len"]
        assert x["padding_fraction"] == pytest.approx(1 - x["tokens"] / x["slots"], rel=1e-12)
        assert x["tokens_per_loss_token"] == pytest.approx(x["tokens"] / x["loss_tokens"])
        assert x["slots_per_loss_token"] >= x["tokens_per_loss_token"]
    assert len({x["loss_tokens"] for x in w.values()}) == 1  # every layout trains on the same tokens
    assert w["multiturn"]["tokens"] == w["packed"]["tokens"] == sum(rendered)
    assert w["multiturn"]["rows"] == len(convs) and w["packed"]["rows"] < len(convs)
    assert w["split"]["rows"] == sum(c.n_assistant_turns for c in convs)
    assert w["split"]["tokens_per_loss_token"] > 1.5 * w["multiturn"]["tokens_per_loss_token"]
    assert w["packed"]["padding_fraction"] < w["multiturn"]["padding_fraction"]


@PROPERTY
@given(convs=st.lists(conversations(), min_size=1, max_size=5))
def test_split_repeats_every_prefix(convs):
    split, multi = layout_waste(make_layout(convs, "split")), layout_waste(make_layout(convs, "multiturn"))
    prefixes = [max(t for t, tj in enumerate(expected_render(c)[2]) if tj == j) + 1
                for c in convs for j in range(c.n_assistant_turns)]
    assert split["tokens"] == sum(prefixes)
    assert split["loss_tokens"] == multi["loss_tokens"]
    if all(c.messages[-1].role == "assistant" for c in convs):  # nothing after the last reply
        assert split["tokens"] >= multi["tokens"]
        single_turn = all(c.n_assistant_turns == 1 for c in convs)
        assert (split["tokens"] == multi["tokens"]) == single_turn
