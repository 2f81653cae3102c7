"""Chat datasets: load, validate and save multi-turn conversations (standard library only).

File format: JSONL, one conversation per line, in the shape HF chat templates and
``datasets`` use::

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

Other top-level keys and extra keys inside a message are ignored, except ``tool_calls`` /
``function_call`` (rejected: only text content is trained on). Every problem in a file
raises :class:`ChatFormatError` whose text is a user-facing message of the form
``FILE:LINE: field: what is wrong`` (e.g. ``data/chats.jsonl:7: messages[2].role: unknown
role 'tool'; allowed: 'system', 'user', 'assistant'``). Problems that are about a whole
line rather than one field (not UTF-8, not JSON, not an object) read ``FILE:LINE: what``,
and problems about the whole file read ``FILE: what``.

A UTF-8 BOM at the start, blank lines and any line ending (LF, CRLF, CR alone: a raw CR can
only sit between JSON values, never inside a string) are accepted, the same for a file, bytes,
text or an open file in either mode; line numbers count physical lines, as an editor shows them.

Rejected with a located error: a repeated key in a JSON object (readers disagree on which value
wins), a lone surrogate escape such as ``"\\ud800"`` (not Unicode; it could never be saved),
nesting deeper than Python's recursion limit, a line over :data:`MAX_LINE_BYTES`, a file over
:data:`MAX_FILE_BYTES` (both checked before the text is parsed), and a FIFO that no writer
opens within :data:`FIFO_WAIT_S` seconds. Accepted with an
:class:`~lossreduce_demo.errors.InputWarning` (one line each; the template renders every
message where it stands): a conversation whose first turn after the system prompt is the
assistant's, two assistant messages in a row (each is its own turn), a system message after
the first position. Two user messages in a row are fine. Numbers anywhere are read as
floats, so a 5000-digit integer in an ignored field never hits Python's int-conversion limit.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .errors import InputWarning, UserError, shown

__all__ = [
    "ROLES",
    "Message",
    "Conversation",
    "ChatFormatError",
    "conversation",
    "parse_chats",
    "load_chats",
    "save_chats",
    "chats_summary",
    "MAX_LINE_BYTES",
    "MAX_FILE_BYTES",
]

ROLES = ("system", "user", "assistant")
_ON_NO_ASSISTANT = ("error", "skip")
_ALLOWED_ROLES_TEXT = ", ".join(repr(r) for r in ROLES)
MAX_LINE_BYTES = 1 << 20  # one conversation: 1 MiB (about a million tokens of the byte-level tokenizer)
MAX_FILE_BYTES = 16 << 20  # one file: 16 MiB (about layouts.MAX_TOKENS tokens: more could not be laid out)
FIFO_WAIT_S = 10.0  # how long load_chats waits for a FIFO's writer
_LINE_ENDS = re.compile("\r\n|\r|\n")
_LINE_ENDS_BYTES = re.compile(b"\r\n|\r|\n")
_UNSUPPORTED_KEYS = ("tool_calls", "function_call")


class ChatFormatError(UserError, ValueError):
    """A chat file (or in-memory chat text) is malformed.

    ``str(e)`` is the complete user-facing message, ``"FILE:LINE: field: what"``.
    The parts are also available as attributes: ``source``, ``line`` (1-based, or None for
    file-level problems), ``field`` (JSON-path-like locator such as ``messages[2].role``, or
    None) and ``problem`` (the "what" part).
    """

    def __init__(self, source: str, line: int | None, field: str | None, problem: str):
        self.source = source
        self.line = line
        self.field = field
        self.problem = problem
        where = source if line is None else f"{source}:{line}"
        message = f"{where}: {problem}" if field is None else f"{where}: {field}: {problem}"
        super().__init__(message)

    def __reduce__(self):  # keep the exception picklable (multiprocessing, pytest-xdist)
        return (type(self), (self.source, self.line, self.field, self.problem))


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def __post_init__(self) -> None:
        if not isinstance(self.role, str) or self.role not in ROLES:
            raise ValueError(f"Message.role must be one of {_ALLOWED_ROLES_TEXT}, got {shown(self.role)}")
        if not isinstance(self.content, str):
            raise TypeError(f"Message.content must be a str, got {type(self.content).__name__}")
        problem = _unicode_problem(self.content)
        if problem:
            raise ValueError(f"Message.content: {problem}")

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    # "FILE:LINE" where it was read, for error messages; "" when built in code.
    # Not part of equality, so a conversation equals its saved-and-reloaded copy.
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        msgs = tuple(self.messages)
        for i, m in enumerate(msgs):
            if not isinstance(m, Message):
                raise TypeError(f"Conversation.messages[{i}] must be a Message, got {type(m).__name__}")
        object.__setattr__(self, "messages", msgs)

    def to_dict(self) -> dict[str, Any]:
        return {"messages": [m.to_dict() for m in self.messages]}

    @property
    def n_assistant_turns(self) -> int:
        return sum(1 for m in self.messages if m.role == "assistant")


def conversation(*pairs_or_messages: Message | tuple[str, str], system: str | None = None) -> Conversation:
    """Build a Conversation in code.

    >>> c = conversation(("user", "hi"), ("assistant", "hello"), system="be brief")
    >>> [m.role for m in c.messages]
    ['system', 'user', 'assistant']

    Each argument is a :class:`Message`, a ``(role, content)`` pair, or a
    ``{"role": ..., "content": ...}`` dict. ``system``, if given, is prepended.
    """
    msgs: list[Message] = []
    if system is not None:
        msgs.append(Message("system", system))
    for i, item in enumerate(pairs_or_messages):
        if isinstance(item, Message):
            msgs.append(item)
        elif isinstance(item, dict):
            msgs.append(Message(item["role"], item["content"]))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            msgs.append(Message(item[0], item[1]))
        else:
            raise TypeError(
                f"conversation() argument {i} must be a Message, a (role, content) pair or a dict, got {item!r}"
            )
    return Conversation(tuple(msgs))


# ----------------------------------------------------------------------------- parsing

def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _unicode_problem(text: str) -> str | None:
    """Why `text` is not valid Unicode (a lone surrogate from a "\\ud800" escape), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"lone surrogate {text[e.start]!r} at character {e.start + 1} (a \\u escape of half a UTF-16 "
                "pair is not Unicode text)")
    return None


