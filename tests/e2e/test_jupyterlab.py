"""End to end: the demo widget in a real JupyterLab, driven by Playwright in Debian's Chromium.

One JupyterLab session walks through what a user does: run the notebook, see the grid, check the
picture against the kernel's numbers, click a tile, read a value, move the slider, drive the view
from Python, switch to the dark theme. Screenshots (light and dark) go to ``artifacts/e2e/``.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from playwright import sync_api as playwright

from .lab import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    notebook_lab,
    open_notebook,
    run_cell,
    wait_for_file_json,
    write_notebook,
)
from .pixels import canvas_picture, drawn_map, tile_on_screen, tile_origin

pytestmark = pytest.mark.e2e


SETUP = """\
import json
from pathlib import Path
import numpy as np
import fmwidget

w = fmwidget.demo()   # MobileNetV2 with its ImageNet weights, on the chelsea photo
first = w.layer
np.save("first.npy", w.capture[first][0].float().cpu().numpy())
Path("layers.json").write_text(json.dumps([m["name"] for m in w.layers]))

Path("predictions.json").write_text(json.dumps(w.predictions))
WATCHED = ["layer", "channel", "sample", "colormap", "gradcam", "target", "selected", "ablation"]

def dump(change=None):
    Path("state.json").write_text(json.dumps({name: getattr(w, name) for name in WATCHED}))

