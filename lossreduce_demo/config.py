"""Run-time switches read from the environment (the same in notebooks, tests and the CLI): fast mode, threads, device."""

from __future__ import annotations

import os


def fast_mode() -> bool:
    """LOSSREDUCE_FAST=1 shrinks every run so the whole suite executes quickly (CI, a first look)."""
    return os.environ.get("LOSSREDUCE_FAST", "0").strip().lower() not in ("", "0", "false", "no")


def pick(default, fast):
    """`fast` in fast mode, else `default`."""
    return fast if fast_mode() else default


def default_device():
    """CUDA when present, else the CPU (the suite is sized for a laptop CPU)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_torch_threads() -> int:
    """Apply env var LOSSREDUCE_THREADS (int >= 1) to torch.set_num_threads; return threads in use."""
    import torch

    raw = os.environ.get("LOSSREDUCE_THREADS", "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            raise ValueError(f"LOSSREDUCE_THREADS must be an integer, got {raw!r}") from None
        if n < 1:
            raise ValueError(f"LOSSREDUCE_THREADS must be >= 1, got {n}")
        torch.set_num_threads(n)
    return torch.get_num_threads()
