"""Long work: progress while it runs, and a cancel that really reaches it.

Why a worker thread. ipykernel reads comm messages on its main thread, one at a time: while a
handler computes Score-CAM there (a minute on a 1280-channel layer) the kernel reads nothing else,
so a Cancel button's message would only arrive after the work it should stop. So a widget's
requests go through one :class:`Worker` per widget: a request its handler marks as long
(``runs_long``), and every request that arrives while one is waiting or running, is served by one
worker thread in arrival order, and ``_on_msg`` returns at once. The main thread stays free: it
receives ``cancel`` (``docs/protocol.md``), which sets the job's :class:`threading.Event`. Short
requests on an idle widget are still served on the main thread, as before. Messages the worker
sends (progress, the reply) go out through ipykernel's IOPub thread, which takes them from any
thread, while the job works.

Requests queued behind a job wait for it; none runs at the same time as a job. A layer that the
memory budget dropped is recomputed by a forward of the model, and two threads running one model
would see each other's hooks (a CAM method records every forward through its layer). Python calls
from a cell run on the main thread and are not queued behind the view's job: cancel the view's job
before using the model from a cell.

Progress. Long code opens :func:`progress` (a label, a total, a unit) and advances it; where it
loops over model forwards it cannot see into (pytorch-grad-cam's Score-CAM), :func:`watched` puts
forward hooks on the model for the block: one on the model counts its forwards, and a pre-hook on
every module raises :class:`Cancelled` once the cancel is set, so a cancel takes effect within one
module's forward. The hooks are removed in ``finally``; what the computation changes (training
flags, ``.grad``, buffers) its own ``finally`` restores, so a cancelled job leaves the model as it
was. Updates are throttled to :data:`UPDATES_PER_SECOND`. In a view job they go to the widget's
``task`` trait (the view draws the bar, the elapsed time and Cancel); in a cell they drive a tqdm
bar, shown once the work takes more than a second, and Ctrl-C (``KeyboardInterrupt``) is the
cancel.

Closing the widget cancels its job, drops what is queued and joins the thread (it is a daemon
thread, so one stuck in a single long forward does not keep Python from exiting; it ends after
that forward and lets go of the widget).

Example::

    with progress("Ablation of layer4", total=2, unit="forwards") as p, watched(model, p):
        model(x)
        model(x)          # p.done == 2; a cancel raises Cancelled inside the forward
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch
from torch import nn

__all__ = [
    "UPDATES_PER_SECOND",
    "Cancelled",
    "Progress",
    "Worker",
    "batch_size",
    "progress",
    "quiet_bars",
    "watched",
]

_log = logging.getLogger("fmwidget.widget")

#: At most this many progress updates a second reach the view (plus the first and the last).
UPDATES_PER_SECOND = 4
#: A bar in a cell appears only for work that takes longer than this (seconds).
BAR_DELAY_S = 1.0


class Cancelled(BaseException):
    """The job was cancelled. A BaseException, like ``KeyboardInterrupt``: an ``except Exception``
    in a model's forward or a library must not swallow it."""


Reply = tuple[dict[str, Any], list[Any]]


@dataclass
class _Job:
    """A view request the worker serves: its id, its cancel, and where its progress goes."""

    key: int | None
    serve: Callable[[], Reply]
    cancel: threading.Event = field(default_factory=threading.Event)


# The job the current thread serves; None in a cell (the main thread), where bars go to tqdm.
_current: ContextVar[tuple[_Job, Callable[[dict[str, Any] | None], None]] | None] = ContextVar(
    "fmwidget_task", default=None
)


