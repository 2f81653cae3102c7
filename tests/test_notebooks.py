"""Every notebook runs top to bottom in a fresh kernel (fast mode), and every notebook keeps the house structure.

Kernels inherit LOSSREDUCE_FAST / LOSSREDUCE_THREADS from the test process (make test sets both).
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
EXECUTED = NOTEBOOKS[0].parent.parent / "build" / "executed"  # fast-mode copies for tests/browser/test_site_pages.py


def code_lengths(nb) -> list[int]:
    return [len(cell.source.strip().splitlines()) for cell in nb.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_executes_without_errors(path, monkeypatch):
    from lossreduce_demo import site

    monkeypatch.setenv("LOSSREDUCE_THREADS", "1")  # fast mode: site.execute sets LOSSREDUCE_FAST=1 for the kernel
    nb = site.execute(path, fast=True, timeout=600)  # raises naming the notebook and the failing cell
    errors = [(i, out.get("ename"), out.get("evalue")) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
              for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors
    # figures show up as PNG in cell outputs or, drawn inside an ipywidgets Output, in the saved widget state
    rendered = json.dumps([cell.get("outputs", []) for cell in nb.cells]) + json.dumps(nb.metadata.get("widgets", {}))
    assert "image/png" in rendered, "no figure rendered as PNG (is MPLBACKEND overriding the inline backend?)"
    site.save_executed(nb, path, fast=True, folder=EXECUTED)  # the browser site test renders these, not a rerun


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_stored_clean_with_short_cells(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {i}: stored with outputs"
    lengths = code_lengths(nb)
    assert statistics.median(lengths) <= 8, f"median code cell {statistics.median(lengths)} lines"
    assert max(lengths) <= 30, f"a code cell has {max(lengths)} lines"


SUITE = [p for p in NOTEBOOKS if re.match(r"\d\d_", p.name)]  # the numbered lessons (apps like app.ipynb differ)


@pytest.mark.parametrize("path", SUITE, ids=[p.stem for p in SUITE])
def test_lesson_opens_and_ends_the_house_way(path):
    nb = nbformat.read(path, as_version=4)
    markdown = [cell.source for cell in nb.cells if cell.cell_type == "markdown"]
    assert "What you will see" in markdown[0], "must open with 'What you will see'"
    assert any("⏱" in m or "minutes" in m for m in markdown[:2]), "time estimate at the top"
    assert any("## Takeaways" in m for m in markdown), "needs a Takeaways section"
    assert any("Exercises" in m for m in markdown), "needs exercises"
    checks = [cell.source for cell in nb.cells if cell.cell_type == "code" and re.search(r"\.check_\d+\(", cell.source)]
    assert 2 <= len(checks) <= 3 and all("answer = None" in c for c in checks), "2–3 exercises left as answer = None"
    first_code = next(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert "setup_notebook" in first_code, "the versions/seed/device cell comes first"
