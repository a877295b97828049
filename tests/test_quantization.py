"""The quantization bound holds for near-constant channels (issue 11: 0.92 steps in timm's
efficientvit_b0, from dequantizing in float32 when a channel's range is a few hundred float32
spacings of its values)."""

from __future__ import annotations

import numpy as np
import torch

from fmwidget import wire


def _near_constant(base: float, spacings: int) -> torch.Tensor:
    """A (1, 16, 16) channel of float32 values ``base`` + 0..spacings float32 steps, spread out."""
    grid = np.float32(base) + np.arange(spacings + 1, dtype=np.float32) * np.spacing(
        np.float32(base)
    )
    picks = np.random.default_rng(0).integers(0, len(grid), size=(1, 16, 16))
    maps = grid[picks]
    maps[0, 0, 0], maps[0, 0, 1] = grid[0], grid[-1]
    return torch.from_numpy(maps)


def _worst_steps(maps: torch.Tensor, values: np.ndarray, stats: np.ndarray) -> float:
    step = (stats[:, 1].astype(np.float64) - stats[:, 0]) / wire.LEVELS
    return float((np.abs(values - maps.double().numpy()) / step[:, None, None]).max())


def test_near_constant_channels_dequantize_within_half_a_step() -> None:
    for base, spacings in [(1000.0, 300), (-3.5, 400), (0.25, 137), (7e-3, 2000)]:
        maps = _near_constant(base, spacings)
        stats = wire.channel_stats(maps).numpy()
        q = wire.quantize(maps, torch.from_numpy(stats[:, 0]), torch.from_numpy(stats[:, 1]))
        values = wire.dequantize(q.numpy(), stats)
        assert values.dtype == np.float64
        assert _worst_steps(maps, values, stats) <= 0.5 + 1e-4, (base, spacings)
        # The same formula in float32 rounds its result to a float32: up to a step further off.
        lo, hi = stats[:, 0, None, None], stats[:, 1, None, None]
        in_float32 = lo + q.numpy().astype(np.float32) / wire.LEVELS * (hi - lo)
        if spacings in (300, 400):  # a step just above the float32 spacing: the worst case
            assert _worst_steps(maps, in_float32, stats) > 0.6, (base, spacings)
