"""Images as people have them — files, PIL images, numpy arrays — turned into the model's batch.

``FeatureMapWidget(model, "cat.jpg", preprocess=weights.transforms())`` and
``fmwidget.to_batch(images, preprocess)`` accept one image or a list: a path, a PIL image, an
``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` array (uint8, or floats in [0, 1]), or an
``(N, H, W, C)`` array. With ``preprocess`` (any callable from a PIL image to a ``(C, H, W)``
tensor, such as a torchvision weights' ``transforms()``) each image goes through it; without,
images become float tensors in [0, 1] as they are (they must then share one size). The pictures
the view shows are the images themselves, cut and resized as ``preprocess`` does (its PIL-to-PIL
steps, or the resize and centre crop of a torchvision preset), so overlays line up with the
input; where that cannot be known the view shows the input tensor instead.

    >>> import numpy as np
    >>> x, pictures = to_batch([np.zeros((8, 8, 3), np.uint8), np.ones((8, 8, 3), np.uint8)])
    >>> tuple(x.shape), pictures[0].shape
    ((2, 3, 8, 8), (8, 8, 3))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = ["check_batched", "is_pictures", "model_inputs", "to_batch"]

Preprocess = Callable[[Any], Any]


def _is_picture(value: Any) -> bool:
    return isinstance(value, (Image.Image, np.ndarray, str, os.PathLike))


def is_pictures(inputs: Any) -> bool:
    """Whether ``inputs`` are images to convert (not tensors, or tuples of model arguments)."""
    if isinstance(inputs, (list, tuple)):
        return bool(inputs) and all(_is_picture(item) for item in inputs)
    return _is_picture(inputs)


def to_batch(
    images: Any, preprocess: Preprocess | None = None, channels: int | None = None
) -> tuple[torch.Tensor, list[np.ndarray] | None]:
    """The ``(N, C, H, W)`` float batch of ``images`` and their pictures (``None`` when
    ``preprocess`` changes the geometry in a way that cannot be followed).

    ``channels`` (1 or 3) converts colour to grey or grey to colour to fit a model's first layer.
    """
    pils = [_open(item) for item in _items(images)]
    if channels in (1, 3):
        pils = [p.convert("L" if channels == 1 else "RGB") for p in pils]
    if preprocess is None:
        tensors = [_to_tensor(p) for p in pils]
        sizes = {tuple(t.shape) for t in tensors}
        if len(sizes) > 1:
            listed = ", ".join(f"{s[2]}×{s[1]}" for s in sorted(sizes))
            raise ValueError(
                f"the images have different sizes ({listed}); pass preprocess= (e.g. a torchvision "
                "weights' transforms()) to bring them to one"
            )
        pictures: list[np.ndarray] | None = [_rgb(p) for p in pils]
        return torch.stack(tensors), pictures
    batch = []
    for pil in pils:
        out = preprocess(pil)
        if not isinstance(out, torch.Tensor) or out.dim() != 3:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(
                f"preprocess= must turn a PIL image into a (C, H, W) tensor; it returned {got}"
            )
        batch.append(out)
    x = torch.stack(batch)
    aligned = [_aligned(pil, preprocess) for pil in pils]
    kept = [p for p in aligned if p is not None and p.shape[:2] == tuple(x.shape[-2:])]
    return x, kept if len(kept) == len(aligned) else None


def model_inputs(
    model: nn.Module, inputs: Any, preprocess: Preprocess | None
) -> tuple[Any, list[np.ndarray] | None]:
    """What the widget runs the model on, and the pictures to show (``None``: the input itself).

    Images are converted (:func:`to_batch`, to the first conv's channels); tensors pass as they
    are, after :func:`check_batched`.
    """
    if is_pictures(inputs):
        return to_batch(inputs, preprocess, _first_conv_channels(model))
    if preprocess is not None:
        raise TypeError(
            "preprocess= is for images (file paths, PIL images, arrays); the inputs are already "
            f"a {type(inputs).__name__}: pass them without preprocess="
        )
    check_batched(model, inputs)
    return inputs, None


def check_batched(model: nn.Module, inputs: Any) -> None:
    """A single image without its batch dimension, for a 2-D CNN, gets the fix up front."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 3:
        return
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if isinstance(first, nn.Conv2d):
        shape = tuple(inputs.shape)
        raise ValueError(
            f"the input has shape {shape}: one image without its batch dimension; add it with "
            "x[None] (or x.unsqueeze(0))"
        )


def _first_conv_channels(model: nn.Module) -> int | None:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if first is None else first.in_channels


def _items(images: Any) -> list[Any]:
    if isinstance(images, np.ndarray) and images.ndim == 4:
        # (N, H, W, C) with a channels-last picture per entry, else (N, C, H, W).
        return list(images if images.shape[-1] in (1, 3, 4) else images.transpose(0, 2, 3, 1))
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def _open(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"image file {str(path)!r} does not exist")
        with Image.open(path) as opened:
            image = opened.copy()
    else:
        image = Image.fromarray(_hwc_uint8(np.asarray(item)))
    if image.mode not in ("L", "RGB"):
        image = image.convert("L" if image.mode in ("1", "I", "I;16", "F") else "RGB")
    return image


def _hwc_uint8(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[:, :, :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(
            f"an image array must be (H, W), (H, W, 1|3|4) or (C, H, W); got {array.shape}"
        )
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        top = 1 if array.dtype == np.bool_ else max(1, int(array.max()))
        scale = 255.0 / (255 if top <= 255 else top)
        return (array.astype(np.float64) * scale).round().clip(0, 255).astype(np.uint8)
    values = array.astype(np.float32)
    finite = values[np.isfinite(values)]
    if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
        raise ValueError(
            f"float image arrays must hold values in [0, 1]; this one spans [{finite.min():.3g}, "
            f"{finite.max():.3g}]: divide by 255, or pass a normalized tensor batch instead"
        )
    return (np.nan_to_num(values) * 255.0).round().astype(np.uint8)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    if pixels.dim() == 2:
        pixels = pixels[:, :, None]
    return pixels.permute(2, 0, 1).float().div(255.0)


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _aligned(image: Image.Image, preprocess: Preprocess) -> np.ndarray | None:
    """The picture cut and resized as ``preprocess`` cuts the input, or None if unknown."""
    steps = getattr(preprocess, "transforms", None)
    if isinstance(steps, (list, tuple)):
        # A Compose: its steps from PIL image to PIL image (Resize, CenterCrop, …), up to the
        # first that makes a tensor.
        for step in steps:
            out = step(image)
            if not isinstance(out, Image.Image):
                break
            image = out
        return _rgb(image)
    crop, resize = getattr(preprocess, "crop_size", None), getattr(preprocess, "resize_size", None)
    if crop is not None and resize is not None:
        # A torchvision weights preset (ImageClassification): resize, then centre crop.
        import torchvision.transforms.functional as TF

        interpolation = getattr(preprocess, "interpolation", TF.InterpolationMode.BILINEAR)
        resized = TF.resize(image, resize, interpolation=interpolation)
        return _rgb(TF.center_crop(resized, crop))
    return None
