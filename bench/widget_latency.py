"""Update latency of every control of every analytic (no-training) widget view of the suite.

Views: the formats explorer (01), the weight explorer (02, also the app's first tab), the accumulation explorer
(03, also the app's second tab), the Train app's live prediction (04, no figure), the framework explorer (07) and
the ΔL explorer (08). Every control of each (sliders, menus, toggles, checkboxes, selections) is moved through up
to VALUES_PER_CONTROL values spread over its range (each a first visit: the widgets' caches are cleared before
each level), at three levels:
    state   the numbers only (app.draw_figures = False),
    figs    + building the figures (no frontend: the figures are made, not shown),
    new     the app's whole update as in a kernel (`_App._draw` with a frontend) on new figures: each figure made,
            rendered to PNG through the app's LayoutCache and set into its Image widget, then the garbage collection
            of the figures replaced (with the objects alive at the app's start frozen, as the apps do in a kernel),
    png     the same, with the figures redrawn in place where a plot can (plots.made_by): what one control change
            costs before the browser has every new image, plus that collection (~15 ms).
Printed: the load average (other processes slow every number), the baseline (one bare `token_weights` call), each
control's median and worst update per level, then per view the median and worst png update, their ratio to the
baseline (a ratio survives a busier machine better than milliseconds do), the CPU time this process spent
(time.process_time: near what a quiet machine takes, whatever else runs) and the median png update over the
median new one (what redrawing in place saves). Target: png ≤ 300 ms on a quiet laptop;
tests/browser measures control change → new image end to end.
Run: `LOSSREDUCE_THREADS=1 .venv/bin/python bench/widget_latency.py [view-substring ...]` (last line: JSON).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import ipywidgets as W
import matplotlib
import numpy as np

matplotlib.use("Agg")

from lossreduce_demo import widgets  # noqa: E402
from lossreduce_demo.reductions import token_weights  # noqa: E402

VALUES_PER_CONTROL = 5
LEVELS = ("state", "figs", "new", "png")


def clear_caches() -> None:
    """Forget every cached conversation set, layout and curve: the next update of a setting is a first visit."""
    for value in vars(widgets).values():
        if hasattr(value, "cache_clear"):
            value.cache_clear()


def control_values(control, n: int = VALUES_PER_CONTROL) -> list:
    """Up to n values of a control other than its current one, spread over its whole range."""
    current = control.value
    if isinstance(control, (W.IntSlider, W.FloatSlider)):
        steps = int(round((control.max - control.min) / control.step))
        picks = np.unique(np.linspace(0, steps, n + 1).round().astype(int))
        values = [control.min + k * control.step for k in picks]
        values = [int(v) if isinstance(control, W.IntSlider) else round(float(v), 6) for v in values]
    elif isinstance(control, W.Checkbox):
        values = [not current, current]
    elif isinstance(control, W.SelectMultiple):
        options = [o[1] if isinstance(o, tuple) else o for o in control.options]
        values = [tuple(options[:k]) for k in range(1, len(options) + 1)]
    else:  # Dropdown, ToggleButtons: every option (value side of (label, value) pairs)
        values = [o[1] if isinstance(o, tuple) else o for o in control.options]
    others = [v for v in values if v != current]
    return (others + [current])[:max(n, 2)]


def control_name(app, control) -> str:
    names = [k for k, v in vars(app).items() if v is control]
    return names[0] if names else control.description


def time_control(app, control, level: str) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds per update while `control` walks its values (then back to where it was)."""
    start = control.value
    app.draw_figures = level != "state"
    widgets._frontend = lambda: level in ("new", "png")  # the app draws into its Image widgets as in a kernel
    wall, cpu = [], []
    for value in control_values(control):
        if level == "new":
            app.figures = {}  # no figure to redraw in place: every one made anew
        begin, begin_cpu = time.perf_counter(), time.process_time()
        control.value = value  # the observer updates the app (an explorer) or its prediction (the Train app)
        wall.append(time.perf_counter() - begin)
        cpu.append(time.process_time() - begin_cpu)
    with app.hold():
        control.value = start
    app.draw_figures, widgets._frontend = True, lambda: True
    return wall, cpu


