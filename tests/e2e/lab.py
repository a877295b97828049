"""A real JupyterLab for end-to-end tests: a server on a free port, Chromium via Playwright."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
from playwright.sync_api import Browser, Locator, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
#: Where the end-to-end tests put their screenshots (looked at by people, kept by CI).
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "e2e"
# Flags for Debian's Chromium, headless, as root, on a closed network; shared with vitest.config.ts.
CHROMIUM_ARGS: list[str] = json.loads(
    (Path(__file__).resolve().parents[1] / "chromium-args.json").read_text()
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_notebook(path: Path, cells: list[str]) -> None:
    """Write a notebook whose kernelspec names python3, so it opens without a kernel prompt."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nbformat.write(nb, path)


@contextlib.contextmanager
def jupyter_lab(root: Path, settings_dir: Path, app: str = "jupyterlab") -> Iterator[str]:
    """Start JupyterLab (or ``app="notebook"``: Notebook 7) serving ``root``; yield its base URL;
    stop it afterwards."""
    port = _free_port()
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings_dir))
    # Silence the "Jupyter news" toast, which can cover the page.
    news = settings_dir / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    cmd = [
        sys.executable,
        "-m",
        app,
        "--no-browser",
        f"--port={port}",
        "--ServerApp.token=",
        "--ServerApp.password=",
        "--ServerApp.disable_check_xsrf=True",
        "--allow-root",
        f"--ServerApp.root_dir={root}",
    ]
    log = open(root / "jupyter.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{app} exited: {(root / 'jupyter.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{app} did not start within 90 s") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def wait_for_file_json(path: Path, predicate, timeout: float = 60.0) -> dict:
    """Poll a JSON file the kernel writes until ``predicate(data)`` holds; return the data."""
    deadline = time.monotonic() + timeout
    last: dict | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            last = json.loads(path.read_text())
            if predicate(last):
                return last
        time.sleep(0.2)
    raise AssertionError(f"{path.name} never satisfied the condition; last content: {last}")


def open_notebook(
    browser: Browser,
    url: str,
    name: str,
    width: int = 1600,
    height: int = 1500,
    path: str = "doc/tree",
) -> Page:
    """A page on notebook ``name`` (JupyterLab's single-document view; ``path="notebooks"`` for
    Notebook 7), once its kernel is idle."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(f"{url}/{path}/{name}")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    return page


def run_cell(page: Page, index: int) -> None:
    """Run a cell as a user does (click, Shift+Enter); retry if the kernel was not listening yet."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    prompt = cell.locator(".jp-InputPrompt")
    for _ in range(3):
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        try:
            page.wait_for_function(
                "p => p.textContent.trim() !== '[ ]:'", arg=prompt.element_handle(), timeout=10_000
            )
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"cell {index} never started running")


def shot(locator: Locator, name: str) -> None:
    """A screenshot of ``locator`` into ARTIFACTS (looked at by people, not compared)."""
    locator.screenshot(path=str(ARTIFACTS / name))


def switch_to_dark(page: Page) -> None:
    """JupyterLab's dark theme, switched live from its Settings menu as a user does, once the
    widget has drawn again."""
    page.get_by_role("menuitem", name="Settings").click()
    page.get_by_text("Theme", exact=True).hover()
    page.get_by_text("JupyterLab Dark", exact=True).click()
    page.wait_for_function("document.body.dataset.jpThemeLight === 'false'")
    page.wait_for_selector(".fmwidget[data-state='ready']")


@contextlib.contextmanager
def notebook_lab(tmp_path_factory, name: str, cells: list[str]) -> Iterator[tuple[str, Path]]:
    """A JupyterLab serving one notebook ``name`` made of ``cells`` in a fresh folder: yields the
    server's URL and the folder (where the kernel writes the files a test reads)."""
    root = tmp_path_factory.mktemp(Path(name).stem)
    write_notebook(root / name, cells)
    with jupyter_lab(root, tmp_path_factory.mktemp("settings")) as url:
        yield url, root
