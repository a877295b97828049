"""Measured receptive fields equal the analytic ones of the conv/pool chain, borders included."""

from __future__ import annotations

import pytest
import torch
import torchvision

from fmwidget.receptive import receptive_field, receptive_fields

Chain = list[tuple[int, int, int]]  # (kernel, stride, padding) of each layer on the longest path


def _analytic(chain: Chain, row: int, col: int, size: int) -> tuple[int, int, int, int]:
    """The field of (row, col) after ``chain``: each layer maps an output range [a, b] to the
    input range [a·s − p, b·s − p + k − 1]; the image clips it at the end (a monotone map)."""

    def span(i: int) -> tuple[int, int]:
        lo = hi = i
        for k, s, p in reversed(chain):
            lo, hi = lo * s - p, hi * s - p + k - 1
        return max(lo, 0), min(hi, size - 1) + 1

    top, bottom = span(row)
    left, right = span(col)
    return top, left, bottom, right


RESNET18 = {
    "conv1": [(7, 2, 3)],
    "maxpool": [(7, 2, 3), (3, 2, 1)],
    "layer1.1.conv2": [(7, 2, 3), (3, 2, 1)] + [(3, 1, 1)] * 4,
    "layer2.0.conv1": [(7, 2, 3), (3, 2, 1)] + [(3, 1, 1)] * 4 + [(3, 2, 1)],
}
MOBILENET_V2 = {
    "features.0.0": [(3, 2, 1)],
    "features.1.conv.0.0": [(3, 2, 1), (3, 1, 1)],
    "features.2.conv.1.0": [(3, 2, 1), (3, 1, 1), (1, 1, 0), (1, 1, 0), (3, 2, 1)],
    "features.3.conv.1.0": [
        *[(3, 2, 1), (3, 1, 1), (1, 1, 0), (1, 1, 0), (3, 2, 1)],
        *[(1, 1, 0), (1, 1, 0), (3, 1, 1)],
    ],
}


@pytest.mark.parametrize(
    ("make", "layers"),
    [(torchvision.models.resnet18, RESNET18), (torchvision.models.mobilenet_v2, MOBILENET_V2)],
    ids=["resnet18", "mobilenet_v2"],
)
def test_measured_fields_equal_the_analytic_ones(make, layers) -> None:
    torch.manual_seed(0)
    model, size = make().eval(), 64
    x = torch.zeros(1, 3, size, size)
    for layer, chain in layers.items():
        h = _out_size(chain, size)
        # Corners, edges and the middle: the borders are where clipping shows.
        positions = sorted(
            {(0, 0), (0, h - 1), (h - 1, 0), (h - 1, h - 1), (h // 2, h // 2), (1, 2)}
        )
        got = receptive_fields(model, x, layer, positions)
        expected = [_analytic(chain, r, c, size) for r, c in positions]
        assert got == expected, layer
    assert receptive_field(model, x, next(iter(layers)), 0, 0) == _analytic(
        next(iter(layers.values())), 0, 0, size
    )


def _out_size(chain: Chain, size: int) -> int:
    for k, s, p in chain:
        size = (size + 2 * p - k) // s + 1
    return size
