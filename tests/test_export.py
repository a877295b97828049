"""save_html: what the file holds, how big it is, what it escapes, which layers it picks."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fakecomm import fake_comms
from torch import nn

from fmwidget import export, router, wire
from fmwidget.names import UnknownLayerError
from fmwidget.widget import FeatureMapWidget

Make = Callable[..., FeatureMapWidget]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()


def _read(path: Path) -> tuple[str, dict[str, Any], list[bytes]]:
    """The page, its JSON block and its blobs."""
    page = path.read_text(encoding="utf-8")
    found = re.search(r"<script type='application/json' id='fmwidget-data'>(.*?)</script>", page)
    assert found is not None
    data = json.loads(found.group(1))
    blobs = re.findall(r"id='fmwidget-blob-(\d+)'>([A-Za-z0-9+/=]*)</script>", page)
    assert [int(i) for i, _ in blobs] == list(range(len(blobs)))
    return page, data, [base64.b64decode(b) for _, b in blobs]


def _reply(data: dict[str, Any], blobs: list[bytes], kind: str, **args: Any) -> wire.Reply:
    """A recorded reply decoded as the browser's codec would decode it."""
    entry = next(r for r in data["replies"] if r["kind"] == kind and r["args"] == args)
    blob = blobs[entry["blob"]]
    buffers = []
    for spec, offset in zip(entry["content"]["arrays"], entry["offsets"], strict=True):
        size = int(np.prod(spec["shape"])) * (1 if spec["dtype"] == "uint8" else 4)
        buffers.append(blob[offset : offset + size])
    return wire.decode(entry["content"], buffers)


def test_the_file_holds_the_kernels_replies(make: Make, tmp_path: Path) -> None:
    x = torch.randn(2, 3, 16, 16)
    w = make(_net(), x, labels=list("abcde"), layer="2", sample=1)
    path = w.save_html(tmp_path / "view.html")
    page, data, blobs = _read(path)
    assert page.startswith("<!doctype html>")
    # Nothing leaves the file: a CSP allowing only the inline script and styles; no external tags.
    assert "content=\"default-src 'none'; script-src 'unsafe-inline'" in page
    assert not re.search(r"<(link|img|iframe)\b|<script [^>]*src=", page)
    assert data["format"] == export.FORMAT
    traits = data["traits"]
    assert traits["layer"] == "2" and traits["sample"] == 0 and traits["num_samples"] == 1
    assert traits["predictions"] == [w.predictions[1]]
    saved = [m["name"] for m in traits["layers"]]
    assert saved == ["0", "1", "2", "3", "4"]
    assert all(m["filter"] is False for m in traits["layers"])
    # The shown sample's layer, exactly as the live view gets it.
    for name in saved:
        reply = _reply(data, blobs, "layer", layer=name)
        _, arrays = wire.layer_payload(
            w.capture[name][1], w.session.store.stats(name, 1), w.session.store.flags(name)
        )
        for key, array in arrays.items():
            np.testing.assert_array_equal(reply.arrays[key], array)
        assert reply.meta["sample"] == 1
    image = _reply(data, blobs, "input").arrays["image"]
    np.testing.assert_array_equal(image, w.input_image(1))
    assert data["saved"] == {
        "sample": 1,
        "num_samples": 2,
        "layers": 5,
        "of_layers": 8,
        "input": True,
        "gradcam": 0,
        "examples": 0,
    }


def test_activation_pairs_outside_the_file_are_dropped(make: Make, tmp_path: Path) -> None:
    w = make(_net(), torch.randn(1, 3, 16, 16))
    _, data, _ = _read(w.save_html(tmp_path / "v.html", layers=["3", "5"]))
    metas = {m["name"]: m for m in data["traits"]["layers"]}
    live = {m["name"]: m for m in w.layers}
    assert live["3"]["post"] == "4" and metas["3"]["post"] is None
    assert data["traits"]["layer"] == "3"


def test_gradcam_maps_computed_before_saving_are_kept(make: Make, tmp_path: Path) -> None:
    w = make(_net(), torch.randn(1, 3, 16, 16), layer="2")
    request = {"type": "request", "id": 1, "kind": "gradcam", "revision": 1}
    live, buffers = router.serve(w, {**request, "layer": "2", "sample": 0, "target": 3}, 1)
    assert live["ok"]
    _, data, blobs = _read(w.save_html(tmp_path / "v.html"))
    assert data["saved"]["gradcam"] == 1
    reply = _reply(data, blobs, "gradcam", layer="2", target=3, method="gradcam")
    np.testing.assert_array_equal(
        reply.arrays["heatmap"], wire.decode(live, buffers).arrays["heatmap"]
    )
    assert reply.meta["target"] == 3


