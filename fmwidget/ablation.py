"""The widget's ablation: which layer and channels it acts on, and what the view is told.

:func:`fmwidget.analysis.ablate` does the work; this module resolves the defaults (the shown
layer, the channels picked in the view) and builds the ``ablation`` trait (``docs/protocol.md``).
"""

from __future__ import annotations

from typing import Any

import traitlets

from fmwidget import analysis, tasks
from fmwidget.analysis import AblationResult
from fmwidget.names import UnknownLayerError
from fmwidget.session import Session
from fmwidget.validation import channel_list

__all__ = ["AblationFeature", "ablation_target", "ablation_trait"]


def ablation_target(
    session: Session, shown: str, picked: list[int], layer: str | None, channels: Any
) -> tuple[str, list[int]]:
    """The layer and channels to ablate: ``layer``/``channels`` if given, else the ``shown`` layer
    and the channels ``picked`` in the view; every channel checked against the layer."""
    store = session.store
    if layer is None:
        layer = shown
    elif layer not in store:
        raise UnknownLayerError(layer, store.names)
    if channels is None:
        if layer != shown:
            raise ValueError(
                f"say which channels of layer {layer!r} to ablate (channels=[...]): the "
                f"selection in the view belongs to the shown layer {shown!r}"
            )
        channels = picked
        if not channels:
            raise ValueError(
                f"no channel of layer {layer!r} is selected: shift-click tiles in the view "
                "(or set w.selected / w.channel), or pass channels=[...]"
            )
    chosen = channel_list(channels)
    count = store.shape(layer)[1]
    bad = [c for c in chosen if not 0 <= c < count]
    if not chosen or bad:
        raise ValueError(
            f"channels {bad or chosen} cannot be ablated: layer {layer!r} has {count} "
            f"channels (0 to {count - 1})"
        )
    return layer, chosen


def ablation_trait(
    session: Session, layer: str, channels: list[int], result: AblationResult
) -> dict[str, Any]:
    """The ``ablation`` trait: the layer, the channels and per sample how the prediction moved."""
    changes = None
    if result.changes is not None:
        changes = [
            {
                "top_before": c.top_before,
                "label_before": session.label(c.top_before),
                "prob_before": c.prob_before,
                "top_after": c.top_after,
                "label_after": session.label(c.top_after),
                "prob_after": c.prob_after,
                "prob_change": c.prob_change,
            }
            for c in result.changes
        ]
    return {"layer": layer, "channels": channels, "changes": changes}


class AblationFeature(traitlets.HasTraits):
    """The widget's ablation API (mixed into ``FeatureMapWidget``): :attr:`selection` and
    :meth:`ablate`, which sets the ``ablation`` trait the view shows."""

    @property
    def selection(self) -> dict[str, Any]:
        """The channels picked in the view: ``{"layer": shown layer, "channels": [...]}``.

        The channels are the shift-click selection (``selected``), else the channel open in the
        drill-down, else none: what :meth:`ablate` acts on by default.

        Example:
            >>> w.selected = [3, 7]  # doctest: +SKIP
            >>> w.selection  # doctest: +SKIP
            {'layer': 'layer1.0.conv1', 'channels': [3, 7]}
        """
        widget: Any = self
        if widget.selected:
            channels = list(widget.selected)
        else:
            channels = [] if widget.channel is None else [widget.channel]
        return {"layer": widget.layer, "channels": channels}

    def ablate(self, layer: str | None = None, channels: Any = None) -> AblationResult:
        """Re-run the model with ``channels`` of ``layer`` set to zero; show how predictions move.

        Defaults: the shown layer and :attr:`selection` (the selected channels, else the open
        one). Returns :func:`fmwidget.analysis.ablate`'s result and sets the ``ablation`` trait
        (``docs/protocol.md``) so the view can show, per sample, the top class before and after
        and how the probability of the class predicted before changed. The model, its hooks and
        its buffers are left as they were; the shown activations stay those without ablation.
        The view's "Ablate selected" button calls this with the shown layer and the selection.
        It runs the model twice on the batch; a progress bar shows in the cell when that takes
        over a second, and Ctrl-C stops it, leaving the model and ``ablation`` as they were.

        Example:
            >>> w.selected = [3, 7]  # doctest: +SKIP
            >>> w.ablate().changes[0].prob_change  # doctest: +SKIP
            -0.21
            >>> w.ablate("layer4.1.conv2", [12])  # doctest: +SKIP
        """
        source = self._require_model("ablation re-runs the model")  # type: ignore[attr-defined]
        session = self._session.require()  # type: ignore[attr-defined]
        shown = self.selection["layer"]
        layer, chosen = ablation_target(session, shown, self.selection["channels"], layer, channels)
        what = f"{len(chosen)} channel{'s' if len(chosen) != 1 else ''}"
        model = source.model
        with (
            tasks.progress(f"Ablation of {what} of {layer}", 2, "forwards") as p,
            tasks.watched(model, p),
        ):
            result = analysis.ablate(model, session.inputs, layer, chosen)
        self.set_trait("ablation", ablation_trait(session, layer, chosen, result))
        return result
