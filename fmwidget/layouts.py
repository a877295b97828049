"""What an activation's dimensions mean, and its (N, C, H, W) view: for :mod:`fmwidget.capture`.

Three layouts reach the view as (N, C, H, W) feature maps, each by a view of the module's own
output (no copy):

- ``nchw``: a convolution's output, as it is.
- ``nhwc``: channels last, (N, H, W, C): a ``Linear``, or a ``LayerNorm`` over the last dimension,
  applied to a 4-D input (ConvNeXt's and Swin's MLPs), a ``Permute`` module to (0, 2, 3, 1), and
  any module that keeps the shape of a channels-last input (activations, dropout, layer scale,
  a Swin block). Shown through ``permute(0, 3, 1, 2)``.
- ``tokens``: a vision transformer block's (N, extra + h·w, D) output, the ``extra`` class /
  register / distillation tokens first. Shown as the (N, D, h, w) map of the patch tokens, with
  h × w the grid of the patch embedding's (N, D, h, w) convolution.

Example::

    >>> t = torch.zeros(2, 1 + 4 * 4, 192)
    >>> as_map(t, Layout("tokens", extra=1, grid=(4, 4))).shape
    torch.Size([2, 192, 4, 4])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "NCHW",
    "NHWC",
    "Layout",
    "as_map",
    "from_map",
    "is_attention",
    "map_layout",
    "may_reorder",
    "token_layout",
]

#: The most class/register/distillation tokens a transformer block's output may carry besides
#: its patch tokens (timm goes up to 1 class + 8 registers + 1 distillation token).
MAX_EXTRA_TOKENS = 16


@dataclass(frozen=True)
class Layout:
    """``kind`` is ``nchw``, ``nhwc`` or ``tokens``; ``extra`` and ``grid`` (h, w) only for
    tokens."""

    kind: str
    extra: int = 0
    grid: tuple[int, int] = (0, 0)


NCHW = Layout("nchw")
NHWC = Layout("nhwc")


def as_map(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """``t`` as (N, C, H, W): a view of it."""
    if layout.kind == "nhwc":
        return t.permute(0, 3, 1, 2)
    if layout.kind == "tokens":
        h, w = layout.grid
        patches = t[:, layout.extra :]
        return patches.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
    return t


def from_map(m: torch.Tensor, t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """What a differentiable capture lets the model continue with: a new tensor equal to ``t``
    computed from its map ``m``, so that gradients with respect to ``m`` flow."""
    if layout.kind == "nhwc":
        return m.permute(0, 2, 3, 1).clone()
    if layout.kind == "tokens":
        patches = m.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[2])
        return torch.cat([t[:, : layout.extra], patches], dim=1)
    return m.clone()


def map_layout(
    module: nn.Module, x: torch.Tensor | None, fed: Layout | None, out: torch.Tensor
) -> Layout:
    """The layout of ``module``'s 4-D output ``out``, from its first input ``x`` and ``fed``,
    the layout of the captured layer whose output ``x`` is (``None``: not known)."""
    if isinstance(module, nn.Linear) and x is not None and x.dim() == 4:
        return NHWC
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and _over_last_dim(module, x):
        return NHWC
    dims = getattr(module, "dims", None)
    if isinstance(dims, (list, tuple)) and len(dims) == 4:
        if list(dims) == [0, 2, 3, 1]:
            return NHWC
        if list(dims) == [0, 3, 1, 2]:
            return NCHW
    if (
        fed == NHWC
        and x is not None
        and x.shape == out.shape
        and not isinstance(module, (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase))
    ):
        # Element-wise (activation, dropout, layer scale) or a residual block on that input.
        return NHWC
    return NCHW


def _over_last_dim(module: nn.Module, x: torch.Tensor | None) -> bool:
    shape = tuple(getattr(module, "normalized_shape", ()) or ())
    if x is None or x.dim() != 4 or len(shape) != 1 or x.shape[-1] != shape[0]:
        return False
    if x.shape[1] != shape[0]:
        return True
    # C == W: only the class says which; timm's LayerNorm2d permutes to channels-last inside.
    return "2d" not in type(module).__name__.lower()


def token_layout(t: torch.Tensor, grids: dict[int, tuple[int, int]]) -> Layout | None:
    """The tokens layout of a 3-D (N, T, D) output, or ``None`` when it is not patch tokens.

    ``grids`` maps a channel count D to the (h, w) of the latest (N, D, h, w) convolution output:
    a patch embedding's grid, without which tokens are no map."""
    tokens, dim = t.shape[1], t.shape[2]
    grid = grids.get(dim)
    if grid is None or grid[0] * grid[1] < 2:
        return None
    extra = tokens - grid[0] * grid[1]
    if not 0 <= extra <= MAX_EXTRA_TOKENS:
        return None
    return Layout("tokens", extra=extra, grid=grid)


def may_reorder(model: nn.Module) -> bool:
    """Whether some layer of ``model`` may not be (N, C, H, W) as it is: it has a LayerNorm, an
    RMSNorm or a 4-D ``Permute`` module (channels last), or attention (tokens). A plain CNN's
    layers all read as they are, without a forward to find out."""
    for m in model.modules():
        dims = getattr(m, "dims", None)
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm, nn.MultiheadAttention)):
            return True
        if isinstance(dims, (list, tuple)) and len(dims) == 4:
            return True
        if is_attention(m):
            return True
    return False


# Transformer attention classes whose names do not say "attention" (timm's CaiT, EdgeNeXt and
# Twins). timm's CNN attention modules are also named "...Attn" (SplitAttn, ChannelAttn,
# CoordAttn) but hold real feature maps (ResNeSt's main convolutions run inside SplitAttn).
_ATTENTION_CLASSES = frozenset(
    {
        "classattn",
        "talkingheadattn",
        "crosscovarianceattn",
        "xca",
        "locallygroupedattn",
        "globalsubsampleattn",
    }
)


def is_attention(module: nn.Module) -> bool:
    """A transformer attention module, by what its class says it is (``MultiheadAttention``,
    timm's ``Attention``, ``WindowAttention``, ``ClassAttn``, EdgeNeXt's ``CrossCovarianceAttn``,
    torchvision's ``ShiftedWindowAttention``): what runs inside one (q/k/v, attention weights, a
    position-bias table) is not a feature map of the input."""
    name = type(module).__name__.lower()
    return "attention" in name or name in _ATTENTION_CLASSES