def make_views() -> dict:
    widgets._frontend = lambda: True  # as in a kernel: each app freezes the objects alive when it is made
    dashboard = widgets.Dashboard()
    return {
        "01 formats": widgets.FormatsExplorer(),
        "02 weights (= app tab 1)": dashboard.weights,
        "03 accumulation (= app tab 2)": dashboard.accumulation,
        "04 train app: prediction": widgets.TrainingApp(),
        "07 framework": widgets.FrameworkExplorer(framework="trl-grpo", micro_batches=4, ranks=2),
        "08 ΔL": widgets.DeltaLExplorer(a=1.0),
    }


def main(selected: list[str]) -> dict:
    batch = widgets.WeightExplorer().batch()
    baseline = statistics.median(_timed(lambda: token_weights(batch, "seq-mean-token-mean")) for _ in range(50))
    load_before = os.getloadavg()
    print(f"load average {load_before[0]:.2f} / {load_before[1]:.2f} (1 / 5 min) on {os.cpu_count()} cores")
    print(f"baseline token_weights on {batch.shape[0]}×{batch.shape[1]} batch: {baseline * 1e3:.2f} ms")
    print(f"{'view: control':46s}" + "".join(f" {level + ' med':>9s} {'max':>6s}" for level in LEVELS))
    results = {"baseline_ms": baseline * 1e3, "load_average_before": load_before[:2], "controls": {}, "views": {}}
    for view, app in make_views().items():
        if selected and not any(s in view for s in selected):
            continue
        png_times, new_times = [], []
        for control in app.controls:
            row = {}
            for level in ("state",) if isinstance(app, widgets.TrainingApp) else LEVELS:
                clear_caches()
                wall, cpu = time_control(app, control, level)
                row[level] = {"median_ms": statistics.median(wall) * 1e3, "max_ms": max(wall) * 1e3,
                              "cpu_median_ms": statistics.median(cpu) * 1e3, "cpu_max_ms": max(cpu) * 1e3}
            if isinstance(app, widgets.TrainingApp):  # no figure: the prediction table is the whole update
                row["figs"] = row["new"] = row["png"] = row["state"]
            png_times.append(row["png"])
            new_times.append(row["new"]["median_ms"])
            name = f"{view}: {control_name(app, control)}"
            results["controls"][name] = row
            print(f"{name:46s}" + "".join(f" {row[lv]['median_ms']:9.1f} {row[lv]['max_ms']:6.0f}" for lv in LEVELS))
            assert "Traceback" not in app.message.value
        medians, cpu_medians = [t["median_ms"] for t in png_times], [t["cpu_median_ms"] for t in png_times]
        results["views"][view] = {"median_ms": statistics.median(medians), "worst_control_ms": max(medians),
                                  "worst_update_ms": max(t["max_ms"] for t in png_times),
                                  "cpu_median_ms": statistics.median(cpu_medians),
                                  "cpu_worst_update_ms": max(t["cpu_max_ms"] for t in png_times),
                                  "in_place_over_new": statistics.median(medians) / statistics.median(new_times)}
    print(f"\n{'view (png level)':32s} {'median ms':>10s} {'worst control':>14s} {'worst update':>13s} "
          f"{'median/baseline':>16s} {'CPU median':>11s} {'CPU worst':>10s} {'in place/new':>13s}")
    for view, v in results["views"].items():
        v["median_over_baseline"] = v["median_ms"] / results["baseline_ms"]
        print(f"{view:32s} {v['median_ms']:10.1f} {v['worst_control_ms']:14.1f} {v['worst_update_ms']:13.1f} "
              f"{v['median_over_baseline']:16.0f} {v['cpu_median_ms']:11.1f} {v['cpu_worst_update_ms']:10.1f} "
              f"{v['in_place_over_new']:13.2f}")
    results["worst_update_ms"] = max(v["worst_update_ms"] for v in results["views"].values())
    results["cpu_worst_update_ms"] = max(v["cpu_worst_update_ms"] for v in results["views"].values())
    results["load_average_after"] = os.getloadavg()[:2]
    print(f"load average after {results['load_average_after'][0]:.2f}; worst update {results['worst_update_ms']:.0f} ms "
          f"wall, {results['cpu_worst_update_ms']:.0f} ms CPU (this process's own time: what a quiet machine "
          "would take, roughly)")
    print(json.dumps(results))
    return results


def _timed(fn) -> float:
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


if __name__ == "__main__":
    main(sys.argv[1:])