w.observe(dump, names=WATCHED)
dump()
"""

DRIVE = """\
w.layer = "features.2.conv.0.0"
w.channel = 3
"""


def _ready(page, timeout: float = 90_000) -> None:
    try:
        page.wait_for_selector(".fmwidget[data-state='ready']", timeout=timeout)
    except playwright.TimeoutError:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "failure.png"))
        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
        raise AssertionError(f"the widget never became ready; cell outputs: {outputs}") from None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    with notebook_lab(tmp_path_factory, "e2e.ipynb", [SETUP, "w", DRIVE]) as served:
        yield served


def test_widget_in_jupyterlab(lab) -> None:
    url, root = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = open_notebook(browser, url, "e2e.ipynb")
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # Run the set-up cell and the display cell.
        run_cell(page, 0)
        run_cell(page, 1)
        _ready(page)
        layers = json.loads((root / "layers.json").read_text())
        first = np.load(root / "first.npy")  # (C, H, W) of the first layer, sample 0
        state = wait_for_file_json(root / "state.json", lambda s: True)
        assert state["layer"] == layers[0]
        assert not page.locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        ).count()

        root_el = page.locator(".fmwidget")
        # The demo says what the model sees: its top class and probability, in the header.
        assert re.fullmatch(r"Egyptian cat \d+%", root_el.locator(".fm-prediction").inner_text())
        root_el.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "light.png"))
        root_el.screenshot(path=str(ARTIFACTS / "widget-light.png"))

        # The picture: each tile is its channel's map in the per-channel gray scale (bright = high),
        # sampled nearest-neighbour, so on screen it equals the kernel's values sampled alike.
        img, attrs = canvas_picture(page)
        c, h, w = first.shape
        assert int(attrs["columns"]) * int(attrs["rows"]) >= c
        for k in range(c):
            shown, want = tile_on_screen(img, attrs, k, first[k])
            corr = np.corrcoef(shown, want)[0, 1]
            assert corr > 0.98, f"tile {k} does not show channel {k} (correlation {corr:.3f})"
            # The brightest pixel on screen is where the kernel's maximum (outside the label) is.
            hi = want.max() - (first[k].max() - first[k].min()) / 254
            assert want[np.argmax(shown)] >= hi, f"tile {k}: brightest pixel is not the max"

        # Click a tile: the kernel's `channel` follows; the readout shows the kernel's exact value.
        tx, ty = tile_origin(attrs, 5)
        page.mouse.click(
            attrs["left"] + tx + attrs["tileWidth"] / 2, attrs["top"] + ty + attrs["tileHeight"] / 2
        )
        wait_for_file_json(root / "state.json", lambda s: s["channel"] == 5)
        detail = page.locator("[aria-label='Channel detail']")
        detail.wait_for(state="visible")
        page.wait_for_selector("[aria-label='Channel detail'][data-state='ready']")
        big = detail.locator("canvas[aria-label='Channel map']")
        big.scroll_into_view_if_needed()
        box = big.bounding_box()
        # In the big map, the screen is at its brightest where the kernel says the channel's max is.
        # Measured on the drawn map, wherever the layout puts it inside the element.
        shot = np.asarray(Image.open(io.BytesIO(big.screenshot())).convert("L")).astype(float)
        left, top, dw, dh = drawn_map(shot.shape[1], shot.shape[0], w, h)
        drawn = shot[round(top) : round(top + dh), round(left) : round(left + dw)]
        r, cc = np.unravel_index(np.argmax(first[5]), (h, w))
        y, x = int((r + 0.5) * drawn.shape[0] / h), int((cc + 0.5) * drawn.shape[1] / w)
        assert drawn[y, x] == drawn.max() >= 250, (drawn[y, x], drawn.max())
        left, top, dw, dh = drawn_map(box["width"], box["height"], w, h)
        page.mouse.move(box["x"] + left + dw * 0.37, box["y"] + top + dh * 0.61)
        text = detail.locator("[aria-label='Value']").inner_text()
        m = re.search(r"(\S+) at \(row (\d+), col (\d+)\)", text)
        assert m, text
        value, row, col = float(m.group(1)), int(m.group(2)), int(m.group(3))
        assert np.float32(value) == first[5, row, col], (text, first[5, row, col])
        page.screenshot(path=str(ARTIFACTS / "light-detail.png"))
        # How is this computed: the hover explains that pixel of the first conv (3×3, stride 2,
        # padding 1); the Σ line ends in the value read out, and its receptive field is boxed.
        page.wait_for_selector("[aria-label='How is this computed?'][data-state='ready']")
        panel = detail.locator("[aria-label='How is this computed?']")
        sum_line = panel.locator("[aria-label='Sum']").inner_text()
        assert sum_line.startswith("Σ 27 products") and sum_line.endswith(f"= {m.group(1)}"), (
            sum_line,
            text,
        )
        field = detail.locator("[aria-label='Receptive field']")
        assert field.is_visible()
        box = [int(v) for v in (field.get_attribute("data-box") or "").split(",")]
        assert box == [max(0, 2 * row - 1), max(0, 2 * col - 1), 2 * row + 2, 2 * col + 2], box
        panel.scroll_into_view_if_needed()
        detail.screenshot(path=str(ARTIFACTS / "light-explain.png"))
        page.keyboard.press("Escape")
        wait_for_file_json(root / "state.json", lambda s: s["channel"] is None)

        # The slider: one step right moves the kernel's `layer`.
        slider = page.locator("input[type='range'][aria-label='Layer']")
        slider.focus()
        page.keyboard.press("ArrowRight")
        wait_for_file_json(root / "state.json", lambda s: s["layer"] == layers[1])
        _ready(page)

        # Python drives the view: layer and channel set in a cell show up in the browser.
        run_cell(page, 2)
        page.wait_for_selector("[aria-label='Channel detail'][data-state='ready']")
        assert page.locator(".fmwidget").inner_text().count("features.2.conv.0.0") >= 1
        assert slider.evaluate("s => Number(s.value)") == layers.index("features.2.conv.0.0")

        # Before/after the activation: step to the BatchNorm after that conv, then to its ReLU6.
        slider.focus()
        page.keyboard.press("ArrowRight")
        wait_for_file_json(root / "state.json", lambda s: s["layer"] == "features.2.conv.0.1")
        _ready(page)
        page.get_by_role("button", name="after ReLU6 →").click()
        wait_for_file_json(
            root / "state.json",
            lambda s: s["layer"] == "features.2.conv.0.2" and s["channel"] == 3,
        )
        _ready(page)

        # Grad-CAM: open the panel, pick the second-ranked class; the kernel sees the choice, and
        # the heatmap follows the layer slider.
        predictions = json.loads((root / "predictions.json").read_text())[0]
        page.get_by_role("checkbox", name="Grad-CAM").check()
        wait_for_file_json(root / "state.json", lambda s: s["gradcam"] is True)
        panel_ready = "[aria-label='Grad-CAM panel'][data-state='ready']"
        page.wait_for_selector(panel_ready)
        panel = page.locator("[aria-label='Grad-CAM panel']")
        assert "features.2.conv.0.2" in panel.inner_text()
        second = predictions[1]
        panel.locator("select[aria-label='Class']").select_option(value=str(second["index"]))
        wait_for_file_json(root / "state.json", lambda s: s["target"] == second["index"])
        page.wait_for_function(
            "label => document.querySelector(\"[aria-label='Grad-CAM panel']\").innerText"
            ".includes(label)",
            arg=second["label"],
        )
        slider.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "name => document.querySelector(\"[aria-label='Grad-CAM panel']\").innerText"
            ".includes(name)",
            arg=layers[layers.index("features.2.conv.0.2") + 1],
        )
        page.wait_for_selector(panel_ready)
        root_el.screenshot(path=str(ARTIFACTS / "widget-light-gradcam.png"))

        # Act on channels: shift-click two tiles (the kernel reads the selection), ablate them, and
        # the view says how the prediction changed.
        ablated_layer = layers[layers.index("features.2.conv.0.2") + 1]
        grid = page.locator("canvas[aria-label='Feature maps']")
        for k, want in ((2, [2]), (4, [2, 4])):
            # Selecting shows the ablation bar above the grid, which moves it: measure each time.
            grid.scroll_into_view_if_needed()
            geo = grid.evaluate(
                "c => Object.fromEntries(Object.entries(c.dataset).map(([k, v]) => [k, +v]))"
            )
            box = grid.bounding_box()
            tx, ty = tile_origin(geo, k)
            page.keyboard.down("Shift")
            page.mouse.click(
                box["x"] + tx + geo["tileWidth"] / 2, box["y"] + ty + geo["tileHeight"] / 2
            )
            page.keyboard.up("Shift")
            wait_for_file_json(root / "state.json", lambda s, want=want: s["selected"] == want)
        wait_for_file_json(root / "state.json", lambda s: s["selected"] == [2, 4])
        page.get_by_role("button", name="Ablate selected").click()
        result = wait_for_file_json(root / "state.json", lambda s: s["ablation"] is not None)
        assert result["ablation"]["layer"] == ablated_layer
        assert result["ablation"]["channels"] == [2, 4]
        page.wait_for_function(
            "() => document.querySelector('.fmwidget').innerText.includes('Zeroed channels 2, 4')"
        )

        # Score-CAM is slow: the picker says so beforehand, the banner shows its progress while
        # the kernel works on the last layer (1,280 channels), and Cancel stops it.
        back_to = json.loads((root / "state.json").read_text())["layer"]
        slider.focus()
        page.keyboard.press("End")
        wait_for_file_json(root / "state.json", lambda s: s["layer"] == layers[-1])
        method = panel.locator("select[aria-label='CAM method']")
        option = method.locator("option[value='scorecam']").inner_text()
        assert "slow" in option and "1,280" in option, option
        method.select_option(value="scorecam")
        job = page.locator("[aria-label='Kernel job']")
        page.wait_for_function(
            "() => document.querySelector(\"[aria-label='Kernel job']\")?.innerText"
            ".includes('Score-CAM on')",
            timeout=60_000,
        )
        root_el.screenshot(path=str(ARTIFACTS / "widget-light-scorecam.png"))
        job.get_by_role("button", name="Cancel").click()
        page.wait_for_selector(
            "[aria-label='Grad-CAM panel'][data-state='cancelled']", timeout=60_000
        )
        assert "cancelled" in panel.inner_text()
        job.wait_for(state="hidden", timeout=60_000)
        method.select_option(value="gradcam")
        slider.evaluate(
            "(s, i) => { s.value = String(i);"
            " s.dispatchEvent(new Event('input', {bubbles: true}));"
            " s.dispatchEvent(new Event('change', {bubbles: true})); }",
            layers.index(back_to),
        )
        wait_for_file_json(root / "state.json", lambda s: s["layer"] == back_to)
        page.wait_for_selector(panel_ready)

        # Dark theme, switched live from JupyterLab's menu.
        light_bg = root_el.evaluate("e => getComputedStyle(e).backgroundColor")
        page.get_by_role("menuitem", name="Settings").click()
        page.get_by_text("Theme", exact=True).hover()
        page.get_by_text("JupyterLab Dark", exact=True).click()
        page.wait_for_function("document.body.dataset.jpThemeLight === 'false'")
        page.wait_for_function(
            "bg => getComputedStyle(document.querySelector('.fmwidget')).backgroundColor !== bg",
            arg=light_bg,
        )
        _ready(page)
        page.wait_for_timeout(300)
        root_el.screenshot(path=str(ARTIFACTS / "widget-dark-detail.png"))
        # The explanation panel in the dark theme, for the layer the channel view shows now.
        big = detail.locator("canvas[aria-label='Channel map']")
        big.scroll_into_view_if_needed()
        box = big.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
        page.wait_for_selector("[aria-label='How is this computed?'][data-state='ready']")
        assert detail.locator("[aria-label='Receptive field']").is_visible()
        detail.screenshot(path=str(ARTIFACTS / "dark-explain.png"))
        page.get_by_role("button", name="Close channel view").click()
        wait_for_file_json(root / "state.json", lambda s: s["channel"] is None)
        page.wait_for_timeout(300)
        root_el.screenshot(path=str(ARTIFACTS / "widget-dark.png"))
        assert not errors, errors
        browser.close()


GROUPS_AND_COMPARE = """\
import copy
import json
from pathlib import Path

