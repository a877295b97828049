"""How long a layer step takes in a real JupyterLab, against what most users do today (matplotlib).

Opens the demo (MobileNetV2, 224×224, 149 layers) in JupyterLab in headless Chromium, then steps
the layer slider through the network: first visits back to back (the kernel quantizes each layer and
sends it), revisits (from the browser's cache), and first visits at a reading pace (the view
prefetches the neighbours meanwhile). A step is timed in the page, from the slider's input event
until the root's ``data-state`` is ``ready`` with the new layer drawn. The baseline draws the same
layers as a matplotlib grid (one ``imshow`` per channel, as most tutorials do), in the same run.

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

from tests.e2e.lab import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    jupyter_lab,
    open_notebook,
    run_cell,
    write_notebook,
)

SETUP = "import fmwidget\nw = fmwidget.demo()\nw"

STEP_JS = """
async ({ steps, back, pause, start }) => {
  const root = document.querySelector('.fmwidget');
  const slider = root.querySelector("input[type='range'][aria-label='Layer']");
  const times = [];
  if (start !== null) {
    slider.value = String(start);
    slider.dispatchEvent(new Event('input', { bubbles: true }));
    slider.dispatchEvent(new Event('change', { bubbles: true }));
    const want = slider.getAttribute('aria-valuetext').split(' (')[0];
    while (!(root.dataset.state === 'ready' && root.dataset.layer === want)) {
      await new Promise((r) => requestAnimationFrame(r));
    }
  }
  for (let i = 0; i < steps; i++) {
    if (pause > 0) await new Promise((r) => setTimeout(r, pause));
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
    """Seconds to draw each of the demo's first ``layers`` layers as a matplotlib grid."""
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
    parser.add_argument("--pause-ms", type=int, default=300, help="pause between paced steps")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "settings").mkdir()
        write_notebook(root / "bench.ipynb", [SETUP])
        with jupyter_lab(root, root / "settings") as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = open_notebook(browser, url, "bench.ipynb", width=1400, height=1000)
            run_cell(page, 0)
            page.wait_for_selector(".fmwidget[data-state='ready']", timeout=90_000)
            n = args.steps
            first = page.evaluate(STEP_JS, {"steps": n, "back": False, "pause": 0, "start": None})
            again = page.evaluate(STEP_JS, {"steps": n, "back": True, "pause": 0, "start": None})
            # Layers not seen yet, at a reading pace: the view prefetches while the user looks.
            paced = page.evaluate(
                STEP_JS, {"steps": n, "back": False, "pause": args.pause_ms, "start": 2 * n}
            )
            browser.close()

    mpl_ms = [t * 1000 for t in matplotlib_grid_seconds(args.steps)]
    rows = {
        "first visit, back to back (kernel → browser → WebGL)": first,
        f"first visit, {args.pause_ms} ms apart (prefetched)": paced,
        "revisit (browser cache)": again,
        "matplotlib grid of the same layers (baseline)": mpl_ms,
    }
    base = statistics.median(mpl_ms)
    title = "MobileNetV2 demo, one step of the layer slider"
    print(f"{title:<56}{'median':>9}{'p90':>9}{'vs mpl':>9}")
    for name, times in rows.items():
        med, p90 = statistics.median(times), sorted(times)[int(0.9 * len(times))]
        print(f"{name:<56}{med:7.1f}ms{p90:7.1f}ms{base / med:8.1f}x")
    print("target: a layer step <= 50 ms")


if __name__ == "__main__":
    main()
