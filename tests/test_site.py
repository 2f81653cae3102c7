"""`make site` pieces without a kernel: suite order, the index text, widget snapshots, the output-folder guard.
The full build (every notebook executed and opened in a browser) is tests/browser/test_site_pages.py."""

from __future__ import annotations

import re

import mistune
import nbformat
import pytest

from lossreduce_demo import site


def test_suite_order_is_numbered_then_the_app():
    names = [p.name for p in site.suite_order()]
    numbered = [n for n in names if n[:2].isdigit()]
    assert names[: len(numbered)] == sorted(numbered) and names[0].startswith("00_")
    assert names[len(numbered)] == "app.ipynb"


def test_every_notebook_describes_itself_for_the_index():
    for path in site.suite_order():
        title, items, estimate = site.describe(nbformat.read(path, as_version=4))
        assert title and title != "notebook", path.name
        assert len(items) == 3, (path.name, items)  # "What you will see": three lines
        assert estimate, path.name


def _opening_list_html(nb) -> list[str]:
    """The "What you will see" items as mistune renders the whole opening cell, whitespace collapsed."""
    text = next(c.source for c in nb.cells if c.cell_type == "markdown")
    first_list = re.search(r"<ol>(.*?)</ol>", mistune.html(text), re.S).group(1)
    return [" ".join(item.split()) for item in re.findall(r"<li>(.*?)</li>", first_list, re.S)]


@pytest.mark.parametrize("path", site.suite_order(), ids=lambda p: p.stem)
def test_index_items_are_whole_list_items_ending_in_a_full_stop(path):
    nb = nbformat.read(path, as_version=4)
    _, items, estimate = site.describe(nb)
    assert [site.inline_html(item) for item in items] == _opening_list_html(nb)  # wrapped lines joined, none cut
    assert all(item.endswith((".", "?", "!")) for item in items), items
    assert estimate.endswith((".", ")")) and "\n" not in estimate, estimate


def test_index_renders_inline_markdown_never_raw_asterisks_or_backticks():
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(
        "# T\n\n**What you will see**\n1. A **Train** button and\n   `torch.distributed`, *live*.\n"
        "2. A [link](https://example.org) & <b>raw</b> tag.\n3. Three.\n\n⏱ About 5 minutes; `make app`\nruns it."))
    title, items, estimate = site.describe(nb)
    assert items[0] == "A **Train** button and `torch.distributed`, *live*." and estimate.endswith("runs it.")
    text = site.index_html([site.Page("t.ipynb", "t.html", title, items, estimate, 0, 1.0)], None, fast=True)
    assert "<strong>Train</strong>" in text and "<code>torch.distributed</code>" in text and "<em>live</em>" in text
    assert '<a href="https://example.org">link</a>' in text and "&amp; &lt;b&gt;raw&lt;/b&gt;" in text
    assert "<code>make app</code>" in text
    body = text[text.index("<body>"):]
    assert "**" not in body and "`" not in body


def _widget_notebook():
    nb = nbformat.v4.new_notebook()
    png = {"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"},
           "metadata": {}}
    state = {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_slider", "IPY_MODEL_out",
                                                                  "IPY_MODEL_figure", "IPY_MODEL_gif"]}},
        "slider": {"model_name": "FloatSliderModel", "state": {"description": "long fraction", "value": 0.25}},
        "menu": {"model_name": "DropdownModel", "state": {"description": "scheme", "index": 1,
                                                          "_options_labels": ["token-mean", "turn-mean"]}},
        "out": {"model_name": "OutputModel", "state": {"outputs": [png], "children": ["IPY_MODEL_menu"]}},
        "figure": {"model_name": "ImageModel", "state": {"format": "png"},  # an app's figure: binary buffer
                   "buffers": [{"path": ["value"], "data": "iVBORw0KGgoA", "encoding": "base64"}]},
        "gif": {"model_name": "ImageModel", "state": {"format": "gif"},  # not a PNG: not shown as one
                "buffers": [{"path": ["value"], "data": "R0lGODlh", "encoding": "base64"}]},
    }
    nb.metadata["widgets"] = {site.WIDGET_STATE: {"state": state}}
    view = {"output_type": "display_data", "metadata": {},
            "data": {site.WIDGET_VIEW: {"model_id": "box"}, "text/plain": "VBox(...)"}}
    nb.cells.append(nbformat.v4.new_code_cell("app", outputs=[view]))
    return nb


def test_widgets_become_snapshots_of_their_figures_and_controls():
    nb = _widget_notebook()
    assert site.count_figures(nb) == 0  # the figure lives in the widget state only
    site.snapshot_widgets(nb)
    outputs = nb.cells[0].outputs
    assert "widgets" not in nb.metadata
    assert all(site.WIDGET_VIEW not in o.get("data", {}) for o in outputs)
    note = outputs[0]["data"]["text/html"]
    assert "long fraction = 0.25" in note and "scheme = turn-mean" in note
    assert site.count_figures(nb) == 2  # the Output's figure and the Image's, in display order
    assert [o["data"]["image/png"] for o in outputs[1:]] == ["iVBORw0KGgo=", "iVBORw0KGgoA"]
    assert "<img" in site.render(nb)


def test_index_links_every_page_in_order_and_says_how_to_run(tmp_path):
    pages = [site.Page("00_a.ipynb", "00_a.html", "00 · A", ["one", "two", "three"], "10 min", 2, 3.0),
             site.Page("app.ipynb", "app.html", "App", ["x", "y", "z"], "", 1, 1.0)]
    text = site.index_html(pages, repository=None, fast=True)
    assert text.index("00_a.html") < text.index("app.html")
    assert "make lab" in text and "--repository owner/name" in text and "fast mode" in text
    linked = site.index_html(pages, repository="someone/lossreduce_demo", fast=False)
    assert "colab.research.google.com/github/someone/lossreduce_demo/blob/main/notebooks/00_a.ipynb" in linked


def test_an_existing_folder_that_is_not_a_site_is_never_replaced(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not a site built by"):
        site.build(tmp_path, fast=True, notebooks=[])
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_bad_options_name_the_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        site.main(["out", "--only", "99_nope.ipynb"])
    assert exit_info.value.code == 2 and "--only: no such notebook 99_nope.ipynb" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        site.main(["out", "--repository", "not a repo"])
    assert "--repository" in capsys.readouterr().err


def test_an_executed_copy_is_reused_only_while_notebook_package_and_mode_are_the_same(tmp_path, monkeypatch):
    notebook = tmp_path / "01_x.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nbformat.write(nb, notebook)
    ran = []
    monkeypatch.setattr(site, "execute", lambda path, fast: ran.append((path, fast)) or nbformat.read(path, 4))
    nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    site.save_executed(nb, notebook, fast=True, folder=tmp_path / "kept")
    kept, reused = site.executed(notebook, True, tmp_path / "kept")
    assert reused and not ran and kept.cells[0].outputs[0]["data"]["text/plain"] == "2"
    assert "lossreduce_execution" not in kept.metadata
    assert site.executed(notebook, False, tmp_path / "kept")[1] is False  # another mode: run again
    assert site.executed(notebook, True, None)[1] is False  # nothing to reuse
    nb.cells[0].source = "1 + 2"
    nbformat.write(nb, notebook)  # the notebook changed since
    assert site.executed(notebook, True, tmp_path / "kept")[1] is False
    assert len(ran) == 3
