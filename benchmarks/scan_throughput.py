"""Scan throughput: fmwidget.scan against a bare forward loop over the same DataLoader.

The same images, batch size and model; three variants measured in interleaved rounds so that
load from other processes hits each alike: the bare loop (DataLoader → device → forward under
no_grad), a scan of 5 layers and a scan of every layer. Prints images/s and the ratio of each
scan's time to the bare loop's.

    .venv/bin/python benchmarks/scan_throughput.py                     # CPU, 2 threads
    .venv/bin/python benchmarks/scan_throughput.py --device cuda --images 4096 --batch 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from fmwidget.capture import capture
from fmwidget.scan import scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval().to(device)
    images = torch.randn(args.images, 3, args.size, args.size)
    labels = torch.arange(args.images) % 10
    data = TensorDataset(images, labels)
    every = list(capture(model, images[:1].to(device)))
    five = every[:: max(1, len(every) // 5)][:5]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def bare() -> None:
        with torch.no_grad():
            for x, _ in DataLoader(data, batch_size=args.batch):
                model(x.to(device, non_blocking=True))
        sync()

    def scan_five() -> None:
        scan(model, data, layers=five, batch_size=args.batch, progress=False, device=device)
        sync()

    def scan_all() -> None:
        scan(model, data, batch_size=args.batch, progress=False, device=device)
        sync()

    variants = {
        "bare loop": bare,
        f"scan, {len(five)} layers": scan_five,
        f"scan, all {len(every)} layers": scan_all,
    }
    for fn in variants.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for key, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model} on {device}, "
        f"{args.images} images {args.size}×{args.size}, batch {args.batch}, {args.rounds} rounds"
    )
    base = statistics.median(times["bare loop"])
    for key, samples in times.items():
        med = statistics.median(samples)
        print(f"  {key:<24} {args.images / med:8.1f} images/s  {med / base:5.2f}× the bare loop")


if __name__ == "__main__":
    main()
