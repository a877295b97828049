"""FeatureMapWidget: traits, requests via a fake comm, re-runs, close, ablate, from_activations."""

from __future__ import annotations

import copy
import gc
import importlib.util
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
import traitlets
from fakecomm import FakeComm, fake_comms
from PIL import Image
from torch import nn

from fmwidget import wire
from fmwidget.analysis import ablate, group_differences
from fmwidget.capture import capture
from fmwidget.gradcam import CAM_METHODS, gradcam
from fmwidget.widget import FeatureMapWidget
from tests.models import AddedToNet

Make = Callable[..., FeatureMapWidget]


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, stride=2, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()


def _browser(widget: FeatureMapWidget) -> FakeComm:
    assert isinstance(widget.comm, FakeComm)
    return widget.comm


def _has_hooks(model: nn.Module) -> bool:
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules()
    )


LABELS = ["ant", "bee", "cat", "dog", "eel"]


def test_traits_after_construction(make: Make) -> None:
    model, x = _tiny(), torch.randn(3, 3, 16, 16)
    w = make(model, x, labels=LABELS, colormap="viridis", height=400)
    names = [m["name"] for m in w.layers]
    assert names == ["0", "1", "2", "3", "4", "5"]
    assert (w.layer, w.num_samples, w.revision, w.colormap, w.height) == ("0", 3, 1, "viridis", 400)
    assert w.status == {"state": "ready", "message": ""}
    assert (w.channel, w.sample, w.selected, w.sort, w.top_k) == (None, 0, [], "index", 0)
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    assert len(w.predictions) == 3 and len(w.predictions[0]) == 5
    top = w.predictions[1][0]
    assert top["index"] == int(probs[1].argmax()) and top["label"] == LABELS[top["index"]]
    assert top["prob"] == pytest.approx(float(probs[1].max()))
    assert w.layers[1]["pre"] == "0" and w.layers[1]["filter"]
    assert isinstance(w.report.captured[0].name, str) and w.model is model
    assert not _has_hooks(model)


def test_layer_request_returns_quantized_maps_stats_and_flags(make: Make) -> None:
    w = make(_tiny(), torch.randn(2, 3, 16, 16))
    reply = _browser(w).request("layer", layer="2", sample=1, revision=1)
    assert reply.ok, reply.error
    assert reply.meta == {
        "layer": "2",
        "sample": 1,
        "revision": 1,
        "shape": [6, 8, 8],
        "stored": [6, 8, 8],
        "downsample": 1,
        "channels": None,
    }
    maps = w.capture["2"][1]
    stats = reply.arrays["stats"]
    flat = maps.flatten(1)
    np.testing.assert_array_equal(stats[:, 0], flat.min(1).values.numpy())
    np.testing.assert_array_equal(stats[:, 1], flat.max(1).values.numpy())
    values = wire.dequantize(reply.arrays["values"], stats)
    span = (stats[:, 1] - stats[:, 0])[:, None, None]
    assert (np.abs(values - maps.numpy()) <= span / 508 + 1e-6).all()
    assert reply.arrays["flags"].shape == (6,) and reply.arrays["flags"].dtype == np.uint8


def test_layer_request_with_channels_and_max_values(make: Make) -> None:
    w = make(_tiny(), torch.randn(1, 3, 32, 32))
    browser = _browser(w)
    small = browser.request("layer", layer="0", sample=0, revision=1, max_values=8 * 16 * 16)
    assert small.meta["downsample"] == 2 and small.meta["stored"] == [8, 16, 16]
    subset = browser.request(
        "layer", layer="0", sample=0, revision=1, max_values=8 * 16 * 16, channels=[6, 1]
    )
    assert subset.meta["downsample"] == 1 and subset.meta["channels"] == [6, 1]
    full = browser.request("layer", layer="0", sample=0, revision=1)
    np.testing.assert_array_equal(subset.arrays["values"], full.arrays["values"][[6, 1]])
    np.testing.assert_array_equal(subset.arrays["stats"], full.arrays["stats"][[6, 1]])


def test_channel_request_returns_exact_values_and_the_conv_filter(make: Make) -> None:
    model = _tiny()
    w = make(model, torch.randn(2, 3, 16, 16))
    browser = _browser(w)
    reply = browser.request("channel", layer="1", sample=1, channel=5, revision=1)
    assert reply.meta == {
        "layer": "1",
        "sample": 1,
        "revision": 1,
        "channel": 5,
        "shape": [16, 16],
        "filter_shape": [3, 3, 3],
        "rgb": True,
    }
    np.testing.assert_array_equal(reply.arrays["values"], w.capture["1"][1, 5].numpy())
    np.testing.assert_array_equal(reply.arrays["filter"], model[0].weight[5].detach().numpy())
    second = browser.request("channel", layer="2", sample=0, channel=2, revision=1)
    assert second.meta["filter_shape"] == [8, 3, 3] and not second.meta["rgb"]
    norm = browser.request("channel", layer="3", sample=0, channel=2, revision=1)
    assert norm.meta["filter_shape"] is None and "filter" not in norm.arrays


