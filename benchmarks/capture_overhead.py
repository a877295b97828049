"""Capture overhead: a bare forward against capture() (without and with CaptureBuffers pools), a
widget's session (``Source.run``: capture + store statistics) and a whole ``FeatureMapWidget``.

ResNet-50, MobileNetV2 and EfficientNet-B0 (random weights, eval mode), batch 1 at 224×224,
repeats interleaved so that load from other processes hits every variant alike, each variant with
only its own previous result alive (``--hold-all``: every variant's, as this benchmark measured
before 2026-12-02); prints medians and ratios to the bare forward.

    PYTHONPATH=. .venv/bin/python benchmarks/capture_overhead.py --threads 1   # CPU
    .venv/bin/python benchmarks/capture_overhead.py --device cuda --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from fmwidget.capture import CaptureBuffers, capture
from fmwidget.session import Source
from fmwidget.widget import FeatureMapWidget


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def timed(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return timed


def bench(name: str, device: torch.device, repeats: int, batch: int, hold_all: bool) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    pool, copy_pool = CaptureBuffers(), CaptureBuffers(copy_all=True)
    # Each variant's last result, by variant name: a re-run lets go of its own previous result
    # first, as a widget does (its release is part of what it costs).
    held: dict[str, object] = {}

    def bare() -> None:
        with torch.no_grad():
            model(x)

    leaves = [m for m in model.modules() if next(m.children(), None) is None]

    def references() -> None:
        # The floor of any capture that keeps every layer: hooks that only hold each output
        # (values wrong under in-place ops; no names, no report). What it costs over the bare
        # forward is the memory held, no longer reused from one layer to the next in cache.
        kept: list[object] = []
        held.pop("hooks keeping references", None)
        handles = [m.register_forward_hook(lambda _m, _a, out: kept.append(out)) for m in leaves]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for handle in handles:
                handle.remove()
        held["hooks keeping references"] = kept

    def fresh() -> None:
        release("capture")
        held["capture"] = capture(model, x)

    def fresh_held() -> None:
        # A user holding the previous result while capturing again: memory cannot be reused.
        held["capture, previous held"] = capture(model, x)

    def pooled() -> None:
        release("capture + pool")
        held["capture + pool"] = capture(model, x, buffers=pool)

    def copied() -> None:
        release("capture + pool, copy_all")
        held["capture + pool, copy_all"] = capture(model, x, buffers=copy_pool)

    def session() -> None:
        # As a widget's re-run: the previous session is closed first, the buffers are reused.
        release("session (Source.run)")
        held["session (Source.run)"] = source.run(x)

    def widget() -> None:
        release("FeatureMapWidget")
        held["FeatureMapWidget"] = FeatureMapWidget(model, x)

    def release(key: str) -> None:
        old = held.pop(key, None)
        if isinstance(old, FeatureMapWidget):
            old.close()
        elif hasattr(old, "close"):
            old.close("replaced")  # type: ignore[union-attr]

    source = Source(model)
    variants = {
        "bare forward": bare,
        "hooks keeping references": references,
        "capture": fresh,
        "capture, previous held": fresh_held,
        "capture + pool": pooled,
        "capture + pool, copy_all": copied,
        "session (Source.run)": session,
        "FeatureMapWidget": widget,
    }
    timed = _timer(device)
    for fn in variants.values():  # warm-up: allocator, learned in-place layers, pool buffers
        for _ in range(3):
            fn()
    layers = len(capture(model, x))
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for key, fn in variants.items():
            if not hold_all:
                # Only this variant's own previous result alive, so that variants do not pay
                # for each other's memory (what they hold shapes where the next one's goes).
                for other in [k for k in held if k != key]:
                    release(other)
            times[key].append(timed(fn))
            if hold_all and key != "capture, previous held":
                release("capture, previous held")  # its previous result: the "capture" one
    for key in list(held):
        release(key)
    base = statistics.median(times["bare forward"])
    how = "each variant's last result held through the others" if hold_all else "one at a time"
    repeated = f"{repeats} interleaved repeats, {how}"
    print(f"{name} batch {batch} on {device} ({layers} layers, {repeated})")
    for key, samples in times.items():
        med = statistics.median(samples)
        print(f"  {key:<26} {med * 1e3:8.2f} ms  {med / base:5.2f}×")
    print(
        f"  pools hold {pool.nbytes / 2**20:.1f} MiB, "
        f"{copy_pool.nbytes / 2**20:.1f} MiB with copy_all"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--models", nargs="+", default=["resnet50", "mobilenet_v2", "efficientnet_b0"]
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--hold-all",
        action="store_true",
        help="keep each variant's last result alive through the other variants' runs (how this "
        "benchmark measured before 2026-12-02; every variant that keeps memory reads slower)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for name in args.models:
        bench(name, torch.device(args.device), args.repeats, args.batch, args.hold_all)


if __name__ == "__main__":
    main()
