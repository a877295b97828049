"""``layer``: one sample's maps of a layer (all channels, or some), quantized for the grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fmwidget import wire
from fmwidget.groups import group_effect
from fmwidget.handlers.fields import BadRequest, View, layer_field, sample_field
from fmwidget.validation import check_channel, is_int


@dataclass(frozen=True)
class LayerRequest:
    layer: str
    sample: int
    channels: list[int] | None
    max_values: int


def parse(content: dict[str, Any], view: View) -> LayerRequest:
    session = view.session
    name, sample = layer_field(content, session), sample_field(content, session)
    count = session.store.shape(name)[1]
    channels = content.get("channels")
    if channels is not None:
        if not isinstance(channels, list) or not channels:
            raise BadRequest(f"channels must be a non-empty list, got {channels!r}")
        try:
            channels = [check_channel(c, name, count) for c in channels]
        except ValueError as error:
            raise BadRequest(str(error)) from error
    max_values = content.get("max_values", wire.DEFAULT_MAX_VALUES)
    wanted = count if channels is None else len(channels)
    if not is_int(max_values) or max_values < wanted:
        raise BadRequest(
            f"max_values must be an integer of at least {wanted} (one value per channel "
            f"asked for), got {max_values!r}"
        )
    return LayerRequest(name, sample, channels, max_values)


def handle(request: LayerRequest, view: View) -> wire.Payload:
    store = view.session.store
    name, sample, channels = request.layer, request.sample, request.channels
    maps = store.maps(name)
    meta, arrays = wire.layer_payload(
        maps[sample],
        store.stats(name, sample),
        store.flags(name),
        max_values=request.max_values,
        channels=channels,
    )
    if view.group_pair:
        effect, meta["groups"] = group_effect(maps, view.groups, view.group_pair)
        arrays["effect"] = effect if channels is None else effect[channels]
    datasets = view.datasets
    if datasets is not None:
        dead = datasets.dead_flags(name, channels)
        if dead is not None:
            arrays["flags"] = arrays["flags"] | dead
            meta["scan"], scanned = datasets.layer_payload(
                name, channels, view.scan_label, view.scan_pair
            )
            arrays.update(scanned)
    return {"layer": name, "sample": sample, **meta}, arrays
