"""Bytes on the wire and encode time of one layer: fmwidget's binary reply vs JSON vs base64.

For representative layers of ResNet-18 and MobileNetV2 (random weights, one 224×224 input), prints
per shown activation: the bytes of our ``layer`` reply (JSON header + uint8 values + stats +
flags), of ``json.dumps(tensor.tolist())`` and of base64 float32; and the time to build our reply
(stats, quantization, envelope) vs ``json.dumps(tensor.tolist())``, measured side by side.

Run: ``.venv/bin/python benchmarks/wire_size.py``
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision

from fmwidget import wire
from fmwidget.capture import capture

LAYERS = {
    "resnet18": ["conv1", "layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"],
    "mobilenet_v2": ["features.0.0", "features.3.conv.0.0", "features.7.conv.1.0", "features.18.0"],
}


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _ours(maps: torch.Tensor) -> tuple[dict, list[memoryview]]:
    stats = wire.channel_stats(maps)
    meta, arrays = wire.layer_payload(maps, stats, np.zeros(maps.shape[0], np.uint8))
    meta.update(layer="layer", sample=0, revision=1)
    return wire.encode_reply(1, "layer", meta, arrays)


def main() -> None:
    torch.manual_seed(0)
    # One thread: JSON encoding is single-threaded too, and a shared machine jitters less.
    torch.set_num_threads(1)
    x = torch.randn(1, 3, 224, 224)
    header = (
        f"{'model':<13}{'layer':<22}{'shape':<14}{'ours B/act':>11}{'JSON B/act':>11}"
        f"{'b64 B/act':>10}{'JSON/ours':>10}{'ours ms':>9}{'JSON ms':>9}{'speedup':>9}"
    )
    print(header)
    totals = {"ours": 0, "json": 0, "values": 0, "t_ours": 0.0, "t_json": 0.0}
    for model_name, names in LAYERS.items():
        model = getattr(torchvision.models, model_name)(weights=None).eval()
        cap = capture(model, x, names)
        for name in names:
            maps = cap[name][0]
            content, buffers = _ours(maps)
            ours = len(json.dumps(content)) + sum(b.nbytes for b in buffers)
            as_json = json.dumps(maps.tolist())
            as_b64 = base64.b64encode(maps.numpy().tobytes())
            count = maps.numel()
            t_ours = _best_seconds(lambda m=maps: _ours(m), 9)
            t_json = _best_seconds(lambda m=maps: json.dumps(m.tolist()), 3)
            shape = "×".join(map(str, maps.shape))
            print(
                f"{model_name:<13}{name:<22}{shape:<14}{ours / count:>11.3f}"
                f"{len(as_json) / count:>11.2f}{len(as_b64) / count:>10.2f}"
                f"{len(as_json) / ours:>10.1f}{t_ours * 1e3:>9.2f}{t_json * 1e3:>9.1f}"
                f"{t_json / t_ours:>9.0f}"
            )
            totals["ours"] += ours
            totals["json"] += len(as_json)
            totals["values"] += count
            totals["t_ours"] += t_ours
            totals["t_json"] += t_json
    per_act = {k: totals[k] / totals["values"] for k in ("ours", "json")}
    print(
        f"all layers: ours {per_act['ours']:.3f} B/activation, JSON {per_act['json']:.2f} "
        f"({totals['json'] / totals['ours']:.1f}× ours); encode ours "
        f"{totals['t_ours'] * 1e3:.1f} ms vs JSON {totals['t_json'] * 1e3:.0f} ms "
        f"({totals['t_json'] / totals['t_ours']:.0f}×)"
    )


if __name__ == "__main__":
    main()
