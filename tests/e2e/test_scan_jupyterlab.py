"""End to end: a widget with a dataset scan in a real JupyterLab (Playwright, Debian's Chromium).

The shipped MNIST CNN scans 200 held-out digits; the widget shows one. Opening a channel lists its
top dataset examples with the kernel's values; picking a class sets ``scan_label``; clicking the
best example makes that digit the kernel's input. Screenshots (light and dark) go to
``artifacts/e2e/``.
"""

from __future__ import annotations

import json

import pytest
from playwright import sync_api as playwright

from .lab import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    notebook_lab,
    open_notebook,
    run_cell,
    shot,
    switch_to_dark,
    wait_for_file_json,
)

pytestmark = pytest.mark.e2e

LAYER = "features.relu2"
CHANNEL = 2

SETUP = f"""\
import json
from pathlib import Path
from torch.utils.data import TensorDataset
import fmwidget
from fmwidget.demo import load_mnist_cnn
from fmwidget.models import load_mnist_split

model = load_mnist_cnn()
digits = load_mnist_split()
ds = TensorDataset(digits.test_x[:200], digits.test_y[:200])
s = fmwidget.scan(model, ds, k=9, progress=False)
w = fmwidget.FeatureMapWidget(model, ds[0][0][None], scan=s, dataset=ds)
w.layer = {LAYER!r}
top = s.top({LAYER!r}, {CHANNEL})
Path("expected.json").write_text(json.dumps({{
    "values": [t.value for t in top],
    "indices": [t.index for t in top],
    "sums": [float(ds[t.index][0].sum()) for t in top],
}}))
WATCHED = ["channel", "revision", "scan_label", "scan_pair"]

def dump(change=None):
    state = {{name: getattr(w, name) for name in WATCHED}}
    state["input_sum"] = float(w.inputs.sum())
    Path("state.json").write_text(json.dumps(state))

w.observe(dump, names=WATCHED)
dump()
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    with notebook_lab(tmp_path_factory, "scan.ipynb", [SETUP, "w"]) as served:
        yield served


def test_dataset_examples_in_jupyterlab(lab) -> None:
    url, root = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = open_notebook(browser, url, "scan.ipynb", height=1700)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        run_cell(page, 0)
        run_cell(page, 1)
        try:
            page.wait_for_selector(
                f".fmwidget[data-state='ready'][data-layer='{LAYER}']", timeout=90_000
            )
        except playwright.TimeoutError:
            page.screenshot(path=str(ARTIFACTS / "scan-failure.png"))
            raise
        expected = json.loads((root / "expected.json").read_text())
        state = wait_for_file_json(root / "state.json", lambda s: True)
        root_el = page.locator(".fmwidget")
        # The dataset bar and the header speak of the scan.
        assert "200 images" in root_el.locator(".fm-scanbar").inner_text()
        assert "across 200 images" in root_el.locator(".fm-health").inner_text()

        # Open a channel by clicking its tile (channel order: tile k is channel k).
        canvas = page.locator("canvas[aria-label='Feature maps']")
        attrs = canvas.evaluate("c => Object.fromEntries(Object.entries(c.dataset))")
        box = canvas.bounding_box()
        col, row = CHANNEL % int(attrs["columns"]), CHANNEL // int(attrs["columns"])
        page.mouse.click(
            box["x"] + (col + 0.5) * float(attrs["cellWidth"]),
            box["y"] + (row + 0.5) * float(attrs["cellHeight"]),
        )
        wait_for_file_json(root / "state.json", lambda s: s["channel"] == CHANNEL)
        section = page.locator("[aria-label='Dataset examples']")
        page.wait_for_selector("[aria-label='Dataset examples'][data-state='ready']")
        values = [float(v) for v in section.locator(".fm-example-value").all_inner_texts()]
        assert values == pytest.approx(expected["values"], rel=5e-3)
        metas = section.locator(".fm-example-meta").all_inner_texts()
        assert [int(m.split(" ")[0].lstrip("#")) for m in metas] == expected["indices"]
        assert section.locator("canvas.fm-example-crop").count() == len(expected["values"])
        caption = section.locator(".fm-caption").inner_text()
        assert caption == "top 9 of 200 images; ring = where the channel peaks"

        # A class: the kernel's scan_label follows, and the tiles get selectivity badges.
        page.locator("select[aria-label='Dataset class']").select_option("3")
        wait_for_file_json(root / "state.json", lambda s: s["scan_label"] == "3")
        page.wait_for_function(
            "() => document.querySelector('.fm-scanbar').innerText.includes('most selective')"
        )
        page.wait_for_selector(".fmwidget[data-state='ready']")

        # A group audit: picking the first group pairs it with another label; each group's row shows
        # its count and pictures of its example images (one `pictures` request).
        page.locator("select[aria-label='First dataset group']").select_option("3")
        after_pair = wait_for_file_json(root / "state.json", lambda s: len(s["scan_pair"]) == 2)
        assert after_pair["scan_pair"][0] == "3"
        groups = page.locator("[aria-label='Dataset group examples']")
        page.wait_for_selector("[aria-label='Dataset group examples'][data-state='ready']")
        rows = groups.locator(".fm-scan-group-row")
        assert rows.count() == 2
        assert rows.first.locator(".fm-scan-group-label").inner_text() == "3"
        thumbs = groups.locator("canvas[aria-label^='Dataset image #']")
        assert 2 <= thumbs.count() <= 16
        assert rows.first.locator("canvas").first.get_attribute("title").endswith(" · 3")
        assert groups.locator(".fm-error-text").count() == 0
        section.scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        shot(root_el, "scan-light.png")

        # The best example becomes the kernel's input: a new revision, the digit's pixels.
        section.locator("button.fm-example-button").first.click()
        after = wait_for_file_json(root / "state.json", lambda s: s["revision"] > state["revision"])
        assert after["input_sum"] == pytest.approx(expected["sums"][0], rel=1e-5)
        page.wait_for_selector("[aria-label='Dataset examples'][data-state='ready']")
        page.wait_for_selector("[aria-label='Channel detail'][data-state='ready']")
        assert section.locator(".fm-examples-message").inner_text() == ""

        # Dark theme, switched live from JupyterLab's menu.
        switch_to_dark(page)
        page.wait_for_timeout(400)
        shot(root_el, "scan-dark.png")
        assert not errors, errors
        browser.close()
