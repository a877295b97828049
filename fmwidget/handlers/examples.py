"""``examples``: a channel's top dataset examples from the widget's scan, cropped to their
receptive fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fmwidget import wire
from fmwidget.dataset import DatasetContext
from fmwidget.handlers.fields import BadRequest, View, channel_field, layer_field


@dataclass(frozen=True)
class ExamplesRequest:
    layer: str
    channel: int


def parse(content: dict[str, Any], view: View) -> ExamplesRequest:
    datasets = datasets_of(view)
    name = layer_field(content, view.session)
    if name not in datasets.scan.layers:
        raise BadRequest(
            f"layer {name!r} is not in the widget's scan; scanned: {datasets.scan.layers[:5]}"
        )
    return ExamplesRequest(name, channel_field(content, name, view.session))


def handle(request: ExamplesRequest, view: View) -> wire.Payload:
    return datasets_of(view).examples(request.layer, request.channel, view.session.model)


def datasets_of(view: View) -> DatasetContext:
    """The widget's scan and dataset, or a bad request saying how to give the widget a scan."""
    if view.datasets is None:
        raise BadRequest("the widget has no scan: pass scan= (from fmwidget.scan) to the widget")
    return view.datasets
