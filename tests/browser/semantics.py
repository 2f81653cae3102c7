"""Widget semantics beyond "it responds", checked in a notebook already open in JupyterLab with every cell run
(test_notebook_widgets.py calls them before it drives every control): notebook 07's framework explorer follows the
library's own option names; notebook 08's explorer and Train button report what they claim."""

from __future__ import annotations

import re
from importlib.metadata import version

from harness import image_src, nudge_slider, wait_for_new_image

OUTPUT_IMAGES = "cell => [...cell.querySelectorAll('.app-figures img')].map(img => img.src)"


def framework_explorer_follows_the_option_names(page, screenshots):
    """Notebook 07: pick Megatron, then its per-token option, then move GA steps: plot and headline follow."""
    from playwright.sync_api import expect

    cell = page.locator(".jp-CodeCell").filter(has=page.locator(".widget-dropdown")).filter(
        has=page.locator(".app-figures img")).first
    output = cell.locator(".app-figures").first
    headline = cell.locator(".widget-html").filter(has_text="max error vs the full batch").first
    expect(headline).to_contain_text(f"TRL {version('trl')}")  # the installed library's own version
    cell.scroll_into_view_if_needed()
    page.screenshot(path=screenshots / "lab_07_1_ran_all.png")

    before = image_src(output)
    cell.locator(".widget-dropdown select").first.select_option("megatron")
    expect(headline).to_contain_text("calculate_per_token_loss=True")
    expect(headline).to_contain_text("max error vs the full batch: exact")
    after_framework = wait_for_new_image(output, before)

    cell.locator(".widget-dropdown select").nth(1).select_option(label="calculate_per_token_loss=False")
    expect(headline).to_contain_text(re.compile(r"1/\(K·R·N_rk\).*max error vs the full batch: \d+\.\d%"))
    after_option = wait_for_new_image(output, after_framework)
    text_before = headline.inner_text()
    old, new = nudge_slider(cell.locator(".widget-slider").first)  # GA steps K
    expect(headline).not_to_have_text(text_before)
    after_slider = wait_for_new_image(output, after_option)
    cell.scroll_into_view_if_needed()
    page.screenshot(path=screenshots / "lab_07_2_megatron_default.png")
    assert old != new and len({before, after_framework, after_option, after_slider}) == 4
    return frozenset({"framework", "option", "GA steps K"})  # the controls this check moved


def beyond_the_mean_slider_and_train_button(page, screenshots):
    """Notebook 08: move ΔL's a (the explorer redraws, its headline changes), then click Train (E10's three rules):
    the ratio figure appears and the status names every rule's zero-gradient fraction."""
    from playwright.sync_api import expect

    explorer = page.locator(".jp-CodeCell").filter(has=page.locator(".widget-slider")).filter(
        has=page.locator(".app-figures img")).first
    output = explorer.locator(".app-figures").first
    headline = explorer.locator(".widget-html").filter(has_text="step variance").first
    text_before, before = headline.inner_text(), image_src(output)
    explorer.scroll_into_view_if_needed()
    page.screenshot(path=screenshots / "lab_08_1_ran_all.png")
    old, new = nudge_slider(explorer.locator(".widget-slider").first)
    expect(headline).not_to_have_text(text_before)
    after = wait_for_new_image(output, before)
    assert old != new and after != before

    train = re.compile("train", re.I)
    cell = page.locator(".jp-CodeCell").filter(has=page.locator(".widget-button").filter(has_text=train)).first
    cell.scroll_into_view_if_needed()
    images = cell.evaluate(OUTPUT_IMAGES)
    cell.locator(".widget-button").filter(has_text=train).first.click()
    expect(cell).to_contain_text(re.compile(r"done: zero-gradient tokens token [\d.]+%, gspo [\d.]+%, cispo 0\.0%"),
                                 timeout=240_000)
    page.wait_for_function(f"([cell, before]) => ({OUTPUT_IMAGES})(cell).some(src => !before.includes(src))",
                           arg=[cell.element_handle(), images], timeout=60_000)
    cell.scroll_into_view_if_needed()
    page.screenshot(path=screenshots / "lab_08_2_trained.png")
    return frozenset({"ΔL a", "Train"})  # the controls this check moved


CHECKS = {  # notebook stem -> its check, which returns the names of the controls it moved
    "07_your_framework": framework_explorer_follows_the_option_names,
    "08_beyond_the_mean": beyond_the_mean_slider_and_train_button}
