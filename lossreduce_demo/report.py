"""Tidy tables of per-token weights (pandas), shared by the CLI, the notebooks and the plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .hf_tokenizer import as_tokenizer
from .layouts import Batch, make_layout
from .reductions import as_scheme, effective_weights
from .tokenizer import ROLE_NAMES, VOCAB_SIZE, token_text

_ROLE_NAME_ARRAY = np.array([ROLE_NAMES[i] for i in range(len(ROLE_NAMES))], dtype=object)
_TOKEN_TEXT = np.array([token_text(i) for i in range(VOCAB_SIZE)], dtype=object)


def batch_table(batch: Batch, weights, rank=None, micro_batch=None, tokenizer=None) -> pd.DataFrame:
    """One row per non-padding token of a laid-out batch, with its labels and weight; `text` is the token's text
    under `tokenizer` (None: the byte template; a ChatTokenizer: its pieces)."""
    keep = batch.segment_id >= 0
    rows, positions = keep.nonzero(as_tuple=True)
    frame = pd.DataFrame({
        "row": rows.numpy(),
        "sample": batch.sample_id[keep].numpy(),
        "conversation": batch.conversation_id[keep].numpy(),
        "turn": batch.turn_in_conversation[keep].numpy(),
        "position": positions.numpy(),
        "token": batch.tokens[keep].numpy(),
        "role": _ROLE_NAME_ARRAY[batch.role[keep].numpy()],
        "loss_mask": batch.loss_mask[keep].numpy().astype(int),
        "rank": (rank[keep].numpy() if rank is not None else 0),
        "micro_batch": (micro_batch[keep].numpy() if micro_batch is not None else 0),
        "weight": weights[keep].double().numpy(),
    })
    tokens = frame.token.to_numpy()
    text = _TOKEN_TEXT[tokens] if tokenizer is None else np.array([tokenizer.token_text(t) for t in tokens], object)
    frame.insert(6, "text", text)
    return frame


def weights_table(conversations, scheme, *, layout: str = "multiturn", ranks: int = 1, micro_batches: int = 1,
                  normalization: str = "global", row_len: int | None = None,
                  max_len: int | None = None, tokenizer=None, recipe=None) -> pd.DataFrame:
    """Effective per-token weights of `conversations` laid out by `layout`, dealt into R ranks × K micro-batches.
    `tokenizer`: None renders with the byte template; a ChatTokenizer or a local Hugging Face tokenizer directory
    renders with its own chat template (`token` = its ids, `text` = its pieces). `recipe` (a `frameworks.Recipe`)
    replaces scheme and normalization by a framework preset's."""
    tokenizer = as_tokenizer(tokenizer)
    batch = make_layout(conversations, layout, max_len=max_len, row_len=row_len, tokenizer=tokenizer)
    window_steps = None
    if recipe is not None:
        from .frameworks import check_batch

        check_batch(batch, recipe)
        scheme, normalization, window_steps = recipe.scheme, recipe.normalization, recipe.window_steps
    weights, rank, step = effective_weights(batch, as_scheme(scheme), ranks=ranks, micro_batches=micro_batches,
                                            normalization=normalization, window_steps=window_steps)
    return batch_table(batch, weights, rank, step, tokenizer)


def weights_summary(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-sample and per-assistant-turn totals: loss tokens, total weight, weight per token, share of the step."""
    loss = table[table.loss_mask == 1]
    total = loss.weight.sum()

    def summarise(keys):
        out = loss.groupby(keys, as_index=False).agg(loss_tokens=("weight", "size"), weight=("weight", "sum"))
        out["weight_per_token"] = out.weight / out.loss_tokens
        out["share"] = out.weight / total if total > 0 else 0.0
        return out

    return summarise(["sample", "conversation", "rank", "micro_batch"]), summarise(["conversation", "turn", "sample"])


# ---------------------------------------------------------------- per-sample weight profiles (plots, widgets)

LENGTH_BUCKETS = (0, 8, 16, 32, 64, float("inf"))  # loss tokens per sample (or turn); bucket i is (e_i, e_i+1]


def length_bucket_labels(edges=LENGTH_BUCKETS) -> list[str]:
    """Labels 1-8, 9-16, ..., >64: the names of the suite's response-length buckets (plots, training, gradients)."""
    return [f"{int(lo) + 1}-{int(hi)}" if hi != float("inf") else f">{int(lo)}" for lo, hi in zip(edges[:-1], edges[1:])]


def length_profile(batch: Batch, weights, by: str = "sample") -> pd.DataFrame:
    """One row per sample (or assistant turn, by="turn") with loss tokens: its length, total weight, weight per
    token, share of the step, and `relative` = weight per token ÷ token-mean's (1 everywhere under token-mean)."""
    if by not in ("sample", "turn"):
        raise ValueError(f"by={by!r}: choose 'sample' or 'turn'")
    mask = batch.loss_mask.numpy()
    ids = (batch.sample_id if by == "sample" else batch.turn_id).numpy()[mask]
    w = weights.double().numpy()[mask] if hasattr(weights, "numpy") else np.asarray(weights, float)[mask]
    length = np.bincount(ids, minlength=1) if ids.size else np.zeros(0, int)
    weight = np.bincount(ids, weights=w, minlength=1) if ids.size else np.zeros(0)
    conv = np.zeros(len(length), int)
    conv[ids] = batch.conversation_id.numpy()[mask]
    keep = length > 0
    total, n_tokens = weight.sum(), length.sum()
    per_token = weight[keep] / length[keep]
    return pd.DataFrame({
        by: np.nonzero(keep)[0], "conversation": conv[keep], "length": length[keep], "weight": weight[keep],
        "weight_per_token": per_token,
        "share": weight[keep] / total if total > 0 else 0.0,
        "relative": per_token * n_tokens / total if total > 0 else 0.0,
    })


def bucket_shares(profile: pd.DataFrame, edges=LENGTH_BUCKETS) -> pd.DataFrame:
    """Share of the step's weight per length bucket, next to its share of loss tokens (= token-mean's share).
    Every bucket appears (zeros where empty), so bars line up across schemes."""
    bucket = pd.cut(profile.length, list(edges), labels=length_bucket_labels(edges))
    grouped = profile.groupby(bucket, observed=False)
    out = pd.DataFrame({"units": grouped.size(), "tokens": grouped.length.sum(), "weight": grouped.weight.sum()})
    out.index.name = "bucket"
    out = out.reset_index()
    total_w, total_t = out.weight.sum(), out.tokens.sum()
    out["share"] = out.weight / total_w if total_w > 0 else 0.0
    out["token_share"] = out.tokens / total_t if total_t > 0 else 0.0
    return out


# ---------------------------------------------------------------- notebook helpers


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
    from .config import fast_mode
    from .model import default_device, set_torch_threads

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
        from .synth import GEORGE_WASHINGTON

        total = float(weights_table([GEORGE_WASHINGTON], "token-mean").weight.sum())
        rows.append(("token-mean weights sum to 1", f"{total:.6f}", abs(total - 1) < 1e-9))
    except Exception as error:  # noqa: BLE001
        rows.append(("token-mean weights sum to 1", f"{type(error).__name__}: {error}", False))
    return pd.DataFrame(rows, columns=["check", "result", "ok"])
