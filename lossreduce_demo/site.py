"""The suite as a static HTML site for readers who do not run it: `python -m lossreduce_demo.site build/site`
(`make site`).

Every notebook is executed in a fresh kernel (default mode; `--fast` for LOSSREDUCE_FAST=1) and rendered by
nbconvert with its figures. Widgets become snapshots: the figures their Outputs and Images showed after the run, and the
values of their controls, in place of controls that would need a kernel. An index page lists the notebooks in the
suite's order with what each shows and how to run it (JupyterLab; Colab when the repository is known:
`--repository owner/name` or LOSSREDUCE_REPOSITORY). The site is built in a temporary folder next to OUT_DIR
and moved into place at the end; an existing OUT_DIR is replaced only if it is a site built here.
"""

from __future__ import annotations

import argparse
import copy
import html
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mistune

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
MARKER = ".lossreduce-site"  # written into every site built here: only such a folder is ever replaced
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
CONTROL_MODELS = {"IntSliderModel", "FloatSliderModel", "FloatLogSliderModel", "DropdownModel",
                  "ToggleButtonsModel", "CheckboxModel", "SelectMultipleModel", "IntTextModel", "FloatTextModel",
                  "RadioButtonsModel", "SelectModel", "TextModel"}
_MARKDOWN = mistune.create_markdown(escape=True)
COLAB = "https://colab.research.google.com/github/{repository}/blob/main/notebooks/{name}"


@dataclass
class Page:
    notebook: str  # file name, e.g. 02_reduction_schemes.ipynb
    html_name: str
    title: str
    summary: list[str]  # the "What you will see" items
    time: str  # the time estimate line
    figures: int  # images on the page (cell outputs and widget snapshots)
    seconds: float  # execution time


def suite_order(folder: Path = NOTEBOOKS) -> list[Path]:
    """00_…, 01_…, … in number order, then the dashboard (app.ipynb) and any other notebook by name."""
    numbered = sorted(p for p in folder.glob("*.ipynb") if re.match(r"\d+_", p.name))
    others = sorted(p for p in folder.glob("*.ipynb") if p not in numbered)
    return numbered + sorted(others, key=lambda p: p.name != "app.ipynb")


def describe(nb) -> tuple[str, list[str], str]:
    """(title, "What you will see" items, time estimate) from the notebook's opening markdown cell, as markdown.

    A list item or the ⏱ line may wrap over several lines: they are joined (a blank line or the next item ends one)."""
    text = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "notebook")
    items, time_lines, current = [], [], None
    for line in map(str.strip, text.splitlines()):
        numbered = re.match(r"\d+\.\s+(.*)", line)
        if not line:
            current = None
        elif numbered:
            items.append(numbered.group(1))
            current = items
        elif line.startswith("⏱"):
            time_lines.append(line.strip("⏱ "))
            current = time_lines
        elif current is items:
            items[-1] += " " + line
        elif current is time_lines:
            time_lines.append(line)
    return title, items, " ".join(time_lines)


def inline_html(markdown: str) -> str:
    """One line of markdown (bold, italics, code, links) as HTML; raw HTML in it is escaped, not passed through."""
    rendered = _MARKDOWN(markdown).strip()
    return rendered[3:-4] if rendered.startswith("<p>") and rendered.endswith("</p>") else rendered


def _widget_models(nb) -> dict:
    return nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})


def _children(state: dict) -> list[str]:
    refs = list(state.get("children", []))
    return [r.removeprefix("IPY_MODEL_") for r in refs if isinstance(r, str)]


def widget_snapshot(models: dict, model_id: str) -> tuple[list[dict], list[str]]:
    """(the outputs shown by the widget's Output areas and the PNGs of its Images, "description = value" of its
    controls), in display order."""
    outputs, controls, seen = [], [], set()

    def visit(mid: str) -> None:
        if mid in seen or mid not in models:
            return
        seen.add(mid)
        model = models[mid]
        state = model.get("state", {})
        name = model.get("model_name", "")
        if name == "OutputModel":
            outputs.extend(copy.deepcopy(state.get("outputs", [])))
        elif name == "ImageModel":  # an app's figure: its PNG is the widget's binary buffer at "value"
            png = next((b["data"] for b in model.get("buffers", []) if b.get("path") == ["value"]), None)
            if png and state.get("format", "png") == "png":
                outputs.append({"output_type": "display_data", "metadata": {}, "data": {"image/png": png}})
        elif name in CONTROL_MODELS:
            value = state.get("value", state.get("index"))
            options = state.get("_options_labels")
            if name == "DropdownModel" and options and isinstance(state.get("index"), int):
                value = options[state["index"]]
            if name == "SelectMultipleModel" and options:
                value = ", ".join(options[i] for i in state.get("index", []))
            if name == "ToggleButtonsModel" and options and isinstance(state.get("index"), int):
                value = options[state["index"]]
            label = state.get("description") or name.removesuffix("Model")
            controls.append(f"{label} = {value}")
        elif name == "LabelModel" or name == "HTMLModel":
            text = re.sub(r"<[^>]+>", "", str(state.get("value", ""))).strip()
            if text:
                controls.append(text)
        for child in _children(state):
            visit(child)

    visit(model_id)
    return outputs, controls


