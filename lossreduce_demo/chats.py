"""Chat datasets: load, validate and save multi-turn conversations (standard library only).

File format: JSONL, one conversation per line, in the shape HF chat templates and
``datasets`` use::

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

Other top-level keys and extra keys inside a message are ignored. Every problem in a file
raises :class:`ChatFormatError` whose text is a user-facing message of the form
``FILE:LINE: field: what is wrong`` (e.g. ``data/chats.jsonl:7: messages[2].role: unknown
role 'tool'; allowed: 'system', 'user', 'assistant'``). Problems that are about a whole
line rather than one field (not UTF-8, not JSON, not an object) read ``FILE:LINE: what``,
and problems about the whole file read ``FILE: what``.

A UTF-8 BOM at the start, CRLF line endings and blank lines are accepted; line numbers
always count physical lines, so they match what an editor shows.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

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
]

ROLES = ("system", "user", "assistant")
_ON_NO_ASSISTANT = ("error", "skip")
_ALLOWED_ROLES_TEXT = ", ".join(repr(r) for r in ROLES)


class ChatFormatError(ValueError):
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
            raise ValueError(f"Message.role must be one of {_ALLOWED_ROLES_TEXT}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise TypeError(f"Message.content must be a str, got {type(self.content).__name__}")

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


def _split_lines(text_or_lines: Union[str, bytes, Iterable[Union[str, bytes]]]) -> Iterable[Union[str, bytes]]:
    # Split on "\n" only: str.splitlines() would also split on U+2028, U+0085, \x1c..., which
    # json.dumps(ensure_ascii=False) leaves unescaped inside strings.
    if isinstance(text_or_lines, (str, bytes, bytearray)):
        return text_or_lines.split("\n" if isinstance(text_or_lines, str) else b"\n")
    if isinstance(text_or_lines, (os.PathLike,)):
        raise TypeError("parse_chats() takes text or lines; use load_chats(path) to read a file")
    return text_or_lines


def _parse_line(obj: Any, source: str, lineno: int) -> Conversation:
    def err(fld: str | None, problem: str) -> ChatFormatError:
        return ChatFormatError(source, lineno, fld, problem)

    if not isinstance(obj, dict):
        raise err(None, f"expected a JSON object like {{\"messages\": [...]}}, got {_json_type(obj)}")
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
        if "role" not in m:
            hint = " (found 'from': ShareGPT-style keys are not supported)" if "from" in m else ""
            raise err(f"{loc}.role", f"missing; expected one of {_ALLOWED_ROLES_TEXT}{hint}")
        role = m["role"]
        if not isinstance(role, str):
            raise err(f"{loc}.role", f"expected a string, one of {_ALLOWED_ROLES_TEXT}; got {_json_type(role)}")
        if role not in ROLES:
            raise err(f"{loc}.role", f"unknown role {role!r}; allowed: {_ALLOWED_ROLES_TEXT}")
        if "content" not in m:
            raise err(f"{loc}.content", "missing")
        content = m["content"]
        if not isinstance(content, str):
            raise err(f"{loc}.content", f"expected a string, got {_json_type(content)}")
        msgs.append(Message(role, content))
    return Conversation(tuple(msgs), origin=f"{source}:{lineno}")


def parse_chats(
    text_or_lines: Union[str, bytes, Iterable[Union[str, bytes]]],
    source: str = "<string>",
    on_no_assistant: str = "error",
) -> list[Conversation]:
    """Parse and validate JSONL chat data held in memory.

    ``text_or_lines`` is the whole text (str, or UTF-8 bytes) or an iterable of lines (each
    with or without its line ending, e.g. an open file). ``source`` names the data in error
    messages. ``on_no_assistant``: ``"error"`` (default) rejects a conversation without an
    assistant turn; ``"skip"`` drops it with a ``warnings.warn`` naming ``source:LINE``.
    """
    if on_no_assistant not in _ON_NO_ASSISTANT:
        raise ValueError(f"on_no_assistant must be 'error' or 'skip', got {on_no_assistant!r}")
    source = str(source)
    out: list[Conversation] = []
    skipped = 0
    for lineno, line in enumerate(_split_lines(text_or_lines), start=1):
        if isinstance(line, (bytes, bytearray)):
            try:
                line = bytes(line).decode("utf-8")
            except UnicodeDecodeError as e:
                bad = bytes(line)[e.start]
                raise ChatFormatError(
                    source, lineno, None,
                    f"not valid UTF-8 (byte 0x{bad:02x} at byte {e.start + 1} of the line); "
                    "re-save the file as UTF-8",
                ) from None
        elif not isinstance(line, str):
            raise TypeError(f"parse_chats() line {lineno}: expected str or bytes, got {type(line).__name__}")
        if lineno == 1 and line.startswith("\ufeff"):
            line = line[1:]
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ChatFormatError(
                source, lineno, None, f"invalid JSON: {e.msg} (column {e.colno})"
            ) from None
        conv = _parse_line(obj, source, lineno)
        if conv.n_assistant_turns == 0:
            if on_no_assistant == "error":
                raise ChatFormatError(
                    source, lineno, "messages",
                    "no assistant turn (nothing to train on); "
                    "pass on_no_assistant='skip' to skip such conversations",
                )
            warnings.warn(f"{conv.origin}: messages: no assistant turn; conversation skipped", stacklevel=2)
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


def load_chats(path: str | os.PathLike[str], on_no_assistant: str = "error") -> list[Conversation]:
    """Read a JSONL chat file; see :func:`parse_chats` for validation and ``on_no_assistant``."""
    if on_no_assistant not in _ON_NO_ASSISTANT:
        raise ValueError(f"on_no_assistant must be 'error' or 'skip', got {on_no_assistant!r}")
    source = os.fspath(path)
    p = Path(path)
    if p.is_dir():
        raise ChatFormatError(source, None, None, "is a directory, expected a .jsonl file")
    try:
        data = p.read_bytes()
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
    produce could not be loaded back.
    """
    convs = list(conversations)
    if not convs:
        raise ValueError("save_chats(): no conversations to save (load_chats would reject an empty file)")
    for i, c in enumerate(convs):
        if not isinstance(c, Conversation):
            raise TypeError(f"save_chats(): item {i} is a {type(c).__name__}, not a Conversation")
    p = Path(path)
    with open(p, "w", encoding="utf-8", newline="\n") as f:
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
