"""Frame rate of the grid while zooming and panning 2048 tiles, in a real JupyterLab in Chromium.

Shows a layer of 2048 channels of 7×7 (ResNet-50's last stage) built with
``FeatureMapWidget.from_activations``, then drives the grid for a few seconds with one wheel or drag
step per animation frame, and reports the frame intervals the page saw, next to the same measurement
on an idle page (the browser's own frame pacing) in the same run.

On this project's CPU machines Chromium draws WebGL with SwiftShader (software), so the figure there
says what the CPU can do; run it on a machine with a GPU and a browser for the real-GPU target.

    .venv/bin/python benchmarks/grid_fps.py [--seconds 4] [--channels 2048]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.lab import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    jupyter_lab,
    open_notebook,
    run_cell,
    write_notebook,
)

FRAMES_JS = """
async ({ seconds, drive }) => {
  const canvas = document.querySelector(".fmwidget canvas[aria-label='Feature maps']");
  const box = canvas.getBoundingClientRect();
  const intervals = [];
  let last = performance.now();
  const end = last + seconds * 1000;
  let i = 0;
  while (performance.now() < end) {
    if (drive) {
      const x = box.left + box.width * (0.3 + 0.4 * Math.abs(Math.sin(i / 40)));
      const y = box.top + box.height * 0.5;
      // Zoom in and out around a moving point: every frame re-draws all visible tiles.
      canvas.dispatchEvent(new WheelEvent("wheel", {
        deltaY: Math.sin(i / 15) * 40, clientX: x, clientY: y, bubbles: true, cancelable: true }));
    }
    await new Promise((r) => requestAnimationFrame(r));
    const now = performance.now();
    intervals.push(now - last);
    last = now;
    i++;
  }
  return { intervals, backend: canvas.dataset.backend };
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--channels", type=int, default=2048)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    setup = (
        "import torch, fmwidget\n"
        "torch.manual_seed(0)\n"
        f"acts = {{'layer4': torch.randn(1, {args.channels}, 7, 7)}}\n"
        "w = fmwidget.FeatureMapWidget.from_activations(acts)\n"
        "w"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "settings").mkdir()
        write_notebook(root / "fps.ipynb", [setup])
        with jupyter_lab(root, root / "settings") as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = open_notebook(browser, url, "fps.ipynb", width=1400, height=1000)
            run_cell(page, 0)
            page.wait_for_selector(".fmwidget[data-state='ready']", timeout=90_000)
            page.locator(".fmwidget canvas[aria-label='Feature maps']").scroll_into_view_if_needed()
            idle = page.evaluate(FRAMES_JS, {"seconds": args.seconds, "drive": False})
            busy = page.evaluate(FRAMES_JS, {"seconds": args.seconds, "drive": True})
            browser.close()

    def describe(label: str, intervals: list[float]) -> float:
        med = statistics.median(intervals)
        p90 = sorted(intervals)[int(0.9 * len(intervals))]
        print(f"{label:<44}{med:7.1f} ms{p90:7.1f} ms{1000 / med:8.1f} fps")
        return med

    print(f"{args.channels} tiles of 7×7, grid drawn with {busy['backend']}")
    print(f"{'':<44}{'median':>10}{'p90':>10}{'rate':>12}")
    base = describe("idle page (browser frame pacing)", idle["intervals"])
    med = describe("zooming/panning every frame", busy["intervals"])
    print(f"ratio zooming / idle: {med / base:.2f}× (target: 60 fps on a real GPU)")


if __name__ == "__main__":
    main()
