"""Block names as aliases of the layer whose output tensor the block returned, blocks that end
outside modules captured as layers of their own, and activation kinds by what a module is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from models import assert_no_hooks
from torch import nn

import fmwidget
from fmwidget.capture import LayerTaps, capture
from fmwidget.names import UnknownLayerError, resolve_name

torch.set_num_threads(1)


class Residual(nn.Module):
    """Ends in a functional add: its output is no module's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x


class AddInPlace(nn.Module):
    """Returns its last leaf's tensor, changed in place after the leaf returned it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        out += x
        return out


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.stage = nn.Sequential(Residual(), AddInPlace(), nn.Sequential(nn.ReLU()))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)).mean((2, 3)))


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


X = torch.randn(1, 3, 6, 6)


def test_blocks_alias_the_layer_they_return_or_are_layers_themselves(net: Net) -> None:
    cap = capture(net, X)
    assert cap.aliases == {"stem": "stem.1", "stage.2": "stage.2.0", "stage": "stage.2.0"}
    assert list(cap) == [
        "stem.0",
        "stem.1",
        "stage.0.conv",
        "stage.0",  # conv(x) + x: no module returned it
        "stage.1.conv",
        "stage.1",  # the conv's tensor after `out += x`: other values than the conv's
        "stage.2.0",
    ]
    assert cap.info("stage.0").kind == cap.info("stage.1").kind == "block"
    residual, add_in_place = net.stage[0], net.stage[1]
    assert isinstance(residual, Residual) and isinstance(add_in_place, AddInPlace)
    with torch.no_grad():
        y = net.stem(X)
        first = residual.conv(y) + y
        conv = add_in_place.conv(first)
    torch.testing.assert_close(cap["stage.0"], first, rtol=0, atol=0)
    torch.testing.assert_close(cap["stage.1.conv"], conv, rtol=0, atol=0)
    torch.testing.assert_close(cap["stage.1"], conv + first, rtol=0, atol=0)
    assert cap["stage"] is cap["stage.2.0"] and cap.info("stage").name == "stage.2.0"
    assert cap.info("stage.2.0").aliases == ("stage.2", "stage")
    assert cap.info("stage.1").input_from == "stage.0"
    assert_no_hooks(net)


def test_report_shows_aliases_and_unknown_names_suggest_them(net: Net) -> None:
    cap = capture(net, X)
    row = next(line for line in str(cap.report).splitlines() if line.startswith("  stage.2.0 "))
    assert row.endswith("stage.2, stage")
    assert "block aliases" in str(cap.report).splitlines()[1]
    with pytest.raises(UnknownLayerError, match=r"unknown layer 'stge'; close names: 'stage'"):
        cap["stge"]
    assert cap.resolve("_orig_mod.stage") == "stage.2.0" and "stage" in cap
    assert resolve_name("_orig_mod.stage", list(cap), cap.aliases) == "stage.2.0"


def test_aliases_with_grad_taps_selections_and_files(net: Net, tmp_path: Path) -> None:
    cap = capture(net, X, grad=True)
    assert cap.aliases["stage"] == "stage.2.0"
    cap.output.sum().backward()  # the stored tensors are part of the graph
    seen: list[str] = []
    with LayerTaps(net, None, lambda name, _t: seen.append(name)) as taps:
        taps.forward(X)
    assert seen == list(capture(net, X))
    assert taps.infos["stage.2.0"].aliases == ("stage.2", "stage")
    # A block named in layers= is captured under its own name; types select no blocks.
    assert list(capture(net, X, layers=["stage"])) == ["stage"]
    assert capture(net, X, layers=[nn.Conv2d]).aliases == {}
    path = tmp_path / "cap.safetensors"
    capture(net, X).save(path)
    loaded = fmwidget.load(path)
    assert loaded.aliases == cap.aliases and loaded.info("stage").aliases == ("stage.2", "stage")


# -- activation kinds ------------------------------------------------------------------------------


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class Wrapped(nn.Module):
    """Named for nothing in particular, wrapping F.gelu."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x)


class StarReLU(nn.Module):
    """timm's MetaFormer activation: learned scale and bias, recognised by its name."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.relu(x) ** 2 + self.bias


class MyGELU(nn.GELU):
    pass


class Gain(nn.Module):
    """A learned gain that happens to squash: parameters and no activation name, so not one."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * self.gain


def test_activations_are_recognised_by_what_they_are() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        Swish(),
        Wrapped(),
        StarReLU(),
        MyGELU(),
        nn.Softmax2d(),
        Gain(),
        nn.Identity(),
        nn.Dropout(),
        nn.BatchNorm2d(4),
    ).eval()
    kinds = [(i.type, i.kind) for i in capture(model, torch.randn(1, 3, 4, 4)).report.captured]
    assert kinds == [
        ("Conv2d", "conv"),
        ("Swish", "act"),
        ("Wrapped", "act"),
        ("StarReLU", "act"),
        ("MyGELU", "act"),
        ("Softmax2d", "act"),
        ("Gain", "other"),
        ("Identity", "other"),
        ("Dropout", "other"),
        ("BatchNorm2d", "norm"),
    ]
