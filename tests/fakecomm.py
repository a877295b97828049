"""A comm that stands in for the browser: records what the kernel sends, delivers what it asks.

Example:
    >>> with fake_comms() as comms:
    ...     w = FeatureMapWidget(model, x)
    ...     comms[-1].request("layer", layer="conv1", sample=0, revision=w.revision)
    ...     reply = comms[-1].replies()[-1]
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from typing import Any

import comm
from comm.base_comm import BaseComm

from fmwidget import wire


class FakeComm(BaseComm):
    """Records every message published to the front end and can play the front end's part."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.published: list[tuple[str, dict[str, Any], list[Any]]] = []
        self._ids = itertools.count(1)
        self._sent_at: dict[int, int] = {}
        super().__init__(*args, **kwargs)

    def publish_msg(
        self,
        msg_type: str,
        data: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
        **keys: Any,
    ) -> None:
        self.published.append((msg_type, data or {}, list(buffers or [])))

    def deliver(self, data: dict[str, Any], buffers: list[Any] | None = None) -> None:
        """Hand the kernel a comm message from the browser, as ipykernel would."""
        self.handle_msg(
            {"content": {"comm_id": self.comm_id, "data": data}, "buffers": list(buffers or [])}
        )

    def send_custom(self, content: Any) -> None:
        """The browser's ``model.send(content)``."""
        self.deliver({"method": "custom", "content": content})

    def update(self, **state: Any) -> None:
        """The browser changing synced traits."""
        self.deliver({"method": "update", "state": state, "buffer_paths": []})

    def request(self, kind: str, **args: Any) -> wire.Reply:
        """Send a request with a fresh id and return the decoded reply to it (exactly one).

        A long request (Grad-CAM, ablation) is answered from the widget's worker thread
        (fmwidget.tasks): this waits for its reply."""
        request_id = self.send_request(kind, **args)
        return self.reply_to(request_id)

    def send_request(self, kind: str, **args: Any) -> int:
        """Send a request with a fresh id and return at once with the id."""
        request_id = next(self._ids)
        self._sent_at[request_id] = len(self.published)
        self.send_custom({"type": "request", "id": request_id, "kind": kind, **args})
        return request_id

    def reply_to(self, request_id: int, timeout: float = 60.0) -> wire.Reply:
        """The reply to request ``request_id`` (exactly one), waiting up to ``timeout`` s for it."""
        deadline = time.monotonic() + timeout
        since = self._sent_at.get(request_id, 0)
        while not (replies := [r for r in self.replies(since) if r.id == request_id]):
            assert time.monotonic() < deadline, f"request {request_id} got no reply"
            time.sleep(0.002)
        assert len(replies) == 1, f"request {request_id} got {len(replies)} replies"
        return replies[0]

    def replies(self, since: int = 0) -> list[wire.Reply]:
        """Decoded replies among the custom messages published from index ``since`` on."""
        return self._custom("reply", since)

    def pushes(self, since: int = 0) -> list[wire.Reply]:
        """Decoded data the kernel pushed unasked (a live refresh), from index ``since`` on."""
        return self._custom("push", since)

    def _custom(self, kind: str, since: int) -> list[wire.Reply]:
        out = []
        for msg_type, data, buffers in self.published[since:]:
            content = data.get("content")
            custom = msg_type == "comm_msg" and data.get("method") == "custom"
            if custom and isinstance(content, dict) and content.get("type") == kind:
                # A push is a reply nobody asked for: the same envelope otherwise.
                out.append(wire.decode({**content, "type": "reply"}, buffers))
        return out

    def state_updates(self) -> list[dict[str, Any]]:
        """Trait changes the kernel sent to the browser, in order."""
        return [
            data["state"]
            for msg_type, data, _ in self.published
            if msg_type == "comm_msg" and data.get("method") == "update"
        ]


@contextlib.contextmanager
def fake_comms() -> Iterator[list[FakeComm]]:
    """Make every widget created inside the block talk to a :class:`FakeComm` (listed in order)."""
    created: list[FakeComm] = []
    original = comm.create_comm

    def create(*args: Any, **kwargs: Any) -> FakeComm:
        fake = FakeComm(*args, **kwargs)
        created.append(fake)
        return fake

    comm.create_comm = create
    try:
        yield created
    finally:
        comm.create_comm = original
