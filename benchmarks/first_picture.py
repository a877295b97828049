"""Time to the first picture in a real JupyterLab: from Shift+Enter to a drawn grid.

Three cells in a fresh kernel, timed from the browser (Playwright, headless Chromium): the imports
(``import torch, fmwidget``), then ``w = fmwidget.demo(); w`` (MobileNetV2, 149 layers), then the
same again (warm: the front end's bundle is loaded, the weights are cached). A cell is timed from
Shift+Enter until the widget's root says ``data-state="ready"`` (the shown layer drawn), and the
kernel prints its own share, so the rest is the comm, the front end and the first WebGL draw.
Each repeat uses a new notebook and kernel.

Run: ``.venv/bin/python benchmarks/first_picture.py [--repeats 3]`` (needs Chromium; see README).
"""

from __future__ import annotations

import argparse
import re
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

TOLD = "print(f'kernel {time.perf_counter() - t:.3f} s')\n"
CELLS = [
    "import time\nt = time.perf_counter()\nimport torch, fmwidget\n" + TOLD,
    "t = time.perf_counter()\nw = fmwidget.demo()\n" + TOLD + "w",
    "t = time.perf_counter()\nw2 = fmwidget.demo()\n" + TOLD + "w2",
]


def _kernel_seconds(page, index: int) -> float:
    text = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea").inner_text()
    found = re.search(r"kernel ([0-9.]+) s", text)
    return float(found.group(1)) if found else float("nan")


def one_run(p, url: str, name: str) -> dict[str, tuple[float, float]]:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = open_notebook(browser, url, name, width=1400, height=1600)
    out: dict[str, tuple[float, float]] = {}
    t0 = time.perf_counter()
    run_cell(page, 0)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    page.wait_for_function(
        "() => document.querySelectorAll('.jp-OutputArea-output').length >= 1", timeout=90_000
    )
    out["import torch, fmwidget"] = (time.perf_counter() - t0, _kernel_seconds(page, 0))
    for index, label in ((1, "demo(), first widget"), (2, "demo() again (warm)")):
        t0 = time.perf_counter()
        run_cell(page, index)
        page.locator(".fmwidget").nth(index - 1).wait_for(timeout=90_000)
        page.wait_for_function(
            "i => document.querySelectorAll('.fmwidget')[i]?.dataset.state === 'ready'",
            arg=index - 1,
            timeout=90_000,
        )
        out[label] = (time.perf_counter() - t0, _kernel_seconds(page, index))
    browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "settings").mkdir()
        for i in range(args.repeats):
            write_notebook(root / f"first{i}.ipynb", CELLS)
        with jupyter_lab(root, root / "settings") as url, sync_playwright() as p:
            for i in range(args.repeats):
                runs.append(one_run(p, url, f"first{i}.ipynb"))
    print(f"Shift+Enter → drawn grid in JupyterLab, median of {args.repeats} fresh kernels")
    for label in runs[0]:
        total = statistics.median(r[label][0] for r in runs)
        kernel = statistics.median(r[label][1] for r in runs)
        rest = total - kernel
        print(f"  {label:24s} {total:6.2f} s  (kernel {kernel:.2f} s, comm + view {rest:.2f} s)")


if __name__ == "__main__":
    main()
