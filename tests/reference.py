"""Independent computations the tests check fmwidget against: plain numpy, no fmwidget code."""

from __future__ import annotations

import numpy as np


def numpy_stats(maps: np.ndarray) -> np.ndarray:
    """Per-channel ``[min, max, mean, zeros, nan, inf]`` of (C, H, W) maps, as the protocol says."""
    rows = []
    for channel in maps.reshape(maps.shape[0], -1).astype(np.float64):
        finite = channel[np.isfinite(channel)]
        lo, hi, mean = (finite.min(), finite.max(), finite.mean()) if finite.size else (0, 0, 0)
        rows.append(
            [lo, hi, mean, (channel == 0).mean(), np.isnan(channel).sum(), np.isinf(channel).sum()]
        )
    return np.array(rows)
