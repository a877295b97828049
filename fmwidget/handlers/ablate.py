"""``ablate``: the view's "Ablate selected", which is ``FeatureMapWidget.ablate``.

It re-runs the model twice on the whole batch, so the router serves it as a job, with progress and
cancel (:mod:`fmwidget.tasks`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fmwidget import wire
from fmwidget.handlers.fields import BadRequest, View, layer_field


@dataclass(frozen=True)
class AblateRequest:
    layer: str | None
    channels: list[Any] | None


def parse(content: dict[str, Any], view: View) -> AblateRequest:
    layer, channels = content.get("layer"), content.get("channels")
    if layer is not None:
        layer = layer_field(content, view.session)
    if channels is not None and not isinstance(channels, list):
        raise BadRequest(f"channels must be a list of channel indices, got {channels!r}")
    return AblateRequest(layer, channels)


def runs_long(_request: AblateRequest, _view: View) -> bool:
    return True


def handle(request: AblateRequest, view: View) -> wire.Payload:
    try:
        view.ablate(request.layer, request.channels)
    except (ValueError, TypeError, RuntimeError) as error:
        raise BadRequest(str(error)) from error
    # The result travels in the `ablation` trait, sent before this reply.
    ablation = view.ablation or {}
    return {"layer": ablation.get("layer"), "channels": ablation.get("channels")}, {}