class Progress:
    """How far one piece of long work is; :meth:`advance` it, and :meth:`check` for a cancel."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str,
        show: Callable[[Progress, bool], None],
        cancel: threading.Event | None,
    ) -> None:
        # A total of 0 is not known yet (the view draws a bar without an end).
        self.label, self.total, self.unit = label, max(int(total), 0), unit
        self.done = 0
        self.started = time.monotonic()
        self._show = show
        self._cancel = cancel
        self._last = -1.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def advance(self, n: int = 1) -> None:
        """``n`` more units done (never past ``total``); shown at most a few times a second."""
        self.done = min(self.done + n, self.total) if self.total else self.done + n
        now = time.monotonic()
        if self.done == self.total or now - self._last >= 1 / UPDATES_PER_SECOND:
            self._last = now
            self._show(self, False)

    def check(self) -> None:
        """Raise :class:`Cancelled` if the job's cancel was asked."""
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled

    def state(self, key: int | None) -> dict[str, Any]:
        """The ``task`` trait for this progress (``docs/protocol.md``)."""
        return {
            "id": key,
            "label": self.label,
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
            "elapsed": round(self.elapsed, 2),
        }


@contextlib.contextmanager
def progress(label: str, total: int, unit: str, *, bar: bool = True) -> Iterator[Progress]:
    """Progress of one piece of work: to the view in a view job, else to a tqdm bar (``bar``).

    Example::

        with progress("Score-CAM on layer4", total=512, unit="channels") as p:
            for c in range(512):
                p.check()
                p.advance()
    """
    job = _current.get()
    if job is not None:
        running, publish = job

        def show(p: Progress, final: bool) -> None:
            publish(None if final else p.state(running.key))

        p = Progress(label, total, unit, show, running.cancel)
        show(p, False)
        try:
            yield p
        finally:
            show(p, True)
        return
    with _bar(label, total, unit, bar) as show_bar:
        yield Progress(label, total, unit, show_bar, None)


@contextlib.contextmanager
def _bar(
    label: str, total: int, unit: str, wanted: bool
) -> Iterator[Callable[[Progress, bool], None]]:
    """A tqdm bar made only once the work has run for BAR_DELAY_S: in a notebook every tqdm bar
    is a few widgets, which quick calls must not leave behind."""
    bar: Any = None

    def show(p: Progress, _final: bool) -> None:
        nonlocal bar
        if not wanted or (bar is None and p.elapsed < BAR_DELAY_S):
            return
        if bar is None:
            from tqdm.auto import tqdm  # not at import: it looks for a notebook front end

            bar = tqdm(total=p.total or total or None, desc=label, unit=f" {unit}")
        if p.total and bar.total != p.total:
            bar.total = p.total
        bar.update(p.done - bar.n)

    try:
        yield show
    finally:
        if bar is not None:
            bar.close()


