"""The workshop dashboard (notebooks/app.ipynb) in Voilà app mode: code hidden, no versions line and no exercises to
type into, tab labels whole, and every control of both tabs redraws its plots with no error text."""

from __future__ import annotations

import pytest
from harness import ERROR_TEXT, UPSCALED_FIGURES, VIEW_SIGNATURE, controls_in, operate, wait_for_view_change

pytestmark = pytest.mark.browser


def test_dashboard_every_control_redraws(page, voila_app, screenshots):
    page.goto(voila_app, wait_until="domcontentloaded")
    page.locator(".app-figures img").first.wait_for(timeout=120_000)  # Voilà runs the notebook first
    page.screenshot(path=screenshots / "voila_app_loaded.png")
    assert page.locator(".cm-content").count() == 0, "app mode shows no code"
    text = page.locator("body").inner_text()
    assert "answer =" not in text and "lossreduce_demo 0" not in text and "python 3." not in text, \
        "the app shows no exercises to type into and no versions line"
    tabs = page.locator(".widget-tab .lm-TabBar-tab")
    truncated = tabs.evaluate_all("tabs => tabs.filter(t => { const l = t.querySelector('.lm-TabBar-tabLabel');"
                                  " return l.scrollWidth > l.clientWidth + 1; }).map(t => t.innerText)")
    assert not truncated, f"tab labels cut off: {truncated}"
    dashboard = page.locator(".widget-tab").first
    for t in range(tabs.count()):
        tabs.nth(t).click()
        panel = page.locator(".widget-tab-contents > *:visible").first  # the tab on show
        controls = controls_in(panel)
        assert controls, f"tab {t} has no controls"
        for control in controls:
            control.locator.scroll_into_view_if_needed()
            before = panel.evaluate(VIEW_SIGNATURE)
            started = operate(control)
            try:
                wait_for_view_change(page, panel, before, started, timeout_s=60)
            except TimeoutError as error:
                pytest.fail(f"tab {t}: {control.label}: {error}")
            errors = panel.evaluate(ERROR_TEXT)
            assert not errors, f"tab {t}: {control.label} shows an error:\n{errors}"
        assert not panel.evaluate(UPSCALED_FIGURES), f"tab {t}: figures shown wider than drawn"
        dashboard.screenshot(path=screenshots / f"voila_app_tab_{t}.png")
