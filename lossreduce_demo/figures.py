"""The README's key figures: `python -m lossreduce_demo.figures [OUT_DIR]` (`make figures`) regenerates them."""

from __future__ import annotations

import sys
from pathlib import Path

from . import layouts, plots, reductions, report, synth
from .outputs import check_output_dir, replacing

README_FIGURES = {
    "chat_template.png": "The George Washington chat through the template: tokens by role, loss tokens underlined.",
    "weights_by_scheme.png": "Weight per token ÷ token-mean's, every scheme on the same 16 chats.",
    "weight_vs_length.png": "Weight per token vs response length: flat (token-mean), 1/n (seq-mean), 1/√n (α=½).",
    "naive_accumulation.png": "4 micro-batches normalised by their own token count vs the full batch (token-mean).",
}


def readme_figures() -> dict:
    """name -> Figure, all analytic (no training), deterministic."""
    lengths = synth.LengthSpec("bimodal", short_mean=4, long_mean=30, long_fraction=0.25)
    batch = layouts.multiturn_layout(synth.make_chats(16, lengths=lengths, turns=(1, 3), seed=0))
    weights = {s: reductions.token_weights(batch, s) for s in reductions.SCHEMES}
    naive, rank, step = reductions.effective_weights(batch, "token-mean", reductions.Plan(micro_batches=4, normalization="local"))
    return {
        "chat_template.png": plots.token_strip(synth.GEORGE_WASHINGTON),
        "weights_by_scheme.png": plots.weight_heatmap_grid(batch, weights),
        "weight_vs_length.png": plots.weight_vs_length(
            {s: report.length_profile(batch, weights[s]) for s in ("token-mean", "seq-mean-token-mean", "length-power")}),
        "naive_accumulation.png": plots.effective_vs_ideal(batch, naive, weights["token-mean"], rank=rank, step=step),
    }


def write_figures(out_dir="docs/figures") -> list[Path]:
    """Write every README figure into `out_dir` (checked first; each PNG via a temporary file)."""
    out = check_output_dir(out_dir, option=None, files=README_FIGURES)
    paths = []
    for name, fig in readme_figures().items():
        with replacing(out / name, option=None) as tmp:
            fig.savefig(tmp, dpi=110, metadata={"Software": None})
        paths.append(out / name)
    return paths


if __name__ == "__main__":
    for path in write_figures(*sys.argv[1:]):
        print(f"wrote {path}")
