"""Receptive fields, measured for any architecture: which input pixels can move one position of a
layer.

The method: a copy of the model in which every nonlinearity is made pass-through (activation
modules become identities, max-pooling becomes average pooling over the same window, dropout is
off) and every weight is positive, run in float64 on an all-ones input. The gradient of the
layer's output at ``(row, col)`` (summed over channels) with respect to the input is then
non-zero exactly on the pixels some path of the network connects to that position: its
theoretical receptive field, with no cancellation and no dead ReLU hiding part of it. It works
through residual adds, concatenations, attention and strided or dilated convolutions alike, because
autograd follows whatever the forward does. Functional nonlinearities (``F.relu``) stay in the copy;
at a positive input with positive weights they pass gradients through anyway.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3), torch.nn.Conv2d(1, 1, 3))
    >>> receptive_field(net, torch.zeros(1, 1, 16, 16), "1", 0, 0)
    (0, 0, 5, 5)
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
from torch import nn

from fmwidget.calling import call_model, rebuild, resolve_layer, tapped, tensors_in

__all__ = ["fields_and_centres", "receptive_field", "receptive_fields"]

_AVG_FOR_MAX: dict[type[nn.Module], Any] = {
    nn.MaxPool1d: nn.AvgPool1d,
    nn.MaxPool2d: nn.AvgPool2d,
    nn.MaxPool3d: nn.AvgPool3d,
}
_ADAPTIVE: dict[type[nn.Module], Any] = {
    nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
}
# Element-wise nonlinearities and dropout: the identity keeps their shape and every path. (Not
# capture's "act" kind, which also holds shape-changing ones such as GLU.)
_NONLINEAR = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Dropout,
    nn.Dropout2d,
    nn.Dropout3d,
)

# One pass-through copy per model (models are not hashable by value; a weak key per object).
_LINEAR_COPIES: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def receptive_field(
    model: nn.Module, inputs: Any, layer: str, row: int, col: int
) -> tuple[int, int, int, int]:
    """The input region ``(top, left, bottom, right)`` (bottom/right exclusive, clipped to the
    input) that can influence position ``(row, col)`` of ``layer``'s maps.

    ``inputs`` only give the input's shape (the first 4-D tensor among them is the image); the
    model is not changed (a pass-through copy is made once per model and kept while the model
    lives). Layers are named as for :func:`fmwidget.capture.capture`.
    """
    return receptive_fields(model, inputs, layer, [(row, col)])[0]


def receptive_fields(
    model: nn.Module, inputs: Any, layer: str, positions: list[tuple[int, int]]
) -> list[tuple[int, int, int, int]]:
    """:func:`receptive_field` of several positions of one layer, in one forward and backward
    (a batch with one copy of the probe per position)."""
    return [box for box, _ in fields_and_centres(model, inputs, layer, positions)]


def fields_and_centres(
    model: nn.Module, inputs: Any, layer: str, positions: list[tuple[int, int]]
) -> list[tuple[tuple[int, int, int, int], tuple[int, int]]]:
    """Each position's receptive field and its centre ``(y, x)`` in the input.

    The centre is where the most paths of the pass-through copy meet (the largest gradient; the
    middle of the pixels that tie): the input pixel the position is centred on, even where the
    field is clipped by the image's border.
    """
    if not positions:
        return []
    linear = _linear_copy(model)
    device = next(linear.parameters(), torch.empty(0)).device
    probe = _probe_inputs(inputs, device, len(positions))
    image = next((t for _, t in tensors_in(probe, "") if t.dim() == 4), None)
    if image is None:
        raise ValueError("receptive_field needs inputs with an (N, C, H, W) image tensor")
    image.requires_grad_(True)
    ref = resolve_layer(linear, layer)
    grabbed: list[torch.Tensor] = []

    def grab(out: torch.Tensor) -> torch.Tensor:
        grabbed.append(out)
        return out

    with torch.enable_grad(), tapped(ref, grab) as tap:
        call_model(linear, probe)
        tap.check_called()
    out = grabbed[0]
    if out.dim() != 4:
        raise ValueError(f"layer {layer!r} has {out.dim()}-D output; a receptive field needs 4-D")
    h, w = out.shape[-2:]
    for row, col in positions:
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"position ({row}, {col}) is outside layer {layer!r}'s {h}×{w} maps")
    # Samples of the batch are independent (eval mode): each one's gradient is its own field.
    picked = torch.stack([out[i, :, r, c].sum() for i, (r, c) in enumerate(positions)])
    (grad,) = torch.autograd.grad(picked.sum(), image)
    fields: list[tuple[tuple[int, int, int, int], tuple[int, int]]] = []
    for weight in grad.abs().sum(1):
        support = weight > 0
        rows = torch.nonzero(support.any(1)).flatten()
        cols = torch.nonzero(support.any(0)).flatten()
        if rows.numel() == 0:
            fields.append(((0, 0, 0, 0), (0, 0)))
            continue
        box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
        centre = torch.nonzero(weight >= weight.max() * (1 - 1e-9)).double().mean(0)
        fields.append((box, (int(centre[0].round()), int(centre[1].round()))))
    return fields


def _linear_copy(model: nn.Module) -> nn.Module:
    found = _LINEAR_COPIES.get(model)
    if found is not None:
        return found
    linear = copy.deepcopy(model).double().eval()
    _make_pass_through(linear)
    with torch.no_grad():
        for p in linear.parameters():
            # Positive weights of unit fan-in sum: every path counts and nothing overflows.
            if p.dim() > 2:
                # Peaked at the kernel's centre, so the largest gradient marks the centre of a
                # field (every pixel of a one-conv field would tie under flat weights).
                p.copy_(_tent(p.shape).expand_as(p))
            else:
                p.fill_(1.0 / max(1, p[0].numel() if p.dim() > 1 else 1))
            p.requires_grad_(False)
        for name, b in linear.named_buffers():
            if name.endswith("running_var"):
                b.fill_(1.0)
            elif name.endswith("running_mean"):
                b.zero_()
    _LINEAR_COPIES[model] = linear
    return linear


def _tent(shape: torch.Size) -> torch.Tensor:
    """A positive kernel over the spatial dims of a weight ``(out, in, *spatial)``, highest in the
    middle, summing to one over each output's fan-in."""
    profile = torch.ones(1, dtype=torch.float64)
    for k in shape[2:]:
        i = torch.arange(k, dtype=torch.float64)
        profile = profile[..., None] * (1 + torch.minimum(i, k - 1 - i))
    profile = profile.expand(shape[1], *shape[2:])
    return (profile / profile.sum()).expand(shape[0], *profile.shape)


def _make_pass_through(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, _NONLINEAR):
            setattr(module, name, nn.Identity())
        elif type(child) in _AVG_FOR_MAX:
            pool: Any = child
            avg = _AVG_FOR_MAX[type(child)](
                pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode
            )
            setattr(module, name, avg)
        elif type(child) in _ADAPTIVE:
            setattr(module, name, _ADAPTIVE[type(child)](child.output_size))
        else:
            _make_pass_through(child)


def _probe_inputs(inputs: Any, device: torch.device, n: int) -> Any:
    """All-ones float64 tensors shaped like ``n`` copies of the first sample of ``inputs``."""

    def probe(t: torch.Tensor) -> torch.Tensor:
        first = t[:1].expand(n, *t.shape[1:])
        if t.is_floating_point():
            return torch.ones(first.shape, dtype=torch.float64, device=device)
        return first.to(device)

    return rebuild(inputs, probe)
