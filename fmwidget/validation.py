"""Checks of what users and the browser ask for, with errors that name what to change.

Each check raises ``ValueError`` (``TypeError`` for a wrong type) and returns the value it
accepted; the widget's trait validators and the request handlers both call them.

    >>> check_channel(3, "layer1", 64)
    3
    >>> channel_list((1, 2))
    [1, 2]
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import traitlets

__all__ = [
    "CAM_LABELS",
    "channel_list",
    "check_cam_method",
    "check_channel",
    "check_channels",
    "check_options",
    "check_sample",
    "check_target",
    "trait_check",
]

#: How the view names each CAM method (also in error messages).
CAM_LABELS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "xgradcam": "XGrad-CAM",
    "layercam": "LayerCAM",
    "scorecam": "Score-CAM",
    "ablationcam": "Ablation-CAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "Eigen-Grad-CAM",
    "hirescam": "HiResCAM",
    "gradcam-elementwise": "Grad-CAM element-wise",
}


def is_int(value: Any) -> bool:
    """An integer that is not a bool (JSON gives both)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_channel(channel: Any, layer: str, count: int) -> int:
    """A channel index of ``layer`` (which has ``count`` channels)."""
    if not is_int(channel) or not 0 <= channel < count:
        raise ValueError(
            f"channel {channel!r} is out of range: layer {layer!r} has {count} channels "
            f"(0 to {count - 1})"
        )
    return int(channel)


def check_channels(
    channels: Iterable[Any], layer: str, count: int, what: str = "channels"
) -> list[int]:
    """Channel indices of ``layer``; the message lists every one out of range, as ``what``."""
    channels = list(channels)
    bad = [c for c in channels if not is_int(c) or not 0 <= c < count]
    if bad:
        raise ValueError(
            f"{what} {bad} are out of range: layer {layer!r} has {count} channels "
            f"(0 to {count - 1})"
        )
    return [int(c) for c in channels]


def channel_list(channels: Any) -> list[int]:
    """``channels`` (ints, an int tensor or array) as a list; floats are refused, not rounded."""
    values = channels.tolist() if hasattr(channels, "tolist") else list(channels)
    try:
        return [operator.index(c) for c in values]
    except TypeError:
        raise TypeError(f"channels must be channel indices (ints), got {values!r}") from None


def check_sample(sample: Any, num_samples: int) -> int:
    """A sample index of a batch of ``num_samples`` inputs."""
    if not is_int(sample) or not 0 <= sample < num_samples:
        raise ValueError(
            f"sample {sample!r} is out of range: the batch has {num_samples} inputs "
            f"(0 to {num_samples - 1})"
        )
    return int(sample)


def check_frame(frame: Any, frames: int) -> int:
    """An input frame of a clip of ``frames`` frames (0: the model has no video layer)."""
    if frames == 0:
        if is_int(frame) and frame == 0:
            return 0
        raise ValueError(
            f"frame {frame!r}: this model has no video layers ((N, C, T, H, W) outputs), so "
            "there is only frame 0"
        )
    if not is_int(frame) or not 0 <= frame < frames:
        raise ValueError(
            f"frame {frame!r} is out of range: the clip has {frames} frames (0 to {frames - 1})"
        )
    return int(frame)


def check_target(target: Any, classes: int | None) -> int | None:
    """A class index (``None``: the predicted class) of a model with ``classes`` outputs."""
    if target is None:
        return None
    if not is_int(target):
        raise ValueError(f"target must be a class index or None, got {target!r}")
    if classes is not None and not 0 <= target < classes:
        raise ValueError(
            f"target class {target} is out of range: the model outputs {classes} classes"
        )
    return int(target)


def check_cam_method(method: Any, available: Sequence[str]) -> str:
    """One of the CAM methods this widget offers."""
    if method not in available:
        extra = (
            "" if len(available) > 1 else " (pip install grad-cam adds Grad-CAM++, Score-CAM, ...)"
        )
        raise ValueError(
            f"unknown CAM method {method!r}; this widget offers {', '.join(available)}{extra}"
        )
    return str(method)


def check_options(
    widget: traitlets.HasTraits, options: dict[str, Any], kernel_traits: Iterable[str]
) -> None:
    """Keyword options of a widget checked against its traits' names, types, ranges and choices.

    A name the widget does not have gets the closest one it does; a trait the kernel writes is
    refused. What depends on the data (a layer name, a sample index) is not checked here:
    cross-validation is off.
    """
    owner = type(widget).__name__
    for key in options:
        if key in kernel_traits:
            raise TypeError(f"{key!r} is set by the widget from the model; it is not an option")
        if not widget.has_trait(key):
            close = difflib.get_close_matches(key, widget.trait_names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{owner} got an unexpected keyword argument {key!r}{hint}")
    with widget.cross_validation_lock:
        for key, value in options.items():
            widget.traits()[key]._validate(widget, value)


def trait_check(check: Callable[..., Any], value: Any, *args: Any, hint: str = "") -> Any:
    """``check(value, *args)``, its error raised as the ``TraitError`` traitlets shows."""
    try:
        return check(value, *args)
    except (ValueError, TypeError, KeyError) as error:
        # Without the chain: the check's own traceback would come first and say the same.
        raise traitlets.TraitError(f"{error}{hint}") from None
