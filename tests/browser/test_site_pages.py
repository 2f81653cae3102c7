"""`make site` in a real browser: the index lists every notebook in the suite's order, and every page opens with its
figures and no error output. The site is built once, in fast mode (LOSSREDUCE_FAST=1), into a temporary folder,
from the notebooks `make test` executed (build/executed/) where made from the same sources, else by running them."""

from __future__ import annotations

import pytest

from lossreduce_demo import site

EXECUTED = site.NOTEBOOKS.parent / "build" / "executed"  # written by tests/test_notebooks.py (make test)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
def built_site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "site"
    pages = site.build(out, fast=True, reuse=EXECUTED)  # make test's executed copies, where still current
    return out, pages


def test_index_and_every_page_show_their_figures(page, built_site, screenshots):
    out, pages = built_site
    page.goto((out / "index.html").as_uri())
    links = page.locator("section.notebook h2 a")
    assert links.evaluate_all("links => links.map(a => a.getAttribute('href'))") == [p.html_name for p in pages]
    assert [p.notebook for p in pages] == [p.name for p in site.suite_order()]
    page.screenshot(path=screenshots / "site_index.png", full_page=True)
    for entry in pages:
        page.goto((out / entry.html_name).as_uri())
        images = page.locator(".jp-OutputArea-output img")
        assert images.count() == entry.figures >= 1, entry.html_name
        images.first.wait_for(state="visible")
        assert page.evaluate("[...document.images].every(img => img.complete && img.naturalWidth > 0)"), entry.html_name
        errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
        assert "Traceback" not in " ".join(errors.all_inner_texts()), entry.html_name
