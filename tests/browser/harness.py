"""Real-browser harness: JupyterLab and Voilà servers driven by Debian's headless Chromium through Playwright.

Helpers here, fixtures in conftest.py; run with `make test-browser`. Each server runs on a free port with a
temporary Jupyter config dir, serves a copy of the notebooks (Lab autosaves) and is always stopped, kernels
included. Screenshots go to build/screenshots/, server logs to build/browser-logs/.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
APP = NOTEBOOKS / "app.ipynb"  # the Voilà workshop dashboard (make app)
SCREENSHOTS = ROOT / "build" / "screenshots"
LOGS = ROOT / "build" / "browser-logs"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
LAB_SETTINGS = {  # no news pop-up, no update check, every cell attached to the DOM (no lazy windowing)
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}


def tool(name: str) -> str:
    """`jupyter` / `voila` next to the interpreter running pytest (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(config_dir: Path) -> dict:
    """The test's environment, fast mode on, with Jupyter's config and runtime state kept in `config_dir`."""
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config_dir), JUPYTER_RUNTIME_DIR=str(config_dir / "runtime"))
    for name in ("JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR", "MPLBACKEND"):
        env.pop(name, None)  # MPLBACKEND=Agg in a kernel turns every figure into text
    env.setdefault("LOSSREDUCE_FAST", "1")
    env.setdefault("LOSSREDUCE_THREADS", "1")
    for name, values in LAB_SETTINGS.items():
        path = config_dir / "lab" / "user-settings" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return env


def copy_notebooks(src: Path, dst: Path) -> Path:
    """Copy `src` to `dst` with every notebook cleared of outputs and widget state and set to the python3 kernel."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    for path in dst.glob("*.ipynb"):
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
        nb["metadata"].pop("widgets", None)
        nb["metadata"]["kernelspec"] = KERNELSPEC
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding="utf-8")
    return dst


class Server:
    """A server process in its own session; `stop` ends it and every process it started (kernels too)."""

    def __init__(self, name: str, argv: list, cwd: Path, env: dict, port: int):
        self.name, self.argv, self.cwd, self.env, self.port = name, argv, cwd, env, port
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{name}.log"
        self.proc = None

    def start(self, timeout: float = 60.0) -> "Server":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not listening on port {self.port} after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        """SIGTERM to the server and, at the same time, to its kernels (their state is disposable here); then
        SIGKILL whatever is still alive after a grace period. Only processes this server started are touched."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            processes = [psutil.Process(self.proc.pid)]
            processes += processes[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(processes, timeout=10)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=5)
        self.proc.wait(timeout=5)


@dataclass
class Lab:
    url: str
    token: str
    root: Path

    def notebook_url(self, name: str) -> str:
        """A fresh workspace per visit, so Lab restores no tabs from an earlier one."""
        return f"{self.url}/lab/workspaces/{uuid.uuid4().hex}/tree/{name}?reset&token={self.token}"


# Page helpers shared by the Lab and Voilà tests.

PROMPTS = "() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')].map(e => e.textContent)"
STARTED = f"() => ({PROMPTS})().some(t => /\\[(\\*|\\d+)\\]/.test(t))"
FINISHED = f"() => !({PROMPTS})().some(t => t.includes('*'))"
KERNEL_IDLE = """() => {
  const kernel = document.querySelector('.jp-Toolbar-kernelName');
  const status = document.querySelector('.jp-Notebook-ExecutionIndicator');
  return kernel && !kernel.textContent.includes('No Kernel') && status && status.dataset.status === 'idle';
}"""  # before the kernel starts the indicator already reads idle, next to "No Kernel"


def open_notebook(page, lab, name: str) -> None:
    """Open `name` in a fresh workspace and wait until its kernel is started and idle."""
    page.goto(lab.notebook_url(name))
    page.locator(".jp-Notebook .jp-CodeCell").first.wait_for()
    page.wait_for_function(KERNEL_IDLE, timeout=90_000)


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
    errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
    errors = [e for e in errors if "Traceback" in e or "Error" in e]
    if not_run or errors:
        pytest.fail(f"code cells {not_run} did not run; prompts {prompts}\n" + "\n".join(errors))


def shut_down_kernels(page, lab) -> None:
    """Free the notebook's kernel (~350 MB, and CPU) before the next notebook opens."""
    sessions = page.request.get(f"{lab.url}/api/sessions?token={lab.token}").json()
    for session in sessions:
        page.request.delete(f"{lab.url}/api/sessions/{session['id']}?token={lab.token}")



def image_src(output, settle_s: float = 1.0, timeout_s: float = 30.0) -> str:
    """The src (a data: or blob: URL) of the first image in an app's figures (or a widget Output) once drawn and unchanged for `settle_s`
    (a redraw still on its way from the kernel must not be taken for the effect of the next action)."""
    img = output.locator("img").first
    img.wait_for(state="visible", timeout=timeout_s * 1000)
    src, since, deadline = img.get_attribute("src"), time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() - since < settle_s:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the plot kept changing for {timeout_s:.0f} s")
        time.sleep(0.2)
        img.wait_for(state="visible", timeout=timeout_s * 1000)
        current = img.get_attribute("src")
        if current != src:
            src, since = current, time.monotonic()
    return src


