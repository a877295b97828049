"""``layer``: one sample's maps of a layer (all channels, or some), quantized for the grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fmwidget import tasks, wire
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


def runs_long(request: LayerRequest, view: View) -> bool:
    """A layer dropped by the memory budget is recomputed: a job the view shows and can cancel."""
    return view.session.model is not None and not view.session.store.holds(
        request.layer, request.sample
    )


def handle(request: LayerRequest, view: View) -> wire.Payload:
    session = view.session
    store = session.store
    name, sample, channels = request.layer, request.sample, request.channels
    # One sample's maps: a layer dropped by the memory budget costs one sample's forward.
    if session.model is not None and not store.holds(name, sample):
        label = f"Computing {name} (dropped to stay within budget_bytes)"
        with (
            tasks.progress(label, 1, "forwards", bar=False) as p,
            tasks.watched(session.model, p),
        ):
            maps = store.sample_maps(name, sample)
    else:
        maps = store.sample_maps(name, sample)
    meta, arrays = wire.layer_payload(
        maps,
        store.stats(name, sample),
        store.flags(name),
        max_values=request.max_values,
        channels=channels,
    )
    if view.group_pair:
        # Cohen's d reads only each sample's spatial means; (N, C, 1, 1) has the same ones.
        means = store.spatial_means(name)[:, :, None, None]
        effect, meta["groups"] = group_effect(means, view.groups, view.group_pair)
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
