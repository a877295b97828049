"""compare(): two models side by side, layers paired by name or order, kept in step, A − B."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from fakecomm import FakeComm, fake_comms
from torch import nn

from fmwidget import wire
from fmwidget.analysis import compare_layers
from fmwidget.capture import capture
from fmwidget.compare import CompareWidget, compare
from fmwidget.widget import FeatureMapWidget

Compare = Callable[..., CompareWidget]
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _resnet18(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture
def comms() -> Iterator[list[FakeComm]]:
    with fake_comms() as created:
        yield created


@pytest.fixture
def make(comms: list[FakeComm]) -> Iterator[Compare]:
    made: list[CompareWidget] = []

    def create(*args: Any, **kwargs: Any) -> CompareWidget:
        widget = compare(*args, **kwargs)
        made.append(widget)
        return widget

    yield create
    for widget in made:
        widget.close()


def _has_hooks(model: nn.Module) -> bool:
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules()
    )


def _changes(widget: FeatureMapWidget, trait: str) -> list[Any]:
    seen: list[Any] = []
    widget.observe(lambda change: seen.append(change["new"]), names=trait)
    return seen


def test_layers_follow_by_name_and_an_unmatched_layer_leaves_the_partner(make: Compare) -> None:
    model_b = torchvision.models.resnet34(weights=None).eval()
    cmp = make(_resnet18(0), model_b, X, names=("r18", "r34"), layer="layer1.0.conv1")
    assert cmp.b.layer == "layer1.0.conv1"
    assert ("layer2.0.conv1", "layer2.0.conv1", True) in cmp.pairs
    assert all(p.name_a == p.name_b for p in cmp.pairs)
    cmp.a.layer = "layer2.0.conv1"
    assert cmp.b.layer == "layer2.0.conv1"
    cmp.b.layer = "layer3.0.bn1"
    assert cmp.a.layer == "layer3.0.bn1"
    cmp.b.layer = "layer3.4.conv1"  # resnet18's layer3 has two blocks: no partner
    assert (cmp.a.layer, cmp.b.layer) == ("layer3.0.bn1", "layer3.4.conv1")
    cmp.a.layer = "layer4.1.conv2"
    assert cmp.b.layer == "layer4.1.conv2"


def test_layers_follow_by_order_of_conv_layers(make: Compare) -> None:
    model_a, model_b = _resnet18(0), torchvision.models.mobilenet_v2(weights=None).eval()
    expected = compare_layers(capture(model_a, X), capture(model_b, X), match="order")
    cmp = make(model_a, model_b, X, match="order")
    assert cmp.pairs == expected
    assert (cmp.a.layer, cmp.b.layer) == ("conv1", "features.0.0")
    for pair in expected[3:6]:
        cmp.a.layer = pair.name_a
        assert cmp.b.layer == pair.name_b
    cmp.b.layer = expected[1].name_b
    assert cmp.a.layer == expected[1].name_a
    cmp.a.layer = "layer1.0.bn1"  # not a conv: no partner, B stays
    assert cmp.b.layer == expected[1].name_b
    assert not any(p.same_shape for p in cmp.pairs)
    with pytest.raises(ValueError, match="no pair of layers has the same"):
        cmp.show_difference()
    assert cmp.diff is None


def test_channel_sample_and_style_follow_without_echo(make: Compare) -> None:
    cmp = make(_resnet18(0), _resnet18(1), X, layer="layer1.0.conv1")
    a_layers, b_layers = _changes(cmp.a, "layer"), _changes(cmp.b, "layer")
    a_channels = _changes(cmp.a, "channel")
    cmp.a.channel = 5
    assert cmp.b.channel == 5 and a_channels == [5]
    cmp.b.channel = 9
    assert cmp.a.channel == 9 and a_channels == [5, 9]
    cmp.a.layer = "layer2.0.conv1"
    assert (a_layers, b_layers) == (["layer2.0.conv1"], ["layer2.0.conv1"])
    assert cmp.b.channel == 9
    cmp.a.sample = 1
    assert cmp.b.sample == 1
    cmp.b.colormap = "magma"
    cmp.a.scale = "global"
    cmp.b.symmetric = True
    assert (cmp.a.colormap, cmp.b.scale, cmp.a.symmetric) == ("magma", "global", True)
    cmp.a.channel = None
    assert cmp.b.channel is None


def test_the_browser_moving_one_view_moves_the_other(make: Compare, comms: list) -> None:
    cmp = make(_resnet18(0), _resnet18(1), X)
    browser_a = cmp.a.comm
    assert isinstance(browser_a, FakeComm)
    b_updates = len(cmp.b.comm.state_updates())
    browser_a.update(layer="layer3.1.conv2", channel=200, sample=1)
    assert (cmp.b.layer, cmp.b.channel, cmp.b.sample) == ("layer3.1.conv2", 200, 1)
    sent = cmp.b.comm.state_updates()[b_updates:]
    assert {"layer": "layer3.1.conv2"} in sent and {"channel": 200} in sent
    links = [
        data["state"]
        for comm in comms
        for kind, data, _ in comm.published
        if kind == "comm_open" and data["state"].get("_model_name") == "LinkModel"
    ]
    assert [(link["source"][1], link["target"][1]) for link in links] == [("view", "view")]
    assert links[0]["source"][0] == f"IPY_MODEL_{cmp.a.model_id}"
    assert links[0]["target"][0] == f"IPY_MODEL_{cmp.b.model_id}"


def test_a_channel_the_partner_lacks_closes_it(make: Compare) -> None:
    model_b = torchvision.models.mobilenet_v2(weights=None).eval()
    cmp = make(_resnet18(0), model_b, X, match="order")
    assert cmp.b.layers[0]["shape"][1] == 32
    cmp.b.channel = 3
    cmp.a.channel = 40
    assert cmp.b.channel is None


def test_difference_view_shows_a_minus_b_and_follows(make: Compare) -> None:
    model_a, model_b = _resnet18(0), _resnet18(1)
    cmp = make(model_a, model_b, X, layer="layer1.0.conv2")
    cmp.a.channel = 4
    diff = cmp.show_difference(True)
    assert diff is cmp.diff and diff not in cmp.children
    # Under A, as wide as A and B (half the row), so the linked zoom shows the same tiles.
    row = cmp.children[-1]
    assert row.children[0] is diff and len(row.children) == 2
    assert diff.layout.flex == row.children[1].layout.flex == cmp.a.layout.flex == "1 1 0%"
    assert (diff.layer, diff.channel, diff.colormap, diff.symmetric) == (
        "layer1.0.conv2",
        4,
        "diverging",
        True,
    )
    expected = capture(model_a, X)["layer2.1.bn2"] - capture(model_b, X)["layer2.1.bn2"]
    torch.testing.assert_close(diff.capture["layer2.1.bn2"], expected)
    reply = diff.comm.request("channel", layer="layer2.1.bn2", sample=1, channel=3, revision=1)
    np.testing.assert_array_equal(reply.arrays["values"], expected[1, 3].numpy())
    picture = diff.comm.request("input", sample=0, revision=1).arrays["image"]
    np.testing.assert_array_equal(picture, cmp.a.input_image(0))
    assert {m["name"] for m in diff.layers} == {m["name"] for m in cmp.a.layers}
    by_name = {m["name"]: m for m in diff.layers}
    assert by_name["layer1.0.bn1"]["post"] == "layer1.0.relu"
    cmp.a.layer = "layer3.0.conv1"
    assert diff.layer == "layer3.0.conv1"
    diff.layer = "layer4.0.bn2"
    diff.sample = 1
    assert (cmp.a.layer, cmp.b.layer, cmp.a.sample, cmp.b.sample) == (
        "layer4.0.bn2",
        "layer4.0.bn2",
        1,
        1,
    )
    cmp.b.colormap = "viridis"
    cmp.b.scale = "layer"
    assert (diff.colormap, diff.scale) == ("diverging", "layer")
    link = cmp._diff_link
    assert (link.source, link.target) == ((cmp.a, "view"), (diff, "view"))
    cmp.show_difference(False)
    assert cmp.diff is None and diff.comm is None and row not in cmp.children
    assert link.comm is None and diff.layout.comm is None
    cmp.a.layer = "layer1.0.conv1"
    assert diff.layer == "layer4.0.bn2", "a hidden difference no longer follows"


def test_difference_checkbox_toggles_and_layers_without_a_same_shape_partner(
    make: Compare,
) -> None:
    model_b = torchvision.models.resnet34(weights=None).eval()
    cmp = make(_resnet18(0), model_b, X, match="order")
    toggle = cmp._toggle
    assert not toggle.disabled
    toggle.value = True
    diff = cmp.diff
    assert diff is not None
    same = [p for p in cmp.pairs if p.same_shape]
    assert [m["name"] for m in diff.layers] == [p.name_a for p in same]
    assert ("layer2.0.conv1", "layer1.2.conv1", False) in cmp.pairs
    cmp.a.layer = same[-1].name_a
    cmp.a.layer = "layer2.0.conv1"
    assert diff.layer == same[-1].name_a
    assert "layer2.0.conv1 and layer1.2.conv1 differ in shape" in cmp._diff_note.value
    cmp.show_difference(False)
    assert toggle.value is False and cmp.diff is None


def test_no_feedback_loop_when_every_view_changes_at_once(make: Compare) -> None:
    cmp = make(_resnet18(0), _resnet18(1), X)
    diff = cmp.show_difference()
    counts = {name: _changes(view, "layer") for name, view in (("a", cmp.a), ("b", cmp.b))}
    counts["diff"] = _changes(diff, "layer")
    diff.comm.update(layer="layer2.0.relu", channel=3)
    assert counts == {"a": ["layer2.0.relu"], "b": ["layer2.0.relu"], "diff": ["layer2.0.relu"]}
    assert (cmp.a.channel, cmp.b.channel) == (3, 3)


def test_set_inputs_reruns_both_and_the_difference(make: Compare) -> None:
    model_a, model_b = _resnet18(0), _resnet18(1)
    cmp = make(model_a, model_b, X)
    cmp.show_difference()
    x = torch.randn(3, 3, 32, 32)
    cmp.set_inputs(x)
    assert cmp.a.num_samples == cmp.b.num_samples == cmp.diff.num_samples == 3
    expected = capture(model_a, x)["layer1.1.conv1"] - capture(model_b, x)["layer1.1.conv1"]
    torch.testing.assert_close(cmp.diff.capture["layer1.1.conv1"], expected)
    reply = cmp.diff.comm.request("layer", layer="layer1.1.conv1", sample=2, revision=1)
    assert reply.ok and reply.meta["shape"] == [64, 8, 8]
    cmp.a.inputs = torch.randn(1, 3, 32, 32)
    assert cmp.diff is None and cmp.pairs == []
    assert "batches of 1 and 3 inputs" in cmp._diff_note.value
    assert cmp._toggle.disabled


def test_titles_name_each_model_and_its_prediction(make: Compare) -> None:
    labels = [f"class-{i}" for i in range(1000)]
    cmp = make(_resnet18(0), _resnet18(1), X, labels=labels, names=("<b>seed 0</b>", "seed 1"))
    title_a, title_b = (label.value for label in cmp._titles)
    top = cmp.a.predictions[0][0]
    assert title_a == f"<b>seed 0</b> (ResNet): {top['label']} {top['prob']:.0%}"
    assert title_b.startswith("seed 1 (ResNet): class-")
    cmp.b.sample = 1
    second = cmp.a.predictions[1][0]
    assert cmp._titles[0].value.endswith(f"{second['label']} {second['prob']:.0%}")


def test_close_frees_both_models_every_activation_and_every_child(comms: list) -> None:
    model_a, model_b = _resnet18(0), _resnet18(1)
    refs = [weakref.ref(model_a), weakref.ref(model_b)]
    cmp = compare(model_a, model_b, X, layer="layer1.0.conv1")
    cmp.a.selected = [2]
    cmp.a.ablate()
    diff = cmp.show_difference()
    held = [weakref.ref(cmp.a.capture["conv1"]), weakref.ref(diff.capture["conv1"])]
    assert not _has_hooks(model_a) and not _has_hooks(model_b)
    views = [cmp.a, cmp.b, diff]
    del model_a, model_b
    cmp.close()
    gc.collect()
    assert [r() for r in refs + held] == [None] * 4
    assert all(view.comm is None for view in views) and cmp.comm is None
    # Only the layouts of the two given views stay: the caller may share them with others.
    still_open = {comm for comm in comms if not comm._closed}
    assert still_open == {views[0].layout.comm, views[1].layout.comm}


def test_compare_errors_name_what_to_fix(comms: list) -> None:
    mobilenet = torchvision.models.mobilenet_v2(weights=None).eval()
    opened = len(comms)
    with pytest.raises(ValueError, match=r"no layer of model 'A' pairs .* by name \(for two arch"):
        compare(_resnet18(0), mobilenet, X)
    with pytest.raises(ValueError, match="match='same'; choose 'name' or 'order'"):
        compare(_resnet18(0), _resnet18(1), X, match="same")
    with pytest.raises(ValueError, match="names must be two strings"):
        compare(_resnet18(0), _resnet18(1), X, names=("only one",))
    left = [c.published[0][1]["state"]["_model_name"] for c in comms[opened:] if not c._closed]
    assert left == ["LayoutModel"] * 6, "a failed compare closes its views (not their layouts)"


def test_compare_widget_of_two_views_of_different_batches_is_refused(comms: list) -> None:
    a = FeatureMapWidget(_resnet18(0), X)
    b = FeatureMapWidget(_resnet18(1), X[:1])
    try:
        with pytest.raises(ValueError, match="batches of 2 and 1 inputs"):
            CompareWidget(a, b)
    finally:
        a.close()
        b.close()


def test_the_diff_view_serves_a_quantized_layer_like_any_view(make: Compare) -> None:
    cmp = make(_resnet18(0), _resnet18(1), X)
    diff = cmp.show_difference()
    reply = diff.comm.request("layer", layer="layer1.0.conv1", sample=0, revision=1)
    values = wire.dequantize(reply.arrays["values"], reply.arrays["stats"])
    expected = (cmp.a.capture["layer1.0.conv1"] - cmp.b.capture["layer1.0.conv1"])[0]
    span = (reply.arrays["stats"][:, 1] - reply.arrays["stats"][:, 0])[:, None, None]
    assert (np.abs(values - expected.numpy()) <= span / 508 + 1e-6).all()
