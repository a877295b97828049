"""``use_example``: make one image of the widget's dataset its input (the model re-runs on it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fmwidget import wire
from fmwidget.handlers.fields import BadRequest, View, int_field


@dataclass(frozen=True)
class UseExampleRequest:
    index: int


def parse(content: dict[str, Any], view: View) -> UseExampleRequest:
    return UseExampleRequest(int_field(content, "index"))


def handle(request: UseExampleRequest, view: View) -> wire.Payload:
    try:
        view.show_example(request.index)
    except (ValueError, IndexError, TypeError, RuntimeError) as error:
        raise BadRequest(str(error)) from error
    # The new capture travels in the traits (revision, layers, ...), sent before this reply.
    return {"index": request.index}, {}
