"""Recomputing a layer that the memory budget dropped: one sample's maps against the whole batch.

A widget with a 1-byte budget keeps no layer, so every ``layer`` reply recomputes. For a few layers
from the start to the end of ResNet-50 (random weights, eval mode, CPU, one thread) this times, in
one run and interleaved: a bare forward of one sample and of the batch, the recompute a layer reply
makes now (``store.sample_maps``: a forward that stops at the layer, of a batch of two copies of
the shown sample) and the one it made before (``store.maps``: the same early-stopping forward of
the whole batch); and the whole ``layer`` request as the browser makes it. Prints medians and
ratios to one sample's bare forward (the target: a dropped layer within about twice that).

    .venv/bin/python benchmarks/recompute.py --batch 8 --size 512
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakecomm import fake_comms  # noqa: E402

from fmwidget.widget import FeatureMapWidget  # noqa: E402

LAYERS = ("layer1.0.conv1", "layer2.0.bn1", "layer3.3.relu:2", "layer4.2.bn3")


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)

    with fake_comms() as comms:
        measure(model, x, comms, args.repeats)


def measure(model: torch.nn.Module, x: torch.Tensor, comms: list[Any], repeats: int) -> None:
    batch = x.shape[0]
    sample = batch - 1
    widget = FeatureMapWidget(model, x, budget_bytes=1)
    browser = widget.comm
    store = widget.session.store
    assert all(not store.is_resident(name) for name in LAYERS)

    def bare(batch: torch.Tensor) -> Callable[[], object]:
        def run() -> None:
            with torch.no_grad():
                model(batch)

        return run

    one = x[sample : sample + 1]
    rows: dict[str, list[float]] = {"bare forward, 1 sample": [], "bare forward, batch": []}
    for _ in range(repeats):
        rows["bare forward, 1 sample"].append(median_ms(bare(one), 1))
        rows["bare forward, batch"].append(median_ms(bare(x), 1))
        for name in LAYERS:

            def now(name: str = name) -> None:
                store._samples.clear()  # as for a layer not asked for yet
                store.sample_maps(name, sample)

            def before(name: str = name) -> None:
                store._recompute(name)  # type: ignore[misc]  # the whole batch, as before

            def reply(name: str = name, revision: int = widget.revision) -> None:
                # The whole request: parse, recompute the sample, statistics, quantize, encode.
                store._samples.clear()
                store._layers[name].stats.clear()
                assert browser.request("layer", layer=name, sample=sample, revision=revision).ok

            rows.setdefault(f"{name}: one sample (now)", []).append(median_ms(now, 1))
            rows.setdefault(f"{name}: layer reply (now)", []).append(median_ms(reply, 1))
            rows.setdefault(f"{name}: whole batch (before)", []).append(median_ms(before, 1))
    base = statistics.median(rows["bare forward, 1 sample"])
    print(
        f"ResNet-50 batch {batch} at {x.shape[2]}×{x.shape[3]}, CPU, "
        f"{torch.get_num_threads()} thread(s), {repeats} interleaved repeats; "
        "ratio to one sample's bare forward"
    )
    for key, times in rows.items():
        med = statistics.median(times)
        print(f"  {key:<44} {med:9.1f} ms {med / base:6.2f}×")
    widget.close()


if __name__ == "__main__":
    main()
