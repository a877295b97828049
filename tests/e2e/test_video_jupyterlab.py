"""End to end: a video model (torchvision's r3d_18) in JupyterLab, moved through its clip.

The clip is a bright disc crossing a dark frame, so its feature maps move with it. The Frame slider
and its play button ask the kernel for other frames: each is a re-run of the model, and the grid,
the header's "frame k of T" and the kernel's ``w.frame`` must follow. Screenshots (light and dark)
go to ``artifacts/e2e/``.
"""

from __future__ import annotations

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

FRAMES = 8

SETUP = f"""\
import json
from pathlib import Path
import torch, torchvision
import fmwidget

torch.manual_seed(0)
torch.set_num_threads(1)
model = torchvision.models.video.r3d_18().eval()
t, y, x = torch.meshgrid(torch.arange({FRAMES}), torch.arange(48), torch.arange(48), indexing="ij")
disc = ((y - 24) ** 2 + (x - 6 - 5 * t) ** 2 < 64).float()
clip = torch.stack([disc, disc * 0.6, 1 - disc]).unsqueeze(0)  # (1, 3, T, 48, 48)
w = fmwidget.FeatureMapWidget(model, clip, layer="stem.2", colormap="viridis")

def dump(change=None):
    Path("state.json").write_text(json.dumps({{"frame": w.frame, "revision": w.revision}}))

w.observe(dump, names=["frame", "revision"])
dump()
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    with notebook_lab(tmp_path_factory, "video.ipynb", [SETUP, "w"]) as served:
        yield served


def test_video_frames_in_jupyterlab(lab) -> None:
    url, root = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = open_notebook(browser, url, "video.ipynb", height=1300)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        run_cell(page, 0)
        run_cell(page, 1)
        page.wait_for_selector(".fmwidget[data-state='ready']", timeout=90_000)
        root_el = page.locator(".fmwidget")
        bar = root_el.locator(".fm-frame-row")
        assert bar.is_visible()
        label = root_el.locator(".fm-frame-label")
        assert label.inner_text() == f"frame 0 of {FRAMES}"
        assert "frame 0 of 8" in root_el.locator(".fm-header").inner_text()

        # The keyboard on the slider: End is the last frame, and the kernel re-runs there.
        state = wait_for_file_json(root / "state.json", lambda s: s["frame"] == 0)
        slider = root_el.locator("input[aria-label='Video frame']")
        slider.focus()
        page.keyboard.press("End")
        state = wait_for_file_json(
            root / "state.json",
            lambda s: s["frame"] == FRAMES - 1 and s["revision"] > state["revision"],
        )
        page.wait_for_selector(".fmwidget[data-state='ready']")
        page.wait_for_function(
            "t => document.querySelector('.fm-frame-label').textContent === t",
            arg=f"frame {FRAMES - 1} of {FRAMES}",
        )
        assert f"frame {FRAMES - 1} of 8" in root_el.locator(".fm-header").inner_text()
        last = root_el.locator(".fm-stage canvas").first.screenshot()

        # Play: frames come one kernel run at a time, wrapping around to the start.
        root_el.locator(".fm-frame-play").click()
        wait_for_file_json(root / "state.json", lambda s: 1 <= s["frame"] <= 3, timeout=60)
        root_el.locator(".fm-frame-play").click()
        # Paused: the frame last asked for is the one the kernel ends on (a run may be in flight).
        page.wait_for_timeout(300)
        shown = int(label.inner_text().split()[1])
        wait_for_file_json(root / "state.json", lambda s: s["frame"] == shown)
        page.wait_for_selector(".fmwidget[data-state='ready']")
        assert label.inner_text() == f"frame {shown} of {FRAMES}"
        # The disc moved: the grid is another picture than at the last frame.
        assert root_el.locator(".fm-stage canvas").first.screenshot() != last
        shot(root_el, "video-light.png")

        switch_to_dark(page)
        page.wait_for_timeout(400)
        shot(root_el, "video-dark.png")
        assert not errors, errors
        browser.close()
