"""``channel``: one channel's map at full resolution in float32, and the filter that made it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fmwidget import wire
from fmwidget.handlers.fields import View, channel_field, layer_field, sample_field
from fmwidget.session import Session


@dataclass(frozen=True)
class ChannelRequest:
    layer: str
    sample: int
    channel: int


def parse(content: dict[str, Any], view: View) -> ChannelRequest:
    session = view.session
    name = layer_field(content, session)
    return ChannelRequest(
        name, sample_field(content, session), channel_field(content, name, session)
    )


def handle(request: ChannelRequest, view: View) -> wire.Payload:
    session = view.session
    name, sample, channel = request.layer, request.sample, request.channel
    kernel, rgb = conv_filter(session, name, channel)
    meta, arrays = wire.channel_payload(session.store.sample_maps(name, sample)[channel], kernel)
    return {"layer": name, "sample": sample, "channel": channel, "rgb": rgb, **meta}, arrays


def conv_filter(session: Session, name: str, channel: int) -> tuple[torch.Tensor | None, bool]:
    """The conv kernel that produced ``channel`` of layer ``name``, and whether it reads RGB."""
    store = session.store
    meta = store.meta(name)
    if not meta["filter"] or session.model is None:
        return None, False
    conv = name if meta["type"] == "Conv2d" else meta["pre"]
    info = store.info(conv)
    weight = getattr(session.model.get_submodule(info.module_name), "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        return None, False
    if weight.shape[0] != meta["shape"][1]:
        return None, False
    rgb = weight.shape[1] == 3 and info.input_from is None
    return weight[channel].detach(), rgb
