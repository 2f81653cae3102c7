"""Widget semantics beyond "it responds" in a real JupyterLab (every control of every notebook responding is
test_notebook_widgets.py): notebook 07's framework explorer follows the library's own option names."""

from __future__ import annotations

import re

import pytest
from harness import image_src, nudge_slider, wait_for_new_image

pytestmark = pytest.mark.browser

PROMPTS = "() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')].map(e => e.textContent)"
STARTED = f"() => ({PROMPTS})().some(t => /\\[(\\*|\\d+)\\]/.test(t))"
FINISHED = f"() => !({PROMPTS})().some(t => t.includes('*'))"
OUTPUT_IMAGES = "cell => [...cell.querySelectorAll('.widget-output img')].map(img => img.src)"
KERNEL_IDLE = """() => {
  const kernel = document.querySelector('.jp-Toolbar-kernelName');
  const status = document.querySelector('.jp-Notebook-ExecutionIndicator');
  return kernel && !kernel.textContent.includes('No Kernel') && status && status.dataset.status === 'idle';
}"""  # before the kernel starts the indicator already reads idle, next to "No Kernel"


def open_notebook(page, lab, name: str) -> None:
    """Open `name` in a fresh workspace and wait until its kernel is started and idle."""
    page.goto(lab.notebook_url(name))
    page.locator(".jp-Notebook .jp-CodeCell").first.wait_for()
    page.wait_for_function(KERNEL_IDLE, timeout=60_000)


def run_all(page, timeout_s: float) -> None:
    """Run > Run All Cells from the menu (once more if the first click is ignored), then wait for every cell."""
    for attempt in (1, 2):
        page.keyboard.press("Escape")
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:
            page.wait_for_function(STARTED, timeout=10_000)
            break
        except Exception:
            if attempt == 2:
                raise
    page.wait_for_function(FINISHED, timeout=timeout_s * 1000)
    prompts = [p.strip() for p in page.evaluate(PROMPTS)]
    not_run = [i for i, p in enumerate(prompts) if not re.fullmatch(r"\[\d+\]:", p)]
    if not_run:
        errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
        pytest.fail(f"code cells {not_run} did not run; prompts {prompts}\n" + "\n".join(errors.all_inner_texts()))


def test_framework_explorer_dropdowns_and_slider_redraw_the_weights(page, lab, screenshots):
    """Notebook 07: pick Megatron, then its per-token option, then move GA steps: plot and headline follow."""
    from playwright.sync_api import expect

    open_notebook(page, lab, "07_your_framework.ipynb")
    run_all(page, timeout_s=120)
    cell = page.locator(".jp-CodeCell").filter(has=page.locator(".widget-dropdown")).filter(
        has=page.locator(".widget-output img")).first
    output = cell.locator(".widget-output").first
    headline = cell.locator(".widget-html").filter(has_text="max error vs the full batch").first
    expect(headline).to_contain_text("TRL 1.16.0")
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


def test_beyond_the_mean_slider_and_train_button(page, lab, screenshots):
    """Notebook 08: move ΔL's a (the explorer redraws, its headline changes), then click Train (E10's three rules):
    the ratio figure appears and the status names every rule's zero-gradient fraction."""
    from playwright.sync_api import expect

    open_notebook(page, lab, "08_beyond_the_mean.ipynb")
    run_all(page, timeout_s=300)
    explorer = page.locator(".jp-CodeCell").filter(has=page.locator(".widget-slider")).filter(
        has=page.locator(".widget-output img")).first
    output = explorer.locator(".widget-output").first
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
