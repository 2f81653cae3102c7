"""Run-time switches read from the environment (the same in notebooks, tests and the CLI)."""

from __future__ import annotations

import os


def fast_mode() -> bool:
    """LOSSREDUCE_FAST=1 shrinks every run so the whole suite executes quickly (CI, a first look)."""
    return os.environ.get("LOSSREDUCE_FAST", "0").strip().lower() not in ("", "0", "false", "no")


def pick(default, fast):
    """`fast` in fast mode, else `default`."""
    return fast if fast_mode() else default
