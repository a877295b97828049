"""Two models side by side: matched layers, linked views, and their difference.

:func:`compare` runs two models on the same inputs and shows their feature maps next to each other.
Layers are paired by name (two variants of one architecture) or by the order of their conv layers
(two architectures), with :func:`fmwidget.analysis.compare_layers`. Moving one view moves the
other: the layer (through the pairing), the open channel, the sample, colormap, scale and symmetry
follow in the kernel; zoom and pan follow in the browser (``ipywidgets.jslink`` on ``view``).
A layer without a partner changes only its own view: the other one keeps the layer it shows.

Where a pair has the same ``(C, H, W)`` in both models, a third view can show A − B
(:meth:`CompareWidget.show_difference`), with the diverging colormap.

Example:
    >>> import torch, torchvision
    >>> a = torchvision.models.resnet18().eval()
    >>> b = torchvision.models.resnet34().eval()
    >>> cmp = compare(a, b, torch.randn(2, 3, 64, 64), names=("resnet18", "resnet34"))
    >>> cmp.a.layer = "layer2.0.conv1"
    >>> cmp.b.layer
    'layer2.0.conv1'
    >>> cmp.close()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import ipywidgets
import torch
from torch import nn

from fmwidget.analysis import LayerPair, compare_layers
from fmwidget.capture import Capture, CaptureReport
from fmwidget.widget import FeatureMapWidget

__all__ = ["CompareWidget", "compare"]

# Traits that follow between the two models' views, and those the difference view follows too
# (it keeps its own diverging colormap, always symmetric).
_STYLE = ("colormap", "scale", "symmetric")
_DIFF_STYLE = ("scale",)
_FOLLOWED = ("layer", "channel", "sample", *_STYLE)


def compare(
    model_a: nn.Module,
    model_b: nn.Module,
    inputs: Any,
    match: Literal["name", "order"] = "name",
    labels: Sequence[str] | None = None,
    image: Any = None,
    names: tuple[str, str] = ("A", "B"),
    *,
    layer: str | None = None,
    **kwargs: Any,
) -> CompareWidget:
    """Show two models' feature maps on the same ``inputs`` side by side, linked layer to layer.

    ``match="name"`` pairs layers with the same name (two variants of one architecture, e.g. two
    training runs); ``match="order"`` pairs the i-th conv layer of A with the i-th of B (two
    architectures). ``labels`` and ``image`` are as for :class:`FeatureMapWidget`, for both models;
    ``names`` title the two views. ``layer`` is the layer of model A shown first (B shows its
    partner); other keywords (``layers=``, ``height=``, ``budget_bytes=``, ``colormap=``, …) go
    to both views.

    Example:
        >>> cmp = compare(resnet18, mobilenet_v2, x, match="order", labels=names)  # doctest: +SKIP
        >>> cmp.show_difference(False)  # doctest: +SKIP
        >>> cmp.pairs[:2]  # doctest: +SKIP
        [LayerPair(name_a='conv1', name_b='features.0.0', same_shape=False), ...]
    """
    a = FeatureMapWidget(model_a, inputs, labels=labels, image=image, layer=layer, **kwargs)
    try:
        b = FeatureMapWidget(model_b, inputs, labels=labels, image=image, **kwargs)
    except Exception:
        a.close()
        raise
    try:
        return CompareWidget(a, b, match=match, names=names)
    except Exception:
        a.close()
        b.close()
        raise


class CompareWidget(ipywidgets.VBox):
    """Two :class:`FeatureMapWidget` views side by side, kept in step, and optionally A − B.

    Takes over ``a`` and ``b`` (views of the same batch of inputs): :meth:`close` closes them.
    A title row names each model and its top prediction for the shown sample. Which layers pair
    up is :attr:`pairs`; a layer without a partner leaves the other view on the layer it shows,
    and the open channel follows only while both views show a pair (closed where the partner
    has fewer channels). Re-running either view on new inputs pairs the layers again.

    Example:
        >>> cmp = CompareWidget(FeatureMapWidget(m1, x), FeatureMapWidget(m2, x))  # doctest: +SKIP
        >>> cmp.a.channel = 5  # doctest: +SKIP
        >>> cmp.b.channel  # doctest: +SKIP
        5
    """

    def __init__(
        self,
        a: FeatureMapWidget,
        b: FeatureMapWidget,
        *,
        match: Literal["name", "order"] = "name",
        names: tuple[str, str] = ("A", "B"),
    ) -> None:
        # ipywidgets calls close() from __del__, also when __init__ raised: until the end of
        # __init__ there is nothing of ours to close (and the views remain the caller's).
        self._ready = False
        if len(names) != 2 or not all(isinstance(n, str) for n in names):
            raise ValueError(f"names must be two strings (one per model), got {names!r}")
        self._a, self._b = a, b
        self._match = match
        self._names = (names[0], names[1])
        self._diff: FeatureMapWidget | None = None
        self._diff_link: ipywidgets.widgets.widget_link.Link | None = None
        self._handlers: list[tuple[FeatureMapWidget, Callable[[dict[str, Any]], None], list]] = []
        # Set while one view's change is copied to the others: their own changes must not echo.
        self._syncing = False
        self._rerunning = False
        self._pair_up()
        self._titles = (ipywidgets.Label(), ipywidgets.Label())
        self._toggle = ipywidgets.Checkbox(
            value=False, description=f"show {names[0]} − {names[1]}", indent=False
        )
        self._diff_note = ipywidgets.Label()
        for view in (a, b):
            view.layout.flex = "1 1 0%"
            view.layout.min_width = "0"
        for title in self._titles:
            title.layout.flex = "1 1 0%"
        self._rows = (
            ipywidgets.HBox(list(self._titles)),
            ipywidgets.HBox([a, b]),
            ipywidgets.HBox([self._toggle, self._diff_note]),
        )
        # A − B sits under A at A's width: the linked `view` trait is in fractions of the grid,
        # so only views of one pixel width show the same tiles at the same zoom.
        self._diff_spacer = ipywidgets.Box(layout=ipywidgets.Layout(flex="1 1 0%", min_width="0"))
        self._diff_row = ipywidgets.HBox([])
        super().__init__(list(self._rows))
        self._toggle.observe(self._on_toggle, names="value")
        for view in (a, b):
            self._listen(view, _FOLLOWED)
            self._listen_titles(view)
        self._view_link = ipywidgets.jslink((a, "view"), (b, "view"))
        self._align(a)
        self._refresh_header()
        self._ready = True

    # -- public API -------------------------------------------------------------------------

    @property
    def a(self) -> FeatureMapWidget:
        """The view of the first model."""
        return self._a

    @property
    def b(self) -> FeatureMapWidget:
        """The view of the second model."""
        return self._b

    @property
    def diff(self) -> FeatureMapWidget | None:
        """The A − B view while it is shown (layers named as in A), else ``None``."""
        return self._diff

    @property
    def pairs(self) -> list[LayerPair]:
        """The matched layers, in A's order: ``LayerPair(name_a, name_b, same_shape)``."""
        return list(self._pairs)

    @property
    def names(self) -> tuple[str, str]:
        """The titles of the two models."""
        return self._names

    def show_difference(self, show: bool = True) -> FeatureMapWidget | None:
        """Show (or hide) a third view with A − B for every pair of layers of the same shape.

        The difference is computed when shown and freed when hidden (it holds one more copy of
        every such layer). It follows the layer, channel, sample and scale of the two views (and
        they follow it); it keeps the diverging colormap. Returns the view, or ``None`` hidden.

        Example:
            >>> d = cmp.show_difference()  # doctest: +SKIP
            >>> d.layer == cmp.a.layer  # doctest: +SKIP
            True
        """
        if show and self._diff is None:
            self._diff = self._difference()
            self._listen(self._diff, ("layer", "channel", "sample", *_DIFF_STYLE))
            self._diff_link = ipywidgets.jslink((self._a, "view"), (self._diff, "view"))
            self._diff.layout.flex = "1 1 0%"
            self._diff.layout.min_width = "0"
            self._diff_row.children = [self._diff, self._diff_spacer]
            self.children = [*self._rows, self._diff_row]
        elif not show and self._diff is not None:
            self.children = list(self._rows)
            self._diff_row.children = []
            self._drop_difference()
        self._toggle.value = self._diff is not None
        self._refresh_diff_note()
        return self._diff

    def set_inputs(self, inputs: Any, *, image: Any = None) -> None:
        """Re-run both models on new ``inputs`` (``image``: what to show, as for the views).

        Layers are paired again (their shapes may change with the input size); a shown
        difference is recomputed.

        Example:
            >>> cmp.set_inputs(torch.randn(4, 3, 64, 64))  # doctest: +SKIP
        """
        self._rerunning = True
        try:
            self._a.set_inputs(inputs, image=image)
            self._b.set_inputs(inputs, image=image)
        finally:
            self._rerunning = False
        self._on_rerun()
        self._align(self._a)

    def close(self) -> None:
        """Close both views, the difference view and every control; frees their activations."""
        if self._ready:
            self._ready = False
            self._drop_difference()
            for view in (self._a, self._b):
                self._forget(view)
            self._toggle.unobserve_all()
            controls = (
                self._view_link,
                *self._rows,
                self._diff_row,
                self._diff_spacer,
                *self._titles,
                self._toggle,
                self._diff_note,
            )
            for control in controls:
                _close_with_parts(control)
            self._a.close()
            self._b.close()
            self.layout.close()
        super().close()

    def _drop_difference(self) -> None:
        diff, link, self._diff, self._diff_link = self._diff, self._diff_link, None, None
        if diff is not None:
            self._forget(diff)
            _close_with_parts(diff)
        if link is not None:
            link.close()

    # -- pairing ----------------------------------------------------------------------------

    def _pair_up(self) -> None:
        a, b = self._a, self._b
        if a.num_samples != b.num_samples:
            raise ValueError(
                f"the two views show batches of {a.num_samples} and {b.num_samples} inputs; "
                "compare two models on the same inputs"
            )
        shown_a, shown_b = _layer_names(a), _layer_names(b)
        pairs = [
            p
            for p in compare_layers(a.capture, b.capture, match=self._match)
            if p.name_a in shown_a and p.name_b in shown_b
        ]
        if not pairs:
            hint = " (for two architectures, match='order' pairs their conv layers)"
            raise ValueError(
                f"no layer of model {self._names[0]!r} pairs with one of {self._names[1]!r} "
                f"by {self._match}{hint if self._match == 'name' else ''}"
            )
        self._pairs = pairs
        self._a_to_b = {p.name_a: p.name_b for p in pairs}
        self._b_to_a = {p.name_b: p.name_a for p in pairs}

    def _key(self, view: FeatureMapWidget, name: str) -> str | None:
        """The pair a view's layer belongs to, named by its A layer; ``None``: no partner."""
        if view is self._b:
            return self._b_to_a.get(name)
        if view is self._a:
            return name if name in self._a_to_b else None
        return name

    def _name(self, view: FeatureMapWidget, key: str) -> str | None:
        """The layer of ``view`` in the pair ``key``; ``None`` where the view has none."""
        if view is self._b:
            return self._a_to_b[key]
        if view is self._a:
            return key
        return key if key in _layer_names(view) else None

    # -- following --------------------------------------------------------------------------

    def _listen(self, view: FeatureMapWidget, traits: Sequence[str]) -> None:
        def handler(change: dict[str, Any]) -> None:
            self._follow(view, change["name"])

        view.observe(handler, names=list(traits))
        self._handlers.append((view, handler, list(traits)))

    def _listen_titles(self, view: FeatureMapWidget) -> None:
        def handler(_change: dict[str, Any]) -> None:
            self._refresh_header()

        view.observe(handler, names=["sample", "predictions"])
        self._handlers.append((view, handler, ["sample", "predictions"]))

        def rerun(_change: dict[str, Any]) -> None:
            self._on_rerun()

        view.observe(rerun, names=["revision"])
        self._handlers.append((view, rerun, ["revision"]))

    def _forget(self, view: FeatureMapWidget) -> None:
        for owner, handler, traits in [h for h in self._handlers if h[0] is view]:
            owner.unobserve(handler, names=traits)
            self._handlers.remove((owner, handler, traits))

    def _follow(self, source: FeatureMapWidget, trait: str) -> None:
        if self._syncing:
            return
        self._syncing = True
        try:
            others = [
                v for v in (self._a, self._b, self._diff) if v is not None and v is not source
            ]
            for view in others:
                self._copy(source, view, trait)
        finally:
            self._syncing = False
        if trait == "layer":
            self._refresh_diff_note()

    def _align(self, source: FeatureMapWidget) -> None:
        """Bring every other view in step with ``source`` on everything that follows."""
        self._syncing = True
        try:
            for view in (self._a, self._b, self._diff):
                if view is not None and view is not source:
                    for trait in _FOLLOWED:
                        self._copy(source, view, trait)
        finally:
            self._syncing = False

    def _copy(self, source: FeatureMapWidget, view: FeatureMapWidget, trait: str) -> None:
        if trait == "layer":
            key = self._key(source, source.layer)
            name = None if key is None else self._name(view, key)
            if name is not None:
                view.layer = name
                self._copy(source, view, "channel")
        elif trait == "channel":
            key = self._key(source, source.layer)
            if key is not None and key == self._key(view, view.layer):
                channel = source.channel
                if channel is not None and channel >= _channel_count(view):
                    channel = None
                view.channel = channel
        elif trait == "sample":
            if source.sample < view.num_samples:
                view.sample = source.sample
        elif view is not self._diff or trait in _DIFF_STYLE:
            setattr(view, trait, getattr(source, trait))

    def _on_rerun(self) -> None:
        """One view ran on new inputs: pair the layers again and recompute the difference."""
        if self._rerunning:
            return
        shown = self._diff is not None
        self.show_difference(False)
        try:
            self._pair_up()
        except ValueError as error:
            # Raising here would interrupt the view's own re-run half-way; say it instead.
            self._pairs, self._a_to_b, self._b_to_a = [], {}, {}
            self._refresh_header()
            self._diff_note.value = f"{error}; re-run both with set_inputs()"
            return
        self._refresh_header()
        if shown and any(p.same_shape for p in self._pairs):
            self.show_difference(True)

    # -- difference -------------------------------------------------------------------------

    def _difference(self) -> FeatureMapWidget:
        acts_a, acts_b = self._a.capture, self._b.capture
        same = [p for p in self._pairs if p.same_shape]
        if not same:
            raise ValueError(
                f"no pair of layers has the same (C, H, W) in {self._names[0]!r} and "
                f"{self._names[1]!r}: there is nothing to subtract"
            )
        diffs: dict[str, torch.Tensor] = {}
        for pair in same:
            maps_a = acts_a[pair.name_a]
            diffs[pair.name_a] = maps_a - acts_b[pair.name_b].to(maps_a.device)
        # A's layer descriptions keep the kinds, so the pre/post toggle works in the difference.
        described = Capture(diffs, CaptureReport([acts_a.info(name) for name in diffs]), None)
        try:
            image = [self._a.input_image(i) for i in range(self._a.num_samples)]
        except ValueError:
            image = None
        key = self._key(self._a, self._a.layer)
        diff = FeatureMapWidget.from_activations(
            described,
            image=image,
            colormap="diverging",
            scale=self._a.scale,
            layer=key if key in diffs else None,
            sample=self._a.sample,
            height=self._a.height,
        )
        # No observer listens to the new view yet, so this copies without echo.
        self._copy(self._a, diff, "channel")
        return diff

    # -- header -----------------------------------------------------------------------------

    def _on_toggle(self, change: dict[str, Any]) -> None:
        self.show_difference(bool(change["new"]))

    def _refresh_header(self) -> None:
        """Titles (model, top prediction of the shown sample) and whether A − B can be shown."""
        for title, view, name in zip(self._titles, (self._a, self._b), self._names, strict=True):
            title.value = f"{name} ({type(view.model).__name__}){_top_prediction(view)}"
        same = sum(p.same_shape for p in self._pairs)
        self._toggle.disabled = same == 0
        self._toggle.tooltip = f"{same} of {len(self._pairs)} matched layer pairs have one shape"

    def _refresh_diff_note(self) -> None:
        if self._diff is None:
            self._diff_note.value = ""
            return
        a_name, b_name = self._names
        partner = self._a_to_b.get(self._a.layer)
        if self._a.layer in _layer_names(self._diff):
            self._diff_note.value = f"{a_name} {self._a.layer} − {b_name} {partner}"
        else:
            why = "has no partner" if partner is None else f"and {partner} differ in shape"
            self._diff_note.value = (
                f"{self._a.layer} {why}: the difference stays on {self._diff.layer}"
            )


def _close_with_parts(widget: ipywidgets.Widget) -> None:
    """Close a widget made here together with its layout and style (``close()`` leaves them)."""
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
        if isinstance(part, ipywidgets.Widget):
            part.close()
    widget.close()


def _layer_names(view: FeatureMapWidget) -> set[str]:
    return {meta["name"] for meta in view.layers}


def _channel_count(view: FeatureMapWidget) -> int:
    return next(meta["shape"][1] for meta in view.layers if meta["name"] == view.layer)


def _top_prediction(view: FeatureMapWidget) -> str:
    if not view.predictions:
        return ""
    top = view.predictions[view.sample][0]
    label = top["label"] if top["label"] is not None else f"class {top['index']}"
    return f": {label} {top['prob']:.0%}"
