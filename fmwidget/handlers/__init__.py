"""One module per request kind of the protocol (``docs/protocol.md``): each parses its typed
request (``parse``, raising :class:`~fmwidget.handlers.fields.BadRequest` with a clear message)
and serves it (``handle``, returning the reply's meta and arrays). :data:`HANDLERS` is the table
the router dispatches from."""

from __future__ import annotations

from types import ModuleType

from fmwidget.handlers import (
    ablate,
    channel,
    examples,
    explain,
    gradcam,
    input,
    layer,
    pictures,
    use_example,
)

#: Request kind → the module that parses and serves it.
HANDLERS: dict[str, ModuleType] = {
    "layer": layer,
    "channel": channel,
    "input": input,
    "gradcam": gradcam,
    "ablate": ablate,
    "examples": examples,
    "use_example": use_example,
    "pictures": pictures,
    "explain": explain,
}