class _Object(dict):
    """A JSON object with a repeated key (json keeps the last value); `repeated` names the keys."""

    repeated: tuple[str, ...] = ()


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    keys = [k for k, _ in pairs]
    marked = _Object(obj)
    marked.repeated = tuple(dict.fromkeys(k for k in keys if keys.count(k) > 1))
    return marked


_DECODER = json.JSONDecoder(object_pairs_hook=_json_object, parse_int=float)  # no 4300-digit int limit


def _physical_lines(items: Iterable[Union[str, bytes]]) -> Iterable[Union[str, bytes]]:
    """Lines of an iterable whose items may end with (or, for CR-only text, contain) line ends."""
    for item in items:
        if isinstance(item, (str, bytes, bytearray)):
            pattern = _LINE_ENDS if isinstance(item, str) else _LINE_ENDS_BYTES
            pieces = pattern.split(item)
            if len(pieces) > 1 and pieces[-1] in ("", b""):
                pieces.pop()  # the item's own line end
            yield from pieces
        else:
            yield item


def _read_limited(f, source: str) -> Union[str, bytes]:
    data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ChatFormatError(source, None, None, f"larger than the limit of {MAX_FILE_BYTES:,} bytes per file")
    return data


def _file_object_data(f, source: str) -> Union[str, bytes]:
    """The content of an open file: its bytes when it is a text file still at its start (so UTF-8 errors get
    their line, the same as load_chats), else what it reads."""
    if isinstance(f, io.TextIOWrapper):
        try:
            at_start = f.tell() == 0
        except OSError:
            at_start = False
        if at_start:
            return _read_limited(f.buffer, source)
    try:
        return _read_limited(f, source)
    except UnicodeDecodeError as e:
        raise ChatFormatError(source, None, None, f"not valid UTF-8 (byte 0x{e.object[e.start]:02x}); "
                              "re-save the file as UTF-8, or open it in binary mode ('rb')") from None