def snapshot_widgets(nb) -> None:
    """Replace every widget view in the outputs by its snapshot (figures + a line of control values) and drop
    the widget state: the page shows what the widget showed, with no kernel and no JavaScript."""
    models = _widget_models(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        new = []
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW) if out.get("output_type") in ("display_data",
                                                                                      "execute_result") else None
            if not view:
                new.append(out)
                continue
            outputs, controls = widget_snapshot(models, view["model_id"])
            note = "Widget snapshot (run the notebook in JupyterLab to move its controls)"
            if controls:
                note += ": " + "; ".join(controls)
            new.append({"output_type": "display_data", "metadata": {},
                        "data": {"text/html": f"<p class='widget-snapshot'><em>{html.escape(note)}</em></p>"}})
            new.extend(o for o in outputs if o.get("output_type") in ("display_data", "stream", "execute_result"))
        cell["outputs"] = new
    nb.metadata.pop("widgets", None)


def execute(path: Path, fast: bool, timeout: int = 1200):
    """Run `path` top to bottom in a fresh python3 kernel in its own folder; raise naming the notebook and cell."""
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    env = {"LOSSREDUCE_FAST": "1" if fast else "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with tempfile.TemporaryDirectory(prefix="lossreduce-kernel-") as sockets:  # IPC: no TCP port to race for
            km = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets) / "kernel"))
            NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3", store_widget_state=True,
                           resources={"metadata": {"path": str(path.parent)}}).execute()
    except CellExecutionError as error:
        raise RuntimeError(f"{path.name}: a cell failed:\n{error}") from None
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return nb


def execution_key(path: Path, fast: bool) -> str:
    """What an executed copy of `path` depends on: the notebook's bytes, the package's sources, the mode."""
    import hashlib

    digest = hashlib.sha256(b"fast" if fast else b"default")
    package = Path(__file__).resolve().parent
    for file in [Path(path)] + sorted(package.rglob("*.py")):
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def save_executed(nb, path: Path, fast: bool, folder: Path) -> Path:
    """Keep an executed notebook in `folder` (tmp file + rename) for `executed` to reuse."""
    import nbformat

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nb = copy.deepcopy(nb)
    nb.metadata["lossreduce_execution"] = execution_key(path, fast)
    target = folder / Path(path).name
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


def executed(path: Path, fast: bool, folder: Path | None):
    """`path` executed: the copy kept in `folder` if it was made from these bytes, package and mode, else run."""
    import nbformat

    kept = Path(folder) / Path(path).name if folder else None
    if kept and kept.exists():
        nb = nbformat.read(kept, as_version=4)
        if nb.metadata.pop("lossreduce_execution", None) == execution_key(path, fast):
            return nb, True
    return execute(path, fast), False


def count_figures(nb) -> int:
    return sum(1 for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
               if "image/png" in out.get("data", {}) or "image/svg+xml" in out.get("data", {}))


def render(nb) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb)
    return body


def _run_links(notebook: str, repository: str | None) -> str:
    lab = f"<code>make lab</code>, then open <code>notebooks/{notebook}</code>"
    if repository:
        colab = f"<a href='{COLAB.format(repository=repository, name=notebook)}'>open in Colab</a>"
    else:
        colab = ("Colab: open <code>notebooks/" + notebook + "</code> from the repository "
                 "(build with <code>--repository owner/name</code> for a direct link)")
    return f"{lab} · <a href='notebooks/{notebook}'>download the notebook</a> · {colab}"


