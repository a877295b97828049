"""Requests from the view: the envelope checked, the kind dispatched, one reply for each.

A request is ``{type: "request", id, kind, revision, ...}`` (``docs/protocol.md``). The router
checks the envelope, looks the kind up in :data:`fmwidget.handlers.HANDLERS`, lets that module
parse the typed request and serve it, and encodes the reply with :mod:`fmwidget.wire`. Every
failure becomes an error reply with a message for the view; nothing raises into the comm.

    >>> content, buffers = serve(None, {"type": "nonsense"}, revision=1)  # doctest: +ELLIPSIS
    >>> content["error"]
    "not a request: expected {type: 'request', ...}, got {'type': 'nonsense'}"
"""

from __future__ import annotations

import logging
import reprlib
from typing import Any

from fmwidget import wire
from fmwidget.handlers import HANDLERS
from fmwidget.handlers.fields import BadRequest, View, int_field
from fmwidget.names import UnknownLayerError
from fmwidget.session import StaleCapture

__all__ = ["serve"]

_log = logging.getLogger("fmwidget.widget")


def serve(view: View | None, content: Any, revision: int) -> tuple[dict[str, Any], list[Any]]:
    """The reply to ``content`` (message content and buffers), an error reply if it fails."""
    request_id = content.get("id") if isinstance(content, dict) else None
    kind = content.get("kind") if isinstance(content, dict) else None
    try:
        meta, arrays = _dispatch(view, content)
        meta["revision"] = revision
        return wire.encode_reply(request_id, content["kind"], meta, arrays)
    except (BadRequest, StaleCapture, UnknownLayerError) as error:
        return wire.encode_error(request_id, kind, str(error))
    except Exception as error:
        _log.exception("fmwidget: request %r failed", content)
        return wire.encode_error(request_id, kind, f"{type(error).__name__}: {error}")


def _dispatch(view: View | None, content: Any) -> wire.Payload:
    if not isinstance(content, dict) or content.get("type") != "request":
        got = reprlib.repr(content)
        raise BadRequest(f"not a request: expected {{type: 'request', ...}}, got {got}")
    request_id = content.get("id")
    if not isinstance(request_id, int) or isinstance(request_id, bool) or request_id <= 0:
        raise BadRequest(f"request id must be a positive integer, got {request_id!r}")
    handler = HANDLERS.get(str(content.get("kind")))
    if handler is None:
        raise BadRequest(
            f"unknown request kind {content.get('kind')!r}; expected one of {', '.join(HANDLERS)}"
        )
    if view is None or view.session.closed:
        raise BadRequest("the widget has no data: it was closed or its last re-run failed")
    int_field(content, "revision")
    request = handler.parse(content, view)
    return handler.handle(request, view)
