"""Tests for lossreduce_demo.chats: one test per error kind, the skip mode, round-trips."""

from __future__ import annotations

import json
import pickle
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossreduce_demo.chats import (
    ROLES,
    ChatFormatError,
    Conversation,
    Message,
    chats_summary,
    conversation,
    load_chats,
    parse_chats,
    save_chats,
)
from lossreduce_demo.errors import InputWarning

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
GOOD_LINE = json.dumps(GOOD)


def write(tmp_path, *lines, name="chats.jsonl"):
    """Write lines (str: JSON-dumped unless already str) joined with "\\n"; return the path."""
    p = tmp_path / name
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    p.write_text(text, encoding="utf-8")
    return p


def load_error(path, **kw) -> str:
    with pytest.raises(ChatFormatError) as ei:
        load_chats(path, **kw)
    return str(ei.value)


# ----------------------------------------------------------------------------- happy paths

def test_loads_good_file_and_sets_origin(tmp_path):
    p = write(tmp_path, GOOD, {"messages": [{"role": "system", "content": "s"}, *GOOD["messages"]], "id": 7})
    convs = load_chats(p)
    assert len(convs) == 2
    assert convs[0] == conversation(("user", "hi"), ("assistant", "hello"))
    assert convs[0].origin == f"{p}:1"
    assert convs[1].origin == f"{p}:2"
    assert [m.role for m in convs[1].messages] == ["system", "user", "assistant"]


def test_bom_crlf_and_blank_lines_load_with_physical_line_numbers(tmp_path):
    p = tmp_path / "bom.jsonl"
    raw = (
        b"\xef\xbb\xbf" + GOOD_LINE.encode() + b"\r\n"
        + b"\r\n"
        + b"   \t \r\n"
        + json.dumps({"messages": [{"role": "assistant", "content": "caf\u00e9", "extra": 1}]},
                     ensure_ascii=False).encode("utf-8") + b"\r\n"
        + b"\n"
    )
    p.write_bytes(raw)
    with pytest.warns(InputWarning, match=f"{p}:4: messages\\[0\\]: the conversation starts with an assistant"):
        convs = load_chats(p)
    assert [c.origin for c in convs] == [f"{p}:1", f"{p}:4"]
    assert convs[1].messages == (Message("assistant", "caf\u00e9"),)


def test_line_numbers_count_blank_lines_in_errors(tmp_path):
    p = write(tmp_path, GOOD, "", "   ", {"messages": []})
    assert load_error(p).startswith(f"{p}:4: messages: ")


