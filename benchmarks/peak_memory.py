"""Peak memory of building a widget against the bare forward's own peak.

Each case runs in a fresh subprocess (so no case inherits another's allocator state) and reports
the peak resident set of the measured step above the resident set just before it (the model built,
the inputs made, one tiny widget built and closed so the widget machinery's one-time cost is not
counted): the kernel's peak counter ``VmHWM`` is reset through ``/proc/self/clear_refs`` right
before the step, so this is Linux only.

Cases: the bare forward (``torch.no_grad()``), ``fmwidget.capture`` (every layer kept), a
``FeatureMapWidget`` with the default budget (1 GiB on the CPU) and with a small one, then
``set_inputs`` on a widget with the small budget, new inputs of the same shape (measured against
the resident set before that widget was first built: the old session's memory is part of what it
may reuse). ResNet-50 (random weights, eval mode), CPU, one thread. The target: a widget's peak
over the baseline stays within the bare forward's peak plus its budget.

    .venv/bin/python benchmarks/peak_memory.py                       # batch 1, 8 × 224, 512
    .venv/bin/python benchmarks/peak_memory.py --batches 1 8 32 --sizes 224 512 --max-gib 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20

CASE = r"""
import json, re, sys, time
import torch, torchvision
torch.set_num_threads(1)
import fmwidget
from fmwidget.widget import FeatureMapWidget

case, batch, size, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = torchvision.models.resnet50(weights=None).eval()
x = torch.randn(batch, 3, size, size)
with torch.no_grad():
    model(torch.randn(1, 3, 32, 32))  # load the kernels' code before the baseline
# The widget machinery's one-time cost (its front end read, comm set up) is not the capture's.
FeatureMapWidget(torch.nn.Conv2d(3, 4, 1).eval(), torch.randn(1, 3, 8, 8)).close()

def kib(field):
    return int(re.search(field + r":\s+(\d+)", open("/proc/self/status").read()).group(1))

def start():
    # Writing 5 to clear_refs resets the peak (VmHWM) to the resident set now (Linux ≥ 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return kib("VmRSS"), time.perf_counter()

extra = {}
if case == "set_inputs":
    # Against the resident set before the first widget: what the kernel holds while re-running.
    before = kib("VmRSS")
    w = FeatureMapWidget(model, x, budget_bytes=budget or None)
    x = torch.randn(batch, 3, size, size)
base, t0 = start()
if case == "set_inputs":
    base = before
if case == "bare":
    with torch.no_grad():
        model(x)
elif case == "capture":
    cap = fmwidget.capture(model, x)
elif case in ("widget", "widget-small"):
    w = FeatureMapWidget(model, x, budget_bytes=budget or None)
elif case == "set_inputs":
    w.set_inputs(x)
seconds = time.perf_counter() - t0
peak = kib("VmHWM")
if case != "bare" and case != "capture":
    store = w.session.store
    dropped = sum(not store.is_resident(n) for n in store.names)
    extra = {"held": store.resident_bytes, "dropped": dropped}
print(json.dumps({"base": base * 1024, "peak": peak * 1024, "seconds": seconds, **extra}))
"""


def run_case(case: str, batch: int, size: int, budget: int) -> dict[str, float] | str:
    proc = subprocess.run(
        [sys.executable, "-c", CASE, case, str(batch), str(size), str(budget)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return f"failed: {lines[-1] if lines else proc.returncode}"
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def estimate_bytes(batch: int, size: int) -> int:
    """Every ResNet-50 layer's output at this batch and size (what capture keeps), float32."""
    # 157 leaf outputs at 224×224 hold about 96.3 MiB per sample; they scale with the area.
    return int(batch * 96.3 * MIB * (size / 224) ** 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--small-mib", type=int, default=64, help="the small budget, MiB")
    parser.add_argument(
        "--max-gib", type=float, default=16.0, help="skip cases whose capture would need more"
    )
    args = parser.parse_args()
    small = args.small_mib * MIB
    cases = [
        ("bare", "bare forward", 0),
        ("capture", "fmwidget.capture", 0),
        ("widget", "widget, 1 GiB budget", 0),
        ("widget-small", f"widget, {args.small_mib} MiB budget", small),
        ("set_inputs", f"set_inputs, {args.small_mib} MiB", small),
    ]
    print("ResNet-50, CPU, 1 thread; peak RSS above the baseline, MiB (ratio to the bare forward)")
    print(f"{'batch × size':<14}" + "".join(f"{label:>26}" for _, label, _ in cases))
    for size in args.sizes:
        for batch in args.batches:
            need = estimate_bytes(batch, size)
            row = f"{f'{batch} × {size}':<14}"
            bare_peak = None
            for case, _, budget in cases:
                if case == "capture" and need > args.max_gib * 2**30:
                    row += f"{'skipped (~%.0f GiB)' % (need / 2**30):>26}"
                    continue
                result = run_case(case, batch, size, budget)
                if isinstance(result, str):
                    row += f"{result[:25]:>26}"
                    continue
                over = (result["peak"] - result["base"]) / MIB
                if case == "bare":
                    bare_peak = over
                ratio = f" ({over / bare_peak:.2f}×)" if bare_peak else ""
                cell = f"{over:,.0f}{ratio} {result['seconds']:.1f}s"
                row += f"{cell:>26}"
            print(row, flush=True)
    print(
        f"target: widget peak ≤ bare peak + budget (1,024 MiB default, {args.small_mib} MiB small)"
    )


if __name__ == "__main__":
    main()
