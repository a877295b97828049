"""What the channel view's hover explanations keep between hovers, per session, bounded.

A hover names a layer, a sample and a position. Two things are costly and shared by every hover
of a layer: the layer's input (a forward up to the layer, :mod:`fmwidget.layer_input`) and
receptive fields (a forward and backward of a float64 copy of the model per position batch,
:mod:`fmwidget.receptive`: 0.1–0.25 s per position for MobileNetV2 at 224 × 224 on one CPU
thread). So:

- Layer inputs: the last :data:`INPUT_ENTRIES` (layer, sample) pairs are kept; an entry is taken
  again when the model's parameters or the inputs changed since (their version counters).
- Receptive fields: on a layer's first hover, six positions are measured in one batch (the four
  corners, the centre and its diagonal neighbour). Each box edge is then fitted, per axis, as a
  clipped non-decreasing affine function of the position (``clip(a + s · row, 0, H)``), which is
  what convolutions, pooling, residual adds and concatenations give. If the fit reproduces all six
  measured boxes, every other position is derived from it (no more forwards); if it does not (an
  upsampling decoder, an unusual architecture), each position is measured when first hovered and
  kept (up to :data:`EXACT_POSITIONS` per layer).

The cache lives beside the session (keyed by the object, weakly), so it goes when the session
goes; a closed session's entry is dropped at the next look-up.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fmwidget.calling import versions
from fmwidget.layer_input import LayerInputs
from fmwidget.receptive import receptive_fields
from fmwidget.session import Session

__all__ = ["EXACT_POSITIONS", "INPUT_ENTRIES", "HoverCache", "LayerFields", "for_session"]

#: (layer, sample) inputs kept per session: the hovered layer, and the one before it.
INPUT_ENTRIES = 2
#: Layers whose receptive fields are kept per session.
FIELD_LAYERS = 32
#: Positions measured one by one and kept, per layer, where the fit fails.
EXACT_POSITIONS = 4096

Box = tuple[int, int, int, int]
_Edges = Callable[[int], tuple[int, int]]


class LayerFields:
    """Receptive fields of one layer's positions: derived from six measured ones where a clipped
    affine fit reproduces them, else measured position by position (see the module docstring)."""

    def __init__(
        self, model: Any, inputs: Any, layer: str, out_hw: tuple[int, int], in_hw: tuple[int, int]
    ) -> None:
        self._model, self._inputs, self._layer = model, inputs, layer
        h, w = out_hw
        probes = list(
            dict.fromkeys(
                [
                    (0, 0),
                    (0, w - 1),
                    (h - 1, 0),
                    (h - 1, w - 1),
                    (h // 2, w // 2),
                    (min(h - 1, h // 2 + 1), min(w - 1, w // 2 + 1)),
                ]
            )
        )
        boxes = receptive_fields(model, inputs, layer, probes)
        self._exact: OrderedDict[tuple[int, int], Box] = OrderedDict(
            zip(probes, boxes, strict=True)
        )
        rows = _axis_rule(
            [(p[0], b[0], b[2]) for p, b in zip(probes, boxes, strict=True)], h, in_hw[0]
        )
        cols = _axis_rule(
            [(p[1], b[1], b[3]) for p, b in zip(probes, boxes, strict=True)], w, in_hw[1]
        )
        self.derived = rows is not None and cols is not None
        self._rows, self._cols = rows, cols
        #: Forwards (each a batch of positions) this object ran: 1 when the fit holds.
        self.measurements = 1

    def box(self, row: int, col: int) -> Box:
        """The field of ``(row, col)``: ``(top, left, bottom, right)``, bottom/right exclusive."""
        hit = self._exact.get((row, col))
        if hit is not None:
            return hit
        if self._rows is not None and self._cols is not None:
            (top, bottom), (left, right) = self._rows(row), self._cols(col)
            return top, left, bottom, right
        (found,) = receptive_fields(self._model, self._inputs, self._layer, [(row, col)])
        self.measurements += 1
        self._exact[(row, col)] = found
        while len(self._exact) > EXACT_POSITIONS:
            self._exact.popitem(last=False)
        return found


def _axis_rule(measured: list[tuple[int, int, int]], n: int, size: int) -> _Edges | None:
    """``i → (start, stop)`` along one axis fitted to ``measured`` (position, start, stop), or
    None when no clipped non-decreasing affine rule gives every measured pair."""
    if n == 1:
        starts = {(a, b) for _, a, b in measured}
        if len(starts) != 1:
            return None
        edge = next(iter(starts))
        return lambda i: edge
    steps: set[int] = set()
    by_pos = {i: (a, b) for i, a, b in measured}
    for i, (a, b) in by_pos.items():
        if i + 1 in by_pos:
            a1, b1 = by_pos[i + 1]
            if a > 0 and a1 > 0:
                steps.add(a1 - a)
            if b < size and b1 < size:
                steps.add(b1 - b)
    if len(steps) > 1 or any(s < 0 for s in steps):
        return None
    step = next(iter(steps), None)

    def offset(pairs: list[tuple[int, int]], clipped: int) -> tuple[bool, int | None]:
        """Whether the edge fits a line, and where it is at position 0 unclipped (None when
        every measurement is clipped)."""
        found = {v - (step or 0) * i for i, v in pairs if v != clipped}
        if len(found) > 1 or (found and step is None):
            return False, None
        return True, next(iter(found), None)

    fits_start, start0 = offset([(i, a) for i, a, _ in measured], 0)
    fits_stop, stop0 = offset([(i, b) for i, _, b in measured], size)
    if not (fits_start and fits_stop):
        return None
    s = step or 0

    def edges(i: int) -> tuple[int, int]:
        # All starts clipped at 0 (up to the last position) means 0 everywhere, since the edges
        # never decrease; likewise all stops at the input's size.
        start = 0 if start0 is None else min(size, max(0, start0 + s * i))
        stop = size if stop0 is None else min(size, max(0, stop0 + s * i))
        return start, stop

    if any(edges(i) != (a, b) for i, a, b in measured):
        return None
    return edges


@dataclass
class _Inputs:
    seen: tuple[tuple[int, ...], int]
    inputs: LayerInputs


class HoverCache:
    """One session's layer inputs and receptive fields, for hover explanations."""

    def __init__(self) -> None:
        self._inputs: OrderedDict[tuple[str, int], _Inputs] = OrderedDict()
        self._fields: OrderedDict[str, LayerFields] = OrderedDict()

    def layer_inputs(
        self,
        session: Session,
        layer: str,
        sample: int,
        take: Callable[[], LayerInputs],
    ) -> LayerInputs:
        """The inputs for ``(layer, sample)``: kept ones while the model and inputs are
        unchanged, else ``take()``'s (kept, the oldest entry dropped)."""
        now = versions(session.model, session.inputs)  # type: ignore[arg-type]
        key = (layer, sample)
        hit = self._inputs.get(key)
        if hit is not None and hit.seen == now:
            self._inputs.move_to_end(key)
            return hit.inputs
        got = take()
        self._inputs[key] = _Inputs(now, got)
        self._inputs.move_to_end(key)
        while len(self._inputs) > INPUT_ENTRIES:
            self._inputs.popitem(last=False)
        return got

    def fields(self, layer: str, make: Callable[[], LayerFields]) -> LayerFields:
        """The receptive fields of ``layer``, made by ``make()`` on its first use."""
        found = self._fields.get(layer)
        if found is None:
            found = self._fields[layer] = make()
            while len(self._fields) > FIELD_LAYERS:
                self._fields.popitem(last=False)
        self._fields.move_to_end(layer)
        return found


# Sessions are dataclasses (unhashable), so they are keyed by id, with a weak reference that
# both checks the id still means the same object and drops the entry when the session goes.
_CACHES: dict[int, tuple[weakref.ref[Session], HoverCache]] = {}


def for_session(session: Session) -> HoverCache:
    """The hover cache of ``session`` (made on first use, dropped with the session)."""
    for key, (ref, _) in list(_CACHES.items()):
        alive = ref()
        if alive is None or alive.closed:
            _CACHES.pop(key, None)
    key = id(session)
    slot = _CACHES.get(key)
    if slot is not None and slot[0]() is session:
        return slot[1]

    def forget(ref: weakref.ref[Session], key: int = key) -> None:
        if _CACHES.get(key, (None,))[0] is ref:
            del _CACHES[key]

    cache = HoverCache()
    _CACHES[key] = (weakref.ref(session, forget), cache)
    return cache