def test_message_order_two_users_and_empty_strings_are_fine():
    text = json.dumps({"messages": [
        {"role": "user", "content": ""}, {"role": "user", "content": "again"}, {"role": "assistant", "content": ""},
    ]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        (c,) = parse_chats(text)
    assert [m.role for m in c.messages] == ["user", "user", "assistant"]
    assert c.n_assistant_turns == 1


@pytest.mark.parametrize("roles, where, problem", [
    (["assistant", "user", "assistant"], "messages[0]", "the conversation starts with an assistant turn"),
    (["system", "assistant"], "messages[1]", "the conversation starts with an assistant turn"),
    (["user", "assistant", "assistant"], "messages[2]", "two assistant messages in a row"),
    (["user", "assistant", "system", "user", "assistant"], "messages[2]", "a system message after the first"),
])
def test_unusual_role_orders_load_with_one_warning_naming_line_and_message(roles, where, problem):
    text = GOOD_LINE + "\n" + json.dumps({"messages": [{"role": r, "content": "x"} for r in roles]})
    with pytest.warns(InputWarning) as rec:
        convs = parse_chats(text, source="f.jsonl")
    assert len(convs) == 2 and [m.role for m in convs[1].messages] == roles
    assert len(rec) == 1 and str(rec[0].message).startswith(f"f.jsonl:2: {where}: {problem}")


def test_parse_chats_accepts_lines_and_bytes():
    lines = [GOOD_LINE + "\n", "\n", GOOD_LINE + "\r\n"]
    convs = parse_chats(lines, source="mem")
    assert [c.origin for c in convs] == ["mem:1", "mem:3"]
    assert parse_chats((GOOD_LINE + "\n").encode()) == parse_chats(GOOD_LINE)


def test_unicode_line_separators_inside_content_do_not_split_lines():
    c = conversation(("user", "a\u2028b\u0085c\x1cd"), ("assistant", "x\u2029y"))
    text = json.dumps(c.to_dict(), ensure_ascii=False)
    assert parse_chats(text) == [c]


# ----------------------------------------------------------------------------- file-level errors

def test_missing_file(tmp_path):
    p = tmp_path / "nope.jsonl"
    assert load_error(p) == f"{p}: file not found"


def test_directory(tmp_path):
    msg = load_error(tmp_path)
    assert msg.startswith(f"{tmp_path}: ")
    assert "directory" in msg


def test_not_utf8_names_the_line(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(GOOD_LINE.encode() + b"\n" + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    msg = load_error(p)
    assert msg.startswith(f"{p}:2: ")
    assert "UTF-8" in msg and "0xe9" in msg


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_bytes(b"")
    assert load_error(p) == f"{p}: no conversations"


def test_only_blank_lines_is_no_conversations(tmp_path):
    p = tmp_path / "blank.jsonl"
    p.write_bytes(b"\xef\xbb\xbf\r\n  \n\n")
    assert load_error(p) == f"{p}: no conversations"


# ----------------------------------------------------------------------------- line-level errors

def test_invalid_json_has_json_message_and_column(tmp_path):
    p = write(tmp_path, GOOD, '{"messages": [}')
    msg = load_error(p)
    assert msg.startswith(f"{p}:2: invalid JSON: ")
    assert "Expecting value" in msg
    assert "column 15" in msg


def test_line_not_an_object(tmp_path):
    p = write(tmp_path, [GOOD])
    msg = load_error(p)
    assert msg.startswith(f"{p}:1: ")
    assert "JSON object" in msg and "array" in msg


def test_missing_messages(tmp_path):
    p = write(tmp_path, GOOD, {"conversations": [{"from": "human", "value": "hi"}]})
    msg = load_error(p)
    assert msg.startswith(f"{p}:2: messages: missing")
    assert "ShareGPT" in msg


def test_messages_not_a_list(tmp_path):
    p = write(tmp_path, {"messages": {"role": "user", "content": "hi"}})
    assert load_error(p) == f"{p}:1: messages: expected a list, got object"


def test_empty_messages(tmp_path):
    p = write(tmp_path, {"messages": []})
    assert load_error(p) == f"{p}:1: messages: empty conversation"


def test_message_not_an_object(tmp_path):
    p = write(tmp_path, GOOD, GOOD, {"messages": [{"role": "user", "content": "hi"}, "hello"]})
    msg = load_error(p)
    assert msg.startswith(f"{p}:3: messages[1]: ")
    assert "string" in msg


def test_missing_role(tmp_path):
    p = write(tmp_path, {"messages": [{"role": "user", "content": "hi"}, {"content": "hello"}]})
    msg = load_error(p)
    assert msg.startswith(f"{p}:1: messages[1].role: missing")


def test_non_string_role(tmp_path):
    p = write(tmp_path, {"messages": [{"role": 1, "content": "hi"}]})
    msg = load_error(p)
    assert msg.startswith(f"{p}:1: messages[0].role: ")
    assert "number" in msg


def test_unknown_role_lists_allowed(tmp_path):
    p = write(tmp_path, {"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "tool", "content": "c"},
    ]})
    msg = load_error(p)
    assert msg.startswith(f"{p}:1: messages[2].role: unknown role 'tool'")
    for r in ROLES:
        assert repr(r) in msg


def test_missing_content(tmp_path):
    p = write(tmp_path, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]})
    assert load_error(p) == f"{p}:1: messages[1].content: missing"


@pytest.mark.parametrize("value,jtype", [(None, "null"), (3, "number"), (True, "boolean"),
                                         (["a"], "array"), ({"text": "a"}, "object")])
def test_non_string_content(tmp_path, value, jtype):
    p = write(tmp_path, {"messages": [{"role": "user", "content": value}, {"role": "assistant", "content": "x"}]})
    assert load_error(p) == f"{p}:1: messages[0].content: expected a string, got {jtype}"


def test_no_assistant_turn_is_an_error_by_default(tmp_path):
    p = write(tmp_path, GOOD, {"messages": [{"role": "user", "content": "hi"}]})
    msg = load_error(p)
    assert msg.startswith(f"{p}:2: messages: no assistant turn")
    assert "on_no_assistant='skip'" in msg


def test_no_assistant_turn_skip_warns_and_skips(tmp_path):
    p = write(tmp_path, {"messages": [{"role": "system", "content": "s"}]}, GOOD,
              {"messages": [{"role": "user", "content": "hi"}]})
    with pytest.warns(UserWarning) as rec:
        convs = load_chats(p, on_no_assistant="skip")
    assert [c.origin for c in convs] == [f"{p}:2"]
    texts = [str(w.message) for w in rec]
    assert len(texts) == 2
    assert texts[0].startswith(f"{p}:1: ") and texts[1].startswith(f"{p}:3: ")


def test_skip_mode_with_nothing_left_is_an_error(tmp_path):
    p = write(tmp_path, {"messages": [{"role": "user", "content": "hi"}]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msg = load_error(p, on_no_assistant="skip")
    assert msg.startswith(f"{p}: no conversations")


def test_bad_on_no_assistant_value(tmp_path):
    with pytest.raises(ValueError, match="on_no_assistant"):
        load_chats(write(tmp_path, GOOD), on_no_assistant="ignore")


def test_parse_chats_uses_source_in_messages():
    with pytest.raises(ChatFormatError) as ei:
        parse_chats("\n" + json.dumps({"messages": [{"role": "bot", "content": "x"}]}), source="nb-cell")
    e = ei.value
    assert str(e).startswith("nb-cell:2: messages[0].role: ")
    assert (e.source, e.line, e.field) == ("nb-cell", 2, "messages[0].role")
    assert isinstance(e, ValueError)
    assert str(pickle.loads(pickle.dumps(e))) == str(e)


# ----------------------------------------------------------------------------- builder and model

def test_conversation_builder():
    c = conversation(("user", "hi"), ("assistant", "hello"), system="be brief")
    assert c.messages == (Message("system", "be brief"), Message("user", "hi"), Message("assistant", "hello"))
    assert c.origin == ""
    assert c.n_assistant_turns == 1
    assert c.to_dict() == {"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]}
    mixed = conversation(Message("user", "a"), {"role": "assistant", "content": "b"}, ["user", "c"])
    assert [m.role for m in mixed.messages] == ["user", "assistant", "user"]
    assert conversation() == Conversation(())


def test_builder_and_model_reject_bad_input():
    with pytest.raises(ValueError):
        conversation(("tool", "x"))
    with pytest.raises(TypeError):
        Message("user", None)
    with pytest.raises(TypeError):
        conversation("just a string")


def test_conversation_is_frozen_hashable_and_origin_not_compared():
    a = Conversation([Message("user", "x"), Message("assistant", "y")], origin="f:1")
    b = conversation(("user", "x"), ("assistant", "y"))
    assert isinstance(a.messages, tuple)
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.origin = "g:2"


def test_chats_summary():
    convs = [
        conversation(("user", "hi"), ("assistant", "abcd"), system="s"),
        conversation(("user", "q"), ("assistant", "ab"), ("user", "q2"), ("assistant", "abcdef")),
    ]
    assert chats_summary(convs) == {
        "conversations": 2,
        "assistant_turns": 3,
        "messages": 7,
        "assistant_chars_mean": 4.0,
        "assistant_chars_min": 2,
        "assistant_chars_max": 6,
    }
    empty = chats_summary([])
    assert empty["conversations"] == 0 and empty["assistant_chars_mean"] is None


# ----------------------------------------------------------------------------- round-trip

def test_save_chats_format(tmp_path):
    c = conversation(("user", "caf\u00e9 \"q\"\nline"), ("assistant", "\u2028ok"))
    p = save_chats([c, c], tmp_path / "out.jsonl")
    raw = p.read_bytes()
    assert raw.count(b"\n") == 2 and b"\r" not in raw
    assert "caf\u00e9".encode() in raw  # ensure_ascii=False
    assert raw.decode("utf-8").split("\n")[0] == json.dumps(c.to_dict(), ensure_ascii=False)


def test_save_chats_refuses_empty(tmp_path):
    with pytest.raises(ValueError):
        save_chats([], tmp_path / "out.jsonl")


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", "\n", "\r\n", '"', "\\", "\ufeff", "\u2028", "\x00", "{\"messages\": []}", "caf\u00e9 \U0001F600"]
)
_message = st.builds(Message, st.sampled_from(["user", "assistant"]), _text)
_conversation = st.builds(
    lambda system, before, reply, after: Conversation(tuple(system) + tuple(before) + (reply,) + tuple(after)),
    st.lists(st.builds(Message, st.just("system"), _text), max_size=1),
    st.lists(_message, max_size=4),
    st.builds(Message, st.just("assistant"), _text),
    st.lists(_message, max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(convs=st.lists(_conversation, min_size=1, max_size=5))
def test_save_load_round_trip(tmp_path_factory, convs):
    path = tmp_path_factory.mktemp("rt") / "chats.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)  # assistant first / twice in a row: allowed, with a warning
        loaded = load_chats(save_chats(convs, path))
    assert loaded == convs
    assert [c.origin for c in loaded] == [f"{path}:{i}" for i in range(1, len(convs) + 1)]


# ----------------------------------------------------------------------------- hardening: hostile input


def test_deep_nesting_is_a_located_error_not_a_recursion_error():
    deep = '{"messages": [' + "[" * 100_000 + "]" * 100_000 + "]}"
    with pytest.raises(ChatFormatError, match=r"^m:2: JSON nested more than \d+ levels deep"):
        parse_chats(GOOD_LINE + "\n" + deep, source="m")


def test_huge_integers_cost_nothing_in_ignored_fields_and_are_named_in_content():
    digits = "9" * 5000  # past Python's 4300-digit int conversion limit
    (c,) = parse_chats('{"id": %s, "messages": %s}' % (digits, json.dumps(GOOD["messages"])))
    assert c == conversation(("user", "hi"), ("assistant", "hello"))
    bad = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": %s}]}' % digits
    with pytest.raises(ChatFormatError, match=r"^<string>:1: messages\[1\].content: expected a string, got number$"):
        parse_chats(bad)


def test_lone_surrogate_is_a_located_error_in_files_and_refused_in_code(tmp_path):
    line = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ab\\ud800"}]}'
    p = write(tmp_path, GOOD, line)
    assert load_error(p).startswith(f"{p}:2: messages[1].content: lone surrogate '\\ud800' at character 3")
    with pytest.raises(ValueError, match="lone surrogate"):
        Message("assistant", "x\udc00")
    assert not (tmp_path / "never.jsonl").exists()


def test_a_line_over_the_limit_is_refused_before_parsing(tmp_path):
    from lossreduce_demo.chats import MAX_LINE_BYTES

    long = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x" * MAX_LINE_BYTES}]}
    p = write(tmp_path, GOOD, long)
    assert load_error(p).startswith(f"{p}:2: the line has {len(json.dumps(long)):,} bytes, more than the limit of "
                                    f"{MAX_LINE_BYTES:,} per conversation")


def test_a_file_over_the_limit_is_refused_before_reading(tmp_path, monkeypatch):
    import lossreduce_demo.chats as chats

    monkeypatch.setattr(chats, "MAX_FILE_BYTES", 100)
    p = write(tmp_path, GOOD, GOOD)
    assert load_error(p) == f"{p}: {p.stat().st_size:,} bytes, larger than the limit of 100 per file"
    with open(p, "rb") as f, pytest.raises(ChatFormatError, match="larger than the limit of 100 bytes per file"):
        parse_chats(f)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_loads_the_same_from_a_path_bytes_text_and_open_files(tmp_path, ending):
    raw = ending.join([GOOD_LINE.encode(), b"", json.dumps({"messages": [{"role": "bot", "content": "x"}]}).encode()])
    p = tmp_path / "chats.jsonl"
    p.write_bytes(raw)
    expected = f"{p}:3: messages[0].role: unknown role 'bot'"
    errors = [load_error(p)]
    for read in (lambda: raw, lambda: raw.decode(), lambda: open(p), lambda: open(p, "rb"),
                 lambda: open(p, newline=""), lambda: raw.decode().splitlines(keepends=True)):
        with pytest.raises(ChatFormatError) as ei:
            parse_chats(read(), source=str(p))
        errors.append(str(ei.value))
    assert all(e.startswith(expected) for e in errors), errors
    good = ending.join([GOOD_LINE.encode()] * 3)
    p.write_bytes(good)
    with open(p) as text, open(p, "rb") as binary:
        assert [c.origin for c in parse_chats(text)] == [c.origin for c in parse_chats(binary)] == [
            f"{p}:{n}" for n in (1, 2, 3)]


def test_a_text_mode_file_that_is_not_utf8_gives_the_located_error(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(GOOD_LINE.encode() + b"\n" + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    with open(p, encoding="utf-8") as f, pytest.raises(ChatFormatError) as ei:
        parse_chats(f)
    assert str(ei.value) == load_error(p) == (f"{p}:2: not valid UTF-8 (byte 0xe9 at byte 47 of the line); "
                                              "re-save the file as UTF-8")


def test_fifo_without_a_writer_is_an_error_not_a_hang(tmp_path, monkeypatch):
    import os
    import threading
    import time

    import lossreduce_demo.chats as chats

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    monkeypatch.setattr(chats, "FIFO_WAIT_S", 0.3)
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    start = time.monotonic()
    assert load_error(fifo) == f"{fifo}: a FIFO that no writer opened within 0.3 s; start the writer first, or " \
                               "give a regular file"
    assert time.monotonic() - start < 5

    def writer():
        with open(fifo, "w") as f:
            f.write(GOOD_LINE + "\n")

    thread = threading.Thread(target=writer)
    thread.start()
    assert load_chats(fifo) == [conversation(("user", "hi"), ("assistant", "hello"))]
    thread.join()


def test_empty_path_is_named_as_such():
    with pytest.raises(ChatFormatError, match='^"": empty file name'):
        load_chats("")


@pytest.mark.parametrize("line, field, key", [
    ('{"messages": [{"role": "tool", "role": "assistant", "content": "x"}]}', "messages[0]", "role"),
    ('{"messages": [], "messages": %s}' % json.dumps(GOOD["messages"]), None, "messages"),
])
def test_repeated_json_keys_are_an_error_naming_the_key(line, field, key):
    with pytest.raises(ChatFormatError) as ei:
        parse_chats(line, source="d.jsonl")
    assert (ei.value.line, ei.value.field) == (1, field)
    assert ei.value.problem == f"key '{key}' appears more than once (JSON readers disagree on which value wins)"


@pytest.mark.parametrize("key", ["tool_calls", "function_call"])
def test_tool_calls_are_an_error_not_silently_dropped(key):
    msg = {"role": "assistant", "content": "calling", key: [{"name": "f"}]}
    with pytest.raises(ChatFormatError, match=rf"^<string>:1: messages\[1\].{key}: tool calls are not supported"):
        parse_chats(json.dumps({"messages": [{"role": "user", "content": "q"}, msg]}))


def test_a_long_unknown_role_is_cut_in_the_message():
    with pytest.raises(ChatFormatError) as ei:
        parse_chats(json.dumps({"messages": [{"role": "r" * 100_000, "content": "x"}]}))
    assert len(str(ei.value)) < 200 and "(100000 characters)" in str(ei.value)
