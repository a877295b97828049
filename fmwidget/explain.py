"""What a layer that is not a convolution does to one value, said in one line with its numbers.

The channel view's "How is this computed?" panel: for a BatchNorm channel
``(x − 0.12) / √(0.98 + 1e-05) · 1.03 − 0.2``, for a ReLU6 ``clamp to [0, 6]``, for a max pool
the window it takes the largest of, each with the value before the layer and the value the
formula gives (which the view checks against the captured one). Layers are recognised by what
they are (their class family, so subclasses count); one fmwidget does not know gets its type name
and, when its input and output have the same shape, the input at the same position.

    >>> import torch
    >>> bn = torch.nn.BatchNorm2d(2).eval()
    >>> step = describe(bn, torch.ones(1, 2, 3, 3), 0, channel=1, row=0, col=0)
    >>> step.text, step.before, round(step.after, 4)
    ('BatchNorm2d: (x − 0) / √(1 + 1e-05) · 1 + 0', 1.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm

__all__ = ["Step", "describe", "number"]


@dataclass(frozen=True)
class Step:
    """One layer at one position.

    Attributes:
        text: what the layer does, in one line, with this channel's numbers.
        before: the layer's input at the same position (element-wise layers), else None.
        after: the output the layer's formula gives from its input, else None (a random op).
        window: the inputs a window op (pooling, a linear over rows) reads there, 2-D, else None.
    """

    text: str
    before: float | None = None
    after: float | None = None
    window: torch.Tensor | None = None


def number(v: float) -> str:
    """A number as the panel prints it: 4 significant digits, a real minus sign."""
    text = f"{v:.4g}"
    return "−" + text[1:] if text.startswith("-") else text


def _plus(v: float) -> str:
    return f"+ {number(v)}" if v >= 0 else f"− {number(-v)}"


def _minus(v: float) -> str:
    return f"− {number(v)}" if v >= 0 else f"+ {number(-v)}"


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    return (int(v[0]), int(v[-1]))


def _size(k: tuple[int, int]) -> str:
    return f"{k[0]}×{k[1]}"


# Element-wise layers: the text of each, from the module (its own constants in it). Order matters
# where one class derives from another (ReLU6 is a Hardtanh).
_ELEMENTWISE: list[tuple[type[nn.Module], Callable[[Any, int], str]]] = [
    (nn.ReLU, lambda m, c: "max(0, x)"),
    (nn.ReLU6, lambda m, c: "clamp to [0, 6]"),
    (
        nn.Hardtanh,
        lambda m, c: f"clamp to [{number(m.min_val)}, {number(m.max_val)}]",
    ),
    (
        nn.LeakyReLU,
        lambda m, c: f"x if x ≥ 0, else {number(m.negative_slope)} · x",
    ),
    (
        nn.PReLU,
        lambda m, c: (
            f"x if x ≥ 0, else {number(float(m.weight[c if m.weight.numel() > 1 else 0]))} · x"
        ),
    ),
    (nn.ELU, lambda m, c: f"x if x > 0, else {number(m.alpha)} · (eˣ − 1)"),
    (nn.CELU, lambda m, c: f"max(0, x) + min(0, {number(m.alpha)} · (e^(x/α) − 1))"),
    (nn.SELU, lambda m, c: "1.051 · (x if x > 0, else 1.673 · (eˣ − 1))"),
    (
        nn.GELU,
        lambda m, c: "x · Φ(x) (tanh approximation)" if m.approximate == "tanh" else "x · Φ(x)",
    ),
    (nn.SiLU, lambda m, c: "x · sigmoid(x)"),
    (nn.Mish, lambda m, c: "x · tanh(softplus(x))"),
    (nn.Hardswish, lambda m, c: "x · relu6(x + 3) / 6"),
    (nn.Hardsigmoid, lambda m, c: "relu6(x + 3) / 6"),
    (nn.Sigmoid, lambda m, c: "1 / (1 + e⁻ˣ)"),
    (nn.Tanh, lambda m, c: "tanh(x)"),
    (nn.Softsign, lambda m, c: "x / (1 + |x|)"),
    (nn.Tanhshrink, lambda m, c: "x − tanh(x)"),
    (
        nn.Softplus,
        lambda m, c: f"log(1 + e^({number(m.beta)}·x)) / {number(m.beta)}",
    ),
    (
        nn.Threshold,
        lambda m, c: f"x if x > {number(m.threshold)}, else {number(m.value)}",
    ),
    (nn.Identity, lambda m, c: "passes x through"),
]


@torch.no_grad()
def describe(
    module: nn.Module,
    x: torch.Tensor | None,
    sample: int,
    channel: int,
    row: int,
    col: int,
    out_shape: tuple[int, ...] | None = None,
) -> Step:
    """What ``module`` does at ``channel``, ``row``, ``col`` of its output, from its input ``x``
    (the batch it received, ``(B, C, H, W)``; row ``sample`` is the one asked for).
    ``out_shape``, the output's ``(C, H, W)``, lets a module fmwidget does not know show its
    input at the same position when the two have one shape."""
    name = type(module).__name__
    if x is None or x.dim() != 4:
        return Step(name)
    here = x[sample]
    for kind, text in _ELEMENTWISE:
        if isinstance(module, kind):
            return _elementwise(module, here, channel, row, col, f"{name}: {text(module, channel)}")
    if isinstance(module, _DropoutNd):
        if module.training:
            return Step(
                f"{name} (p = {number(module.p)}), on in training mode: zeroes inputs at random "
                f"and scales the rest by 1 / (1 − p)",
                _at(here, channel, row, col),
            )
        return _elementwise(
            module,
            here,
            channel,
            row,
            col,
            f"{name} (p = {number(module.p)}), off in eval mode: passes x through",
        )
    if isinstance(module, _BatchNorm):
        return _batch_norm(module, x, sample, channel, row, col)
    if isinstance(module, _InstanceNorm):
        return _instance_norm(module, here, channel, row, col)
    if isinstance(module, nn.GroupNorm):
        return _group_norm(module, here, channel, row, col)
    if isinstance(module, nn.LayerNorm):
        return _layer_norm(module, here, channel, row, col)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return _pool(module, here, channel, row, col)
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return _adaptive_pool(module, here, channel, row, col)
    if isinstance(module, nn.Upsample):
        return _upsample(module, here, channel, row, col)
    if isinstance(module, nn.Linear):
        return _linear(module, here, channel, row, col)
    if isinstance(module, (nn.Softmax, nn.Softmax2d)) and _softmax_over_channels(module):
        column = here[:, row, col].double()
        after = float(torch.softmax(column, 0)[channel])
        return Step(
            f"{name} over the {here.shape[0]} channels: eˣ / Σ eˣ of this position's channels",
            _at(here, channel, row, col),
            after,
        )
    if isinstance(module, nn.ConvTranspose2d):
        k, s = _pair(module.kernel_size), _pair(module.stride)
        return Step(
            f"{name} {_size(k)} stride {s[0]}: each input pixel adds its value times the "
            "kernel to the outputs it covers; this value is the sum of what lands here"
        )
    return _unknown(module, here, channel, row, col, out_shape)


def _at(t: torch.Tensor, channel: int, row: int, col: int) -> float | None:
    """``t[channel, row, col]`` when that position exists."""
    c, h, w = t.shape
    return float(t[channel, row, col]) if channel < c and row < h and col < w else None


def _elementwise(
    module: nn.Module, here: torch.Tensor, channel: int, row: int, col: int, text: str
) -> Step:
    before = _at(here, channel, row, col)
    if before is None:
        return Step(text)
    # The module's own forward on that pixel (every channel, so per-channel parameters such as
    # PReLU's line up) on a copy: in-place modules change only the copy, and no hook runs.
    pixel = here[None, :, row : row + 1, col : col + 1].clone()
    after = float(module.forward(pixel)[0, channel, 0, 0])
    return Step(text, before, after)


def _normalised(
    text: str, before: float, mean: float, var: float, eps: float, gamma: float, beta: float
) -> Step:
    after = (before - mean) / math.sqrt(var + eps) * gamma + beta
    return Step(text, before, after)


def _norm_text(
    name: str, mean: float, var: float, eps: float, gamma: float | None, beta: float | None
) -> str:
    affine = "" if gamma is None or beta is None else f" · {number(gamma)} {_plus(beta)}"
    return f"{name}: (x {_minus(mean)}) / √({number(var)} + {number(eps)}){affine}"


def _batch_norm(
    bn: _BatchNorm, x: torch.Tensor, sample: int, channel: int, row: int, col: int
) -> Step:
    name = type(bn).__name__
    before = float(x[sample, channel, row, col])
    running = not bn.training and bn.running_mean is not None and bn.running_var is not None
    if running:
        mean = float(bn.running_mean[channel])  # type: ignore[index]
        var = float(bn.running_var[channel])  # type: ignore[index]
        where = ""
    else:
        # Batch statistics: the whole batch ran (fmwidget.layer_input), so these are the forward's.
        values = x[:, channel].double()
        mean, var = float(values.mean()), float(values.var(unbiased=False))
        where = f", with this batch's mean and variance ({x.shape[0]} inputs)"
    gamma = None if bn.weight is None else float(bn.weight[channel])
    beta = None if bn.bias is None else float(bn.bias[channel])
    text = _norm_text(name, mean, var, bn.eps, gamma, beta) + where
    return _normalised(text, before, mean, var, bn.eps, gamma or 1.0, beta or 0.0)


def _instance_norm(
    norm: _InstanceNorm, here: torch.Tensor, channel: int, row: int, col: int
) -> Step:
    name = type(norm).__name__
    before = float(here[channel, row, col])
    if not norm.training and norm.track_running_stats and norm.running_mean is not None:
        mean = float(norm.running_mean[channel])
        var = float(norm.running_var[channel])  # type: ignore[index]
        where = ""
    else:
        values = here[channel].double()
        mean, var = float(values.mean()), float(values.var(unbiased=False))
        where = ", with this map's own mean and variance"
    gamma = float(norm.weight[channel]) if norm.affine else None
    beta = float(norm.bias[channel]) if norm.affine else None
    text = _norm_text(name, mean, var, norm.eps, gamma, beta) + where
    return _normalised(text, before, mean, var, norm.eps, gamma or 1.0, beta or 0.0)


def _group_norm(norm: nn.GroupNorm, here: torch.Tensor, channel: int, row: int, col: int) -> Step:
    per = here.shape[0] // norm.num_groups
    first = channel // per * per
    values = here[first : first + per].double()
    mean, var = float(values.mean()), float(values.var(unbiased=False))
    gamma = float(norm.weight[channel]) if norm.affine else None
    beta = float(norm.bias[channel]) if norm.affine else None
    text = _norm_text(type(norm).__name__, mean, var, norm.eps, gamma, beta)
    text += f", over this input's channels {first}–{first + per - 1} ({norm.num_groups} groups)"
    before = float(here[channel, row, col])
    return _normalised(text, before, mean, var, norm.eps, gamma or 1.0, beta or 0.0)


def _layer_norm(norm: nn.LayerNorm, here: torch.Tensor, channel: int, row: int, col: int) -> Step:
    dims = len(norm.normalized_shape)
    if dims > 3 or tuple(here.shape[3 - dims :]) != tuple(norm.normalized_shape):
        return Step(type(norm).__name__)
    index = (channel, row, col)
    values = here[index[: 3 - dims]].double()
    mean, var = float(values.mean()), float(values.var(unbiased=False))
    gamma = None if norm.weight is None else float(norm.weight[index[3 - dims :]])
    beta = None if norm.bias is None else float(norm.bias[index[3 - dims :]])
    over = {1: "this row", 2: "this channel's map", 3: "every channel and position"}[dims]
    text = _norm_text(type(norm).__name__, mean, var, norm.eps, gamma, beta) + f", over {over}"
    before = float(here[channel, row, col])
    return _normalised(text, before, mean, var, norm.eps, gamma or 1.0, beta or 0.0)


def _window(
    here: torch.Tensor,
    channel: int,
    rows: range,
    cols: range,
) -> torch.Tensor:
    """The inputs at ``rows`` × ``cols`` of a channel that lie inside the map."""
    h, w = here.shape[1:]
    rs = [r for r in rows if 0 <= r < h]
    cs = [c for c in cols if 0 <= c < w]
    return here[channel][rs][:, cs]


def _pool(
    pool: nn.MaxPool2d | nn.AvgPool2d, here: torch.Tensor, channel: int, row: int, col: int
) -> Step:
    k = _pair(pool.kernel_size)
    s = _pair(pool.stride if pool.stride else pool.kernel_size)
    p = _pair(pool.padding)
    top, left = row * s[0] - p[0], col * s[1] - p[1]
    name = f"{type(pool).__name__} {_size(k)} stride {s[0] if s[0] == s[1] else _size(s)}"
    if isinstance(pool, nn.MaxPool2d):
        d = _pair(pool.dilation)
        rows = range(top, top + d[0] * (k[0] - 1) + 1, d[0])
        cols = range(left, left + d[1] * (k[1] - 1) + 1, d[1])
        window = _window(here, channel, rows, cols)
        n = window.numel()
        return Step(f"{name}: the largest of {n} inputs", None, float(window.max()), window)
    h, w = here.shape[1:]
    window = _window(here, channel, range(top, top + k[0]), range(left, left + k[1]))
    n = window.numel()
    if pool.divisor_override:
        divisor = pool.divisor_override
    elif pool.count_include_pad:
        # PyTorch counts the padding inside the window, but not what lies beyond it (ceil_mode).
        divisor = (min(top + k[0], h + p[0]) - top) * (min(left + k[1], w + p[1]) - left)
    else:
        divisor = n
    after = float(window.double().sum()) / divisor
    how = f"the mean of {n} inputs" if divisor == n else f"the sum of {n} inputs / {divisor}"
    return Step(f"{name}: {how}", None, after, window)


def _adaptive_range(i: int, size: int, out: int) -> range:
    return range(i * size // out, -(-(i + 1) * size // out))


def _adaptive_pool(
    pool: nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d,
    here: torch.Tensor,
    channel: int,
    row: int,
    col: int,
) -> Step:
    h, w = here.shape[1:]
    size = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
    oh, ow = (h if size[0] is None else size[0]), (w if size[-1] is None else size[-1])
    rows, cols = _adaptive_range(row, h, oh), _adaptive_range(col, w, ow)
    window = _window(here, channel, rows, cols)
    n = window.numel()
    where = f"rows {rows.start}–{rows.stop - 1}, cols {cols.start}–{cols.stop - 1}"
    name = f"{type(pool).__name__} to {oh}×{ow}"
    if isinstance(pool, nn.AdaptiveMaxPool2d):
        return Step(
            f"{name}: the largest of {n} inputs ({where})", None, float(window.max()), window
        )
    after = float(window.double().mean())
    return Step(f"{name}: the mean of {n} inputs ({where})", None, after, window)


def _upsample(up: nn.Upsample, here: torch.Tensor, channel: int, row: int, col: int) -> Step:
    h, w = here.shape[1:]
    factor = up.scale_factor
    name = f"{type(up).__name__} ({up.mode})"
    if up.mode != "nearest":
        return Step(f"{name}: blends the nearest inputs, weighted by distance")
    if factor is not None and not up.recompute_scale_factor:
        fy, fx = (factor, factor) if isinstance(factor, (int, float)) else factor
        scale_y, scale_x = 1 / fy, 1 / fx
    else:
        size = up.size if isinstance(up.size, tuple) else (up.size, up.size)
        scale_y, scale_x = h / size[0], w / size[-1]  # type: ignore[operator]
    # F.interpolate's "nearest": the source pixel is floor(output index × scale).
    sr, sc = min(math.floor(row * scale_y), h - 1), min(math.floor(col * scale_x), w - 1)
    before = float(here[channel, sr, sc])
    return Step(f"{name}: copies input pixel (row {sr}, col {sc})", before, before)


def _linear(lin: nn.Linear, here: torch.Tensor, channel: int, row: int, col: int) -> Step:
    if here.shape[-1] != lin.in_features or col >= lin.out_features:
        return Step(type(lin).__name__)
    inputs = here[channel, row].double()
    weight = lin.weight[col].detach().double()
    bias = 0.0 if lin.bias is None else float(lin.bias[col])
    after = float((inputs * weight).sum()) + bias
    text = (
        f"Linear ({lin.in_features} → {lin.out_features}) along each row: "
        f"Σ of {lin.in_features} products weight[{col}, k] · x[row {row}, k] {_plus(bias)}"
    )
    return Step(text, None, after, here[channel, row : row + 1])


def _softmax_over_channels(module: nn.Softmax | nn.Softmax2d) -> bool:
    return isinstance(module, nn.Softmax2d) or module.dim in (1, -3)


def _unknown(
    module: nn.Module,
    here: torch.Tensor,
    channel: int,
    row: int,
    col: int,
    out_shape: tuple[int, ...] | None,
) -> Step:
    name = type(module).__name__
    children = len(list(module.children()))
    if children:
        name += f": a block of {children} module{'s' if children > 1 else ''}"
    if out_shape is None or tuple(here.shape) != tuple(out_shape):
        return Step(name)
    return Step(f"{name} (its input here → its output)", _at(here, channel, row, col))
