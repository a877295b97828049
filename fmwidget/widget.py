"""The anywidget class: synced traits, request handling, re-running on new inputs.

The browser asks for data with custom messages (``docs/protocol.md``); every request gets exactly
one reply, built by :mod:`fmwidget.wire` from what :class:`fmwidget.store.ActivationStore` holds.
Handlers run to completion on the kernel's thread and never wait for the browser.

Example:
    >>> import torch, torchvision
    >>> model = torchvision.models.resnet18().eval()
    >>> w = FeatureMapWidget(model, torch.randn(2, 3, 64, 64), layer="layer1.0.conv1")
    >>> w.num_samples, w.layers[0]["name"]
    (2, 'conv1')
    >>> w.close()
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import io
import itertools
import logging
import operator
import reprlib
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import anywidget
import numpy as np
import torch
import traitlets
from torch import nn

from fmwidget import analysis, wire
from fmwidget.analysis import AblationResult, group_differences
from fmwidget.capture import (
    ROOT_NAME,
    CaptureBuffers,
    CaptureReport,
    LayerInfo,
    LayerSelector,
    _tensors_in,
    capture,
)
from fmwidget.gradcam import CAM_METHODS, gradcam, gradcam_layer, top_classes
from fmwidget.store import ActivationStore, UnknownLayerError, precomputed

__all__ = ["CapturedLayers", "FeatureMapWidget"]

_STATIC = Path(__file__).parent / "static"
_log = logging.getLogger(__name__)

COLORMAPS = ("gray", "viridis", "magma", "diverging")
SCALES = ("channel", "layer", "global")
SORTS = ("index", "mean", "max", "zeros", "gradcam", "effect")
_TOP_PREDICTIONS = 5
# Traits only the kernel writes: a constructor argument for them would be silently overwritten.
_KERNEL_TRAITS = ("num_samples", "revision", "status", "predictions", "ablation", "cam_methods")


class CapturedLayers(Mapping[str, torch.Tensor]):
    """Layer name → activation of a widget's last run (what :attr:`FeatureMapWidget.capture` is).

    A layer that lives in the widget's reused capture buffers (``pool``: copies the capture had
    to make, see :class:`fmwidget.capture.CaptureBuffers`) is handed out as a copy, since the next
    run overwrites those buffers; other layers are handed out as they are. Either way a tensor
    read here keeps its values when the widget re-runs.

    Example:
        >>> acts = w.capture  # doctest: +SKIP
        >>> acts["layer1.0.conv1"].shape, acts.info("layer1.0.conv1").kind  # doctest: +SKIP
        (torch.Size([2, 64, 16, 16]), 'conv')
    """

    def __init__(
        self,
        store: ActivationStore,
        report: CaptureReport,
        output: Any,
        pool: CaptureBuffers | None = None,
    ) -> None:
        self._store = store
        self.report = report
        self.output = output
        self._pool = pool

    def __getitem__(self, name: str) -> torch.Tensor:
        self._check_current()
        maps = self._store.maps(name)
        return maps.clone() if self._pool is not None and self._pool.holds(maps) else maps

    def __iter__(self) -> Iterator[str]:
        self._check_current()
        return iter(self._store.names)

    def __len__(self) -> int:
        self._check_current()
        return len(self._store)

    def info(self, name: str) -> LayerInfo:
        """The ``LayerInfo`` of one layer (module, call, kind, shape, dtype, what fed it)."""
        self._check_current()
        return self._store.info(name)

    def _check_current(self) -> None:
        if self._store.closed:
            raise RuntimeError(
                "these activations were replaced by a re-run on new inputs (or the widget was "
                "closed); read widget.capture again"
            )


class _BadRequest(Exception):
    """A request the kernel cannot serve; its text goes back in the error reply."""


class _StaleCapture(RuntimeError):
    """An evicted layer cannot be recomputed: the model or its inputs changed since the capture."""


class _CamMaps(NamedTuple):
    """A CAM method's maps for the whole batch, as the ``gradcam`` request serves them."""

    heatmap: torch.Tensor  # (N, H, W)
    weights: torch.Tensor  # (N, C) for our Grad-CAM; (N, 0) for methods without channel weights
    target: list[int] | None
    normalized: bool  # scaled to [0, 1] per image (the grad-cam package's methods)


def _available_cam_methods() -> list[str]:
    """Our Grad-CAM, plus the grad-cam package's methods where it is installed."""
    # find_spec does not import the package (it pulls in OpenCV): widgets stay quick to create.
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        return ["gradcam"]
    return ["gradcam", *CAM_METHODS]