@contextlib.contextmanager
def watched(
    model: nn.Module,
    p: Progress,
    count: Callable[[int, tuple[Any, ...]], int] = lambda _i, _args: 1,
) -> Iterator[None]:
    """Count ``model``'s forwards into ``p`` and stop at a cancel, for the block.

    ``count(i, args)`` is how many units the ``i``-th forward (0-based) of the model did, from its
    positional inputs (default: one per forward). Every module gets a forward pre-hook that calls
    ``p.check()``, the model a forward hook that advances ``p``; all are removed on the way out.
    """
    forwards = itertools.count()

    def counted(_module: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
        p.advance(count(next(forwards), args))

    def checked(_module: nn.Module, _args: tuple[Any, ...]) -> None:
        p.check()

    handles = []
    try:
        for module in model.modules():
            # A scripted module takes no Python hooks; its callers are checked instead.
            if not isinstance(module, torch.jit.ScriptModule):
                handles.append(module.register_forward_pre_hook(checked))
        if not isinstance(model, torch.jit.ScriptModule):
            handles.append(model.register_forward_hook(counted))
        p.check()
        yield
    finally:
        for handle in handles:
            handle.remove()


def batch_size(args: tuple[Any, ...]) -> int:
    """The batch size of a forward's first tensor input (0 without one)."""
    first = args[0] if args else None
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim > 0 else 0


# -- other libraries' progress bars ----------------------------------------------------------------


class _BarFilter:
    """``sys.stderr`` while some thread is quiet: drops the redraws of a tqdm bar (writes that
    start with a carriage return, and the newline that ends such a bar) that quiet threads
    write, and passes everything else through (warnings, other threads' output)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.quiet: dict[int, int] = {}
        self._in_bar: set[int] = set()

    def write(self, text: str) -> int:
        thread = threading.get_ident()
        if thread in self.quiet:
            if text.startswith("\r"):
                self._in_bar.add(thread)
                return len(text)
            if text == "\n" and thread in self._in_bar:
                self._in_bar.discard(thread)
                return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


_quiet_lock = threading.Lock()


@contextlib.contextmanager
def quiet_bars() -> Iterator[None]:
    """Hide the tqdm bars that code in this thread prints on stderr (pytorch-grad-cam's Score-CAM
    prints one per image; from the worker it would land in whichever cell ran last, and in a cell
    our own bar says more). Other output, and other threads' bars, still show."""
    thread = threading.get_ident()
    with _quiet_lock:
        current = sys.stderr
        filt = current if isinstance(current, _BarFilter) else _BarFilter(current)
        filt.quiet[thread] = filt.quiet.get(thread, 0) + 1
        sys.stderr = filt
    try:
        yield
    finally:
        with _quiet_lock:
            filt.quiet[thread] -= 1
            if not filt.quiet[thread]:
                del filt.quiet[thread]
            # Someone may have replaced stderr since (pytest's capture): then leave theirs alone.
            if not filt.quiet and sys.stderr is filt:
                sys.stderr = filt.stream


# -- the worker ---------------------------------------------------------------------------------


class Worker:
    """Serves a widget's long requests, one at a time, on one thread (see the module docstring).

    ``send(reply)`` delivers a reply; ``publish(state)`` sets the ``task`` trait (None: no job).
    The thread runs while there is work and ends when the queue is empty.
    """

    def __init__(
        self, send: Callable[[Reply], None], publish: Callable[[dict[str, Any] | None], None]
    ) -> None:
        self._send = send
        self._publish = publish
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._running: _Job | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def busy(self) -> bool:
        """A job is running or waiting: a new request must queue behind it to keep the order."""
        with self._lock:
            return self._thread is not None

    def submit(self, key: int | None, serve: Callable[[], Reply]) -> None:
        """Serve ``serve()`` on the worker thread after what is queued, and send its reply."""
        with self._lock:
            if self._closed:
                return
            self._queue.append(_Job(key, serve))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="fmwidget-task", daemon=True
                )
                self._thread.start()

    def cancel(self, key: int | None) -> bool:
        """Cancel the job with request id ``key`` (running or queued), or the running one for
        None; whether there was one. A queued job is answered "cancelled" when its turn comes."""
        with self._lock:
            jobs = [] if self._running is None else [self._running]
            jobs += self._queue
            found = [
                job for job in jobs if (job is self._running if key is None else job.key == key)
            ]
            for job in found:
                job.cancel.set()
            return bool(found)

    def cancel_all(self, timeout: float = 10.0) -> None:
        """Cancel every job (each is answered "cancelled") and wait up to ``timeout`` s until the
        thread has stopped: a re-run from a cell replaces the session the jobs read."""
        with self._lock:
            for job in [*([] if self._running is None else [self._running]), *self._queue]:
                job.cancel.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel the running job, drop the queued ones, wait up to ``timeout`` s for the thread."""
        with self._lock:
            self._closed = True
            self._queue.clear()
            if self._running is not None:
                self._running.cancel.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                _log.warning("fmwidget: a cancelled job is still in one forward; it ends after it")

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = None
                    self._thread = None
                    return
                job = self._running = self._queue.popleft()
            token = _current.set((job, self._publish))
            try:
                reply = job.serve()
            except BaseException:
                # serve() turns every failure into an error reply; this is a bug, not a request.
                _log.exception("fmwidget: a queued request failed")
                continue
            finally:
                _current.reset(token)
            if not self._closed:
                try:
                    self._send(reply)
                except Exception:
                    _log.exception("fmwidget: could not send the reply to request %r", job.key)
            # Drop the job (and the widget its closure holds) before waiting for the next one.
            del job, reply
