"""Every notebook runs top to bottom in a fresh kernel (fast mode), and every notebook keeps the house structure.

Kernels inherit LOSSREDUCE_FAST / LOSSREDUCE_THREADS from the test process (make test sets both).
"""

from __future__ import annotations

import copy
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
    # figures show up as PNG in cell outputs or, shown by an app's Image widgets, in the saved widget state (what
    # the site's snapshots turn into outputs)
    snapshot = copy.deepcopy(nb)
    site.snapshot_widgets(snapshot)
    assert site.count_figures(snapshot) > 0, "no figure rendered as PNG (is MPLBACKEND overriding the inline backend?)"
    site.save_executed(nb, path, fast=True, folder=EXECUTED)  # the browser site test renders these, not a rerun
    assert_no_numpy_scalar_reprs(nb)


NUMPY_SCALAR_REPR = re.compile(r"(?<![\w.])np\.(?:float|int|uint|bool|complex|str|bytes|datetime|timedelta)\w*\(")


def _strings(value):
    """Every string inside an output (stream text, text/plain, text/html …) or a widget state, at any depth."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def assert_no_numpy_scalar_reprs(nb) -> None:
    """A reader should see 3.71, not np.float64(3.71) (numpy ≥ 2's repr of a scalar inside a list, dict or tuple):
    every output, the ones drawn inside widgets' Outputs included."""
    places = [(i, cell.get("outputs", [])) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    found = [(where, m.group(0)) for where, outputs in places + [("widgets", nb.metadata.get("widgets", {}))]
             for text in _strings(outputs) for m in NUMPY_SCALAR_REPR.finditer(text)]
    assert not found, f"numpy scalar reprs in the output (cell, repr): {found}"


def test_the_numpy_repr_check_catches_one_in_a_print_and_in_a_widget():
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("print([np.float64(3.71)])", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="[3.71, 2]\nthe mean (a np.float64) is 3.71\n")]))
    assert_no_numpy_scalar_reprs(nb)  # the source may say it; only outputs count
    nb.cells[0].outputs[0].text = "means:\nnp.float64(3.71), np.int64(2)\n"  # at a line start too
    with pytest.raises(AssertionError, match=r"np\.float64\("):
        assert_no_numpy_scalar_reprs(nb)
    nb.cells[0].outputs = []
    nb.metadata["widgets"] = {"state": {"out": {"state": {"outputs": [{"text": "{'p': np.float32(0.5)}"}]}}}}
    with pytest.raises(AssertionError, match=r"np\.float32\("):
        assert_no_numpy_scalar_reprs(nb)


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


def _table_minutes(text: str, key: str) -> dict[str, str]:
    """{name: minutes} of a markdown table's rows `| <name cell> | … | N min |`, the name matched by `key`."""
    return {m.group(1): m.group(2) for m in re.finditer(key + r".*\| (\d+) min \|$", text, re.M)}


def test_time_estimates_have_one_form_and_agree_with_the_readme_and_notebook_00():
    readme = _table_minutes((NOTEBOOKS[0].parent.parent / "README.md").read_text(encoding="utf-8"), r"^\| `(\w+)`")
    suite_map = next(c.source for c in nbformat.read(NOTEBOOKS[0], as_version=4).cells if "## The suite" in c.source)
    in_00 = _table_minutes(suite_map, r"^\| \*\*(\d\d|app)\b")
    for path in NOTEBOOKS:
        opening = nbformat.read(path, as_version=4).cells[0].source
        estimate = re.search(r"^⏱ About (\d+) minutes\b", opening, re.M)
        assert estimate, f"{path.name}: the time line reads '⏱ About N minutes…'"
        assert readme.get(path.stem) == estimate.group(1), (path.name, "README", readme.get(path.stem))
        assert in_00.get(path.stem.split("_")[0]) == estimate.group(1), (path.name, "00's suite map")


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
