"""Requests from the view: the envelope checked, the kind dispatched, one reply for each.

A request is ``{type: "request", id, kind, revision, ...}`` (``docs/protocol.md``). The router
checks the envelope, looks the kind up in :data:`fmwidget.handlers.HANDLERS`, lets that module
parse the typed request and serve it, and encodes the reply with :mod:`fmwidget.wire`. Every
failure becomes an error reply with a message for the view; nothing raises into the comm.

:func:`receive` is the widget's entry point: it answers a short request at once, hands a long one
(a handler's ``runs_long``) and everything behind it to the widget's :class:`fmwidget.tasks.Worker`,
and serves ``cancel`` itself, on the kernel's main thread, so that it reaches a running job. A
cancelled job's reply is an error reply with ``cancelled: true``.

    >>> content, buffers = serve(None, {"type": "nonsense"}, revision=1)  # doctest: +ELLIPSIS
    >>> content["error"]
    "not a request: expected {type: 'request', ...}, got {'type': 'nonsense'}"
"""

from __future__ import annotations

import logging
import reprlib
from collections.abc import Callable
from typing import Any

from fmwidget import wire
from fmwidget.handlers import HANDLERS
from fmwidget.handlers.fields import BadRequest, View, int_field
from fmwidget.names import UnknownLayerError
from fmwidget.session import StaleCapture
from fmwidget.tasks import Cancelled, Worker

__all__ = ["receive", "serve"]

#: Text of a cancelled job's error reply.
CANCELLED = "cancelled"

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
    except Cancelled:
        content, buffers = wire.encode_error(request_id, kind, CANCELLED)
        content["cancelled"] = True
        return content, buffers
    except Exception as error:
        _log.exception("fmwidget: request %r failed", content)
        return wire.encode_error(request_id, kind, f"{type(error).__name__}: {error}")


def receive(
    view: View | None,
    content: Any,
    revision: Callable[[], int],
    worker: Worker,
    send: Callable[[tuple[dict[str, Any], list[Any]]], None],
) -> None:
    """Answer one message from the view: ``cancel`` and short requests at once, long ones (and
    all that arrive while one waits or runs) in order on the ``worker``'s thread.

    ``revision()`` is read when the request is served: a request queued behind a job is answered
    from the capture of that moment, and says so.
    """
    if isinstance(content, dict) and content.get("kind") == "cancel":
        send(_cancel(content, worker, revision()))
        return
    if not worker.busy and not _runs_long(view, content):
        send(serve(view, content, revision()))
        return
    request_id = content.get("id") if isinstance(content, dict) else None
    worker.submit(
        request_id if isinstance(request_id, int) else None,
        lambda: serve(view, content, revision()),
    )


def _cancel(
    content: dict[str, Any], worker: Worker, revision: int
) -> tuple[dict[str, Any], list[Any]]:
    """``cancel``: ``task`` is the request id of the job to cancel (null: the running one)."""
    request_id = content.get("id")
    task = content.get("task")
    if content.get("type") != "request" or not isinstance(request_id, int):
        return wire.encode_error(
            request_id, "cancel", f"not a cancel request: {reprlib.repr(content)}"
        )
    if task is not None and (not isinstance(task, int) or isinstance(task, bool)):
        return wire.encode_error(
            request_id, "cancel", f"cancel needs 'task' (a request id, or null), got {task!r}"
        )
    meta = {"task": task, "cancelled": worker.cancel(task), "revision": revision}
    return wire.encode_reply(request_id, "cancel", meta, {})


def _runs_long(view: View | None, content: Any) -> bool:
    """Whether the request's handler says it runs long; a request that does not parse is not."""
    if view is None or view.session.closed or not isinstance(content, dict):
        return False
    handler = HANDLERS.get(str(content.get("kind")))
    runs_long = getattr(handler, "runs_long", None)
    if runs_long is None:
        return False
    try:
        return bool(runs_long(handler.parse(content, view), view))  # type: ignore[union-attr]
    except Exception:
        return False


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
