"""Fixtures for the real-browser tests (`make test-browser`): Chromium, a JupyterLab server, a Voilà server."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from harness import (
    APP,
    CHROMIUM,
    CHROMIUM_ARGS,
    NOTEBOOKS,
    ROOT,
    SCREENSHOTS,
    Lab,
    Server,
    copy_notebooks,
    free_port,
    server_env,
    tool,
)


def pytest_collection_modifyitems(config, items):
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            reason = "python playwright not installed: pip install -e '.[dev]'"
    if reason:
        for item in items:
            if "browser" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """JupyterLab serving a clean copy of notebooks/."""
    tmp = tmp_path_factory.mktemp("lab")
    root = copy_notebooks(NOTEBOOKS, tmp / "notebooks")
    token, port = secrets.token_hex(16), free_port()
    argv = [tool("jupyter"), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    server = Server("jupyterlab", argv, root, server_env(tmp / "config"), port).start()
    try:
        yield Lab(f"http://127.0.0.1:{port}", token, root)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def voila_app(tmp_path_factory):
    """Voilà serving notebooks/app.ipynb as `make app` does; yields the app's URL."""
    tmp = tmp_path_factory.mktemp("voila")
    port = free_port()
    argv = [tool("voila"), str(APP.relative_to(ROOT)), "--no-browser", f"--port={port}",
            "--Voila.ip=127.0.0.1"]
    server = Server("voila", argv, ROOT, server_env(tmp / "config"), port).start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.stop()


