"""Data and a model shared by the scan tests and the two-process scan they launch."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from tests.models import InplaceNet


class Noise(Dataset):
    """``n`` random (3, size, size) images made from their index (no memory per image), with
    labels ``index % 3``; image 7 repeats image 3, so their scores tie."""

    def __init__(self, n: int, size: int = 8) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        seed = 3 if index == 7 else index
        g = torch.Generator().manual_seed(seed)
        return torch.randn(3, self.size, self.size, generator=g), index % 3


def model() -> InplaceNet:
    torch.manual_seed(0)
    return InplaceNet().eval()
