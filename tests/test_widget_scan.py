"""A FeatureMapWidget with a dataset scan: traits, layer replies, examples, show_example."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import traitlets
from fakecomm import FakeComm, fake_comms

from fmwidget import wire
from fmwidget.scan import ScanMismatchError, scan
from fmwidget.widget import FeatureMapWidget
from fmwidget.wire import FLAG_DATASET_DEAD
from tests.scan_data import Noise, model


@pytest.fixture
def widget() -> Iterator[FeatureMapWidget]:
    net, data = model(), Noise(30, size=12)
    result = scan(net, data, k=4, progress=False)
    with fake_comms():
        w = FeatureMapWidget(net, data[0][0][None], scan=result, dataset=data)
        yield w
        w.close()


def _ask(w: FeatureMapWidget, **request: Any) -> wire.Reply:
    comm: FakeComm = w.comm
    before = len(comm.published)
    comm.send_custom({"type": "request", "id": 5, "revision": w.revision, **request})
    (reply,) = comm.replies(since=before)
    return reply


def test_scan_info_describes_the_scan(widget: FeatureMapWidget) -> None:
    info = widget.scan_info
    assert info["images"] == 30 and info["k"] == 4 and info["complete"] and info["crops"]
    assert info["labels"] == ["0", "1", "2"] and "bn1" in info["layers"]


def test_layer_replies_carry_dataset_statistics_and_dataset_dead_flags(
    widget: FeatureMapWidget,
) -> None:
    stats = widget.scan.stats("relu")
    reply = _ask(widget, kind="layer", layer="relu", sample=0)
    assert reply.ok
    np.testing.assert_allclose(reply.arrays["scan_mean"], stats["mean"], rtol=1e-6)
    np.testing.assert_allclose(reply.arrays["scan_active"], stats["active"], rtol=1e-6)
    dead = (reply.arrays["flags"] & FLAG_DATASET_DEAD) > 0
    np.testing.assert_array_equal(dead, stats["dead"])
    assert reply.meta["scan"]["images"] == 30 and reply.meta["scan"]["dead"] == int(
        stats["dead"].sum()
    )
    assert "scan_selectivity" not in reply.arrays
    widget.scan_label = "2"
    widget.scan_pair = ["0", "1"]
    reply = _ask(widget, kind="layer", layer="relu", sample=0, channels=[1, 3])
    np.testing.assert_allclose(
        reply.arrays["scan_selectivity"], widget.scan.selectivity("relu")[2][[1, 3]], rtol=1e-6
    )
    np.testing.assert_allclose(
        reply.arrays["scan_effect"], widget.scan.effect("relu", 0, 1)[[1, 3]], rtol=1e-6
    )
    assert reply.meta["scan"]["pair"] == ["0", "1"] and reply.meta["scan"]["counts"] == {
        "0": 10,
        "1": 10,
    }


def test_examples_reply_holds_the_top_k_crops(widget: FeatureMapWidget) -> None:
    reply = _ask(widget, kind="examples", layer="conv2", channel=3)
    assert reply.ok and reply.meta["crops"]
    top = widget.scan.top("conv2", 3)
    entries = reply.meta["examples"]
    assert [e["index"] for e in entries] == [t.index for t in top]
    crops = widget.scan.crops("conv2", 3, widget.dataset, widget.model)
    for entry, crop in zip(entries, crops, strict=True):
        h, w = entry["shape"]
        pixels = reply.arrays["pixels"][entry["offset"] : entry["offset"] + h * w * 3]
        np.testing.assert_array_equal(pixels.reshape(h, w, 3), crop.pixels)
        assert entry["box"] == list(crop.box) and entry["label"] == str(entry["index"] % 3)


def test_clicking_an_example_makes_it_the_input(widget: FeatureMapWidget) -> None:
    revision = widget.revision
    index = widget.scan.top("conv2", 1)[0].index
    reply = _ask(widget, kind="use_example", index=index)
    assert reply.ok and widget.revision == revision + 1
    torch.testing.assert_close(widget.inputs, Noise(30, size=12)[index][0][None])


def test_scan_traits_are_checked(widget: FeatureMapWidget) -> None:
    with pytest.raises(traitlets.TraitError, match="scan_label 'cat' is not a label"):
        widget.scan_label = "cat"
    with pytest.raises(traitlets.TraitError, match="scan_pair must be two different labels"):
        widget.scan_pair = ["0", "0"]
    with fake_comms(), pytest.raises(TypeError, match=r"scan= takes an fmwidget\.Scan, got str"):
        FeatureMapWidget(model(), torch.randn(1, 3, 8, 8), scan="scan.safetensors")
    with pytest.raises(TypeError, match="'scan_info' is set by the widget"):
        FeatureMapWidget(model(), torch.randn(1, 3, 8, 8), scan_info={})


def test_a_scan_of_another_model_is_refused_before_the_model_runs() -> None:
    result = scan(model(), Noise(6), progress=False)
    other = model()
    with torch.no_grad():
        other.conv1.weight.mul_(2)
    with fake_comms(), pytest.raises(ScanMismatchError, match="made with another model"):
        FeatureMapWidget(other, torch.randn(1, 3, 8, 8), scan=result)


def test_without_a_dataset_examples_come_without_crops() -> None:
    net = model()
    with fake_comms():
        w = FeatureMapWidget(net, torch.randn(1, 3, 8, 8))
        assert w.scan is None and w.scan_info is None
        w.scan = scan(net, Noise(6), k=2, progress=False)
        reply = _ask(w, kind="examples", layer="conv1", channel=0)
        assert reply.ok and not reply.meta["crops"] and len(reply.meta["examples"]) == 2
        assert "dataset=" in reply.meta["note"]
        w.scan = None
        assert w.scan_info is None
        w.close()


def test_pictures_of_dataset_images_for_a_group_audit(widget: FeatureMapWidget) -> None:
    widget.scan_pair = ["0", "1"]
    reply = _ask(widget, kind="layer", layer="relu", sample=0)
    examples = reply.meta["scan"]["examples"]
    assert examples == {"0": [0, 3, 6, 9, 12, 15, 18, 21], "1": [1, 4, 7, 10, 13, 16, 19, 22]}
    reply = _ask(widget, kind="pictures", indices=examples["0"][:3])
    assert reply.ok and [p["index"] for p in reply.meta["pictures"]] == [0, 3, 6]
    first = reply.meta["pictures"][1]
    h, w = first["shape"]
    got = reply.arrays["pixels"][first["offset"] : first["offset"] + h * w * 3].reshape(h, w, 3)
    image = Noise(30, size=12)[3][0]
    lo, hi = float(image.min()), float(image.max())
    want = np.round((image.permute(1, 2, 0).numpy() - lo) / (hi - lo) * 255).astype(np.uint8)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert first["label"] == "0"
    bad = _ask(widget, kind="pictures", indices=[99])
    assert not bad.ok and "out of range: the scan covers 30 images" in bad.error