import numpy as np
import torch

import fmwidget
from fmwidget.demo import load_mobilenet_v2, preprocess

model, _ = load_mobilenet_v2()
shown = [preprocess(name) for name in ["chelsea", "coffee", "astronaut", "rocket"]]
x = torch.cat([s[0] for s in shown])
pictures = np.stack([s[1] for s in shown])
groups = ["living", "object", "living", "object"]
g = fmwidget.FeatureMapWidget(model, x, image=pictures, groups=groups, layer="features.16.conv.2")
tuned = copy.deepcopy(model)
with torch.no_grad():
    tuned.features[0][0].weight.mul_(0.5)
view = fmwidget.compare(model, tuned, x[:1], image=pictures[:1], names=("MobileNetV2", "halved"))
view.show_difference()
WATCHED = {"g": g, "a": view.a, "b": view.b}

def dump(change=None):
    Path("state2.json").write_text(json.dumps({
        key: {"layer": v.layer, "sample": v.sample, "sort": v.sort, "view": v.view}
        for key, v in WATCHED.items()
    }))

for v in WATCHED.values():
    v.observe(dump, names=["layer", "sample", "sort", "view"])
dump()
"""


def test_groups_and_compare_in_jupyterlab(lab) -> None:
    url, root = lab
    write_notebook(root / "e2e2.ipynb", [GROUPS_AND_COMPARE, "g", "view"])
    state = root / "state2.json"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = open_notebook(browser, url, "e2e2.ipynb")
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        for index in range(3):
            run_cell(page, index)
        roots = page.locator(".fmwidget")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.fmwidget')].length === 4 && "
            "[...document.querySelectorAll('.fmwidget')].every(e => e.dataset.state === 'ready')",
            timeout=90_000,
        )
        wait_for_file_json(state, lambda s: True)

        # Groups: sort by effect size, then jump to an example of the other group.
        g = roots.nth(0)
        g.locator("select[aria-label='Sort tiles']").select_option("effect")
        wait_for_file_json(state, lambda s: s["g"]["sort"] == "effect")
        assert "living vs object" in g.inner_text()
        g.get_by_role("button", name="example of object").click()
        wait_for_file_json(state, lambda s: s["g"]["sample"] in (1, 3))
        g.screenshot(path=str(ARTIFACTS / "widget-groups.png"))

        # Compare: zoom one grid and the other follows (jslink in the browser); a layer step on one
        # moves the other.
        a, b = roots.nth(1), roots.nth(2)
        a.scroll_into_view_if_needed()
        box = a.locator("canvas[aria-label='Feature maps']").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -400)
        zoomed = wait_for_file_json(
            state, lambda s: s["a"]["view"]["zoom"] > 1 and s["b"]["view"] == s["a"]["view"]
        )
        assert zoomed["b"]["view"]["zoom"] > 1
        a.locator("input[type='range'][aria-label='Layer']").focus()
        page.keyboard.press("ArrowRight")
        moved = wait_for_file_json(
            state,
            lambda s: s["a"]["layer"] != "features.0.0" and s["b"]["layer"] == s["a"]["layer"],
        )
        page.wait_for_function(
            "name => [...document.querySelectorAll('.fmwidget')].slice(1)"
            ".every(e => e.dataset.state === 'ready' && e.dataset.layer === name)",
            arg=moved["a"]["layer"],
        )
        page.locator(".jp-OutputArea-output").nth(1).screenshot(path=str(ARTIFACTS / "compare.png"))
        assert b.get_attribute("data-layer") == moved["a"]["layer"]

        # Restart the kernel from JupyterLab's menu: every view says it can no longer update.
        page.get_by_role("menuitem", name="Kernel").click()
        page.get_by_text("Restart Kernel…", exact=True).click()
        page.get_by_role("button", name="Confirm Kernel Restart").click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.fmwidget')]"
            ".every(e => e.dataset.kernel === 'gone')"
        )
        assert "run its cell again" in g.locator(".fm-banner").inner_text()
        assert not errors, errors
        browser.close()
