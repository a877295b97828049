"""Saved captures: a safetensors round trip, refusals (pickles, other models), from_activations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fakecomm import fake_comms

import fmwidget
from fmwidget.capture import capture
from fmwidget.files import ModelMismatchError
from fmwidget.scan import scan
from fmwidget.widget import FeatureMapWidget
from tests.models import InplaceNet
from tests.scan_data import Noise


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        InplaceNet(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3)
    ).eval()


def test_a_capture_round_trips_with_its_report_output_pictures_and_labels(tmp_path: Path) -> None:
    net, x = _net(), torch.randn(2, 3, 8, 8)
    cap = capture(net, x)
    pictures = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "cap.safetensors"
    cap.save(path, images=pictures, labels=["cat", "dog", "fox"])
    again = fmwidget.load(path, model=net)
    assert list(again) == list(cap)
    for name in cap:
        torch.testing.assert_close(again[name], cap[name], rtol=0, atol=0)
        assert again.info(name) == cap.info(name)
    torch.testing.assert_close(again.output, cap.output)
    assert again.report.notes == cap.report.notes and again.report.skipped == cap.report.skipped
    np.testing.assert_array_equal(np.stack(again.images), pictures)
    assert again.labels == ["cat", "dog", "fox"]


def test_bfloat16_layers_keep_their_dtype(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).eval().to(torch.bfloat16)
    cap = capture(net, torch.randn(1, 3, 6, 6, dtype=torch.bfloat16))
    cap.save(tmp_path / "b.safetensors")
    assert fmwidget.load(tmp_path / "b.safetensors")["0"].dtype == torch.bfloat16


def test_pickles_other_models_and_other_kinds_are_refused(tmp_path: Path) -> None:
    net, x = _net(), torch.randn(1, 3, 8, 8)
    pickled = tmp_path / "cap.pt"
    torch.save(dict(capture(net, x)), pickled)
    with pytest.raises(ValueError, match=r"is a pickle .* fmwidget only reads safetensors"):
        fmwidget.load(pickled)
    path = tmp_path / "cap.safetensors"
    capture(net, x).save(path)
    other = _net()
    with torch.no_grad():
        other[3].bias.add_(1)
    with pytest.raises(ModelMismatchError, match="capture was made with another model"):
        fmwidget.load(path, model=other)
    scanned = tmp_path / "scan.safetensors"
    scan(InplaceNet().eval(), Noise(4), progress=False).save(scanned)
    with pytest.raises(ValueError, match="holds an fmwidget scan, not a capture"):
        fmwidget.load(scanned)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match=r"not a readable safetensors file|not one of fmwidget's"):
        fmwidget.load(tmp_path / "junk.safetensors")


def test_a_widget_from_a_saved_capture_needs_no_model(tmp_path: Path) -> None:
    net, x = _net(), torch.randn(2, 3, 8, 8)
    path = tmp_path / "cap.safetensors"
    capture(net, x).save(path, images=np.zeros((2, 8, 8, 3), np.uint8), labels=["a", "b", "c"])
    del net
    with fake_comms():
        w = FeatureMapWidget.from_activations(path)
        assert w.model is None and w.num_samples == 2
        assert w.predictions[0][0]["label"] in {"a", "b", "c"}
        assert w.input_image(1).shape == (8, 8, 3)
        assert [m["name"] for m in w.layers][:3] == ["0.conv1", "0.bn1", "0.relu"]
        w.close()