def test_names_are_text_never_html(tmp_path: Path) -> None:
    hostile = "</script><img src=x onerror=alert(1)>&amp;\u2028"
    with fake_comms():
        w = FeatureMapWidget.from_activations({hostile: torch.randn(1, 4, 6, 6)})
        try:
            page, data, _ = _read(w.save_html(tmp_path / "v.html"))
        finally:
            w.close()
    assert "<img" not in page and "onerror=alert(1)>" not in page
    assert page.count("</script>") == page.count("<script")
    assert data["traits"]["layer"] == hostile
    assert data["traits"]["layers"][0]["name"] == hostile
    assert "<title>fmwidget · &lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;&amp;amp;" in page


def test_the_default_is_the_shown_layer_and_its_neighbours(
    make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = make(_net(), torch.randn(1, 3, 16, 16), layer="3")
    assert [m["name"] for m in w.layers] == [str(i) for i in range(8)]

    def saved() -> list[str]:
        _, data, _ = _read(w.save_html(tmp_path / "v.html"))
        return [m["name"] for m in data["traits"]["layers"]]

    assert saved() == ["1", "2", "3", "4", "5"]
    w.layer = "0"
    assert saved() == ["0", "1", "2", "3", "4"]
    # Within the byte budget: each 8-channel 16 × 16 layer is 2048 bytes.
    monkeypatch.setattr(export, "DEFAULT_BUDGET_BYTES", 5000)
    w.layer = "3"
    assert saved() == ["2", "3"]
    monkeypatch.setattr(export, "DEFAULT_BUDGET_BYTES", 10)
    assert saved() == ["3"]


def test_all_layers_and_the_limit(
    make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = make(_net(), torch.randn(1, 3, 16, 16))
    _, data, _ = _read(w.save_html(tmp_path / "v.html", layers="all"))
    assert [m["name"] for m in data["traits"]["layers"]] == [m["name"] for m in w.layers]
    monkeypatch.setattr(export, "ALL_LIMIT_BYTES", 4096)
    with pytest.raises(
        ValueError, match=r"layers='all' would embed .* MiB of activations \(8 layers\).*pass fewer"
    ):
        w.save_html(tmp_path / "v.html", layers="all")
    with pytest.raises(ValueError, match="these 3 layers"):
        w.save_html(tmp_path / "v.html", layers=["0", "1", "2"])
    with pytest.raises(UnknownLayerError):
        w.save_html(tmp_path / "v.html", layers=["nope"])
    with pytest.raises(ValueError, match=r"layers=\[\] saves nothing"):
        w.save_html(tmp_path / "v.html", layers=[])


def test_about_one_and_a_third_bytes_per_activation(tmp_path: Path) -> None:
    import fmwidget

    w = fmwidget.demo()
    try:
        path = w.save_html(tmp_path / "v.html")
        page, data, _ = _read(path)
    finally:
        w.close()
    bundle = len((export._STATIC / "standalone.js").read_bytes())
    css = len((export._STATIC / "widget.css").read_bytes())
    values = sum(
        int(np.prod(r["content"]["meta"]["stored"]))
        for r in data["replies"]
        if r["kind"] == "layer"
    )
    assert values > 1_000_000
    per_value = (len(page.encode()) - bundle - css) / values
    # base64 is 4/3 bytes per uint8 value; stats, flags, the input and the JSON add a little.
    assert 4 / 3 <= per_value < 1.5, per_value


def test_a_scanned_layer_keeps_its_top_examples(tmp_path: Path) -> None:
    from fmwidget.scan import scan
    from tests.scan_data import Noise, model

    net, data = model(), Noise(12)
    with fake_comms():
        w = FeatureMapWidget(
            net,
            data[0][0][None],
            scan=scan(net, data, k=3, progress=False),
            dataset=data,
            layer="conv2",
        )
        w.channel = 5
        path = w.save_html(tmp_path / "scan.html")
        _, saved, blobs = _read(path)
        recorded = [r for r in saved["replies"] if r["kind"] == "examples"]
        # The open channel first, then the layer's others (8 channels, well within the budget).
        assert [r["args"]["channel"] for r in recorded] == [5, 0, 1, 2, 3, 4, 6, 7]
        assert saved["saved"]["examples"] == 8
        reply = _reply(saved, blobs, "examples", layer="conv2", channel=5)
        crops = w.scan.crops("conv2", 5, data, net)
        first = reply.meta["examples"][0]
        h, width = first["shape"]
        got = reply.arrays["pixels"][: h * width * 3].reshape(h, width, 3)
        np.testing.assert_array_equal(got, crops[0].pixels)
        w.close()
