"""conv_breakdown: patch × kernel summed per input channel, plus the bias, is the captured value."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from fmwidget.breakdown import conv_breakdown
from fmwidget.capture import capture
from tests.models import assert_no_hooks, flags


def _check(
    model: nn.Module, x: torch.Tensor, layer: str, positions: list[tuple[int, int, int]]
) -> None:
    acts = capture(model, x)[layer]
    for channel, row, col in positions:
        b = conv_breakdown(model, x, layer, channel, row, col, sample=1)
        assert b.patch.shape == b.kernel.shape
        assert b.total == pytest.approx(float(acts[1, channel, row, col]), rel=1e-4, abs=1e-5)
        assert b.total == pytest.approx(float(b.per_channel.sum()) + (b.bias or 0.0))


def test_a_resnet_first_conv_with_stride_padding_and_no_bias() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    before = flags(model)
    _check(model, x, "conv1", [(0, 0, 0), (5, 10, 17), (63, 31, 31)])
    b = conv_breakdown(model, x, "conv1", 5, 0, 0)
    # Stride 2, padding 3 at the corner: the first three rows and columns of the patch are padding.
    assert torch.all(b.patch[:, :3, :] == 0) and torch.all(b.patch[:, :, :3] == 0)
    assert b.bias is None and list(b.inputs) == [0, 1, 2]
    assert flags(model) == before
    assert_no_hooks(model)


def test_depthwise_grouped_dilated_and_reflect_padded_convs() -> None:
    torch.manual_seed(0)
    mobilenet = torchvision.models.mobilenet_v2().eval()
    x = torch.randn(2, 3, 32, 32)
    _check(mobilenet, x, "features.1.conv.0.0", [(0, 3, 4), (31, 15, 15)])  # depthwise, 32 groups
    assert list(conv_breakdown(mobilenet, x, "features.1.conv.0.0", 7, 2, 2).inputs) == [7]
    net = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 3, 3, padding=1, padding_mode="reflect"),
    ).eval()
    y = torch.randn(2, 4, 9, 9)
    _check(net, y, "0", [(0, 0, 0), (5, 8, 4)])
    assert list(conv_breakdown(net, y, "0", 5, 1, 1).inputs) == [2, 3]
    _check(net, y, "2", [(2, 0, 8), (1, 4, 4)])  # its input was overwritten in place by the ReLU


def test_clear_errors() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval()
    x = torch.randn(1, 1, 5, 5)
    with pytest.raises(TypeError, match="is a ReLU; conv_breakdown takes a Conv2d"):
        conv_breakdown(net, x, "1", 0, 0, 0)
    with pytest.raises(ValueError, match=r"position \(3, 0\) is outside layer '0''s 3×3 maps"):
        conv_breakdown(net, x, "0", 0, 3, 0)
    with pytest.raises(ValueError, match="channel 2 is out of range"):
        conv_breakdown(net, x, "0", 2, 0, 0)