def _split_lines(text_or_lines, source: str) -> Iterable[Union[str, bytes]]:
    # Split on line ends only: str.splitlines() would also split on U+2028, U+0085, \x1c..., which
    # json.dumps(ensure_ascii=False) leaves unescaped inside strings. A raw CR never occurs inside a JSON string.
    if hasattr(text_or_lines, "read"):
        text_or_lines = _file_object_data(text_or_lines, source)
    if isinstance(text_or_lines, str):
        return _LINE_ENDS.split(text_or_lines)
    if isinstance(text_or_lines, (bytes, bytearray)):
        return _LINE_ENDS_BYTES.split(text_or_lines)
    if isinstance(text_or_lines, os.PathLike):
        raise TypeError("parse_chats() takes text or lines; use load_chats(path) to read a file")
    return _physical_lines(text_or_lines)


def _decode_line(line, source: str, lineno: int) -> str:
    if isinstance(line, (bytes, bytearray)):
        try:
            return bytes(line).decode("utf-8")
        except UnicodeDecodeError as e:
            bad = bytes(line)[e.start]
            raise ChatFormatError(
                source, lineno, None,
                f"not valid UTF-8 (byte 0x{bad:02x} at byte {e.start + 1} of the line); re-save the file as UTF-8",
            ) from None
    if not isinstance(line, str):
        raise TypeError(f"parse_chats() line {lineno}: expected str or bytes, got {type(line).__name__}")
    return line


def _check_line_size(line, source: str, lineno: int) -> None:
    if len(line) > MAX_LINE_BYTES:
        unit = "characters" if isinstance(line, str) else "bytes"
        raise ChatFormatError(source, lineno, None, f"the line has {len(line):,} {unit}, more than the limit of "
                              f"{MAX_LINE_BYTES:,} per conversation; shorten or split it")


