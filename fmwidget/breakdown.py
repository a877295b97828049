"""How one value of a convolution is computed: the patch under the kernel, the kernel, the sum.

CNN Explainer's first lesson, on any PyTorch model: a filter slides over its input, multiplies
element-wise and sums; each value of a feature map is that filter's match at one position.

    >>> import torch
    >>> conv = torch.nn.Conv2d(2, 1, 3, padding=1)
    >>> model = torch.nn.Sequential(conv).eval()
    >>> x = torch.randn(1, 2, 5, 5)
    >>> b = conv_breakdown(model, x, "0", channel=0, row=0, col=0)
    >>> b.patch.shape, b.per_channel.shape          # zeros where the padding is
    (torch.Size([2, 3, 3]), torch.Size([2]))
    >>> torch.isclose(torch.tensor(b.total), model(x)[0, 0, 0, 0]).item()
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fmwidget.calling import resolve_layer
from fmwidget.layer_input import layer_inputs

__all__ = ["ConvBreakdown", "breakdown_at", "conv_breakdown"]


@dataclass(frozen=True)
class ConvBreakdown:
    """One output value of a ``Conv2d``, taken apart.

    Attributes:
        patch: the conv's actual input under the kernel at that position, ``weight[channel]``'s
            shape ``(Cin / groups, kh, kw)``; padding shows as zeros (or the padding mode's values).
        kernel: ``weight[channel]``.
        bias: the channel's bias, or None.
        per_channel: ``(patch * kernel).sum()`` for each input channel, ``(Cin / groups,)``.
        total: ``per_channel.sum() + bias``: the value the layer outputs there.
        inputs: which input channels of the conv the patch comes from (all of them unless grouped).
    """

    patch: torch.Tensor
    kernel: torch.Tensor
    bias: float | None
    per_channel: torch.Tensor
    total: float
    inputs: range


def conv_breakdown(
    model: nn.Module,
    inputs: Any,
    layer: str,
    channel: int,
    row: int,
    col: int,
    sample: int = 0,
) -> ConvBreakdown:
    """Take apart the value of ``layer`` (a ``Conv2d``) at ``channel``, ``row``, ``col``.

    The conv's input is read when the conv is called (a later in-place op cannot change it), from
    a forward under ``torch.no_grad()`` that stops there (on ``sample`` alone where samples are
    independent, see :func:`fmwidget.layer_input.layer_inputs`); the model is left as it was.
    Strides, dilation, grouped and depthwise convolutions and every padding mode are followed as
    ``Conv2d`` does.
    """
    ref = resolve_layer(model, layer)
    conv = ref.module
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(
            f"layer {layer!r} is a {type(conv).__name__}; conv_breakdown takes a Conv2d layer"
        )
    if ref.index:
        raise ValueError(f"layer {layer!r} names a part of an output; name the Conv2d itself")
    got = layer_inputs(model, inputs, [ref], sample)
    x = got.tensors[0]
    if x is None:
        raise ValueError(f"layer {layer!r} was not called with a tensor")
    return breakdown_at(conv, x[got.sample], channel, row, col, layer)


def breakdown_at(
    conv: nn.Conv2d, x: torch.Tensor, channel: int, row: int, col: int, layer: str = "the conv"
) -> ConvBreakdown:
    """The breakdown of ``conv``'s value at ``channel``, ``row``, ``col`` from its input ``x``
    ``(Cin, H, W)`` (one sample, as the conv received it); ``layer`` names it in errors."""
    out_channels = conv.out_channels
    if not 0 <= channel < out_channels:
        raise ValueError(f"channel {channel} is out of range: layer {layer!r} has {out_channels}")
    pad = conv._reversed_padding_repeated_twice
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = F.pad(x[None], pad, mode=mode)[0]
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    out_h = (padded.shape[-2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (padded.shape[-1] - dw * (kw - 1) - 1) // sw + 1
    if not (0 <= row < out_h and 0 <= col < out_w):
        raise ValueError(
            f"position ({row}, {col}) is outside layer {layer!r}'s {out_h}×{out_w} maps"
        )
    per_group = conv.in_channels // conv.groups
    group = channel // (out_channels // conv.groups)
    chans = range(group * per_group, (group + 1) * per_group)
    top, left = row * sh, col * sw
    patch = padded[
        chans.start : chans.stop,
        top : top + dh * (kh - 1) + 1 : dh,
        left : left + dw * (kw - 1) + 1 : dw,
    ]
    kernel = conv.weight[channel].detach()
    per_channel = (patch.double() * kernel.double()).sum((1, 2))
    bias = None if conv.bias is None else float(conv.bias[channel].detach())
    total = float(per_channel.sum()) + (bias or 0.0)
    return ConvBreakdown(patch, kernel, bias, per_channel, total, chans)