class FeatureMapWidget(anywidget.AnyWidget):
    """Every feature map of a CNN layer as a zoomable grid, with a layer slider and drill-down.

    ``model`` runs on ``inputs`` (a tensor, a tuple of positional inputs or a dict of keyword
    inputs) with forward hooks on ``layers`` (see :func:`fmwidget.capture.capture`; default: every
    layer with feature maps). Activations stay on the model's device; the browser fetches one layer
    at a time.

    Args:
        labels: class names, when the model outputs ``(N, classes)`` logits; ``predictions`` then
            holds the top five per sample.
        image: what to show as the input, per sample: a PIL image, an ``(H, W, 3)``/``(H, W)``
            array (uint8, or floats in [0, 1]), an ``(N, H, W, 3)`` array, a ``(3, H, W)`` /
            ``(N, 3, H, W)`` tensor, or a list of those. Default: the input tensor itself, rescaled.
        groups: a group label per input (at least two labels): each ``layer`` reply then carries
            every channel's Cohen's d between the two groups of ``group_pair``.
        budget_bytes: bytes of activations kept; beyond, layers are recomputed when shown.
        cam_method: the Grad-CAM panel's method: ``"gradcam"`` (ours, with per-channel weights)
            or, where the ``grad-cam`` package is installed, a key of
            :data:`fmwidget.gradcam.CAM_METHODS` (``"gradcam++"``, ``"scorecam"``, ...);
            ``cam_methods`` lists what this widget offers.
        colormap, scale, layer, height: initial view; other synced traits as keywords.

    Activations computed elsewhere (saved ones, the difference of two models) are shown with
    :meth:`from_activations`, without a model.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
        >>> w = FeatureMapWidget(model, torch.randn(1, 3, 16, 16), colormap="viridis")
        >>> w.layer, [m["post"] for m in w.layers]
        ('0', ['1', None])
        >>> w.close()
    """

    _esm = _STATIC / "widget.js"
    _css = _STATIC / "widget.css"

    layers = traitlets.List(traitlets.Dict()).tag(sync=True)
    layer = traitlets.Unicode("").tag(sync=True)
    channel = traitlets.Int(None, allow_none=True).tag(sync=True)
    sample = traitlets.Int(0).tag(sync=True)
    num_samples = traitlets.Int(0).tag(sync=True)
    colormap = traitlets.Enum(COLORMAPS, "gray").tag(sync=True)
    scale = traitlets.Enum(SCALES, "channel").tag(sync=True)
    symmetric = traitlets.Bool(False).tag(sync=True)
    revision = traitlets.Int(0).tag(sync=True)
    status = traitlets.Dict({"state": "busy", "message": ""}).tag(sync=True)
    predictions = traitlets.List().tag(sync=True)
    sort = traitlets.Enum(SORTS, "index").tag(sync=True)
    top_k = traitlets.Int(0, min=0).tag(sync=True)
    selected = traitlets.List(traitlets.Int()).tag(sync=True)
    height = traitlets.Int(520, min=120).tag(sync=True)
    gradcam = traitlets.Bool(False).tag(sync=True)
    target = traitlets.Int(None, allow_none=True).tag(sync=True)
    view = traitlets.Dict({"zoom": 1.0, "x": 0.5, "y": 0.5}).tag(sync=True)
    groups = traitlets.List(traitlets.Unicode()).tag(sync=True)
    group_pair = traitlets.List(traitlets.Unicode()).tag(sync=True)
    ablation = traitlets.Dict(allow_none=True).tag(sync=True)
    cam_method = traitlets.Unicode("gradcam").tag(sync=True)
    cam_methods = traitlets.List(traitlets.Unicode(), ["gradcam"]).tag(sync=True)

    @traitlets.default("ablation")
    def _no_ablation(self) -> None:
        # A Dict trait's default is {}; the protocol says null until the first ablation.
        return None

    def __init__(
        self,
        model: nn.Module,
        inputs: Any,
        layers: LayerSelector | None = None,
        *,
        labels: Sequence[str] | None = None,
        image: Any = None,
        groups: Sequence[Hashable] | None = None,
        budget_bytes: int | None = None,
        colormap: str = "gray",
        scale: str = "channel",
        layer: str | None = None,
        height: int = 520,
        **kwargs: Any,
    ) -> None:
        self._check_keywords(kwargs)
        view = dict(colormap=colormap, scale=scale, height=height, **kwargs)
        # Whatever can be checked without the model fails before it runs.
        self._check_values({**view, "layer": layer} if layer is not None else view)
        # Names and types are kept as given; a one-shot iterable must survive re-runs.
        keep = layers is None or isinstance(layers, str) or callable(layers)
        self._prepare(model, layers if keep else list(layers), labels, budget_bytes)
        try:
            state = self._run(inputs, image, groups)
            self._open(state, layer=layer, **view)
        except BaseException:
            # anywidget keeps every instance alive (its file watcher holds a callback bound to
            # it), failed ones too: nothing big may stay behind.
            self._release()
            raise

    @classmethod
    def from_activations(
        cls,
        activations: Mapping[str, torch.Tensor],
        *,
        output: Any = None,
        labels: Sequence[str] | None = None,
        image: Any = None,
        groups: Sequence[Hashable] | None = None,
        colormap: str = "gray",
        scale: str = "channel",
        layer: str | None = None,
        height: int = 520,
        **kwargs: Any,
    ) -> FeatureMapWidget:
        """A widget over activations computed elsewhere, with no model behind it.

        ``activations`` maps layer names to floating-point ``(N, C, H, W)`` tensors (one batch),
        shown in the mapping's order and held as given (no memory budget: nothing could recompute
        an evicted layer). A :class:`fmwidget.capture.Capture` or ``widget.capture`` keeps each
        layer's kind and type, so the before/after-activation toggle works; its ``output`` gives
        the predictions unless ``output=`` (e.g. ``(N, classes)`` logits, for ``labels``) is
        passed. ``image``, ``groups`` and the view options are as for the constructor.

        Without a model, ``channel`` replies carry no conv filter, ``gradcam`` requests and
        :meth:`ablate` fail with a clear message, and new inputs cannot be assigned.

        Example:
            >>> import torch
            >>> acts = {"a - b": torch.randn(2, 8, 16, 16)}
            >>> w = FeatureMapWidget.from_activations(acts, colormap="diverging")
            >>> w.layer, w.num_samples, w.model, w.symmetric
            ('a - b', 2, None, True)
            >>> w.close()
        """
        widget = cls.__new__(cls)
        widget._check_keywords(kwargs)
        view = dict(colormap=colormap, scale=scale, height=height, **kwargs)
        widget._check_values({**view, "layer": layer} if layer is not None else view)
        widget._prepare(None, None, labels, None)
        captured = precomputed(activations)
        if output is None:
            output = getattr(activations, "output", None)
        store = ActivationStore(captured, filters=False)
        try:
            state = widget._adopt(store, None, captured.report, output, image, groups)
            widget._open(state, layer=layer, **view)
        except BaseException:
            store.close()
            widget._release()
            raise
        return widget

    def _prepare(
        self,
        model: nn.Module | None,
        selector: LayerSelector | None,
        labels: Sequence[str] | None,
        budget_bytes: int | None,
    ) -> None:
        """Set the private state both constructors start from."""
        self._model: nn.Module | None = model
        self._closed = False
        self._selector = selector
        self._labels = None if labels is None else [str(label) for label in labels]
        self._budget_bytes = budget_bytes
        self._buffers: CaptureBuffers | None = CaptureBuffers() if model is not None else None
        self._store: ActivationStore | None = None
        self._report: CaptureReport | None = None
        self._output: Any = None
        self._inputs: Any = None
        self._images: list[np.ndarray] | None = None
        self._gradcam_cache: dict[tuple[str, int | None, str], _CamMaps] = {}
        self._incoming: set[str] = set()
        self._classes: int | None = None

    def _open(self, state: dict[str, Any], *, layer: str | None, **traits: Any) -> None:
        """Start the widget (ipywidgets' constructor) with the first capture's state."""
        if layer is None:
            layer = state["layer"]
        if "group_pair" in traits:
            # The user's pair wins over the default (the first two groups); its validator checks
            # that it names two of the groups.
            state = {key: value for key, value in state.items() if key != "group_pair"}
        cam_methods = _available_cam_methods() if self._model is not None else ["gradcam"]
        super().__init__(
            **{**traits, **state, "layer": layer, "revision": 1, "cam_methods": cam_methods}
        )
        self.on_msg(self._on_msg)

    # -- public API -------------------------------------------------------------------------

    @property
    def model(self) -> nn.Module | None:
        """The model the widget shows (``None`` after :meth:`close`, or without one:
        :meth:`from_activations`)."""
        return self._model

    @property
    def inputs(self) -> Any:
        """The inputs of the last capture; assigning new ones re-runs the model on them."""
        return self._inputs

    @inputs.setter
    def inputs(self, inputs: Any) -> None:
        self.set_inputs(inputs)

    @property
    def capture(self) -> CapturedLayers:
        """The last run's activations: layer name → ``(N, C, H, W)`` tensor on the model's device.

        Read-only, like :class:`fmwidget.capture.Capture` (``report``, ``output``, ``info``), and
        backed by the widget's store: a layer evicted by the memory budget is recomputed when read.
        Assigning new inputs replaces it; the previous one then raises when read. Tensors read from
        it stay valid: a layer held in the buffers the widget reuses across runs is handed out as
        a copy, so the next run cannot change it under you.
        """
        return CapturedLayers(self._require_data(), self._report, self._output, self._buffers)

    @property
    def report(self) -> CaptureReport:
        """What was captured, what was skipped and why (``CaptureReport``)."""
        self._require_data()
        return self._report

    def set_inputs(
        self, inputs: Any, *, image: Any = None, groups: Sequence[Hashable] | None = None
    ) -> None:
        """Re-run the model on new ``inputs``; ``image`` is what to show as the input (without
        it, the input tensor itself). ``w.inputs = x`` is ``w.set_inputs(x)``.

        Capture buffers are reused. ``revision`` goes up; the shown layer stays when it still
        exists. On failure ``status`` turns to ``error`` and the exception propagates.

        Example:
            >>> w.set_inputs(torch.randn(4, 3, 64, 64))  # doctest: +SKIP
            >>> w.num_samples  # doctest: +SKIP
            4
        """
        self._require_model("assigning new inputs re-runs the model")
        self.status = {"state": "busy", "message": "running the model"}
        try:
            state = self._run(inputs, image, groups)
        except Exception as error:
            self.status = {"state": "error", "message": f"re-running the model failed: {error}"}
            raise
        if self.layer in self._store:
            state["layer"] = self.layer
        with self.hold_trait_notifications():
            self.sample = min(self.sample, state["num_samples"] - 1)
            self.revision += 1
            # An ablation describes the previous inputs.
            self.ablation = None
            for name, value in state.items():
                setattr(self, name, value)
        self._close_channel_if_out_of_range()

    def input_image(self, sample: int | None = None) -> np.ndarray:
        """The input of ``sample`` (default: the shown one) as the view shows it, ``(H, W, 3)``
        uint8: the ``image=`` picture, else the input tensor rescaled.

        Example:
            >>> w.input_image(0).shape  # doctest: +SKIP
            (64, 64, 3)
        """
        self._require_data()
        sample = self.sample if sample is None else sample
        if not 0 <= sample < self.num_samples:
            raise IndexError(
                f"sample {sample} is out of range: the batch has {self.num_samples} inputs"
            )
        if self._images is not None:
            return self._images[sample]
        return _input_picture(self._inputs, sample)

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
        if self.selected:
            channels = list(self.selected)
        else:
            channels = [] if self.channel is None else [self.channel]
        return {"layer": self.layer, "channels": channels}

    def ablate(
        self, layer: str | None = None, channels: Sequence[int] | None = None
    ) -> AblationResult:
        """Re-run the model with ``channels`` of ``layer`` set to zero; show how predictions move.

        Defaults: the shown layer and :attr:`selection` (the selected channels, else the open
        one). Returns :func:`fmwidget.analysis.ablate`'s result and sets the ``ablation`` trait
        (``docs/protocol.md``) so the view can show, per sample, the top class before and after
        and how the probability of the class predicted before changed. The model, its hooks and
        its buffers are left as they were; the shown activations stay those without ablation.
        The view's "Ablate selected" button calls this with the shown layer and the selection.

        Example:
            >>> w.selected = [3, 7]  # doctest: +SKIP
            >>> w.ablate().changes[0].prob_change  # doctest: +SKIP
            -0.21
            >>> w.ablate("layer4.1.conv2", [12])  # doctest: +SKIP
        """
        self._require_model("ablation re-runs the model")
        store = self._require_data()
        if layer is None:
            layer = self.layer
        elif layer not in store:
            raise UnknownLayerError(layer, store.names)
        if channels is None:
            if layer != self.layer:
                raise ValueError(
                    f"say which channels of layer {layer!r} to ablate (channels=[...]): the "
                    f"selection in the view belongs to the shown layer {self.layer!r}"
                )
            channels = self.selection["channels"]
            if not channels:
                raise ValueError(
                    f"no channel of layer {layer!r} is selected: shift-click tiles in the view "
                    "(or set w.selected / w.channel), or pass channels=[...]"
                )
        channels = _channel_list(channels)
        count = store.shape(layer)[1]
        bad = [c for c in channels if not 0 <= c < count]
        if not channels or bad:
            raise ValueError(
                f"channels {bad or channels} cannot be ablated: layer {layer!r} has {count} "
                f"channels (0 to {count - 1})"
            )
        result = analysis.ablate(self._model, self._inputs, layer, channels)
        changes = None
        if result.changes is not None:
            changes = [
                {
                    "top_before": c.top_before,
                    "label_before": self._label(c.top_before),
                    "prob_before": c.prob_before,
                    "top_after": c.top_after,
                    "label_after": self._label(c.top_after),
                    "prob_after": c.prob_after,
                    "prob_change": c.prob_change,
                }
                for c in result.changes
            ]
        self.ablation = {"layer": layer, "channels": channels, "changes": changes}
        return result

    def close(self) -> None:
        """Close the view and free every activation; the widget lets go of the model."""
        self._release()
        super().close()

    def _release(self) -> None:
        """Drop the activations, the model and the inputs (on close, or a failed constructor)."""
        self._closed = True
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()
        self._store = None
        self._report = None
        self._output = None
        self._model = None
        self._inputs = None
        self._images = None
        self._buffers = None
        self._gradcam_cache = {}

    # -- capture ----------------------------------------------------------------------------

    def _run(self, inputs: Any, image: Any, groups: Sequence[Hashable] | None) -> dict[str, Any]:
        """Capture ``inputs`` into a new store; returns the kernel-owned trait values."""
        model = self._model
        if self._store is not None:
            # The buffers are about to be overwritten by the new capture: the old store's
            # tensors may live in them, so it must not serve anything from here on.
            self._store.close()
            self._store = None
        captured = capture(model, inputs, self._selector, buffers=self._buffers)
        report, output = captured.report, captured.output
        # Recomputing in training mode would give other values (dropout, batch statistics), so
        # such a model's layers all stay.
        training = any(module.training for module in model.modules())
        recompute = None if training else _Recompute(model, inputs)
        try:
            store = ActivationStore(captured, budget_bytes=self._budget_bytes, recompute=recompute)
        finally:
            # From here only the store holds the activations; a traceback keeps this frame.
            del captured
        try:
            if store.evicted:
                # The pool holds every buffer of the capture: evicting frees memory only without
                # it.
                self._buffers.clear()
            return self._adopt(store, inputs, report, output, image, groups)
        except BaseException:
            store.close()
            raise

    def _adopt(
        self,
        store: ActivationStore,
        inputs: Any,
        report: CaptureReport,
        output: Any,
        image: Any,
        groups: Sequence[Hashable] | None,
    ) -> dict[str, Any]:
        """Make ``store`` the one served; returns the kernel-owned trait values."""
        if not len(store):
            raise ValueError(f"every captured layer has empty maps: {store.skipped}")
        num_samples = store.shape(store.names[0])[0]
        images = None if image is None else _images_per_sample(image, num_samples)
        group_labels = [] if groups is None else _group_labels(groups, num_samples)
        predictions = self._predictions(output, num_samples)
        self._classes = int(output.shape[1]) if predictions else None
        self._store, self._inputs, self._images = store, inputs, images
        self._report, self._output = report, output
        self._gradcam_cache = {}
        metas = store.layers_meta()
        return {
            "layers": metas,
            "layer": metas[0]["name"],
            "num_samples": num_samples,
            "predictions": predictions,
            "status": {"state": "ready", "message": ""},
            "groups": group_labels,
            "group_pair": list(dict.fromkeys(group_labels))[:2],
        }

    def _predictions(self, output: Any, num_samples: int) -> list[list[dict[str, Any]]]:
        logits = isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] > 1
        if not logits or output.shape[0] != num_samples:
            if self._labels is not None:
                got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
                raise ValueError(
                    f"labels= needs a model that outputs (N, classes) logits; it output {got}"
                )
            return []
        classes = output.shape[1]
        if self._labels is not None and len(self._labels) != classes:
            raise ValueError(
                f"labels= has {len(self._labels)} names but the model outputs {classes} classes"
            )
        return [
            [{"index": t.index, "label": self._label(t.index), "prob": t.prob} for t in row]
            for row in top_classes(output, k=_TOP_PREDICTIONS)
        ]

    def _label(self, index: int) -> str | None:
        return None if self._labels is None else self._labels[index]

    # -- trait validation -------------------------------------------------------------------

    def _check_keywords(self, kwargs: Mapping[str, Any]) -> None:
        for key in kwargs:
            if key in _KERNEL_TRAITS:
                raise TypeError(f"{key!r} is set by the widget from the model; it is not an option")
            if not self.has_trait(key):
                close = difflib.get_close_matches(key, self.trait_names(), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise TypeError(
                    f"FeatureMapWidget got an unexpected keyword argument {key!r}{hint}"
                )

    def _check_values(self, values: Mapping[str, Any]) -> None:
        """Check values against their traits' types, ranges and choices (``colormap="jet"``);
        what depends on the capture (a layer name, a sample index) is checked once it exists."""
        with self.cross_validation_lock:
            for key, value in values.items():
                self.traits()[key]._validate(self, value)

    @traitlets.validate("layer")
    def _valid_layer(self, proposal: dict[str, Any]) -> str:
        name = proposal["value"]
        if self._store is not None and name not in self._store:
            raise traitlets.TraitError(str(UnknownLayerError(name, self._store.names)))
        return name

    @traitlets.validate("channel")
    def _valid_channel(self, proposal: dict[str, Any]) -> int | None:
        channel = proposal["value"]
        if channel is not None and self._store is not None:
            count = self._channel_count()
            if not 0 <= channel < count:
                raise traitlets.TraitError(
                    f"channel {channel} is out of range: layer {self.layer!r} has {count} "
                    f"channels (0 to {count - 1}); None closes the channel view"
                )
        return channel

    @traitlets.validate("sample")
    def _valid_sample(self, proposal: dict[str, Any]) -> int:
        sample = proposal["value"]
        if self._store is not None and not 0 <= sample < self.num_samples:
            raise traitlets.TraitError(
                f"sample {sample} is out of range: the batch has {self.num_samples} inputs "
                f"(0 to {self.num_samples - 1})"
            )
        return sample

    @traitlets.validate("selected")
    def _valid_selected(self, proposal: dict[str, Any]) -> list[int]:
        selected = list(proposal["value"])
        if self._store is not None:
            count = self._channel_count()
            bad = [c for c in selected if not 0 <= c < count]
            if bad:
                raise traitlets.TraitError(
                    f"selected channels {bad} are out of range: layer {self.layer!r} has "
                    f"{count} channels"
                )
        return selected

    def set_state(self, sync_data: dict[str, Any]) -> None:
        """Apply a state update from the browser (ipywidgets API).

        A rejected update (``sample=9`` in a batch of 2) is answered with the kernel's values of
        its keys, so the view snaps back instead of showing what the kernel does not hold; the
        error still propagates to ipywidgets, which shows or logs it.
        """
        self._incoming = set(sync_data)
        try:
            super().set_state(sync_data)
        except Exception:
            # traitlets rolled every key of the update back; the view still shows the sent values.
            self.send_state([key for key in sync_data if key in self.keys])
            raise
        finally:
            self._incoming = set()

    @traitlets.validate("target")
    def _valid_target(self, proposal: dict[str, Any]) -> int | None:
        target = proposal["value"]
        if target is not None and self._store is not None:
            try:
                _check_target(target, self._classes)
            except ValueError as error:
                raise traitlets.TraitError(str(error)) from error
        return target

    @traitlets.validate("cam_method")
    def _valid_cam_method(self, proposal: dict[str, Any]) -> str:
        method = proposal["value"]
        if method not in self.cam_methods:
            raise traitlets.TraitError(_unknown_cam_method(method, self.cam_methods))
        return method

    @traitlets.validate("group_pair")
    def _valid_group_pair(self, proposal: dict[str, Any]) -> list[str]:
        pair = list(proposal["value"])
        if not pair:
            return pair
        labels = list(dict.fromkeys(self.groups))
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(labels):
            raise traitlets.TraitError(
                f"group_pair must be two different labels among the groups {labels}, got {pair}"
            )
        counts = [self.groups.count(label) for label in pair]
        if sum(counts) < 3:
            raise traitlets.TraitError(
                f"groups {pair[0]!r} and {pair[1]!r} have {counts[0]} and {counts[1]} inputs; "
                "comparing them needs at least 3 inputs between them"
            )
        return pair

    @traitlets.observe("layer")
    def _on_layer(self, change: dict[str, Any]) -> None:
        # Channel numbers belong to a layer: a selection made in the old one means nothing here,
        # unless the browser sent the new selection together with the new layer.
        if change["old"] != change["new"] and "selected" not in self._incoming:
            self.selected = []
        self._close_channel_if_out_of_range()

    @traitlets.observe("colormap")
    def _on_colormap(self, change: dict[str, Any]) -> None:
        if change["new"] == "diverging":
            self.symmetric = True

    def _channel_count(self) -> int:
        return self._store.shape(self.layer)[1] if self.layer in self._store else 0

    def _close_channel_if_out_of_range(self) -> None:
        if self.channel is not None and self.channel >= self._channel_count():
            self.channel = None

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("this FeatureMapWidget is closed; create a new one")

    def _require_model(self, action: str) -> None:
        self._require_open()
        if self._model is None:
            raise RuntimeError(
                f"{action}, and this widget has none: it shows precomputed activations "
                "(FeatureMapWidget.from_activations); build a new one from new activations"
            )

    def _require_data(self) -> ActivationStore:
        self._require_open()
        if self._store is None:
            raise RuntimeError(
                f"no activations: the last re-run failed ({self.status['message']}); "
                "assign new inputs to try again"
            )
        return self._store

    # -- requests ---------------------------------------------------------------------------

    def _on_msg(self, _widget: Any, content: Any, _buffers: Sequence[Any]) -> None:
        request_id = content.get("id") if isinstance(content, dict) else None
        kind = content.get("kind") if isinstance(content, dict) else None
        try:
            reply = self._serve(content)
        except (_BadRequest, _StaleCapture, UnknownLayerError) as error:
            reply = wire.encode_error(request_id, kind, str(error))
        except Exception as error:
            _log.exception("fmwidget: request %r failed", content)
            reply = wire.encode_error(request_id, kind, f"{type(error).__name__}: {error}")
        try:
            self.send(*reply)
        except Exception:
            _log.exception("fmwidget: could not send the reply to request %r", request_id)

    def _serve(self, content: Any) -> tuple[dict[str, Any], list[memoryview]]:
        if not isinstance(content, dict) or content.get("type") != "request":
            got = reprlib.repr(content)
            raise _BadRequest(f"not a request: expected {{type: 'request', ...}}, got {got}")
        request_id = content.get("id")
        if not isinstance(request_id, int) or isinstance(request_id, bool) or request_id <= 0:
            raise _BadRequest(f"request id must be a positive integer, got {request_id!r}")
        handler = self._handlers().get(content.get("kind"))
        if handler is None:
            raise _BadRequest(
                f"unknown request kind {content.get('kind')!r}; "
                f"expected one of {', '.join(self._handlers())}"
            )
        if self._store is None:
            raise _BadRequest("the widget has no data: it was closed or its last re-run failed")
        _int_field(content, "revision")
        meta, arrays = handler(content)
        meta["revision"] = self.revision
        return wire.encode_reply(request_id, content["kind"], meta, arrays)

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], tuple[dict, dict]]]:
        return {
            "layer": self._serve_layer,
            "channel": self._serve_channel,
            "input": self._serve_input,
            "gradcam": self._serve_gradcam,
            "ablate": self._serve_ablate,
        }

    def _serve_layer(self, request: dict[str, Any]) -> tuple[dict, dict]:
        name, sample = self._layer_field(request), self._sample_field(request)
        count = self._store.shape(name)[1]
        channels = request.get("channels")
        if channels is not None:
            if not isinstance(channels, list) or not channels:
                raise _BadRequest(f"channels must be a non-empty list, got {channels!r}")
            for channel in channels:
                _check_channel(channel, name, count)
        max_values = request.get("max_values", wire.DEFAULT_MAX_VALUES)
        wanted = count if channels is None else len(channels)
        if not isinstance(max_values, int) or isinstance(max_values, bool) or max_values < wanted:
            raise _BadRequest(
                f"max_values must be an integer of at least {wanted} (one value per channel "
                f"asked for), got {max_values!r}"
            )
        maps = self._store.maps(name)
        meta, arrays = wire.layer_payload(
            maps[sample],
            self._store.stats(name, sample),
            self._store.flags(name),
            max_values=max_values,
            channels=channels,
        )
        if self.group_pair:
            effect, meta["groups"] = self._group_effect(maps)
            arrays["effect"] = effect if channels is None else effect[channels]
        return {"layer": name, "sample": sample, **meta}, arrays

    def _group_effect(self, maps: torch.Tensor) -> tuple[np.ndarray, dict[str, Any]]:
        """Cohen's d per channel between the two groups of ``group_pair``, and ``meta.groups``."""
        pair = tuple(self.group_pair)
        diff = group_differences(maps, self.groups, top_k=1, pair=pair)
        labels = list(dict.fromkeys(self.groups))
        info = {
            "pair": list(pair),
            "counts": {label: self.groups.count(label) for label in labels},
            "examples": {
                label: [i for i, g in enumerate(self.groups) if g == label] for label in labels
            },
        }
        return diff.effect.float().cpu().numpy(), info

    def _serve_channel(self, request: dict[str, Any]) -> tuple[dict, dict]:
        name, sample = self._layer_field(request), self._sample_field(request)
        channel = request.get("channel")
        _check_channel(channel, name, self._store.shape(name)[1])
        kernel, rgb = self._filter(name, channel)
        meta, arrays = wire.channel_payload(self._store.maps(name)[sample, channel], kernel)
        return {"layer": name, "sample": sample, "channel": channel, "rgb": rgb, **meta}, arrays

    def _serve_input(self, request: dict[str, Any]) -> tuple[dict, dict]:
        sample = self._sample_field(request)
        try:
            picture = self.input_image(sample)
        except ValueError as error:
            raise _BadRequest(str(error)) from error
        meta, arrays = wire.image_payload(picture)
        return {"sample": sample, **meta}, arrays

    def _serve_gradcam(self, request: dict[str, Any]) -> tuple[dict, dict]:
        name, sample = self._layer_field(request), self._sample_field(request)
        if self._model is None:
            raise _BadRequest(
                "Grad-CAM needs the model, and this widget shows precomputed activations"
            )
        # The request's method and target win; without them, the `cam_method` and `target` traits.
        method = request.get("method", self.cam_method)
        if method not in self.cam_methods:
            raise _BadRequest(_unknown_cam_method(method, self.cam_methods))
        target = request.get("target", self.target)
        if target is not None:
            try:
                _check_target(target, self._classes)
            except ValueError as error:
                raise _BadRequest(str(error)) from error
        key = (name, target, method)
        result = self._gradcam_cache.get(key)
        if result is None:
            result = self._cam_maps(name, target, method)
            self._gradcam_cache[key] = result
        used = None if result.target is None else int(result.target[sample])
        meta, arrays = wire.gradcam_payload(result.heatmap[sample], result.weights[sample])
        label = None if used is None else self._label(used)
        meta.update(
            layer=name,
            sample=sample,
            target=used,
            label=label,
            method=method,
            normalized=result.normalized,
        )
        return meta, arrays

    def _cam_maps(self, name: str, target: int | None, method: str) -> _CamMaps:
        """The maps of ``method`` at layer ``name`` for the whole batch (cached by the caller)."""
        if method == "gradcam":
            try:
                ours = gradcam_layer(self._model, self._inputs, name, target=target)
            except ValueError as error:
                raise _BadRequest(str(error)) from error
            return _CamMaps(ours.heatmap, ours.weights, ours.target, normalized=False)
        info = self._store.info(name)
        if info.call != 1 or name != (info.module_name or ROOT_NAME):
            what = (
                f"call {info.call} of module {info.module_name!r}"
                if info.call != 1
                else f"a tensor inside the output of module {info.module_name!r}"
            )
            raise _BadRequest(
                f"{_CAM_LABELS.get(method, method)} hooks whole modules, so it needs a module's "
                f"first call with a tensor output; layer {name!r} is {what}. Pick another layer, "
                "or Grad-CAM (ours), which handles both"
            )
        if target is None:
            if self._classes is None:
                raise _BadRequest(
                    f"{_CAM_LABELS.get(method, method)} explains a class score, and the model "
                    "does not output (N, classes) scores"
                )
            # The predicted class, named explicitly so the reply can say which class it was.
            targets = self._output.argmax(dim=1).tolist()
        else:
            targets = [target] * self.num_samples
        try:
            # Score-CAM reports progress with tqdm on stderr: in a notebook that would print bars
            # into whichever cell ran last.
            with contextlib.redirect_stderr(io.StringIO()):
                heatmap = gradcam(self._model, self._inputs, name, targets, method=method)
        except (ValueError, TypeError, ImportError) as error:
            raise _BadRequest(str(error)) from error
        weights = heatmap.new_zeros((heatmap.shape[0], 0))
        return _CamMaps(heatmap.float(), weights, targets, normalized=True)

    def _serve_ablate(self, request: dict[str, Any]) -> tuple[dict, dict]:
        """The view's "Ablate selected": :meth:`ablate` with the request's layer and channels."""
        layer, channels = request.get("layer"), request.get("channels")
        if layer is not None:
            layer = self._layer_field(request)
        if channels is not None and not isinstance(channels, list):
            raise _BadRequest(f"channels must be a list of channel indices, got {channels!r}")
        try:
            self.ablate(layer, channels)
        except (ValueError, TypeError, RuntimeError) as error:
            raise _BadRequest(str(error)) from error
        # The result travels in the `ablation` trait, sent before this reply.
        return {"layer": self.ablation["layer"], "channels": self.ablation["channels"]}, {}

    def _layer_field(self, request: dict[str, Any]) -> str:
        name = request.get("layer")
        if not isinstance(name, str):
            raise _BadRequest(f"request needs 'layer' (a layer name), got {name!r}")
        if name not in self._store:
            raise UnknownLayerError(name, self._store.names)
        return name

    def _sample_field(self, request: dict[str, Any]) -> int:
        sample = _int_field(request, "sample")
        if not 0 <= sample < self.num_samples:
            raise _BadRequest(
                f"sample {sample} is out of range for a batch of {self.num_samples} inputs"
            )
        return sample

    def _filter(self, name: str, channel: int) -> tuple[torch.Tensor | None, bool]:
        """The conv kernel that produced ``channel`` of layer ``name``, and whether it reads RGB."""
        meta = self._store.meta(name)
        if not meta["filter"]:
            return None, False
        conv = name if meta["type"] == "Conv2d" else meta["pre"]
        info = self._store.info(conv)
        weight = getattr(self._model.get_submodule(info.module_name), "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
            return None, False
        if weight.shape[0] != meta["shape"][1]:
            return None, False
        rgb = weight.shape[1] == 3 and info.input_from is None
        return weight[channel].detach(), rgb


#: How the view names each CAM method (also in error messages).
_CAM_LABELS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "xgradcam": "XGrad-CAM",
    "layercam": "LayerCAM",
    "scorecam": "Score-CAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "Eigen-Grad-CAM",
    "hirescam": "HiResCAM",
    "gradcam-elementwise": "Grad-CAM element-wise",
}