def wait_for_new_image(output, old_src: str, timeout: float = 30_000) -> str:
    """Wait until the first image of `output` (an app's figures, a widget Output) differs from `old_src`."""
    from playwright.sync_api import expect

    img = output.locator("img").first
    expect(img).to_be_visible(timeout=timeout)
    expect(img).not_to_have_attribute("src", old_src, timeout=timeout)
    return img.get_attribute("src")


def nudge_slider(slider, pressed: list | None = None) -> tuple[str, str]:
    """Move an ipywidgets slider one step with the keyboard on its handle, as a user would; (old, new) value.
    The value is read from aria-valuetext (aria-valuenow is rounded: 0.25 reads "0.3"). The key press is repeated
    (up to 3 times) if a redraw took the focus away before it landed; `pressed`, if given, is set to the time of
    the press that landed."""
    from playwright.sync_api import expect

    handle = slider.locator(".noUi-handle").first
    old = handle.get_attribute("aria-valuetext")
    at_max = float(old) >= float(handle.get_attribute("aria-valuemax"))
    for attempt in range(3):
        handle.focus()
        if pressed is not None:
            pressed[:] = [time.monotonic()]
        handle.press("ArrowLeft" if at_max else "ArrowRight")
        try:
            expect(handle).not_to_have_attribute("aria-valuetext", old, timeout=3_000)
            break
        except AssertionError:
            if attempt == 2:
                raise
    return old, handle.get_attribute("aria-valuetext")


# Generic widget driving: every control of a cell is found, moved or clicked, and the cell's view must change.

CONTROLS = {  # kind -> CSS selector of one control (ipywidgets 8 DOM)
    "slider": ".widget-slider",
    "dropdown": ".widget-dropdown select",
    "toggle-buttons": ".widget-toggle-buttons",
    "checkbox": ".widget-checkbox input[type=checkbox]",
    "select-multiple": ".widget-select-multiple select",
    "button": "button.widget-button",
}
VIEW_SIGNATURE = """cell => {
  const hash = s => { let h = 2166136261; for (let i = 0; i < s.length; i += 7) h = Math.imul(h ^ s.charCodeAt(i), 16777619); return `${s.length}:${h >>> 0}`; };
  const images = [...cell.querySelectorAll('.app-figures img, .widget-output img, .jp-OutputArea-output img')].map(img => hash(img.src));
  const texts = [...cell.querySelectorAll('.widget-output, .widget-html, div.widget-label')].map(e => e.innerText);
  return JSON.stringify([images, texts]);
}"""  # what a reader sees change: the images (hashed) and the texts of outputs, HTML and label widgets
UPSCALED_FIGURES = """root => [...root.querySelectorAll('.app-figures img')]
  .filter(img => img.complete && img.naturalWidth > 0 && img.clientWidth > img.naturalWidth + 1)
  .map(img => `${img.clientWidth} px wide for ${img.naturalWidth} px`)"""  # an app's figure blown up: blurred
ERROR_TEXT = """cell => [...cell.querySelectorAll('.jp-OutputArea-output, .widget-html, .widget-label')]
  .map(e => e.innerText).filter(t => /Traceback|Error:|Exception|⚠/.test(t)).join('\\n')"""
READOUTS = """cell => [...cell.querySelectorAll('.widget-readout, select, input, .widget-toggle-button.mod-active')]
  .map(e => e.tagName === 'SELECT' ? [...e.selectedOptions].map(o => o.value).join(',')
  : e.tagName === 'BUTTON' ? e.innerText : e.type === 'checkbox' ? String(e.checked) : (e.value ?? e.innerText))
  .join('|')"""  # every control's value


LABEL = r"""e => { const box = e.closest('.widget-inline-hbox');
  const label = (box?.querySelector('.widget-label')?.innerText || '').replace(/\u200b/g, '').trim();
  return label || ((box || e).innerText || '').replace(/\u200b/g, '').trim().split('\n')[0]; }"""
# a control's name: its description, else (a checkbox, whose description sits after the box) the first line of text


@dataclass
class Control:
    kind: str
    locator: object  # a playwright Locator
    label: str  # kind and name, for messages: "slider 'long fraction'"
    name: str  # the description (a button: its text)


