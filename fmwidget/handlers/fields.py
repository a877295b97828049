"""Typed fields of a request, each checked with an error that goes back to the view as is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from fmwidget.analysis import AblationResult
from fmwidget.dataset import DatasetContext
from fmwidget.names import UnknownLayerError
from fmwidget.session import Session
from fmwidget.validation import check_channel, check_sample, is_int

__all__ = ["BadRequest", "View", "channel_field", "int_field", "layer_field", "sample_field"]


class BadRequest(Exception):
    """A request the kernel cannot serve; its text goes back in the error reply."""


class View(Protocol):
    """What a handler may read of the widget besides its session: the view's synced choices."""

    groups: list[str]
    group_pair: list[str]
    cam_method: str
    cam_methods: list[str]
    target: int | None
    ablation: dict[str, Any] | None
    scan_label: str | None
    scan_pair: list[str]

    @property
    def session(self) -> Session: ...

    @property
    def datasets(self) -> DatasetContext | None: ...

    def ablate(self, layer: str | None = None, channels: Any = None) -> AblationResult: ...

    def show_example(self, index: int) -> None: ...


def int_field(request: Mapping[str, Any], key: str) -> int:
    value = request.get(key)
    if not isinstance(value, int) or not is_int(value):
        raise BadRequest(f"request needs {key!r} (an integer), got {value!r}")
    return value


def layer_field(request: Mapping[str, Any], session: Session) -> str:
    """The request's ``layer``, a layer the session holds (else ``UnknownLayerError``)."""
    name = request.get("layer")
    if not isinstance(name, str):
        raise BadRequest(f"request needs 'layer' (a layer name), got {name!r}")
    if name not in session.store:
        raise UnknownLayerError(name, session.store.names)
    return name


def sample_field(request: Mapping[str, Any], session: Session) -> int:
    try:
        return check_sample(int_field(request, "sample"), session.num_samples)
    except ValueError as error:
        raise BadRequest(str(error)) from error


def channel_field(request: Mapping[str, Any], layer: str, session: Session) -> int:
    try:
        return check_channel(request.get("channel"), layer, session.store.shape(layer)[1])
    except ValueError as error:
        raise BadRequest(str(error)) from error
