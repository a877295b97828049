"""End to end: a view saved with ``save_html`` opened from ``file://`` in Chromium, network off.

The widget is made in this process (no JupyterLab): the demo's MobileNetV2 on the chelsea photo,
with Grad-CAM computed for the shown layer. The saved page must draw the kernel's maps (tiles on
screen against the captured values, as the JupyterLab test checks them), step the slider, open a
channel and read a value equal to the dequantized 8-bit one, and ask for nothing outside the file.
Screenshots (light and dark) go to ``artifacts/e2e/``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from playwright import sync_api as playwright

from fmwidget import export, wire

from .lab import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from .pixels import canvas_picture, drawn_map, tile_on_screen, tile_origin

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory):
    import fmwidget

    w = fmwidget.demo()
    layers = [m["name"] for m in w.layers]
    # Grad-CAM of the shown layer, as the panel would have asked for it.
    fmwidget.router.serve(
        w,
        {
            "type": "request",
            "id": 1,
            "kind": "gradcam",
            "revision": 1,
            "layer": w.layer,
            "sample": 0,
        },
        1,
    )
    path = w.save_html(tmp_path_factory.mktemp("html") / "view.html")
    first = w.capture[layers[0]][0].float().cpu().numpy()
    yield path, layers, first
    w.close()


def _ready(page, layer: str) -> None:
    try:
        page.wait_for_selector(
            f".fmwidget[data-state='ready'][data-layer='{layer}']", timeout=30_000
        )
    except playwright.TimeoutError:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "html-failure.png"))
        raise AssertionError(
            f"the saved view never showed {layer}: {page.inner_text('body')[:500]}"
        ) from None


def test_saved_html_offline(saved) -> None:
    path, layers, first = saved
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    outside: list[str] = []
    errors: list[str] = []

    def route(r: playwright.Route) -> None:
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1400, "height": 1300}, color_scheme="light"
        )
        context.route("**/*", route)
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(path.resolve().as_uri())
        _ready(page, layers[0])
        root = page.locator(".fmwidget")
        assert re.fullmatch(r"Egyptian cat \d+%", root.locator(".fm-prediction").inner_text())
        root.screenshot(path=str(ARTIFACTS / "html-light.png"))

        # The picture: each tile is its channel's map in the per-channel gray scale.
        img, attrs = canvas_picture(page)
        c, h, w = first.shape
        for k in range(c):
            shown, want = tile_on_screen(img, attrs, k, first[k])
            corr = np.corrcoef(shown, want)[0, 1]
            assert corr > 0.98, f"tile {k} does not show channel {k} (correlation {corr:.3f})"

        # A channel: its value is the 8-bit one dequantized on the channel's range, and says so.
        tx, ty = tile_origin(attrs, 5)
        page.mouse.click(
            attrs["left"] + tx + attrs["tileWidth"] / 2, attrs["top"] + ty + attrs["tileHeight"] / 2
        )
        page.wait_for_selector("[aria-label='Channel detail'][data-state='ready']")
        detail = page.locator("[aria-label='Channel detail']")
        assert "8-bit" in detail.inner_text()
        big = detail.locator("canvas[aria-label='Channel map']")
        big.scroll_into_view_if_needed()
        box = big.bounding_box()
        left, top, dw, dh = drawn_map(box["width"], box["height"], w, h)
        page.mouse.move(box["x"] + left + dw * 0.37, box["y"] + top + dh * 0.61)
        text = detail.locator("[aria-label='Value']").inner_text()
        m = re.search(r"(\S+) at \(row (\d+), col (\d+)\) · from 8-bit data", text)
        assert m, text
        value, row, col = float(m.group(1)), int(m.group(2)), int(m.group(3))
        lo, hi = float(first[5].min()), float(first[5].max())
        q = wire.quantize(torch.from_numpy(first[5:6]), torch.tensor([lo]), torch.tensor([hi]))
        level = int(q[0, row, col])
        # The page dequantizes in double precision into a Float32Array.
        assert np.float32(value) == np.float32(lo + level / 254 * (hi - lo)), (text, level)
        assert abs(value - first[5, row, col]) <= (hi - lo) / 508 + 1e-6
        page.screenshot(path=str(ARTIFACTS / "html-light-detail.png"), full_page=True)
        page.keyboard.press("Escape")

        # The slider steps over the saved layers.
        slider = page.locator("input[type='range'][aria-label='Layer']")
        # The default: the shown (first) layer and the nearest others, here the four after it.
        assert slider.evaluate("s => Number(s.max)") + 1 == export.DEFAULT_LAYERS
        slider.focus()
        page.keyboard.press("ArrowRight")
        _ready(page, layers[1])

        # Dark, following the OS.
        page.emulate_media(color_scheme="dark")
        page.keyboard.press("ArrowLeft")
        _ready(page, layers[0])
        page.get_by_role("checkbox", name="Grad-CAM").check()
        page.wait_for_selector("[aria-label='Grad-CAM panel'][data-state='ready']")
        root.screenshot(path=str(ARTIFACTS / "html-dark.png"))
        bg = root.evaluate("e => getComputedStyle(e).backgroundColor")
        assert bg != "rgb(255, 255, 255)", bg
        browser.close()
    assert outside == [], f"the saved page asked for {outside}"
    assert errors == [], errors
