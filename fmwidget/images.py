"""Pictures of the inputs as the view shows them: one RGB uint8 ``(H, W, 3)`` array per sample.

``image=`` of the widget may be a PIL image, an array, a tensor or a list of them; without it the
input tensor itself is shown, rescaled::

    >>> import numpy as np
    >>> pictures_per_sample(np.zeros((2, 8, 8)), 2)[0].shape
    (8, 8, 3)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["input_picture", "pictures_per_sample", "to_rgb8"]


def pictures_per_sample(image: Any, num_samples: int) -> list[np.ndarray]:
    """Turn ``image=`` into one RGB uint8 picture per sample."""
    if isinstance(image, torch.Tensor):
        pictures = list(image) if image.dim() == 4 else [image]
        return _one_per_sample([_tensor_picture(p) for p in pictures], num_samples)
    if isinstance(image, np.ndarray):
        # (N, H, W, C) and (N, H, W) are batches; (H, W, 1|3|4) and (H, W) one picture.
        batch = image.ndim == 4 or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4))
        arrays: list[np.ndarray] = list(image) if batch else [image]
        return _one_per_sample([_array_picture(p) for p in arrays], num_samples)
    if isinstance(image, (list, tuple)):
        return _one_per_sample([pictures_per_sample(p, 1)[0] for p in image], num_samples)
    if hasattr(image, "convert"):
        return _one_per_sample([np.asarray(image.convert("RGB"))], num_samples)
    raise TypeError(
        "image= must be a PIL image, an array, a tensor or a list of them; "
        f"got {type(image).__name__}"
    )


def _one_per_sample(pictures: list[np.ndarray], num_samples: int) -> list[np.ndarray]:
    if len(pictures) != num_samples:
        raise ValueError(
            f"image= holds {len(pictures)} picture(s) but the batch has {num_samples} inputs"
        )
    return pictures


def _array_picture(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image array must be (H, W), (H, W, 1|3|4); got {array.shape}")
    return to_rgb8(array[:, :, :3])


def _tensor_picture(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(f"an image tensor must be (1|3, H, W); got {tuple(tensor.shape)}")
    pixels = tensor.detach().cpu()
    if pixels.is_floating_point():
        # numpy has no bfloat16.
        pixels = pixels.float()
    return to_rgb8(pixels.permute(1, 2, 0).numpy())


def input_picture(inputs: Any, sample: int, frame: int = 0) -> np.ndarray:
    """The sample's input as RGB uint8, from the first (N, 1|3, H, W) tensor among ``inputs``,
    or frame ``frame`` of the first (N, 1|3, T, H, W) clip."""
    if isinstance(inputs, torch.Tensor):
        candidates = [inputs]
    elif isinstance(inputs, Mapping):
        candidates = list(inputs.values())
    elif isinstance(inputs, (list, tuple)):
        candidates = list(inputs)
    else:
        candidates = []
    for tensor in candidates:
        if isinstance(tensor, torch.Tensor) and tensor.dim() == 4 and tensor.shape[1] in (1, 3):
            return _tensor_picture(tensor[sample])
        if isinstance(tensor, torch.Tensor) and tensor.dim() == 5 and tensor.shape[1] in (1, 3):
            # Scaled by the whole clip's range, so that frames do not flicker against each other.
            c, t, h, w = tensor.shape[1:]
            tall = _tensor_picture(tensor[sample].reshape(c, t * h, w))
            k = min(frame, t - 1)
            return np.ascontiguousarray(tall[k * h : (k + 1) * h])
    raise ValueError(
        "the inputs hold no image batch (N, 1 or 3, H, W) or clip (N, 1 or 3, T, H, W) to show; "
        "pass image= to the widget"
    )


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 1|3) pixels as RGB uint8: uint8 kept, [0, 1] floats scaled, others min–max scaled."""
    if pixels.dtype != np.uint8:
        values = pixels.astype(np.float32)
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        span = hi - lo if hi > lo else 1.0
        values = np.nan_to_num((values - lo) / span, nan=0.0, posinf=1.0, neginf=0.0)
        pixels = (np.clip(values, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels)
