"""Giving freed host memory back to the system.

glibc's malloc keeps freed memory for reuse, and after a large tensor is freed it serves tensors
up to that size from its heap instead of fresh pages (its dynamic mmap threshold). A closed
session's tensors then stay in the process's resident set, and the next capture's peak is added
on top of them: :func:`trim` hands the free pages back (``malloc_trim``), where glibc is the C
library; elsewhere it does nothing. A widget's re-run calls it before the new capture, and a
capture's intake (:class:`fmwidget.store.LayerIntake`) as the layers it lets go add up: the layers
it keeps break up the heap, and the holes of those the forward frees would otherwise stay resident.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable

__all__ = ["trim"]


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl has no malloc_trim)
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_TRIM = _malloc_trim()


def trim() -> bool:
    """Return the C heap's free pages to the system; whether any were (``False`` where the C
    library cannot)."""
    return bool(_TRIM(0)) if _TRIM is not None else False