def _unknown_cam_method(method: Any, available: Sequence[str]) -> str:
    hint = "" if len(available) > 1 else " (pip install grad-cam adds Grad-CAM++, Score-CAM, ...)"
    return f"unknown CAM method {method!r}; this widget offers {', '.join(available)}{hint}"


def _int_field(request: Mapping[str, Any], key: str) -> int:
    value = request.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _BadRequest(f"request needs {key!r} (an integer), got {value!r}")
    return value


def _check_channel(channel: Any, layer: str, count: int) -> None:
    if not isinstance(channel, int) or isinstance(channel, bool) or not 0 <= channel < count:
        raise _BadRequest(
            f"channel {channel!r} is out of range: layer {layer!r} has {count} channels"
        )


def _channel_list(channels: Any) -> list[int]:
    """``channels`` (ints, an int tensor or array) as a list; floats are refused, not rounded."""
    values = channels.tolist() if hasattr(channels, "tolist") else list(channels)
    try:
        return [operator.index(c) for c in values]
    except TypeError:
        raise TypeError(f"channels must be channel indices (ints), got {values!r}") from None


def _check_target(target: Any, classes: int | None) -> None:
    if not isinstance(target, int) or isinstance(target, bool):
        raise ValueError(f"target must be a class index or None, got {target!r}")
    if classes is not None and not 0 <= target < classes:
        raise ValueError(
            f"target class {target} is out of range: the model outputs {classes} classes"
        )