def index_html(pages: list[Page], repository: str | None, fast: bool) -> str:
    rows = []
    for i, page in enumerate(pages):
        items = "".join(f"<li>{inline_html(item)}</li>" for item in page.summary)
        rows.append(f"""<section class="notebook" id="nb{i}">
  <h2><a href="{page.html_name}">{html.escape(page.title)}</a></h2>
  <ol>{items}</ol>
  <p class="meta">{inline_html(page.time)} · {page.figures} figures · executed in {page.seconds:.0f} s</p>
  <p class="run">Run it: {_run_links(page.notebook, repository)}</p>
</section>""")
    mode = "fast mode (LOSSREDUCE_FAST=1: short training runs, rough numbers)" if fast else "default mode"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lossreduce_demo: the notebooks</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}}
section{{border-top:1px solid #ddd;padding:.4rem 0}} .meta,.run{{color:#555;font-size:.9rem}}</style></head>
<body><h1>lossreduce_demo: how per-token losses are reduced</h1>
<p>Every notebook of the suite, executed in {mode} on {time.strftime('%Y-%m-%d')} and rendered with its figures;
widgets are shown as snapshots of what they drew. To change the controls, run the notebooks yourself:
<code>make lab</code> in a clone of the repository (Python ≥ 3.10, a laptop CPU is enough).</p>
{''.join(rows)}
</body></html>
"""


def check_output_dir(out: Path) -> None:
    if out.exists() and not (out / MARKER).exists():
        raise SystemExit(f"error: {out} exists and is not a site built by lossreduce_demo.site "
                         f"(no {MARKER}); choose another OUT_DIR or remove it")


def build(out: Path, fast: bool = False, repository: str | None = None, notebooks: list[Path] | None = None,
          log=print, reuse: Path | None = None) -> list[Page]:
    """Execute and render `notebooks` (default: the whole suite in order) into `out`; returns the pages.
    `reuse`: a folder of executed copies (`save_executed`) taken instead of running a notebook when current."""
    out = Path(out)
    check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = suite_order() if notebooks is None else notebooks
    tmp = Path(tempfile.mkdtemp(prefix=".site-", dir=out.parent))
    try:
        (tmp / "notebooks").mkdir()
        pages = []
        for path in paths:
            started = time.time()
            log(f"executing {path.name} ({'fast' if fast else 'default'} mode)…")
            nb, kept = executed(path, fast, reuse)
            if kept:
                log(f"  (reused the copy executed from the same sources in {reuse})")
            seconds = time.time() - started
            snapshot_widgets(nb)
            title, summary, estimate = describe(nb)
            page = Page(path.name, path.with_suffix(".html").name, title, summary, estimate, count_figures(nb),
                        seconds)
            (tmp / page.html_name).write_text(render(nb), encoding="utf-8")
            shutil.copy2(path, tmp / "notebooks" / path.name)  # the stored notebook, without outputs
            log(f"  {page.html_name}: {page.figures} figures, {seconds:.0f} s")
            pages.append(page)
        (tmp / "index.html").write_text(index_html(pages, repository, fast), encoding="utf-8")
        (tmp / MARKER).write_text("built by python -m lossreduce_demo.site\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; a site is for reading
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return pages


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lossreduce_demo.site", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="build/site", help="output folder (default build/site)")
    parser.add_argument("--fast", action="store_true", help="execute in fast mode (LOSSREDUCE_FAST=1)")
    parser.add_argument("--repository", default=os.environ.get("LOSSREDUCE_REPOSITORY"),
                        help="GitHub owner/name for the Colab links (default: $LOSSREDUCE_REPOSITORY; none: "
                             "the index says how to open a notebook in Colab instead)")
    parser.add_argument("--only", nargs="*", help="notebook names to build (default: all, in suite order)")
    args = parser.parse_args(argv)
    notebooks = None
    if args.only:
        known = {p.name: p for p in suite_order()}
        missing = [n for n in args.only if n not in known]
        if missing:
            parser.error(f"--only: no such notebook {', '.join(missing)}; known: {', '.join(known)}")
        notebooks = [known[n] for n in args.only]
    if args.repository and not re.fullmatch(r"[\w.-]+/[\w.-]+", args.repository):
        parser.error(f"--repository {args.repository!r}: expected owner/name")
    started = time.time()
    pages = build(Path(args.out), args.fast, args.repository, notebooks)
    print(f"wrote {len(pages)} pages and {Path(args.out) / 'index.html'} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
