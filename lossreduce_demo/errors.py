"""The errors and warnings a user can act on (standard library only).

`UserError` and its subclasses are problems with what the user gave: a file, an option, a destination. Their text is
one complete line that names the file:line:field or the option, so the command line prints it as `error: ...` and
exits with status 2. Anything else raised inside the package is a bug and surfaces as a real traceback.
`InputWarning` is the same for things that are allowed but probably not meant (the CLI prints `warning: ...`).
"""

from __future__ import annotations

__all__ = ["UserError", "OptionError", "OutputError", "SizeLimitError", "InputWarning", "shown"]


class UserError(Exception):
    """A problem with the user's input; `str(error)` is the complete one-line message."""


class OptionError(UserError, ValueError):
    """An option (CLI flag, keyword argument, widget value) out of its range; the message names the option."""


class OutputError(UserError, OSError):
    """A destination that cannot be written (checked before any work), or a write that failed (disk full)."""


class SizeLimitError(UserError, ValueError):
    """Input or options that would need more memory than the documented bounds (checked before allocating)."""


class InputWarning(UserWarning):
    """Input that is accepted but probably not what was meant (skipped conversations, empty micro-batches...)."""


def shown(value, limit: int = 40) -> str:
    """repr(value), cut to about `limit` characters so a 100 kB field does not flood an error message."""
    text = repr(value)
    if len(text) <= limit:
        return text
    length = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[:limit]}…{length}"
