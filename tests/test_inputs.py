"""Inputs as people have them: files, PIL images and arrays, with or without a preprocess."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn
from torchvision.models import ResNet18_Weights

from fmwidget.capture import capture
from fmwidget.inputs import to_batch
from fmwidget.widget import FeatureMapWidget

Make = Callable[..., FeatureMapWidget]


def _net(in_channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU()).eval()


def _photo(h: int = 20, w: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_arrays_of_every_common_layout_become_one_batch():
    hwc = _photo()
    as_float = hwc.astype(np.float32) / 255
    chw = hwc.transpose(2, 0, 1)
    x, pictures = to_batch([hwc, as_float, chw, Image.fromarray(hwc)])
    expected = torch.from_numpy(hwc).permute(2, 0, 1).float() / 255
    assert x.shape == (4, 3, 20, 30)
    for i in range(4):
        torch.testing.assert_close(x[i], expected, atol=1 / 255, rtol=0)
    assert pictures is not None and all(np.array_equal(p, hwc) for p in pictures)
    batch, _ = to_batch(np.stack([hwc, hwc]))
    assert batch.shape == (2, 3, 20, 30)


def test_files_open_and_grey_and_colour_fit_the_first_layer(tmp_path, make: Make):
    Image.fromarray(_photo()).save(tmp_path / "a.png")
    Image.fromarray(_photo()[:, :, 0]).save(tmp_path / "grey.png")
    w = make(_net(3), [tmp_path / "a.png", str(tmp_path / "grey.png")])
    assert w.session.inputs.shape == (2, 3, 20, 30)
    expected = torch.from_numpy(_photo()).permute(2, 0, 1).float() / 255
    assert torch.equal(w.session.inputs[0], expected)
    assert np.array_equal(w.input_image(0), _photo())
    grey = make(_net(1), tmp_path / "a.png")
    assert grey.session.inputs.shape == (1, 1, 20, 30)


def test_a_preprocess_makes_the_input_and_the_picture_follows_its_crop(make: Make):
    photo = Image.fromarray(_photo(300, 400))
    preset = ResNet18_Weights.IMAGENET1K_V1.transforms()
    model = nn.Sequential(nn.Conv2d(3, 2, 3)).eval()
    w = make(model, photo, preprocess=preset)
    assert torch.equal(w.session.inputs, preset(photo)[None])
    resized = TF.resize(photo, preset.resize_size, interpolation=preset.interpolation)
    assert np.array_equal(w.input_image(0), np.asarray(TF.center_crop(resized, preset.crop_size)))
    compose = T.Compose([T.Resize(64), T.CenterCrop(48), T.ToTensor()])
    x, pictures = to_batch([photo], compose)
    assert x.shape == (1, 3, 48, 48) and pictures is not None and pictures[0].shape == (48, 48, 3)
    # A callable whose geometry cannot be followed: the view shows the input tensor itself.
    x, pictures = to_batch([photo], lambda image: TF.to_tensor(image)[:, ::2, ::2])
    assert x.shape == (1, 3, 150, 200) and pictures is None


def test_images_as_inputs_capture_like_the_tensor_they_become(make: Make):
    photo = _photo()
    w = make(_net(), photo)
    x = torch.from_numpy(photo).permute(2, 0, 1).float()[None] / 255
    assert torch.equal(w.capture["0"], capture(_net(), x)["0"])
    w.set_inputs([photo, photo[::-1].copy()])
    assert w.num_samples == 2 and np.array_equal(w.input_image(1), photo[::-1])


def test_clear_errors_say_what_to_do(make: Make):
    with pytest.raises(ValueError, match=r"add it with x\[None\]"):
        make(_net(), torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match=r"different sizes .*pass preprocess="):
        to_batch([_photo(20, 30), _photo(10, 10)])
    with pytest.raises(ValueError, match=r"values in \[0, 1\].*divide by 255"):
        to_batch(_photo().astype(np.float32))
    with pytest.raises(TypeError, match="already a Tensor: pass them without preprocess="):
        make(_net(), torch.rand(1, 3, 16, 16), preprocess=TF.to_tensor)
    with pytest.raises(TypeError, match=r"\(C, H, W\) tensor; it returned ndarray"):
        to_batch(_photo(), preprocess=np.asarray)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.png"):
        to_batch("nowhere.png")
    with pytest.raises(TypeError, match=r"fmwidget\.to_batch\(images, preprocess\)"):
        capture(_net(), _photo())
