"""The workshop dashboard (notebooks/app.ipynb) in Voilà app mode: code hidden, both tabs' controls redraw plots."""

from __future__ import annotations

import pytest
from harness import image_src, nudge_slider, wait_for_new_image

pytestmark = pytest.mark.browser


def visible_plot(page):
    """The widget Output holding the plots of the tab on show."""
    return page.locator(".widget-output:visible").filter(has=page.locator("img")).first


def test_dashboard_controls_redraw_plots(page, voila_app, screenshots):
    page.goto(voila_app, wait_until="domcontentloaded")
    page.locator(".widget-output img").first.wait_for(timeout=90_000)  # Voilà runs the notebook first
    output = visible_plot(page)
    before = image_src(output)
    page.screenshot(path=screenshots / "voila_app_1_loaded.png")
    assert page.locator(".cm-content").count() == 0, "app mode shows no code"

    old, new = nudge_slider(page.locator(".widget-slider:visible").first)
    after = wait_for_new_image(output, before)
    dashboard = page.locator(".widget-tab").first
    dashboard.screenshot(path=screenshots / "voila_app_2_slider_moved.png")
    assert old != new and after != before and after.startswith("data:image/png")

    page.locator(".widget-tab .lm-TabBar-tab").nth(1).click()  # gradient accumulation × data parallel
    output = visible_plot(page)
    local = image_src(output)
    page.locator(".widget-toggle-buttons:visible button").filter(has_text="global").click()
    exact = wait_for_new_image(output, local)
    dashboard.screenshot(path=screenshots / "voila_app_3_accumulation_global.png")
    assert exact != local and exact.startswith("data:image/png")