def test_input_request_rescales_the_tensor_or_shows_the_given_image(make: Make) -> None:
    x = torch.rand(2, 3, 16, 16)
    w = make(_tiny(), x)
    reply = _browser(w).request("input", sample=1, revision=1)
    assert reply.meta == {"sample": 1, "revision": 1, "shape": [16, 16, 3]}
    expected = (x[1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(reply.arrays["image"], expected)

    pictures = np.random.default_rng(0).integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
    shown = make(_tiny(), x, image=pictures)
    reply = _browser(shown).request("input", sample=0, revision=1)
    np.testing.assert_array_equal(reply.arrays["image"], pictures[0])


def test_image_argument_takes_pictures_arrays_and_tensors(make: Make) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    x = torch.randn(2, 3, 16, 16)
    tensor_picture = torch.rand(3, 16, 16)
    w = make(_tiny(), x, image=[Image.fromarray(pixels), tensor_picture])
    browser = _browser(w)
    np.testing.assert_array_equal(
        browser.request("input", sample=0, revision=1).arrays["image"], pixels
    )
    expected = (tensor_picture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(
        browser.request("input", sample=1, revision=1).arrays["image"], expected
    )
    with pytest.raises(ValueError, match=r"image= holds 1 picture\(s\) but the batch has 2 inputs"):
        make(_tiny(), x, image=pixels)


def test_normalized_and_gray_inputs_become_displayable_pictures(make: Make) -> None:
    gray_model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval()
    x = torch.randn(1, 1, 10, 10) * 3
    reply = _browser(make(gray_model, x)).request("input", sample=0, revision=1)
    image = reply.arrays["image"]
    assert image.shape == (10, 10, 3) and (image[..., 0] == image[..., 2]).all()
    assert image.min() == 0 and image.max() == 255
    assert image.reshape(-1, 3)[int(x.argmax()), 0] == 255


def test_gradcam_request(make: Make) -> None:
    w = make(_tiny(), torch.randn(2, 3, 16, 16), labels=LABELS)
    reply = _browser(w).request("gradcam", layer="4", sample=1, revision=1, target=3)
    assert reply.ok, reply.error
    assert reply.meta == {
        "layer": "4",
        "sample": 1,
        "revision": 1,
        "target": 3,
        "label": "dog",
        "shape": [8, 8],
        "method": "gradcam",
        "normalized": False,
    }
    assert reply.arrays["weights"].shape == (6,) and (reply.arrays["heatmap"] >= 0).all()
    assert not _has_hooks(w.model)


_REQ = {"type": "request", "id": 1, "revision": 1}


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ({**_REQ, "kind": "nope"}, "unknown request kind 'nope'"),
        ({**_REQ, "kind": "layer", "sample": 0}, "needs 'layer'"),
        ({**_REQ, "kind": "layer", "layer": "0"}, "needs 'sample'"),
        ({**_REQ, "kind": "input", "sample": 0, "revision": None}, "needs 'revision'"),
        ({**_REQ, "kind": "layer", "layer": "O", "sample": 0}, "unknown layer 'O'"),
        ({**_REQ, "kind": "input", "sample": 9}, "sample 9 is out of range: the batch has 2"),
        (
            {**_REQ, "kind": "channel", "layer": "0", "sample": 0, "channel": 8},
            "channel 8 is out of range: layer '0' has 8 channels",
        ),
        (
            {**_REQ, "kind": "layer", "layer": "0", "sample": 0, "channels": ["a"]},
            "channel 'a' is out of range",
        ),
        (
            {**_REQ, "kind": "layer", "layer": "0", "sample": 0, "max_values": 3},
            "max_values must be an integer of at least 8",
        ),
        ({**_REQ, "id": -4, "kind": "input", "sample": 0}, "id must be a positive integer"),
        ({"type": "hello", "id": 1}, "not a request"),
        (["not", "a", "dict"], "not a request"),
    ],
)
def test_malformed_requests_get_one_error_reply_and_the_widget_keeps_working(
    make: Make, content: Any, error: str
) -> None:
    w = make(_tiny(), torch.randn(2, 3, 16, 16))
    browser = _browser(w)
    before = len(browser.published)
    browser.send_custom(content)
    replies = browser.replies(since=before)
    assert len(replies) == 1 and not replies[0].ok
    assert error in replies[0].error
    assert browser.request("layer", layer="0", sample=1, revision=1).ok


def test_unknown_layer_reply_lists_close_names(make: Make) -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    w = make(model, torch.randn(1, 3, 64, 64))
    reply = _browser(w).request("layer", layer="layer1.0.con1", sample=0, revision=1)
    assert "close names: 'layer1.0.conv1'" in reply.error


def test_stale_revision_is_answered_with_the_current_one(make: Make) -> None:
    w = make(_tiny(), torch.randn(2, 3, 16, 16))
    w.inputs = torch.randn(2, 3, 16, 16)
    reply = _browser(w).request("layer", layer="0", sample=0, revision=1)
    assert reply.ok and reply.meta["revision"] == 2 == w.revision


def test_trait_validation_names_what_is_wrong(make: Make) -> None:
    w = make(_tiny(), torch.randn(2, 3, 16, 16))
    with pytest.raises(traitlets.TraitError, match=r"unknown layer '22'; close names: '2'"):
        w.layer = "22"
    with pytest.raises(traitlets.TraitError, match=r"channel 8 is out of range: layer '0' has 8"):
        w.channel = 8
    with pytest.raises(traitlets.TraitError, match=r"sample 2 is out of range: the batch has 2"):
        w.sample = 2
    with pytest.raises(traitlets.TraitError, match=r"selected channels \[9\] are out of range"):
        w.selected = [1, 9]
    with pytest.raises(traitlets.TraitError):
        w.colormap = "jet"
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour_map'"):
        make(_tiny(), torch.randn(1, 3, 8, 8), colour_map="gray")
    with pytest.raises(TypeError, match="'revision' is set by the widget"):
        make(_tiny(), torch.randn(1, 3, 8, 8), revision=3)
    with pytest.raises(ValueError, match="labels= has 2 names but the model outputs 5 classes"):
        make(_tiny(), torch.randn(1, 3, 8, 8), labels=["a", "b"])


def test_changing_layer_closes_an_out_of_range_channel_and_clears_the_selection(
    make: Make,
) -> None:
    w = make(_tiny(), torch.randn(2, 3, 16, 16), layer="1")
    w.channel, w.selected = 7, [1, 7]
    w.layer = "2"
    assert w.channel is None and w.selected == []
    w.channel = 3
    w.layer = "3"
    assert w.channel == 3


def test_the_browser_sets_traits_through_the_comm(make: Make) -> None:
    w = make(_tiny(), torch.randn(2, 3, 16, 16))
    _browser(w).update(layer="4", channel=2, sample=1, selected=[0, 5])
    assert (w.layer, w.channel, w.sample, w.selected) == ("4", 2, 1, [0, 5])


def test_diverging_colormap_turns_symmetric_on(make: Make) -> None:
    w = make(_tiny(), torch.randn(1, 3, 8, 8))
    assert not w.symmetric
    w.colormap = "diverging"
    assert w.symmetric


def test_leaving_diverging_restores_symmetric_as_it_was(make: Make) -> None:
    w = make(_tiny(), torch.randn(1, 3, 8, 8))
    w.colormap = "diverging"
    w.colormap = "magma"
    assert not w.symmetric  # on only because of diverging: off again
    w.symmetric = True
    w.colormap = "diverging"
    w.colormap = "gray"
    assert w.symmetric  # the user's own choice stays
    w.symmetric = False
    w.colormap = "diverging"
    w.symmetric = False
    w.symmetric = True  # switched on by the user while diverging: theirs now
    w.colormap = "viridis"
    assert w.symmetric
    _browser(w).update(symmetric=False)
    _browser(w).update(colormap="diverging")
    _browser(w).update(colormap="gray")
    assert not w.symmetric


def test_new_inputs_rerun_bump_revision_and_keep_the_layer(make: Make) -> None:
    model = _tiny()
    w = make(model, torch.randn(3, 3, 16, 16), layer="3", sample=2)
    old = w.capture
    x = torch.randn(2, 3, 16, 16)
    w.inputs = x
    assert (w.revision, w.layer, w.num_samples, w.sample) == (2, "3", 2, 1)
    assert w.inputs is x
    expected = capture(model, x)["3"]
    assert torch.equal(w.capture["3"], expected)
    with pytest.raises(RuntimeError, match="replaced by a re-run"):
        old["3"]
    reply = _browser(w).request("channel", layer="3", sample=1, channel=0, revision=2)
    np.testing.assert_array_equal(reply.arrays["values"], expected[1, 0].numpy())
    assert not _has_hooks(model)


def test_a_failed_rerun_shows_an_error_status(make: Make) -> None:
    w = make(_tiny(), torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="failed"):
        w.inputs = torch.randn(1, 5, 16, 16)
    assert w.status["state"] == "error" and "re-running the model failed" in w.status["message"]
    reply = _browser(w).request("layer", layer="0", sample=0, revision=1)
    assert not reply.ok and "last re-run failed" in reply.error
    w.inputs = torch.randn(1, 3, 16, 16)
    assert w.status["state"] == "ready" and _browser(w).request("input", sample=0, revision=3).ok


def test_a_small_budget_still_serves_every_layer_exactly(make: Make) -> None:
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    reference = capture(model, x)
    w = make(model, x, budget_bytes=200_000)
    browser = _browser(w)
    for name in ("features.0.0", "features.1.conv.0.2", "features.18.2"):
        reply = browser.request("channel", layer=name, sample=0, channel=1, revision=1)
        np.testing.assert_array_equal(reply.arrays["values"], reference[name][0, 1].numpy())
    assert w._session.store.resident_bytes <= 200_000 + reference["features.0.0"].numel() * 4
    assert w._source.buffers.nbytes == 0
    assert not _has_hooks(model)


def test_close_frees_the_model_and_its_activations(make: Make) -> None:
    model = _tiny()
    w = make(model, torch.randn(2, 3, 16, 16))
    acts = weakref.ref(w.capture["2"])
    model_ref = weakref.ref(model)
    _browser(w).request("gradcam", layer="4", sample=0, revision=1)
    del model
    w.close()
    gc.collect()
    assert model_ref() is None and acts() is None
    assert w.model is None and w.comm is None
    with pytest.raises(RuntimeError, match="closed"):
        _ = w.capture


def test_groups_add_the_effect_size_of_every_channel(make: Make) -> None:
    torch.manual_seed(3)
    x = torch.randn(5, 3, 16, 16)
    groups = ["cat", "dog", "cat", "dog", "eel"]
    w = make(_tiny(), x, groups=groups)
    assert (w.groups, w.group_pair) == (groups, ["cat", "dog"])
    browser = _browser(w)
    reply = browser.request("layer", layer="4", sample=0, revision=1)
    expected = group_differences(w.capture["4"], groups, pair=("cat", "dog")).effect.float()
    np.testing.assert_allclose(reply.arrays["effect"], expected.numpy(), rtol=1e-6)
    assert reply.meta["groups"] == {
        "pair": ["cat", "dog"],
        "counts": {"cat": 2, "dog": 2, "eel": 1},
        "examples": {"cat": [0, 2], "dog": [1, 3], "eel": [4]},
    }
    subset = browser.request("layer", layer="4", sample=0, revision=1, channels=[3, 0])
    np.testing.assert_array_equal(subset.arrays["effect"], reply.arrays["effect"][[3, 0]])
    w.group_pair = ["eel", "dog"]
    flipped = browser.request("layer", layer="4", sample=0, revision=1)
    assert flipped.meta["groups"]["pair"] == ["eel", "dog"]
    with pytest.raises(traitlets.TraitError, match="two different labels among the groups"):
        w.group_pair = ["cat", "fox"]
    with pytest.raises(traitlets.TraitError, match="have 1 and 1 inputs"):
        make(_tiny(), x[:2], groups=["a", "b"])
    with pytest.raises(ValueError, match="groups= has 2 labels for a batch of 5 inputs"):
        make(_tiny(), x, groups=["a", "b"])
    reply = _browser(make(_tiny(), x)).request("layer", layer="4", sample=0, revision=1)
    assert "effect" not in reply.arrays and "groups" not in reply.meta


def test_target_trait_picks_the_gradcam_class(make: Make) -> None:
    w = make(_tiny(), torch.randn(2, 3, 16, 16))
    assert w.predictions[0][0]["label"] is None
    with pytest.raises(traitlets.TraitError, match="target class 5 is out of range: the model"):
        w.target = 5
    w.target = 2
    browser = _browser(w)
    reply = browser.request("gradcam", layer="2", sample=0, revision=1)
    assert (reply.meta["target"], reply.meta["label"]) == (2, None)
    assert browser.request("gradcam", layer="2", sample=0, revision=1, target=4).meta["target"] == 4
    assert (
        "out of range"
        in browser.request("gradcam", layer="2", sample=0, revision=1, target=9).error
    )


# -- CAM methods of the grad-cam package ----------------------------------------------------


class _SplitHead(nn.Module):
    """Returns a tuple of two maps: the layer `head[0]` is a tensor inside a module's output."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, -x


class _TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = _SplitHead()
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.conv(x))[0].mean(dim=(2, 3)))


def test_cam_methods_lists_ours_first_and_the_package_methods_where_installed(make: Make) -> None:
    w = make(_tiny(), torch.randn(1, 3, 16, 16))
    installed = importlib.util.find_spec("pytorch_grad_cam") is not None
    assert w.cam_methods == (["gradcam", *CAM_METHODS] if installed else ["gradcam"])
    assert w.cam_method == "gradcam"
    with pytest.raises(traitlets.TraitError, match="unknown CAM method 'grad-cam'; this widget"):
        w.cam_method = "grad-cam"
    with pytest.raises(TypeError, match="'cam_methods' is set by the widget"):
        make(_tiny(), torch.randn(1, 3, 8, 8), cam_methods=["gradcam"])


def test_without_the_package_only_our_gradcam_is_offered(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pytorch_grad_cam" else real(name, *a),
    )
    w = make(_tiny(), torch.randn(1, 3, 16, 16))
    assert w.cam_methods == ["gradcam"]
    reply = _browser(w).request(
        "gradcam", layer="2", sample=0, revision=1, method="gradcam++", target=None
    )
    assert "unknown CAM method 'gradcam++'" in reply.error
    assert "pip install grad-cam" in reply.error
    with pytest.raises(traitlets.TraitError, match="this widget offers gradcam "):
        w.cam_method = "layercam"


def test_a_package_method_returns_an_input_sized_normalized_map_without_weights(
    make: Make, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pytorch_grad_cam", reason="the grad-cam package is an optional extra")
    model, x = _tiny(), torch.randn(2, 3, 16, 16)
    w = make(model, x, labels=LABELS)
    browser = _browser(w)
    reply = browser.request("gradcam", layer="2", sample=1, revision=1, method="gradcam++")
    assert reply.ok, reply.error
    predicted = w.predictions[1][0]["index"]
    assert reply.meta == {
        "layer": "2",
        "sample": 1,
        "revision": 1,
        "target": predicted,
        "label": LABELS[predicted],
        "shape": [16, 16],
        "method": "gradcam++",
        "normalized": True,
    }
    heatmap = reply.arrays["heatmap"]
    assert heatmap.shape == (16, 16) and reply.arrays["weights"].shape == (0,)
    assert heatmap.min() >= 0 and heatmap.max() <= 1
    targets = [p[0]["index"] for p in w.predictions]
    direct = gradcam(model, x, "2", targets, method="gradcam++")[1].numpy()
    np.testing.assert_allclose(heatmap, direct, atol=1e-6)
    # Without `method` the request follows the trait; the class picker's target is honoured.
    w.cam_method = "eigencam"
    reply = browser.request("gradcam", layer="2", sample=0, revision=1, target=4)
    assert (reply.meta["method"], reply.meta["target"], reply.meta["label"]) == (
        "eigencam",
        4,
        "eel",
    )
    assert reply.arrays["heatmap"].shape == (16, 16)
    # Score-CAM's progress bars would land in whichever notebook cell ran last.
    assert browser.request("gradcam", layer="2", sample=0, revision=1, method="scorecam").ok
    assert capsys.readouterr().err == ""
    assert not _has_hooks(model)


def test_package_methods_refuse_repeated_calls_and_tensors_inside_outputs_readably(
    make: Make,
) -> None:
    pytest.importorskip("pytorch_grad_cam", reason="the grad-cam package is an optional extra")
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    w = make(model, torch.randn(1, 3, 32, 32))
    browser = _browser(w)
    reply = browser.request(
        "gradcam", layer="layer1.0.relu:2", sample=0, revision=1, method="scorecam"
    )
    assert reply.error == (
        "Score-CAM hooks whole modules, so it needs a module's first call with a tensor output; "
        "layer 'layer1.0.relu:2' is call 2 of module 'layer1.0.relu'. Pick another layer, or "
        "Grad-CAM (ours), which handles both"
    )
    w2 = make(_TupleNet().eval(), torch.randn(1, 3, 8, 8))
    assert "head[0]" in [m["name"] for m in w2.layers]
    reply = _browser(w2).request(
        "gradcam", layer="head[0]", sample=0, revision=1, method="layercam"
    )
    assert "layer 'head[0]' is a tensor inside the output of module 'head'" in reply.error
    # Ours handles both; the widget keeps serving.
    ours = _browser(w2).request("gradcam", layer="head[0]", sample=0, revision=1)
    assert ours.ok and ours.arrays["weights"].shape == (4,)
    not_a_classifier = make(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), torch.randn(1, 3, 8, 8))
    reply = _browser(not_a_classifier).request(
        "gradcam", layer="0", sample=0, revision=1, method="eigencam"
    )
    assert "EigenCAM explains a class score" in reply.error


# -- ablation -------------------------------------------------------------------------------


def test_ablate_zeroes_the_selected_channels_like_analysis_ablate_and_by_hand(make: Make) -> None:
    model, x = _tiny(), torch.randn(3, 3, 16, 16)
    w = make(model, x, labels=LABELS, layer="2")
    shown = w.capture["2"].clone()
    w.selected = [1, 4]
    assert w.selection == {"layer": "2", "channels": [1, 4]}
    result = w.ablate()
    with torch.no_grad():
        maps = model[:3](x)
        maps[:, [1, 4]] = 0
        by_hand = model[3:](maps)
        before = model(x)
    reference = ablate(model, x, "2", [1, 4])
    assert torch.equal(result.output_after, by_hand)
    assert torch.equal(result.output_after, reference.output_after)
    assert result.changes == reference.changes
    assert not torch.equal(by_hand, before)
    probs_before, probs_after = torch.softmax(before, 1), torch.softmax(by_hand, 1)
    assert w.ablation["layer"] == "2" and w.ablation["channels"] == [1, 4]
    assert len(w.ablation["changes"]) == 3
    for sample, change in enumerate(w.ablation["changes"]):
        top, top_after = int(probs_before[sample].argmax()), int(probs_after[sample].argmax())
        assert (change["top_before"], change["label_before"]) == (top, LABELS[top])
        assert (change["top_after"], change["label_after"]) == (top_after, LABELS[top_after])
        assert change["prob_before"] == pytest.approx(float(probs_before[sample, top]))
        assert change["prob_after"] == pytest.approx(float(probs_after[sample, top_after]))
        expected = float(probs_after[sample, top] - probs_before[sample, top])
        assert change["prob_change"] == pytest.approx(expected, abs=1e-6)
    assert torch.equal(w.capture["2"], shown), "the shown activations stay unablated"
    assert any("ablation" in update for update in _browser(w).state_updates())
    assert not _has_hooks(model)


def test_ablate_defaults_to_the_open_channel_and_takes_any_layer_name(make: Make) -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    w = make(model, x, layer="layer1.0.relu:2")
    w.channel = 7
    assert w.selection == {"layer": "layer1.0.relu:2", "channels": [7]}
    result = w.ablate()
    reference = ablate(model, x, "layer1.0.relu:2", [7])
    assert torch.equal(result.output_after, reference.output_after)
    assert w.ablation["channels"] == [7] and w.ablation["changes"][0]["label_before"] is None
    w.ablate("layer4.1.conv2", torch.tensor([3, 9]))
    assert w.ablation["layer"] == "layer4.1.conv2" and w.ablation["channels"] == [3, 9]
    assert not _has_hooks(model)


def test_ablate_without_class_scores_reports_no_changes(make: Make) -> None:
    w = make(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), torch.randn(1, 3, 8, 8))
    result = w.ablate("0", [2])
    assert result.changes is None
    assert w.ablation == {"layer": "0", "channels": [2], "changes": None}


def test_ablate_errors_name_what_to_fix(make: Make) -> None:
    w = make(_tiny(), torch.randn(2, 3, 16, 16), layer="2")
    assert w.selection == {"layer": "2", "channels": []}
    with pytest.raises(ValueError, match=r"no channel of layer '2' is selected: shift-click"):
        w.ablate()
    with pytest.raises(ValueError, match=r"say which channels of layer '4'.*shown layer '2'"):
        w.ablate("4")
    with pytest.raises(ValueError, match=r"channels \[6, 9\] cannot be ablated: layer '2' has 6"):
        w.ablate(channels=[1, 6, 9])
    with pytest.raises(ValueError, match=r"channels \[\] cannot be ablated"):
        w.ablate(channels=[])
    with pytest.raises(TypeError, match=r"channels must be channel indices \(ints\), got \[1.5\]"):
        w.ablate(channels=[1.5])
    with pytest.raises(KeyError, match="unknown layer '22'; close names: '2'"):
        w.ablate("22", [0])
    with pytest.raises(TypeError, match="'ablation' is set by the widget"):
        make(_tiny(), torch.randn(1, 3, 8, 8), ablation={})
    assert w.ablation is None


def test_new_inputs_clear_the_ablation(make: Make) -> None:
    w = make(_tiny(), torch.randn(2, 3, 16, 16))
    w.ablate("2", [0])
    assert w.ablation is not None
    w.inputs = torch.randn(2, 3, 16, 16)
    assert w.ablation is None


def test_ablate_request_from_the_view_sets_the_trait_and_replies(make: Make) -> None:
    model, x = _tiny(), torch.randn(2, 3, 16, 16)
    w = make(model, x, labels=LABELS, layer="2")
    browser = _browser(w)
    browser.update(selected=[1, 4])
    reply = browser.request("ablate", layer="2", channels=[1, 4], revision=1)
    assert reply.ok, reply.error
    assert reply.meta == {"layer": "2", "channels": [1, 4], "revision": 1}
    assert reply.arrays == {}
    reference = ablate(model, x, "2", [1, 4])
    assert [c["prob_change"] for c in w.ablation["changes"]] == [
        c.prob_change for c in reference.changes
    ]
    # The trait reached the browser before the reply did.
    updates = browser.state_updates()
    assert updates[-1]["ablation"]["channels"] == [1, 4]
    # Without layer and channels: the shown layer and the selection, as w.ablate().
    assert browser.request("ablate", revision=1).meta["channels"] == [1, 4]
    # The view's dismiss button clears it.
    browser.update(ablation=None)
    assert w.ablation is None


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({}, "no channel of layer '2' is selected: shift-click tiles in the view"),
        ({"layer": "2", "channels": [3, 6]}, "channels [6] cannot be ablated: layer '2' has 6"),
        ({"layer": "2", "channels": "3"}, "channels must be a list of channel indices, got '3'"),
        ({"layer": "22", "channels": [0]}, "unknown layer '22'"),
    ],
)
def test_a_failed_ablate_request_gets_a_readable_error_reply(
    make: Make, args: dict[str, Any], error: str
) -> None:
    w = make(_tiny(), torch.randn(1, 3, 16, 16), layer="2")
    reply = _browser(w).request("ablate", revision=1, **args)
    assert not reply.ok and error in reply.error
    assert w.ablation is None
    assert _browser(w).request("layer", layer="2", sample=0, revision=1).ok


def test_ablate_request_without_a_model_says_why() -> None:
    with fake_comms():
        w = FeatureMapWidget.from_activations({"a": torch.randn(1, 2, 4, 4)})
        reply = _browser(w).request("ablate", layer="a", channels=[0], revision=1)
        w.close()
    assert "ablation re-runs the model, and this widget has none" in reply.error


# -- from_activations -----------------------------------------------------------------------


def test_from_activations_serves_layer_channel_and_input_requests(make: Make) -> None:
    torch.manual_seed(5)
    acts = {"first": torch.randn(2, 4, 8, 8), "second": torch.randn(2, 3, 5, 6)}
    pictures = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    with fake_comms():
        w = FeatureMapWidget.from_activations(acts, image=pictures, layer="second", sample=1)
    try:
        assert (w.layer, w.sample, w.num_samples, w.model, w.predictions) == (
            "second",
            1,
            2,
            None,
            [],
        )
        assert [(m["name"], m["kind"], m["type"], m["filter"]) for m in w.layers] == [
            ("first", "other", "Tensor", False),
            ("second", "other", "Tensor", False),
        ]
        browser = _browser(w)
        layer = browser.request("layer", layer="first", sample=1, revision=1)
        assert layer.ok and layer.meta["shape"] == [4, 8, 8]
        values = wire.dequantize(layer.arrays["values"], layer.arrays["stats"])
        np.testing.assert_allclose(values, acts["first"][1].numpy(), atol=8 / 508)
        channel = browser.request("channel", layer="second", sample=0, channel=2, revision=1)
        assert channel.meta["filter_shape"] is None and "filter" not in channel.arrays
        np.testing.assert_array_equal(channel.arrays["values"], acts["second"][0, 2].numpy())
        image = browser.request("input", sample=1, revision=1)
        np.testing.assert_array_equal(image.arrays["image"], pictures[1])
        cam = browser.request("gradcam", layer="first", sample=0, revision=1)
        assert not cam.ok and "Grad-CAM needs the model" in cam.error
        assert torch.equal(w.capture["first"], acts["first"])
    finally:
        w.close()


def test_from_a_capture_keeps_kinds_pairs_and_predictions() -> None:
    model, x = _tiny(), torch.randn(2, 3, 16, 16)
    captured = capture(model, x)
    with fake_comms():
        w = FeatureMapWidget.from_activations(captured, labels=LABELS)
    try:
        metas = {m["name"]: m for m in w.layers}
        assert metas["1"]["pre"] == "0" and metas["0"]["post"] == "1"
        assert metas["0"]["type"] == "Conv2d" and not metas["0"]["filter"]
        top = int(captured.output[1].argmax())
        assert w.predictions[1][0]["label"] == LABELS[top]
        assert torch.equal(w.capture["3"], captured["3"])
    finally:
        w.close()
    assert not _has_hooks(model)


def test_from_activations_refuses_what_needs_a_model_and_bad_tensors() -> None:
    with fake_comms():
        w = FeatureMapWidget.from_activations({"a": torch.randn(1, 2, 4, 4)})
    try:
        with pytest.raises(RuntimeError, match="re-runs the model, and this widget has none"):
            w.inputs = torch.randn(1, 3, 8, 8)
        with pytest.raises(RuntimeError, match="ablation re-runs the model"):
            w.ablate("a", [0])
        reply = _browser(w).request("input", sample=0, revision=1)
        assert not reply.ok and "pass image=" in reply.error
        with pytest.raises(ValueError, match="pass image="):
            w.input_image(0)
    finally:
        w.close()
    cases = [
        ({}, ValueError, "got an empty mapping"),
        ({"a": torch.randn(2, 4, 4)}, ValueError, r"layer 'a': expected an \(N, C, H, W\) tensor"),
        ({"a": torch.ones(1, 2, 4, 4, dtype=torch.int64)}, ValueError, "convert it with .float"),
        (
            {"a": torch.randn(2, 1, 4, 4), "b": torch.randn(3, 1, 4, 4)},
            ValueError,
            "layer 'b' holds 3 samples but layer 'a' holds 2",
        ),
        ({3: torch.randn(1, 1, 2, 2)}, TypeError, "layer names must be strings"),
    ]
    for activations, error, message in cases:
        with pytest.raises(error, match=message):
            FeatureMapWidget.from_activations(activations)
    with pytest.raises(TypeError, match="unexpected keyword argument 'budget_bytes'"):
        FeatureMapWidget.from_activations({"a": torch.randn(1, 1, 2, 2)}, budget_bytes=10)


def test_closing_a_widget_from_activations_frees_them() -> None:
    with fake_comms():
        w = FeatureMapWidget.from_activations({"a": torch.randn(2, 3, 4, 4)})
    held = weakref.ref(w.capture["a"])
    w.close()
    gc.collect()
    assert held() is None and w.comm is None
    with pytest.raises(RuntimeError, match="closed"):
        _ = w.capture


@pytest.mark.parametrize(
    ("bad", "captures"),
    [
        ({"layer": "22"}, True),
        ({"sample": 5}, True),
        ({"channel": 999}, True),
        ({"target": 5000}, True),
        ({"colormap": "jet"}, False),
        ({"height": 10}, False),
        ({"sort": "size"}, False),
    ],
)
def test_a_failed_constructor_lets_go_of_the_model_and_its_activations(
    bad: dict[str, Any], captures: bool
) -> None:
    model, x = _tiny(), torch.randn(2, 3, 16, 16)
    outputs: list[weakref.ref[torch.Tensor]] = []
    model[2].register_forward_hook(lambda _m, _a, out: outputs.append(weakref.ref(out)))
    model_ref = weakref.ref(model)
    with fake_comms(), pytest.raises(traitlets.TraitError) as failure:
        FeatureMapWidget(model, x, **bad)
    # A bad option the widget can check alone fails before the model runs.
    assert bool(outputs) == captures
    gc.collect()
    # IPython keeps the last error, and the widget object with it: it must hold nothing big.
    assert all(ref() is None for ref in outputs)
    del failure, model
    gc.collect()
    assert model_ref() is None


def test_a_group_pair_given_to_the_constructor_is_kept(make: Make) -> None:
    x = torch.randn(6, 3, 16, 16)
    groups = ["a", "b", "c", "a", "b", "c"]
    w = make(_tiny(), x, groups=groups, group_pair=["c", "b"])
    assert w.group_pair == ["c", "b"]
    reply = _browser(w).request("layer", layer="4", sample=0, revision=1)
    assert reply.meta["groups"]["pair"] == ["c", "b"]
    with pytest.raises(traitlets.TraitError, match=r"two different labels among the groups"):
        make(_tiny(), x, groups=groups, group_pair=["b", "z"])
    with pytest.raises(traitlets.TraitError, match=r"among the groups \[\]"):
        make(_tiny(), x, group_pair=["b", "c"])


def test_an_invalid_value_from_the_browser_is_answered_with_the_kernels_value(make: Make) -> None:
    w = make(_tiny(), torch.randn(2, 3, 16, 16), layer="1")
    browser = _browser(w)
    sent = len(browser.state_updates())
    browser.update(sample=9)
    assert w.sample == 0
    assert browser.state_updates()[sent:] == [{"sample": 0}]
    # One bad value in an update rejects all of it: every key snaps back.
    browser.update(layer="4", channel=99)
    assert (w.layer, w.channel) == ("1", None)
    assert browser.state_updates()[-1] == {"layer": "1", "channel": None}
    browser.update(layer="4", channel=5)
    assert (w.layer, w.channel) == ("4", 5)


def test_a_bfloat16_model_is_served_end_to_end(make: Make) -> None:
    model = _tiny().to(torch.bfloat16)
    x = torch.randn(2, 3, 16, 16).to(torch.bfloat16)
    expected = capture(model, x)
    w = make(model, x, labels=LABELS)
    browser = _browser(w)
    replies = [
        browser.request("layer", layer="3", sample=1, revision=1),
        browser.request("channel", layer="0", sample=1, channel=2, revision=1),
        browser.request("input", sample=1, revision=1),
        browser.request("gradcam", layer="4", sample=1, revision=1),
    ]
    assert [r.error for r in replies] == [None] * 4
    layer, channel, picture, _ = replies
    assert w.layers[3]["dtype"] == "bfloat16" and layer.arrays["values"].shape == (6, 8, 8)
    np.testing.assert_array_equal(channel.arrays["values"], expected["0"][1, 2].float().numpy())
    np.testing.assert_array_equal(picture.arrays["image"], w.input_image(1))
    w.set_inputs(x, image=x)
    assert w.input_image(0).dtype == np.uint8


def test_tensors_read_from_capture_keep_their_values_after_a_rerun(make: Make) -> None:
    torch.manual_seed(0)
    # `out += skip` on a conv's output: that layer is a copy held in the reused buffers.
    w = make(AddedToNet().eval(), torch.randn(1, 3, 8, 8))
    read = {name: w.capture[name] for name in w.capture}
    kept = {name: t.clone() for name, t in read.items()}
    w.inputs = torch.randn(1, 3, 8, 8)
    assert w._source.buffers.nbytes > 0
    for name, tensor in read.items():
        assert torch.equal(tensor, kept[name]), name
        assert not torch.equal(tensor, w.capture[name]), name


def test_a_training_mode_model_keeps_its_state_when_shown_and_rerun(make: Make) -> None:
    model = _tiny().train()
    state = copy.deepcopy(model.state_dict())
    w = make(model, torch.randn(2, 3, 16, 16))
    w.inputs = torch.randn(3, 3, 16, 16)
    assert _browser(w).request("layer", layer="3", sample=2, revision=2).ok
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} moved"


def test_recomputing_a_layer_for_a_model_switched_to_training_mode_is_refused(
    make: Make,
) -> None:
    model, x = _tiny(), torch.randn(2, 3, 16, 16)
    expected = capture(model, x)["3"]
    w = make(model, x, budget_bytes=1)
    browser = _browser(w)
    model.train()
    state = copy.deepcopy(model.state_dict())
    reply = browser.request("channel", layer="3", sample=0, channel=1, revision=1)
    assert not reply.ok
    for text in ("training mode", "model.eval()", "w.inputs = "):
        assert text in reply.error
    with pytest.raises(RuntimeError, match="training mode"):
        w.capture["3"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} moved"
    model.eval()
    reply = browser.request("channel", layer="3", sample=0, channel=1, revision=1)
    np.testing.assert_array_equal(reply.arrays["values"], expected[0, 1].numpy())


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ("inputs", "inputs were changed in place"),
        ("weights", "parameters or buffers were changed"),
        ("buffers", "parameters or buffers were changed"),
    ],
)
def test_recomputing_a_layer_after_inputs_or_weights_changed_is_refused(
    make: Make, changed: str, message: str
) -> None:
    model, x = _tiny(), torch.randn(2, 3, 16, 16)
    w = make(model, x, budget_bytes=1)
    browser = _browser(w)
    with torch.no_grad():
        changes = {"inputs": x, "weights": model[2].weight, "buffers": model[3].running_mean}
        changes[changed].add_(1)
    reply = browser.request("layer", layer="3", sample=0, revision=1)
    assert not reply.ok and message in reply.error and "w.inputs = " in reply.error
    w.inputs = x
    reply = browser.request("channel", layer="3", sample=0, channel=1, revision=2)
    np.testing.assert_array_equal(reply.arrays["values"], capture(model, x)["3"][0, 1].numpy())


def test_block_names_are_aliases_of_their_layer(make: Callable[..., FeatureMapWidget]) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    w = make(model, torch.rand(1, 3, 64, 64), layer="layer4")
    assert w.layer == "layer4.1.relu:2"
    assert w.capture["layer4"] is w.capture["layer4.1.relu:2"]
    meta = {m["name"]: m for m in w.layers}
    assert meta["layer4.1.relu:2"]["aliases"] == ["layer4.1", "layer4"]
    assert meta["conv1"]["aliases"] == []
    w.layer = "layer3"
    assert w.layer == "layer3.1.relu:2"
    unknown = r"unknown layer 'layer9'; close names: 'layer4'"
    with pytest.raises(traitlets.TraitError, match=unknown):
        w.layer = "layer9"