def _group_labels(groups: Sequence[Hashable], num_samples: int) -> list[str]:
    labels = [str(g) for g in (groups.tolist() if hasattr(groups, "tolist") else groups)]
    if len(labels) != num_samples:
        raise ValueError(f"groups= has {len(labels)} labels for a batch of {num_samples} inputs")
    if len(set(labels)) < 2:
        raise ValueError(f"groups= needs at least two different labels, got {sorted(set(labels))}")
    return labels


def _images_per_sample(image: Any, num_samples: int) -> list[np.ndarray]:
    """Turn ``image=`` into one RGB uint8 picture per sample."""
    if isinstance(image, torch.Tensor):
        pictures = list(image) if image.dim() == 4 else [image]
        return _one_per_sample([_tensor_picture(p) for p in pictures], num_samples)
    if isinstance(image, np.ndarray):
        # (N, H, W, C) and (N, H, W) are batches; (H, W, 1|3|4) and (H, W) one picture.
        batch = image.ndim == 4 or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4))
        pictures = list(image) if batch else [image]
        return _one_per_sample([_array_picture(p) for p in pictures], num_samples)
    if isinstance(image, (list, tuple)):
        return _one_per_sample([_images_per_sample(p, 1)[0] for p in image], num_samples)
    if hasattr(image, "convert"):
        return _one_per_sample([np.asarray(image.convert("RGB"))], num_samples)
    raise TypeError(
        "image= must be a PIL image, an array, a tensor or a list of them; "
        f"got {type(image).__name__}"
    )


