"""How long a layer step takes in a real JupyterLab, against what most users do today (matplotlib).

Opens the demo (MobileNetV2, 224×224, 139 layers) in JupyterLab in headless Chromium, then steps the layer
slider through the network: first visits (the kernel quantizes the layer and sends it) and revisits (from
the browser's cache). A step is timed in the page, from the slider's input event to the moment the root's
``data-state`` is ``ready`` with the new layer drawn. The baseline draws the same layers as a matplotlib grid
(one ``imshow`` per channel, as most tutorials do) in the kernel's process, measured in the same run.

Run: ``.venv/bin/python benchmarks/layer_step.py [--steps 40]`` (needs Chromium; see README).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.lab import CHROMIUM, CHROMIUM_ARGS, jupyter_lab, write_notebook  # noqa: E402

SETUP = "import fmwidget\nw = fmwidget.demo()\nw"

STEP_JS = """
async ({ steps, back }) => {
  const root = document.querySelector('.fmwidget');
  const slider = root.querySelector("input[type='range'][aria-label='Layer']");
  const times = [];
  for (let i = 0; i < steps; i++) {
    const next = Number(slider.value) + (back ? -1 : 1);
    const t0 = performance.now();
    slider.value = String(next);
    slider.dispatchEvent(new Event('input', { bubbles: true }));
    slider.dispatchEvent(new Event('change', { bubbles: true }));
    const want = slider.getAttribute('aria-valuetext').split(' (')[0];
    await new Promise((resolve, reject) => {
      const deadline = t0 + 30000;
      const check = () => {
        if (root.dataset.state === 'ready' && root.dataset.layer === want) resolve();
        else if (performance.now() > deadline) reject(new Error('layer ' + want + ' never drawn'));
        else requestAnimationFrame(check);
      };
      check();
    });
    times.push(performance.now() - t0);
  }
  return times;
}
"""


def matplotlib_grid_seconds(layers: int) -> list[float]:
    """Seconds to draw each of the demo's first ``layers`` layers as a matplotlib grid of channels."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import fmwidget

    acts = fmwidget.capture(*_demo_model_and_input())
    out = []
    for name in list(acts)[:layers]:
        maps = acts[name][0].float().cpu().numpy()
        t0 = time.perf_counter()
        cols = math.ceil(math.sqrt(len(maps)))
        rows = math.ceil(len(maps) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols, rows), squeeze=False)
        for ax, m in zip(axes.flat, maps, strict=False):
            ax.imshow(m, cmap="gray")
            ax.axis("off")
        for ax in axes.flat[len(maps) :]:
            ax.axis("off")
        fig.canvas.draw()
        plt.close(fig)
        out.append(time.perf_counter() - t0)
    return out


def _demo_model_and_input():
    from fmwidget.demo import load_mobilenet_v2, load_photo, preprocess

    model, weights = load_mobilenet_v2()
    x, _ = preprocess(load_photo("chelsea"), weights)
    return model, x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "settings").mkdir()
        write_notebook(root / "bench.ipynb", [SETUP])
        with jupyter_lab(root, root / "settings") as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/bench.ipynb")
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
            cell = page.locator(".jp-Notebook .jp-Cell").first
            for _ in range(3):
                cell.locator(".jp-InputArea-editor").click()
                page.keyboard.press("Shift+Enter")
                try:
                    page.wait_for_selector(".fmwidget[data-state='ready']", timeout=60_000)
                    break
                except Exception:
                    continue
            first = page.evaluate(STEP_JS, {"steps": args.steps, "back": False})
            again = page.evaluate(STEP_JS, {"steps": args.steps, "back": True})
            browser.close()

    mpl = matplotlib_grid_seconds(args.steps)
    med_first, med_again = statistics.median(first), statistics.median(again)
    med_mpl = statistics.median(mpl) * 1000
    print(f"layer step, first visit (kernel → browser → WebGL): median {med_first:6.1f} ms, "
          f"p90 {sorted(first)[int(0.9 * len(first))]:6.1f} ms")
    print(f"layer step, revisit (browser cache):               median {med_again:6.1f} ms, "
          f"p90 {sorted(again)[int(0.9 * len(again))]:6.1f} ms")
    print(f"matplotlib grid of the same layers:                median {med_mpl:6.1f} ms")
    print(f"ratio matplotlib / first visit: {med_mpl / med_first:5.1f}x; "
          f"matplotlib / revisit: {med_mpl / med_again:5.1f}x  (target: a step <= 50 ms)")


if __name__ == "__main__":
    main()
