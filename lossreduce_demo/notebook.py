"""Notebook helpers: the opening cell (`setup_notebook`), the environment check of 00, and the shipped data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import default_device, fast_mode, set_torch_threads
from .report import weights_table
from .synth import GEORGE_WASHINGTON

PACKAGE_DIR = Path(__file__).resolve().parent


def data_path(name: str = "") -> Path:
    """Path of a shipped data file; data_path() is the folder itself. The data ships inside the package
    (`lossreduce_demo/data`, package data, so a plain `pip install` has it); in a source checkout that is a link to
    the repository's `data/` folder (the checkout's `data/` is used directly where links are not supported)."""
    folder = PACKAGE_DIR / "data"
    if not folder.is_dir() and is_source_checkout():
        folder = PACKAGE_DIR.parent / "data"
    path = folder / name
    if name and not path.exists():
        shipped = ", ".join(sorted(p.name for p in folder.glob("*.jsonl")))
        raise FileNotFoundError(f"{path}: no such data file (shipped: {shipped or 'none'}; "
                                "`python -m lossreduce_demo make-data` regenerates them)")
    return path


def is_source_checkout() -> bool:
    """Whether the package runs from the repository (editable install) rather than from an installed copy."""
    return (PACKAGE_DIR.parent / "pyproject.toml").is_file()


def setup_notebook(seed: int = 0, verbose: bool = True) -> dict:
    """Seed python/numpy/torch, apply LOSSREDUCE_THREADS, and report versions, device and fast mode."""
    import platform
    import random

    import torch

    from . import __version__

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    info = {"python": platform.python_version(), "torch": torch.__version__, "lossreduce_demo": __version__,
            "device": str(default_device()), "threads": set_torch_threads(), "fast_mode": fast_mode(),
            "seed": seed}
    if verbose:
        print(" | ".join(f"{k} {v}" for k, v in info.items()))
    return info


def check_environment() -> pd.DataFrame:
    """One row per check (packages, data files, a weight map, a widget), with ok True/False."""
    import importlib

    rows = []
    for package in ("torch", "numpy", "pandas", "matplotlib", "ipywidgets", "tqdm"):
        try:
            rows.append((f"import {package}", importlib.import_module(package).__version__, True))
        except Exception as error:  # noqa: BLE001 - any import failure is what we report
            rows.append((f"import {package}", f"{type(error).__name__}: {error}", False))
    for name in ("default_chats.jsonl", "george_washington.jsonl"):
        try:
            rows.append((f"data/{name}", f"{data_path(name).stat().st_size} bytes", True))
        except FileNotFoundError as error:
            rows.append((f"data/{name}", str(error), False))
    try:
        total = float(weights_table([GEORGE_WASHINGTON], "token-mean").weight.sum())
        rows.append(("token-mean weights sum to 1", f"{total:.6f}", abs(total - 1) < 1e-9))
    except Exception as error:  # noqa: BLE001
        rows.append(("token-mean weights sum to 1", f"{type(error).__name__}: {error}", False))
    return pd.DataFrame(rows, columns=["check", "result", "ok"])