def _one_per_sample(pictures: list[np.ndarray], num_samples: int) -> list[np.ndarray]:
    if len(pictures) != num_samples:
        raise ValueError(
            f"image= holds {len(pictures)} picture(s) but the batch has {num_samples} inputs"
        )
    return pictures


def _array_picture(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image array must be (H, W), (H, W, 1|3|4); got {array.shape}")
    return _to_rgb8(array[:, :, :3])


def _tensor_picture(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(f"an image tensor must be (1|3, H, W); got {tuple(tensor.shape)}")
    pixels = tensor.detach().cpu()
    if pixels.is_floating_point():
        # numpy has no bfloat16.
        pixels = pixels.float()
    return _to_rgb8(pixels.permute(1, 2, 0).numpy())


def _input_picture(inputs: Any, sample: int) -> np.ndarray:
    """The sample's input as RGB uint8, from the first (N, 1|3, H, W) tensor among ``inputs``."""
    if isinstance(inputs, torch.Tensor):
        candidates = [inputs]
    elif isinstance(inputs, Mapping):
        candidates = list(inputs.values())
    elif isinstance(inputs, (list, tuple)):
        candidates = list(inputs)
    else:
        candidates = []
    for tensor in candidates:
        if isinstance(tensor, torch.Tensor) and tensor.dim() == 4 and tensor.shape[1] in (1, 3):
            return _tensor_picture(tensor[sample])
    raise ValueError(
        "the inputs hold no image batch (N, 1 or 3, H, W) to show; pass image= to the widget"
    )


def _to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 1|3) pixels as RGB uint8: uint8 kept, [0, 1] floats scaled, others min–max scaled."""
    if pixels.dtype != np.uint8:
        values = pixels.astype(np.float32)
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        span = hi - lo if hi > lo else 1.0
        values = np.nan_to_num((values - lo) / span, nan=0.0, posinf=1.0, neginf=0.0)
        pixels = (np.clip(values, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels)


class _Recompute:
    """The store's recompute callback: one forward capturing just the evicted layer.

    That gives the captured values only for the model and inputs as they were at the capture: it
    refuses, naming the cause and the fix, once training flags, inputs or weights changed.
    """

    def __init__(self, model: nn.Module, inputs: Any) -> None:
        self._model = model
        self._inputs = inputs
        self._flags = _training_flags(model)
        self._inputs_seen, self._weights_seen = self._versions()

    def __call__(self, name: str) -> torch.Tensor:
        inputs_now, weights_now = self._versions()
        again = "assign w.inputs = ... to re-run the model as it is now"
        if _training_flags(self._model) != self._flags:
            cause = (
                "the model was switched to training mode since (model.train()), where dropout "
                "and batch statistics give other values and BatchNorm's running statistics "
                "would move"
            )
            fix = f"call model.eval() to go back, or {again}"
        elif inputs_now != self._inputs_seen:
            cause, fix = "the inputs were changed in place since", again
        elif weights_now != self._weights_seen:
            cause = (
                "the model's parameters or buffers were changed since (an optimizer step, "
                "load_state_dict, ...)"
            )
            fix = again
        else:
            maps = capture(self._model, self._inputs, [name])[name]
            # A model may change its own inputs in place; that is not a change by the user.
            self._inputs_seen, self._weights_seen = self._versions()
            return maps
        raise _StaleCapture(
            f"layer {name!r} was dropped to stay within budget_bytes, and recomputing it would "
            f"not give the captured values: {cause}; {fix}"
        )

    def _versions(self) -> tuple[tuple[int, ...], int]:
        """Version counters of the input tensors, and their sum over parameters and buffers:
        every in-place change (an optimizer step, ``load_state_dict``) moves them."""
        tensors = itertools.chain(self._model.parameters(), self._model.buffers())
        inputs = tuple(_version(t) for _, t in _tensors_in(self._inputs, ""))
        return inputs, sum(_version(t) for t in tensors)


def _training_flags(model: nn.Module) -> tuple[bool, ...]:
    return tuple(module.training for module in model.modules())


def _version(tensor: torch.Tensor) -> int:
    # Inference tensors keep no version counter; they cannot be changed outside inference mode.
    return 0 if tensor.is_inference() else tensor._version
