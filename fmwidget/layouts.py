"""What an activation's dimensions mean, and its (N, C, H, W) view: for :mod:`fmwidget.capture`.

Five layouts reach the view as (N, C, H, W) feature maps, each by a view of the module's own
output (no copy):

- ``nchw``: a convolution's output, as it is.
- ``nhwc``: channels last, (N, H, W, C): a ``Linear``, or a ``LayerNorm`` over the last dimension,
  applied to a 4-D input (ConvNeXt's and Swin's MLPs), a ``Permute`` module to (0, 2, 3, 1), and
  any module that keeps the shape of a channels-last input (activations, dropout, layer scale,
  a Swin block). Shown through ``permute(0, 3, 1, 2)``.
- ``tokens``: a vision transformer block's (N, extra + h·w, D) output, the ``extra`` class /
  register / distillation tokens first. Shown as the (N, D, h, w) map of the patch tokens, with
  h × w the grid of the patch embedding's (N, D, h, w) convolution. A video transformer's
  (N, extra + T·h·w, D) tokens (MViT) are frames of such maps, their grid that of the latest
  (N, C, T, h, w) output with as many positions (the patch embedding, a pooling).
- ``ncthw``: a video layer's (N, C, T, H, W) output (``Conv3d``, 3-D pooling and norms), shown one
  frame at a time: ``t[:, :, k]``.
- ``nthwc``: a video transformer's channels-last (N, T, H, W, C) tensor (Video Swin), by the same
  rules as ``nhwc``: ``t[:, k].permute(0, 3, 1, 2)``.

Which frame ``k`` a video layer shows follows the input clip (:class:`Frame`): a layer with fewer
frames than the clip (a temporal stride) shows the one that covers the chosen input frame, so that
scrubbing through the clip moves every layer along with it. :mod:`fmwidget.capture` copies that
frame as the layer is produced, so a clip's other frames are never kept.

Example::

    >>> t = torch.zeros(2, 1 + 4 * 4, 192)
    >>> as_map(t, Layout("tokens", extra=1, grid=(4, 4))).shape
    torch.Size([2, 192, 4, 4])
    >>> Frame(5, clip=16).of(4)  # input frame 5 of 16, in a layer with 4 frames
    1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "NCHW",
    "NHWC",
    "Frame",
    "Layout",
    "as_clip",
    "as_map",
    "attention_class",
    "from_map",
    "is_attention",
    "map_layout",
    "may_reorder",
    "reorders",
    "reorders_class",
    "reorders_dims",
    "token_layout",
]

#: The most class/register/distillation tokens a transformer block's output may carry besides
#: its patch tokens (timm goes up to 1 class + 8 registers + 1 distillation token).
MAX_EXTRA_TOKENS = 16


@dataclass(frozen=True)
class Layout:
    """``kind`` is ``nchw``, ``nhwc``, ``tokens``, ``ncthw`` or ``nthwc``; ``extra`` and
    ``grid`` (h, w) only for tokens; ``frames`` (the layer's T) and ``frame`` (the one shown)
    only for video layers."""

    kind: str
    extra: int = 0
    grid: tuple[int, int] = (0, 0)
    frames: int = 0
    frame: int = 0

    @property
    def channels_last(self) -> bool:
        return self.kind in ("nhwc", "nthwc")


NCHW = Layout("nchw")
NHWC = Layout("nhwc")


@dataclass(frozen=True)
class Frame:
    """The input frame a capture shows (``index``) and the clip's length (``clip``: the inputs'
    T, ``None`` when no input is an (N, C, T, H, W) clip)."""

    index: int = 0
    clip: int | None = None

    def of(self, frames: int) -> int:
        """The frame of a layer with ``frames`` frames that covers input frame ``index``."""
        if self.clip:
            return min(frames - 1, self.index * frames // self.clip)
        return min(frames - 1, self.index)


def as_map(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """``t`` as (N, C, H, W): a view of it."""
    kind = layout.kind
    if kind == "nhwc":
        return t.permute(0, 3, 1, 2)
    if kind == "tokens":
        h, w = layout.grid
        patches = t[:, layout.extra :]
        if layout.frames:
            patches = patches.reshape(t.shape[0], layout.frames, h * w, t.shape[2])
            patches = patches[:, layout.frame]
        return patches.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
    if kind == "ncthw":
        return t[:, :, layout.frame]
    if kind == "nthwc":
        return t[:, layout.frame].permute(0, 3, 1, 2)
    return t


def as_clip(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """A video layer's ``t`` as (N, C, T, H, W), every frame: a view of it."""
    if layout.kind == "nthwc":
        return t.permute(0, 4, 1, 2, 3)
    if layout.kind == "tokens":
        h, w = layout.grid
        patches = t[:, layout.extra :].reshape(t.shape[0], layout.frames, h, w, t.shape[2])
        return patches.permute(0, 4, 1, 2, 3)
    return t


def from_map(m: torch.Tensor, t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """What a differentiable capture lets the model continue with: a new tensor equal to ``t``
    computed from its map ``m``, so that gradients with respect to ``m`` flow."""
    kind, k = layout.kind, layout.frame
    if kind == "nhwc":
        return m.permute(0, 2, 3, 1).clone()
    if kind == "tokens":
        patches = m.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[2])
        if layout.frames:
            per_frame = layout.grid[0] * layout.grid[1]
            start = layout.extra + layout.frame * per_frame
            before, after = t[:, :start], t[:, start + per_frame :]
            return torch.cat([before, patches, after], dim=1)
        return torch.cat([t[:, : layout.extra], patches], dim=1)
    if kind == "ncthw":
        return torch.cat([t[:, :, :k], m.unsqueeze(2), t[:, :, k + 1 :]], dim=2)
    if kind == "nthwc":
        frame = m.permute(0, 2, 3, 1).unsqueeze(1)
        return torch.cat([t[:, :k], frame, t[:, k + 1 :]], dim=1)
    return m.clone()


