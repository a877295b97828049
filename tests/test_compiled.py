"""torch.compile'd models: captured, explained and ablated through their original modules, eagerly,
without recompiling the user's compiled model (backend="eager": no C++ build in tests)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from models import assert_no_hooks
from torch import nn

from fmwidget.analysis import ablate
from fmwidget.capture import LayerTaps, capture, capture_layer
from fmwidget.gradcam import gradcam

torch.set_num_threads(1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(inplace=True)
        )
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class Compiles:
    """A Dynamo backend that counts the graphs it is asked to compile."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, gm: torch.fx.GraphModule, _inputs: Any) -> Callable[..., Any]:
        self.count += 1
        return gm.forward


@pytest.fixture
def compiled() -> Iterator[tuple[nn.Module, nn.Module, torch.Tensor, Compiles]]:
    torch.manual_seed(0)
    torch._dynamo.reset()
    net = Net().eval()
    backend = Compiles()
    model = torch.compile(net, backend=backend)
    assert isinstance(model, nn.Module)
    x = torch.rand(2, 3, 12, 12)
    model(x)  # it has run once: its graph is cached
    assert backend.count == 1
    with warnings.catch_warnings():
        # A recompile (or a graph break over our hooks) warns; none may happen.
        warnings.simplefilter("error")
        yield model, net, x, backend
    model(x)
    assert backend.count == 1, "the compiled model was recompiled"
    assert_no_hooks(net)


def test_capture_runs_the_original_eagerly_and_says_so(
    compiled: tuple[nn.Module, nn.Module, torch.Tensor, Compiles],
) -> None:
    model, net, x, _ = compiled
    cap = capture(model, x)
    plain = capture(net, x)
    assert list(cap) == list(plain) == ["features.0", "features.1", "features.2", "features.3"]
    for name in cap:
        assert torch.equal(cap[name], plain[name]), name
    assert any("torch.compile'd" in note and "eagerly" in note for note in cap.report.notes)
    assert not any("torch.compile" in note for note in plain.report.notes)
    # The wrapper's spelling is an alias, and the block name too.
    assert cap["_orig_mod.features.2"] is cap["features.2"]
    assert cap["features"] is cap["_orig_mod.features"] is cap["features.3"]
    picked = capture(model, x, layers=["_orig_mod.features.2"])
    assert list(picked) == ["features.2"]


def test_taps_and_recompute_see_the_compiled_model(
    compiled: tuple[nn.Module, nn.Module, torch.Tensor, Compiles],
) -> None:
    model, net, x, _ = compiled
    seen: list[str] = []
    with LayerTaps(model, None, lambda name, _t: seen.append(name)) as taps:
        taps.forward(x)
    assert seen == ["features.0", "features.1", "features.2", "features.3"]
    assert torch.equal(capture_layer(model, x, "features.2"), capture(net, x)["features.2"])


def test_gradcam_and_ablation_of_a_compiled_model(
    compiled: tuple[nn.Module, nn.Module, torch.Tensor, Compiles],
) -> None:
    model, net, x, _ = compiled
    expected = gradcam(net, x, "features.2", target=1, progress=False)
    conv = net.get_submodule("features.2")
    for layer in ("features.2", "_orig_mod.features.2", conv):
        heat = gradcam(model, x, layer, target=1, progress=False)
        torch.testing.assert_close(heat, expected, rtol=0, atol=0)
    result = ablate(model, x, "features.2", [0])
    assert torch.equal(result.output_after, ablate(net, x, "features.2", [0]).output_after)
    assert not torch.equal(result.output_after, result.output_before)


def test_a_model_compiled_in_place() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    reference = capture(net, torch.ones(1, 3, 12, 12))
    backend = Compiles()
    net.compile(backend=backend)
    x = torch.ones(1, 3, 12, 12)
    net(x)
    cap = capture(net, x)
    assert list(cap) == list(reference)
    assert any("torch.compile'd" in note for note in cap.report.notes)
    net(x)
    assert backend.count == 1
