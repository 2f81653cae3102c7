"""Every widget of every notebook in a real JupyterLab: Run All, the notebook's own checks (semantics.py), then each
control of each widget cell is moved or clicked, and the cell's figures or numbers must change with no error text.
Discovered, not listed: a notebook added to notebooks/ (NN_name.ipynb) is covered as it lands. Each notebook's key figure is screenshotted to build/screenshots/
(lab_NN_key.png) and each widget cell after its controls moved (lab_NN_widget_K.png); the time from a control change
to the settled new view (by the page's clock: the first input event to the last new image loaded) is written to
build/browser-logs/widget_latency.json (measured, not asserted: a shared
machine makes any bound flaky; bench/widget_latency.py measures the Python side)."""

from __future__ import annotations

import json
import re
import time

import pytest
from harness import (
    ERROR_TEXT,
    LOGS,
    READOUTS,
    UPSCALED_FIGURES,
    VIEW_SIGNATURE,
    arm_timing,
    controls_in,
    open_notebook,
    operate,
    run_all,
    shut_down_kernels,
    wait_for_view_change,
)
from semantics import CHECKS

from lossreduce_demo.site import suite_order

pytestmark = pytest.mark.browser

LESSONS = [p for p in suite_order() if re.match(r"\d+_", p.name)]  # the app is driven in Voilà (test_voila.py)
KEY_FIGURE = {  # notebook -> text of the cell whose output is its key figure (default: the first widget, else image)
    "00_start_here": "plots.token_strip(chat)",
    "01_formats_and_masks": "plots.layout_diagrams(batches)",
    "03_accumulation_and_data_parallel": "plots.plot_dp_gradient_errors(frame)",
    "04_training_tiny_gpt": 'figs["p_long"]',
    "05_rl_length_bias": "rl_plots.ratio_curves(e6_steps)",
    "06_your_own_data": "plots.weight_vs_length(profiles)",
}
ANALYTIC_TIMEOUT_S, BUTTON_TIMEOUT_S = 60, 240  # a button may train (fast mode: seconds to a minute under load)


def key_figure_cell(page, stem: str):
    cells = page.locator(".jp-CodeCell")
    if stem in KEY_FIGURE:
        return cells.filter(has_text=KEY_FIGURE[stem]).first
    widget = cells.filter(has=page.locator(".app-figures img"))
    return widget.first if widget.count() else cells.filter(has=page.locator(".jp-OutputArea-output img")).first


def record_latencies(stem: str, rows: list[dict]) -> None:
    path = LOGS / "widget_latency.json"
    LOGS.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[stem] = rows
    path.write_text(json.dumps(data, indent=1))


def drive_controls(page, cell, stem: str, k: int, covered: frozenset = frozenset()) -> list[dict]:
    """Operate every control of a widget cell; the view must change and show no error. In a cell without outputs or
    labels, and for the settings of a training app (which apply on the button's click), the control's own value
    must change instead. Controls named in `covered` were exercised by the notebook's own check (a Train run twice
    from the same seed draws the same view). Returns one latency row per control."""
    rows = []
    has_view = cell.locator(".app-figures, .widget-html, div.widget-label").count() > 0  # label.widget-label: a description
    controls = [c for c in controls_in(cell) if c.name not in covered]
    trains = any(c.kind == "button" for c in controls)  # settings of a training app take effect on the click
    for control in controls:
        control.locator.scroll_into_view_if_needed()
        follows_view = has_view and (control.kind == "button" or not trains)
        before = cell.evaluate(VIEW_SIGNATURE if follows_view else READOUTS)
        arm_timing(cell)
        started = operate(control)  # from the user's action (the key press, the click) to the settled new view
        timeout = BUTTON_TIMEOUT_S if control.kind == "button" else ANALYTIC_TIMEOUT_S
        if follows_view:
            try:
                busy = control.locator.element_handle() if control.kind == "button" else None  # done when re-enabled
                times = wait_for_view_change(page, cell, before, started, timeout, busy=busy)
            except TimeoutError as error:
                pytest.fail(f"{stem}, widget cell {k}: {control.label}: {error}")
        else:
            try:
                page.wait_for_function(f"([cell, before]) => ({READOUTS})(cell) !== before",
                                       arg=[cell.element_handle(), before], timeout=timeout * 1000)
            except Exception:
                pytest.fail(f"{stem}, widget cell {k}: {control.label}: its value did not change within {timeout} s")
            times = {"first_image_s": None, "settled_s": round(time.monotonic() - started, 3)}
        errors = cell.evaluate(ERROR_TEXT)
        assert not errors, f"{stem}, widget cell {k}: {control.label} shows an error:\n{errors}"
        if control.kind == "button":  # finished: the status line no longer says it is working
            assert "⏳" not in cell.inner_text(), f"{stem}, widget cell {k}: {control.label} still shows work going on"
        rows.append({"cell": k, "control": control.label, "kind": control.kind, **times})
    return rows


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_every_widget_responds_without_errors(page, lab, screenshots, path):
    stem = path.stem
    page.set_viewport_size({"width": 1400, "height": 2400})  # tall: element screenshots of whole outputs
    try:
        open_notebook(page, lab, path.name)
        run_all(page, timeout_s=300)
        upscaled = page.locator("body").evaluate(UPSCALED_FIGURES)
        assert not upscaled, f"{stem}: app figures shown wider than drawn (blurred): {upscaled}"
        key = key_figure_cell(page, stem)
        key.scroll_into_view_if_needed()
        key.locator(".jp-Cell-outputArea").screenshot(path=screenshots / f"lab_{stem[:2]}_key.png")
        covered = frozenset()
        if stem in CHECKS:  # what this notebook's widgets must show, before the generic drive moves the rest
            covered = CHECKS[stem](page, screenshots)
        cells = page.locator(".jp-CodeCell").filter(has=page.locator(".jupyter-widgets"))
        rows = []
        for k in range(cells.count()):
            cell = cells.nth(k)
            if not controls_in(cell):
                continue
            rows += drive_controls(page, cell, stem, k, covered)
            cell.locator(".jp-Cell-outputArea").screenshot(path=screenshots / f"lab_{stem[:2]}_widget_{k}.png")
        record_latencies(stem, rows)
        print(f"{stem}: {len(rows)} controls, " + ", ".join(f"{r['control']} {r['settled_s']:.2f} s" for r in rows))
    finally:
        shut_down_kernels(page, lab)