def map_layout(
    module: nn.Module,
    x: torch.Tensor | None,
    fed: Layout | None,
    out: torch.Tensor,
    frame: Frame | None = None,
) -> Layout:
    """The layout of ``module``'s 4-D or 5-D output ``out``, from its first input ``x`` and
    ``fed``, the layout of the captured layer whose output ``x`` is (``None``: not known); a
    video layer shows the frame of it that covers ``frame``."""
    last = _channels_last(module, x, fed, out)
    if out.dim() == 5:
        frames = out.shape[1] if last else out.shape[2]
        index = (frame or Frame()).of(frames)
        return Layout("nthwc" if last else "ncthw", frames=frames, frame=index)
    return NHWC if last else NCHW


def _channels_last(
    module: nn.Module, x: torch.Tensor | None, fed: Layout | None, out: torch.Tensor
) -> bool:
    rank = out.dim()
    if isinstance(module, nn.Linear) and x is not None and x.dim() == rank:
        return True
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and _over_last_dim(module, x, rank):
        return True
    dims = getattr(module, "dims", None)
    if isinstance(dims, (list, tuple)) and len(dims) == rank:
        if list(dims) == [0, *range(2, rank), 1]:
            return True
        if list(dims) == [0, rank - 1, *range(1, rank - 1)]:
            return False
    # Element-wise (activation, dropout, layer scale) or a residual block on that input.
    return (
        fed is not None
        and fed.channels_last
        and x is not None
        and x.shape == out.shape
        and not isinstance(module, (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase))
    )


def _over_last_dim(module: nn.Module, x: torch.Tensor | None, rank: int = 4) -> bool:
    shape = tuple(getattr(module, "normalized_shape", ()) or ())
    if x is None or x.dim() != rank or len(shape) != 1 or x.shape[-1] != shape[0]:
        return False
    if x.shape[1] != shape[0]:
        return True
    # C == W: only the class says which; timm's LayerNorm2d permutes to channels-last inside.
    return "2d" not in type(module).__name__.lower()


def token_layout(
    t: torch.Tensor,
    grids: dict[int, tuple[int, int]],
    clip_grids: dict[int, tuple[int, int, int]] | None = None,
    frame: Frame | None = None,
) -> Layout | None:
    """The tokens layout of a 3-D (N, T, D) output, or ``None`` when it is not patch tokens.

    ``grids`` maps a channel count D to the (h, w) of the latest (N, D, h, w) convolution output:
    a patch embedding's grid, without which tokens are no map. ``clip_grids`` maps a token count
    T·h·w to the (T, h, w) of the latest 5-D output with that many positions (video tokens; the
    frame covering ``frame`` is shown)."""
    tokens, dim = t.shape[1], t.shape[2]
    grid = grids.get(dim)
    if grid is not None and grid[0] * grid[1] >= 2:
        extra = tokens - grid[0] * grid[1]
        if 0 <= extra <= MAX_EXTRA_TOKENS:
            return Layout("tokens", extra=extra, grid=grid)
    for extra in range(MAX_EXTRA_TOKENS + 1):
        clip = (clip_grids or {}).get(tokens - extra)
        if clip is not None and clip[0] * clip[1] * clip[2] >= 2:
            frames, h, w = clip
            index = (frame or Frame()).of(frames)
            return Layout("tokens", extra=extra, grid=(h, w), frames=frames, frame=index)
    return None


def may_reorder(model: nn.Module) -> bool:
    """Whether some layer of ``model`` may not be (N, C, H, W) as it is: it has a LayerNorm, an
    RMSNorm or a 4-D or 5-D ``Permute`` module (channels last), attention (tokens) or 3-D
    convolutions (video). A plain CNN's layers all read as they are, without a forward to find
    out."""
    return any(reorders(m) for m in model.modules())


def reorders(module: nn.Module) -> bool:
    """Whether ``module`` is one that makes :func:`may_reorder` true."""
    cls = type(module)
    # From the instance or its class, without nn.Module.__getattr__'s slow miss.
    return reorders_dims(module.__dict__.get("dims", getattr(cls, "dims", None))) or (
        reorders_class(cls)
    )


def reorders_dims(dims: object) -> bool:
    """Whether a module's ``dims`` attribute is a 4-D or 5-D permutation (a ``Permute``)."""
    return isinstance(dims, (list, tuple)) and len(dims) in (4, 5)


def reorders_class(cls: type) -> bool:
    """What :func:`reorders` says of every module of class ``cls`` (its ``dims`` aside)."""
    found = _REORDERS_BY_TYPE.get(cls)
    if found is None:
        kinds = (nn.LayerNorm, nn.RMSNorm, nn.MultiheadAttention, nn.Conv3d)
        found = _REORDERS_BY_TYPE[cls] = issubclass(cls, kinds) or attention_class(cls)
    return found


# What the class alone says (a model has a few classes and many modules).
_REORDERS_BY_TYPE: dict[type, bool] = {}


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
    return attention_class(type(module))


_ATTENTION_BY_TYPE: dict[type, bool] = {}


def attention_class(cls: type) -> bool:
    found = _ATTENTION_BY_TYPE.get(cls)
    if found is None:
        name = cls.__name__.lower()
        found = _ATTENTION_BY_TYPE[cls] = "attention" in name or name in _ATTENTION_CLASSES
    return found
