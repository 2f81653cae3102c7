"""Writing results without losing anything (standard library only).

Check the destination before the work, then write to a temporary file in the same folder and `os.replace` it over
the target: a crash, Ctrl-C or a full disk never leaves a partial file, and an input is never overwritten.

    out = check_output_file(args.out, option="--out", inputs=[args.file])    # before any work
    ...                                                                       # the work
    with replacing(out, option="--out") as tmp:                               # after it
        table.to_csv(tmp, index=False)

A destination that already exists and is not a regular file (`/dev/null`, a FIFO) is written in place.
Problems are `OptionError` (bad destination, found before the work) or `OutputError` (the write failed), both
one line naming the option.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import OptionError, OutputError

__all__ = ["check_output_file", "check_output_dir", "replacing"]


def _named(option: str | None, path) -> str:
    return f"{option} {path}" if option else str(path)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _check_creatable(path: Path, option: str | None) -> None:
    """The nearest existing folder above `path` must be a writable directory (folders below it are created)."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OptionError(f"{_named(option, path)}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OptionError(f"{_named(option, path)}: folder {parent} is not writable")


def check_output_file(path, *, option: str | None = "--out", inputs=()) -> Path:
    """Validate a file destination before any work; returns it as a Path.

    Refused: an empty name, a directory, an existing file that is not writable, a path below a file or in a
    folder that cannot be written, and any of `inputs` (so results never overwrite the data they came from)."""
    if path is None or str(path) == "":
        raise OptionError(f"{option or 'output path'}: empty file name")
    p = Path(path)
    if p.is_dir():
        raise OptionError(f"{_named(option, p)}: is a directory; give a file name")
    for given in inputs:
        if given is not None and str(given) != "" and _same_file(p, Path(given)):
            raise OptionError(f"{_named(option, p)}: is the input file {given}; refusing to overwrite it")
    if p.exists() and not os.access(p, os.W_OK):
        raise OptionError(f"{_named(option, p)}: exists and is not writable")
    _check_creatable(p, option)
    return p


def check_output_dir(path, *, option: str | None = "--out", files=()) -> Path:
    """Validate a folder destination (created if missing) and the `files` that will be written into it."""
    if path is None or str(path) == "":
        raise OptionError(f"{option or 'output folder'}: empty folder name")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OptionError(f"{_named(option, p)}: exists and is not a directory")
    if p.is_dir() and not os.access(p, os.W_OK | os.X_OK):
        raise OptionError(f"{_named(option, p)}: folder is not writable")
    _check_creatable(p / "x", option)
    for name in files:
        check_output_file(p / name, option=option)
    return p


def _new_file_mode(target: Path) -> int:
    if target.exists():
        return target.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def replacing(path, *, option: str | None = "--out"):
    """Yield a temporary path beside `path` (same suffix, so pandas and matplotlib infer the same format); when
    the block ends without an error it replaces `path`, otherwise it is removed and `path` is left untouched.
    An OSError while writing (disk full, permissions) becomes one-line `OutputError`."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{_named(option, target)}: cannot create its folder: {err.strerror or err}") from None
    if target.exists() and not target.is_file():  # /dev/null, a FIFO: nothing to replace, write in place
        yield target
        return
    fd, name = tempfile.mkstemp(prefix=".", suffix=f"-{target.name}", dir=target.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, _new_file_mode(target))
        os.replace(temporary, target)
    except OSError as err:
        raise OutputError(f"{_named(option, target)}: cannot write: {err.strerror or err}") from None
    finally:
        temporary.unlink(missing_ok=True)
