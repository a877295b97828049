"""``input``: the picture of one sample's input, RGB uint8."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fmwidget import wire
from fmwidget.handlers.fields import BadRequest, View, sample_field


@dataclass(frozen=True)
class InputRequest:
    sample: int


def parse(content: dict[str, Any], view: View) -> InputRequest:
    return InputRequest(sample_field(content, view.session))


def handle(request: InputRequest, view: View) -> wire.Payload:
    try:
        picture = view.session.input_image(request.sample)
    except ValueError as error:
        raise BadRequest(str(error)) from error
    meta, arrays = wire.image_payload(picture)
    return {"sample": request.sample, **meta}, arrays
