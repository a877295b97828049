"""The request router and its handler modules, driven directly (no widget, no comm)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fmwidget import router, wire
from fmwidget.analysis import AblationResult
from fmwidget.handlers import HANDLERS
from fmwidget.handlers.fields import BadRequest
from fmwidget.session import CAM_CACHE_ENTRIES, CamMaps, Session, Source


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


@dataclass
class _View:
    """The parts of a widget a handler reads (fmwidget.handlers.fields.View)."""

    session: Session
    groups: list[str] = field(default_factory=list)
    group_pair: list[str] = field(default_factory=list)
    cam_method: str = "gradcam"
    cam_methods: list[str] = field(default_factory=lambda: ["gradcam"])
    target: int | None = None
    ablation: dict[str, Any] | None = None
    scan_label: str | None = None
    scan_pair: list[str] = field(default_factory=list)
    datasets: Any = None
    ablated: list[tuple[Any, Any]] = field(default_factory=list)

    def ablate(self, layer: str | None = None, channels: Any = None) -> AblationResult:
        self.ablated.append((layer, channels))
        self.ablation = {"layer": layer or "0", "channels": channels or [0], "changes": None}
        return AblationResult(torch.zeros(1), torch.zeros(1), None)

    def show_example(self, index: int) -> None:
        raise ValueError("the widget has no scan")


@pytest.fixture
def view() -> _View:
    x = torch.randn(2, 3, 8, 8)
    session = Source(_model()).run(x, groups=["a", "b"])
    yield _View(session, groups=session.groups)
    session.close("test over")


def _ask(view: _View | None, **request: Any) -> wire.Reply:
    content = {"type": "request", "id": 7, "revision": 1, **request}
    return wire.decode(*router.serve(view, content, revision=3))


def test_every_protocol_kind_has_a_handler_module_with_parse_and_handle() -> None:
    kinds = {
        "layer",
        "channel",
        "input",
        "gradcam",
        "ablate",
        "examples",
        "use_example",
        "pictures",
        "explain",
    }
    assert set(HANDLERS) == kinds
    for module in HANDLERS.values():
        assert callable(module.parse) and callable(module.handle)


def test_layer_reply_carries_the_kernel_revision_and_the_store_values(view: _View) -> None:
    reply = _ask(view, kind="layer", layer="0", sample=1)
    assert reply.ok and reply.id == 7 and reply.meta["revision"] == 3
    maps = view.session.store.maps("0")[1]
    values = wire.dequantize(reply.arrays["values"], reply.arrays["stats"])
    np.testing.assert_allclose(values, maps.numpy(), atol=float(maps.abs().max()) / 100)


def test_parse_gives_typed_requests(view: _View) -> None:
    request = HANDLERS["channel"].parse({"layer": "1", "sample": 0, "channel": 2}, view)
    assert (request.layer, request.sample, request.channel) == ("1", 0, 2)
    with pytest.raises(BadRequest, match="channel 9 is out of range: layer '1' has 4"):
        HANDLERS["channel"].parse({"layer": "1", "sample": 0, "channel": 9}, view)


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        ({"kind": "layer", "layer": "nope", "sample": 0}, "unknown layer 'nope'"),
        ({"kind": "layer", "layer": "0", "sample": 5}, "sample 5 is out of range"),
        ({"kind": "input", "sample": True}, "request needs 'sample' (an integer)"),
        ({"kind": "gradcam", "layer": "0", "sample": 0, "method": "x"}, "unknown CAM method"),
        ({"kind": "gradcam", "layer": "0", "sample": 0, "target": 3}, "target class 3"),
        ({"kind": "ablate", "channels": 3}, "channels must be a list"),
        ({"kind": "teleport"}, "unknown request kind 'teleport'"),
        ({"kind": "examples", "layer": "0", "channel": 0}, "the widget has no scan"),
        ({"kind": "use_example", "index": 3}, "the widget has no scan"),
    ],
)
def test_bad_requests_become_one_error_reply(view: _View, asked: dict, message: str) -> None:
    reply = _ask(view, **asked)
    assert not reply.ok and message in reply.error


def test_ablate_request_calls_the_views_ablate(view: _View) -> None:
    reply = _ask(view, kind="ablate", layer="0", channels=[1])
    assert reply.ok and view.ablated == [("0", [1])]
    assert reply.meta["layer"] == "0"


def test_a_closed_session_answers_that_it_has_no_data(view: _View) -> None:
    view.session.close("closed for the test")
    reply = _ask(view, kind="layer", layer="0", sample=0)
    assert not reply.ok and "no data" in reply.error


def test_gradcam_maps_are_cached_per_layer_target_and_method(view: _View) -> None:
    first = _ask(view, kind="gradcam", layer="0", sample=0)
    again = _ask(view, kind="gradcam", layer="0", sample=1)
    assert first.ok and again.ok and len(view.session.cams) == 1
    assert first.meta["target"] == int(view.session.output[0].argmax())


def test_the_cam_cache_is_bounded(view: _View) -> None:
    maps = CamMaps(torch.zeros(2, 1, 1), torch.zeros(2, 0), None, normalized=True)
    for i in range(CAM_CACHE_ENTRIES + 5):
        view.session.cam((str(i), None, "gradcam"), lambda: maps)
    assert len(view.session.cams) == CAM_CACHE_ENTRIES
    assert ("0", None, "gradcam") not in view.session.cams


def test_a_closed_session_says_why_it_holds_nothing(view: _View) -> None:
    view.session.close("the widget was closed")
    with pytest.raises(RuntimeError, match="the widget was closed"):
        view.session.require()
    assert view.session.inputs is None and view.session.model is None


def test_nan_probabilities_never_reach_json() -> None:
    import json

    x = torch.randn(2, 3, 8, 8)
    x[1] = float("nan")
    session = Source(_model()).run(x)
    json.dumps(session.trait_state(), allow_nan=False)  # raises on NaN/Inf
    assert session.predictions[1][0]["prob"] is None
    assert session.predictions[0][0]["prob"] > 0
    session.close("test over")
