"""End to end: a widget refreshed live from a training cell, then replayed with the step slider.

A small CNN trains on real MNIST digits in a cell that calls ``w.record(step=i)`` every iteration.
While that cell is still running, the view must show newer and newer steps, drawn (the pushed layer
is in the browser before its revision), although every request of the view waits for the cell.
After the cell, the step slider moves the view to a recorded step and the kernel re-runs the model
with those weights. Screenshots (light and dark) go to ``artifacts/e2e/``.
"""

from __future__ import annotations

import re
import time

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

ITERATIONS = 300

SETUP = """\
import json, time
from pathlib import Path
import torch
import torch.nn.functional as F
import fmwidget
from fmwidget.models import DigitsCNN, load_mnist_split

torch.manual_seed(0)
torch.set_num_threads(1)
digits = load_mnist_split()
model = DigitsCNN(width=8)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
w = fmwidget.FeatureMapWidget(model.eval(), digits.test_x[:4], layer="features.relu1")

def dump(change=None):
    Path("state.json").write_text(json.dumps({"step": w.step, "revision": w.revision,
                                              "steps": len(w.steps)}))

w.observe(dump, names=["step", "revision", "steps"])
"""

TRAIN = f"""\
model.train()
for i in range({ITERATIONS}):
    batch = torch.randint(len(digits.train_x), (64,))
    optimizer.zero_grad()
    F.cross_entropy(model(digits.train_x[batch]), digits.train_y[batch]).backward()
    optimizer.step()
    w.record(step=i)
    time.sleep(0.03)
Path("done.json").write_text("{{}}")
"""


def _live_step(root_el) -> int | None:
    found = re.search(r"step (\d+) \(live\)", root_el.locator(".fm-step-label").inner_text())
    return None if found is None else int(found.group(1))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    with notebook_lab(tmp_path_factory, "live.ipynb", [SETUP, "w", TRAIN]) as served:
        yield served


def test_live_refresh_and_replay_in_jupyterlab(lab) -> None:
    url, root = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = open_notebook(browser, url, "live.ipynb", height=1400)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        run_cell(page, 0)
        run_cell(page, 1)
        page.wait_for_selector(".fmwidget[data-state='ready']", timeout=90_000)
        root_el = page.locator(".fmwidget")
        assert root_el.locator(".fm-step-row").is_hidden()
        run_cell(page, 2)

        # While the training cell runs: two different live steps, each drawn.
        seen: list[int] = []
        deadline = time.monotonic() + 60
        while len(set(seen)) < 2 and time.monotonic() < deadline:
            step = _live_step(root_el)
            if step is not None and root_el.get_attribute("data-state") == "ready":
                seen.append(step)
            page.wait_for_timeout(100)
        running = not (root / "done.json").exists()
        assert len(set(seen)) >= 2 and running, (seen, running)
        shot(root_el, "live-training.png")

        # After the cell: the last step is shown, and every recorded step is on the slider.
        wait_for_file_json(root / "done.json", lambda s: True, timeout=120)
        page.wait_for_function(
            "n => document.querySelector('.fm-step-label').textContent"
            ".includes(`step ${n} (live)`)",
            arg=ITERATIONS - 1,
            timeout=30_000,
        )
        state = wait_for_file_json(root / "state.json", lambda s: s["steps"] == ITERATIONS)
        slider = root_el.locator("input[aria-label='Training step']")
        assert slider.get_attribute("max") == str(ITERATIONS)

        # Replay: the slider's first position is step 0; the kernel re-runs at those weights.
        slider.focus()
        page.keyboard.press("Home")
        state = wait_for_file_json(
            root / "state.json", lambda s: s["step"] == 0 and s["revision"] > state["revision"]
        )
        page.wait_for_selector(".fmwidget[data-state='ready']")
        assert root_el.locator(".fm-step-label").inner_text().startswith("step 0 ·")
        page.wait_for_timeout(300)
        shot(root_el, "live-replay-light.png")

        switch_to_dark(page)
        page.wait_for_timeout(400)
        shot(root_el, "live-replay-dark.png")
        assert not errors, errors
        browser.close()
