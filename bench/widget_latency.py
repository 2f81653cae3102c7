"""Update latency of every analytic widget view, as medians and as ratios to one bare `token_weights` call.

Levels per view: state only (the numbers), + building the figures, + rendering them to PNG (what the notebook
frontend receives) with constrained layout on every redraw, and as the apps draw: the layout of the first draw
reused (plots.LayoutCache). Target: a whole update (state, figures, PNG) ≤ 300 ms on a quiet laptop; the browser
test (tests/browser/test_notebook_widgets.py) measures control change → new image end to end.
Run: `.venv/bin/python bench/widget_latency.py` (last line: JSON).
"""

from __future__ import annotations

import io
import json
import os
import statistics
import time

import matplotlib

matplotlib.use("Agg")

from lossreduce_demo import training_app, widgets  # noqa: E402
from lossreduce_demo.reductions import token_weights  # noqa: E402

REPEATS = 7


def median_seconds(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cycling(app, control: str, values):
    """A function that sets `control` to the next of `values` (each call is one update)."""
    state = {"i": 0}

    def step():
        state["i"] += 1
        getattr(app, control).value = values[state["i"] % len(values)]

    step()
    return step


def render_png(app, reuse_layout: bool = False) -> None:
    """PNG of every figure, as IPython's inline display makes it (dpi 100); with `reuse_layout`, through the app's
    LayoutCache as app._draw does."""
    for name, fig in app.figures.items():
        if reuse_layout:
            app.layouts.reuse(name, fig)
        fig.savefig(io.BytesIO(), format="png", dpi=100)
        if reuse_layout:
            app.layouts.remember(name, fig)


VIEWS = {
    "formats: turns": (widgets.FormatsExplorer, "turns", [2, 3, 4]),
    "formats: conversations": (widgets.FormatsExplorer, "n_conversations", [3, 4, 5]),
    "weights: scheme": (widgets.WeightExplorer, "scheme", ["token-mean", "seq-mean-token-mean", "turn-mean"]),
    "weights: long fraction": (widgets.WeightExplorer, "long_fraction", [0.1, 0.25, 0.5]),
    "weights: alpha": (widgets.WeightExplorer, "alpha", [0.0, 0.5, 1.0]),
    "accumulation: K": (widgets.AccumulationExplorer, "micro_batches", [2, 4, 8]),
    "accumulation: normalisation": (widgets.AccumulationExplorer, "normalization", ["local", "global"]),
}
# notebook 04's Train app: a control change recomputes the closed-form P("L") of every chosen scheme (nothing trains)
TRAIN_APP_VIEWS = {
    "train app: long fraction": ("long_fraction", [0.1, 0.2, 0.3]),
    "train app: long reply": ("long_len", [30, 40, 50]),
    "train app: GA steps (local)": ("grad_accum", [2, 4, 8]),
    "train app: format": ("layout", ["split", "multiturn", "packed"]),
}


def main() -> dict:
    app = widgets.WeightExplorer()
    batch = app.batch()
    baseline = median_seconds(lambda: token_weights(batch, "seq-mean-token-mean"), 50)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other processes slow every number)")
    print(f"baseline token_weights on {batch.shape[0]}×{batch.shape[1]} batch: {baseline * 1e3:.2f} ms")
    print(f"{'view':32s} {'state ms':>9s} {'+figs ms':>9s} {'+png ms':>9s} {'reused ms':>10s} {'reused/png':>10s}")
    results = {"baseline_ms": baseline * 1e3, "load_average_1min": os.getloadavg()[0], "views": {}}
    for name, (cls, control, values) in VIEWS.items():
        app = cls()
        if name.startswith("weights: alpha"):
            app.scheme.value = "length-power"
        app.draw_figures = False
        state = median_seconds(cycling(app, control, values))
        app.draw_figures = True
        figs = median_seconds(cycling(app, control, values))
        step = cycling(app, control, values)
        png = median_seconds(lambda: (step(), render_png(app)))  # noqa: B023 - used right away
        render_png(app, reuse_layout=True)  # the first draw: constrained layout, remembered
        reused = median_seconds(lambda: (step(), render_png(app, reuse_layout=True)))  # noqa: B023
        assert app.state["message"] == "" or "Invalid" not in app.state["message"], app.state["message"]
        results["views"][name] = {"state_ms": state * 1e3, "figures_ms": figs * 1e3, "png_ms": png * 1e3,
                                  "reused_layout_png_ms": reused * 1e3, "state_over_baseline": state / baseline}
        print(f"{name:32s} {state * 1e3:9.1f} {figs * 1e3:9.1f} {png * 1e3:9.1f} {reused * 1e3:10.1f} "
              f"{reused / png:10.2f}")
    results["worst_update_ms"] = max(v["reused_layout_png_ms"] for v in results["views"].values())
    train_app = widgets.TrainingApp(schemes=list(training_app.SCHEMES), context_turns=2, normalization="local")
    for name, (control, values) in TRAIN_APP_VIEWS.items():
        state = median_seconds(cycling(train_app, control, values))
        assert not train_app.predicted.empty, train_app.prediction.value
        results["views"][name] = {"state_ms": state * 1e3, "figures_ms": state * 1e3}
        print(f"{name:32s} {state * 1e3:9.1f} {'(none)':>9s}")
    results["worst_state_and_figures_ms"] = max(v["figures_ms"] for v in results["views"].values())
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