def _load_json(line: str, source: str, lineno: int) -> Any:
    try:
        return _DECODER.decode(line)
    except json.JSONDecodeError as e:
        raise ChatFormatError(source, lineno, None, f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise ChatFormatError(source, lineno, None, f"JSON nested more than {sys.getrecursionlimit()} levels "
                              "deep (a conversation needs 3)") from None


def _parse_line(obj: Any, source: str, lineno: int) -> Conversation:
    def err(fld: str | None, problem: str) -> ChatFormatError:
        return ChatFormatError(source, lineno, fld, problem)

    def check_repeated(o: dict, fld: str | None) -> None:
        if isinstance(o, _Object):
            raise err(fld, f"key {shown(o.repeated[0])} appears more than once (JSON readers disagree on which "
                      "value wins)")

    if not isinstance(obj, dict):
        raise err(None, f"expected a JSON object like {{\"messages\": [...]}}, got {_json_type(obj)}")
    check_repeated(obj, None)
    if "messages" not in obj:
        hint = ""
        if "conversations" in obj:
            hint = " (ShareGPT-style 'conversations' with from/value is not supported; convert to " \
                   "'messages' with role/content)"
        raise err("messages", "missing; expected a list of {\"role\", \"content\"} objects" + hint)
    raw = obj["messages"]
    if not isinstance(raw, list):
        raise err("messages", f"expected a list, got {_json_type(raw)}")
    if not raw:
        raise err("messages", "empty conversation")

    msgs = []
    for i, m in enumerate(raw):
        loc = f"messages[{i}]"
        if not isinstance(m, dict):
            raise err(loc, f"expected an object with 'role' and 'content', got {_json_type(m)}")
        check_repeated(m, loc)
        if "role" not in m:
            hint = " (found 'from': ShareGPT-style keys are not supported)" if "from" in m else ""
            raise err(f"{loc}.role", f"missing; expected one of {_ALLOWED_ROLES_TEXT}{hint}")
        role = m["role"]
        if not isinstance(role, str):
            raise err(f"{loc}.role", f"expected a string, one of {_ALLOWED_ROLES_TEXT}; got {_json_type(role)}")
        if role not in ROLES:
            raise err(f"{loc}.role", f"unknown role {shown(role)}; allowed: {_ALLOWED_ROLES_TEXT}")
        for key in _UNSUPPORTED_KEYS:
            if key in m:
                raise err(f"{loc}.{key}", "tool calls are not supported (only text 'content' is trained on); "
                          "remove them or drop the conversation")
        if "content" not in m:
            raise err(f"{loc}.content", "missing")
        content = m["content"]
        if not isinstance(content, str):
            raise err(f"{loc}.content", f"expected a string, got {_json_type(content)}")
        problem = _unicode_problem(content)
        if problem:
            raise err(f"{loc}.content", problem)
        msgs.append(Message(role, content))
    _warn_about_order(msgs, f"{source}:{lineno}")
    return Conversation(tuple(msgs), origin=f"{source}:{lineno}")


def _warn_about_order(msgs: list[Message], origin: str) -> None:
    """Allowed (the template renders every message where it stands) but probably not meant: the assistant
    speaking first or twice in a row, a system message after the first position."""
    def warn(i: int, problem: str) -> None:
        warnings.warn(InputWarning(f"{origin}: messages[{i}]: {problem}"), stacklevel=5)

    first = 1 if msgs[0].role == "system" else 0
    if len(msgs) > first and msgs[first].role == "assistant":
        warn(first, "the conversation starts with an assistant turn (trained on with no prompt before it)")
    for i in range(1, len(msgs)):
        if msgs[i].role == "assistant" == msgs[i - 1].role:
            warn(i, "two assistant messages in a row (each is its own turn)")
        if msgs[i].role == "system":
            warn(i, "a system message after the first position (rendered where it stands)")


def parse_chats(
    text_or_lines,
    source: str | None = None,
    on_no_assistant: str = "error",
) -> list[Conversation]:
    """Parse and validate JSONL chat data held in memory.

    ``text_or_lines`` is the whole text (str, or UTF-8 bytes), an open file (text or binary mode; read as
    UTF-8 either way), or an iterable of lines (each with or without its line ending). ``source`` names the
    data in error messages (default: the open file's name, else ``<string>``). ``on_no_assistant``:
    ``"error"`` (default) rejects a conversation without an assistant turn; ``"skip"`` drops it with an
    :class:`~lossreduce_demo.errors.InputWarning` naming ``source:LINE`` (the CLI prints it as one line).
    """
    if on_no_assistant not in _ON_NO_ASSISTANT:
        raise ValueError(f"on_no_assistant must be 'error' or 'skip', got {shown(on_no_assistant)}")
    if source is None:
        name = getattr(text_or_lines, "name", None)
        source = name if isinstance(name, str) else "<string>"
    source = str(source)
    out: list[Conversation] = []
    skipped = 0
    for lineno, raw in enumerate(_split_lines(text_or_lines, source), start=1):
        _check_line_size(raw, source, lineno)
        line = _decode_line(raw, source, lineno)
        if lineno == 1 and line.startswith("\ufeff"):
            line = line[1:]
        if not line.strip():
            continue
        conv = _parse_line(_load_json(line, source, lineno), source, lineno)
        if conv.n_assistant_turns == 0:
            if on_no_assistant == "error":
                raise ChatFormatError(
                    source, lineno, "messages",
                    "no assistant turn (nothing to train on); skip such conversations with --skip-no-assistant "
                    "(in Python: on_no_assistant='skip')",
                )
            warnings.warn(InputWarning(f"{conv.origin}: messages: no assistant turn; conversation skipped"),
                          stacklevel=2)
            skipped += 1
            continue
        out.append(conv)
    if not out:
        if skipped:
            raise ChatFormatError(
                source, None, None, f"no conversations ({skipped} skipped for having no assistant turn)"
            )
        raise ChatFormatError(source, None, None, "no conversations")
    return out


def _read_fifo(path: Path, source: str) -> bytes:
    """A FIFO's bytes, or a clear error when no writer opens it within FIFO_WAIT_S (a plain open would hang)."""
    import select

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(FIFO_WAIT_S * 1000):
            raise ChatFormatError(source, None, None, f"a FIFO that no writer opened within {FIFO_WAIT_S:g} s; "
                                  "start the writer first, or give a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as f:
            return _read_limited(f, source)
    finally:
        os.close(fd)


def _read_source(p: Path, source: str) -> bytes:
    info = p.stat()
    if stat.S_ISDIR(info.st_mode):
        raise ChatFormatError(source, None, None, "is a directory, expected a .jsonl file")
    if stat.S_ISREG(info.st_mode) and info.st_size > MAX_FILE_BYTES:
        raise ChatFormatError(source, None, None, f"{info.st_size:,} bytes, larger than the limit of "
                              f"{MAX_FILE_BYTES:,} per file")
    if stat.S_ISFIFO(info.st_mode) and hasattr(os, "O_NONBLOCK"):
        return _read_fifo(p, source)
    with open(p, "rb") as f:
        return _read_limited(f, source)


def load_chats(path: str | os.PathLike[str], on_no_assistant: str = "error") -> list[Conversation]:
    """Read a JSONL chat file (or a FIFO, e.g. ``<(zcat chats.jsonl.gz)``); see :func:`parse_chats` for the
    validation and ``on_no_assistant``. Bounded before parsing: :data:`MAX_FILE_BYTES` per file."""
    if on_no_assistant not in _ON_NO_ASSISTANT:
        raise ValueError(f"on_no_assistant must be 'error' or 'skip', got {shown(on_no_assistant)}")
    source = os.fspath(path)
    if source == "":
        raise ChatFormatError('""', None, None, "empty file name, expected a .jsonl file")
    try:
        data = _read_source(Path(path), source)
    except FileNotFoundError:
        raise ChatFormatError(source, None, None, "file not found") from None
    except IsADirectoryError:
        raise ChatFormatError(source, None, None, "is a directory, expected a .jsonl file") from None
    except OSError as e:
        raise ChatFormatError(source, None, None, f"cannot read file: {e.strerror or e}") from None
    return parse_chats(data, source=source, on_no_assistant=on_no_assistant)


def save_chats(conversations: Iterable[Conversation], path: str | os.PathLike[str]) -> Path:
    """Write conversations as UTF-8 JSONL (one per line, ``\\n`` endings); returns the path.

    ``load_chats(save_chats(convs, path)) == convs`` for any non-empty list of conversations
    that each have an assistant turn. An empty list is refused, since the file it would
    produce could not be loaded back. The file is written to a temporary name and then
    replaces `path`, so a failed write leaves no partial file (nor a damaged old one).
    """
    from .outputs import check_output_file, replacing

    convs = list(conversations)
    if not convs:
        raise ValueError("save_chats(): no conversations to save (load_chats would reject an empty file)")
    for i, c in enumerate(convs):
        if not isinstance(c, Conversation):
            raise TypeError(f"save_chats(): item {i} is a {type(c).__name__}, not a Conversation")
    p = check_output_file(path, option=None)
    with replacing(p, option=None) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for c in convs:
            f.write(json.dumps(c.to_dict(), ensure_ascii=False))
            f.write("\n")
    return p


def chats_summary(conversations: Iterable[Conversation]) -> dict[str, Any]:
    """Counts and assistant-turn length statistics (in characters) as a plain dict.

    Keys: ``conversations``, ``assistant_turns``, ``messages``, ``assistant_chars_mean``,
    ``assistant_chars_min``, ``assistant_chars_max`` (the last three are None when there are
    no assistant turns).
    """
    n_conv = n_msgs = 0
    lengths: list[int] = []
    for c in conversations:
        n_conv += 1
        n_msgs += len(c.messages)
        lengths.extend(len(m.content) for m in c.messages if m.role == "assistant")
    return {
        "conversations": n_conv,
        "assistant_turns": len(lengths),
        "messages": n_msgs,
        "assistant_chars_mean": (sum(lengths) / len(lengths)) if lengths else None,
        "assistant_chars_min": min(lengths) if lengths else None,
        "assistant_chars_max": max(lengths) if lengths else None,
    }