def controls_in(cell) -> list[Control]:
    """The enabled, visible controls of a cell, in DOM order of kinds (buttons last: they may train)."""
    found = []
    for kind, selector in CONTROLS.items():
        items = cell.locator(selector)
        for i in range(items.count()):
            item = items.nth(i)
            if not item.is_visible():
                continue
            if kind == "slider":
                disabled = item.locator(".noUi-target[disabled], .noUi-handle[disabled]").count() > 0
            elif kind == "toggle-buttons":
                disabled = item.locator("button:not([disabled]):not(.mod-active)").count() == 0
            else:
                disabled = item.is_disabled()
            if kind == "dropdown" and item.evaluate("s => s.options.length") < 2:
                continue  # one option: nothing a user can change here
            if disabled or (kind == "button" and "widget-toggle-button" in (item.get_attribute("class") or "")):
                continue
            label = item.evaluate(LABEL)
            found.append(Control(kind, item, f"{kind} '{label[:40]}'", label))
    return found


def operate(control: Control) -> float:
    """Change the control one step, as a user would: a slider by one key press, the next option of a menu, another
    toggle button, the checkbox flipped, one more option selected, the button clicked. Returns the time.monotonic()
    of the action that took effect (a slider's key press repeated after a lost focus counts from the last one)."""
    item, acted = control.locator, [time.monotonic()]
    if control.kind == "slider":
        nudge_slider(item, pressed=acted)
    elif control.kind == "dropdown":
        options = item.evaluate("s => [...s.options].map(o => o.value)")
        current = item.evaluate("s => s.value")
        item.select_option(options[(options.index(current) + 1) % len(options)])
    elif control.kind == "toggle-buttons":
        item.locator("button:not([disabled]):not(.mod-active)").first.click()
    elif control.kind == "checkbox":
        item.click()
    elif control.kind == "select-multiple":
        options = item.evaluate("s => [...s.options].map(o => [o.value, o.selected])")
        chosen = [v for v, selected in options if selected]
        extra = next((v for v, selected in options if not selected), None)
        item.select_option(chosen + [extra] if extra is not None else chosen[:-1])
    elif control.kind == "button":
        item.click()
    else:
        raise ValueError(control.kind)
    return acted[0]


ARM_TIMING = """cell => {
  window.__viewTiming = {cell, action: null, loads: []};
  if (!window.__viewTimingListening) {  // capture phase: before any widget handles the event
    window.__viewTimingListening = true;
    const acted = () => { const t = window.__viewTiming; if (t && t.action === null) t.action = performance.now(); };
    for (const type of ['keydown', 'input', 'change', 'click']) document.addEventListener(type, acted, true);
    document.addEventListener('load', e => { const t = window.__viewTiming;  // an image decoded, ready to paint
      if (t && t.action !== null && e.target.tagName === 'IMG' && t.cell.contains(e.target)) t.loads.push(performance.now());
    }, true);
  }
}"""  # the page's own clock: from the user's first input event to each new image of the cell loaded
READ_TIMING = """() => { const t = window.__viewTiming; window.__viewTiming = null;
  return t && t.action !== null && t.loads.length ? [(t.loads[0] - t.action) / 1000, (t.loads.at(-1) - t.action) / 1000] : null; }"""


def arm_timing(cell) -> None:
    """Start the in-page clock for the next action on `cell` (read by wait_for_view_change)."""
    cell.evaluate(ARM_TIMING)


def wait_for_view_change(page, cell, before: str, started: float, timeout_s: float, settle_s: float = 0.6,
                         busy=None) -> dict:
    """Wait until the cell's view changed from `before` — its images, when it shows images (a new headline alone is
    not the new view), else its texts — and then held still for `settle_s` (a redraw of several figures arrives in
    parts). `busy`: a button that is disabled while its work runs (a Train button): the view counts as settled only
    once it is enabled again (a training app redraws as it goes). Returns seconds to the first new image and to the
    last (the settled view): by the page's own clock, from the action's first input event to each image loaded, when
    arm_timing ran before the action; else (and always as polled_…) as polled from here, from `started`."""
    images_before = json.loads(before)[0]
    expect_image = bool(images_before) or cell.locator(".widget-output, .app-figures").count() > 0  # it will show one
    deadline = started + timeout_s
    current, first_image, last_change = before, None, None
    while time.monotonic() < deadline:
        now_sig = cell.evaluate(VIEW_SIGNATURE)
        now = time.monotonic()
        if now_sig != current:
            images = json.loads(now_sig)[0]
            if first_image is None and (images and images != images_before if expect_image else True):
                first_image = now
            current, last_change = now_sig, now
        elif first_image is not None and now - last_change >= settle_s and not (busy and busy.is_disabled()):
            polled = {"polled_first_image_s": round(first_image - started, 3),
                      "polled_settled_s": round(last_change - started, 3)}
            in_page = page.evaluate(READ_TIMING)  # None unless arm_timing ran and an image of the cell loaded
            if in_page is None:
                return {"first_image_s": polled["polled_first_image_s"], "settled_s": polled["polled_settled_s"]}
            return {"first_image_s": round(in_page[0], 3), "settled_s": round(in_page[1], 3), **polled}
        time.sleep(0.03)
    raise TimeoutError(f"the view did not {'settle' if first_image else 'change'} within {timeout_s:.0f} s")
