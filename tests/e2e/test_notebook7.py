"""End to end, smoke: the widget in Notebook 7 (the `notebook` package), not only JupyterLab.

The demo runs, the grid is drawn, and a click on a tile reaches the kernel.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright import sync_api as playwright

from .lab import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    jupyter_lab,
    open_notebook,
    run_cell,
    wait_for_file_json,
    write_notebook,
)

pytestmark = pytest.mark.e2e


SETUP = """\
import json
from pathlib import Path
import fmwidget

w = fmwidget.demo()
w.observe(lambda change: Path("state.json").write_text(json.dumps({"channel": w.channel})),
          names=["channel"])
w
"""


def test_widget_in_notebook_7(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    write_notebook(tmp_path / "nb7.ipynb", [SETUP])
    with (
        jupyter_lab(tmp_path, tmp_path / "settings", app="notebook") as url,
        playwright.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = open_notebook(browser, url, "nb7.ipynb", path="notebooks")
        run_cell(page, 0)
        page.wait_for_selector(".fmwidget[data-state='ready']", timeout=90_000)
        canvas = page.locator("canvas[aria-label='Feature maps']")
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        width = float(canvas.get_attribute("data-cell-width"))
        height = float(canvas.get_attribute("data-cell-height"))
        # The middle of tile 1 (second in the first row): the kernel's channel becomes 1.
        page.mouse.click(box["x"] + 1.5 * width, box["y"] + 0.5 * height)
        wait_for_file_json(tmp_path / "state.json", lambda s: s["channel"] == 1)
        page.screenshot(path=str(ARTIFACTS / "notebook7.png"))
        browser.close()
