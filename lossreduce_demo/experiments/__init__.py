"""The experiments of docs/science.md behind one interface: `run_experiment(name, seeds, out_dir)`.

Each experiment module exposes `run(seeds: int) -> ExperimentResult`; the registry below maps names to them,
imported lazily so the CLI starts fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import OptionError, shown
from ..outputs import check_output_dir, replacing

# Tidy long-form columns every experiment CSV has (empty where they do not apply).
COLUMNS = ["experiment", "seed", "scheme", "normalization", "format", "micro_batch_size", "grad_accum",
           "metric", "value", "predicted", "passed"]

# name -> "module:function" inside lossreduce_demo.experiments
REGISTRY: dict[str, str] = {
    "e1": "sft:run_e1",  # learned length prior
    "e2": "sft:run_e2",  # gradient accumulation, naive vs global
    "e3": "dp:run_e3",  # data parallel in real processes
    "e4": "sft:run_e4",  # formats x schemes
    "e5": "sft:run_e5",  # sum vs mean vs optimizer
    "e6": "rl:run_e6",  # RL, DAPO analogue
    "e7": "rl:run_e7",  # RL, Dr. GRPO
    "e8": "gradient_noise:run_e8",  # gradient variance vs length, ΔL Normalization
    "e9": "packing:run_e9",  # packing: attention contamination vs the per-row mean
    "e10": "importance_ratios:run_e10",  # token vs sequence importance ratios (GSPO, CISPO)
}


@dataclass
class ExperimentResult:
    name: str
    table: pd.DataFrame  # tidy long form, COLUMNS first (more columns allowed after them)
    verdict: pd.DataFrame  # one row per check: what, predicted, measured, passed
    figure: object  # matplotlib Figure
    csv_path: Path | None = None
    png_path: Path | None = None


def tidy(rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame with COLUMNS first, missing ones empty."""
    frame = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = pd.NA
    return frame[COLUMNS + [c for c in frame.columns if c not in COLUMNS]]


def run_experiment(name: str, seeds: int = 3, out_dir="results") -> ExperimentResult:
    """Run experiment `name`, write out_dir/NAME.csv and out_dir/NAME.png. The name and the destination are
    checked before the run; each file is written to a temporary name and then replaces the old one."""
    key = name.lower()
    if key not in REGISTRY:
        raise OptionError(f"unknown experiment {shown(name)}; choose one of {', '.join(sorted(REGISTRY))}")
    out = check_output_dir(out_dir, files=[f"{key}.csv", f"{key}.png"])
    module, func = REGISTRY[key].split(":")
    result: ExperimentResult = getattr(importlib.import_module(f"{__name__}.{module}"), func)(seeds=seeds)
    result.csv_path, result.png_path = out / f"{key}.csv", out / f"{key}.png"
    with replacing(result.csv_path) as tmp:
        result.table.to_csv(tmp, index=False)
    with replacing(result.png_path) as tmp:
        result.figure.savefig(tmp, dpi=120, bbox_inches="tight")
    return result
