"""The anywidget class: synced traits, request handling, re-running on new inputs.

The browser asks for data with custom messages (``docs/protocol.md``); every request gets exactly
one reply, built by :mod:`fmwidget.wire` from what :class:`fmwidget.store.ActivationStore` holds.
Short requests are served on the kernel's thread; long ones (Grad-CAM, ablation) on a worker thread,
with progress and cancel (:mod:`fmwidget.tasks`). Handlers never wait for the browser.

Example:
    >>> import torch, torchvision
    >>> model = torchvision.models.resnet18().eval()
    >>> w = FeatureMapWidget(model, torch.randn(2, 3, 64, 64), layer="layer1.0.conv1")
    >>> w.num_samples, w.layers[0]["name"]
    (2, 'conv1')
    >>> w.close()
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import torch
import traitlets
from torch import nn

from fmwidget import allocator, export, router, tasks
from fmwidget.ablation import AblationFeature
from fmwidget.calling import any_training
from fmwidget.capture import CaptureReport, LayerSelector
from fmwidget.dataset import DatasetContext, ScanFeature
from fmwidget.files import load
from fmwidget.gradcam import CAM_METHODS
from fmwidget.groups import check_group_pair
from fmwidget.inputs import model_inputs
from fmwidget.picture import with_picture
from fmwidget.scan import Scan
from fmwidget.session import CapturedLayers, Session, Source
from fmwidget.session import from_activations as session_from_activations
from fmwidget.steps import StepFeature
from fmwidget.validation import (
    check_cam_method,
    check_channel,
    check_channels,
    check_frame,
    check_options,
    check_sample,
    check_target,
    trait_check,
)

__all__ = ["CapturedLayers", "FeatureMapWidget"]

_STATIC = Path(__file__).parent / "static"
_log = logging.getLogger(__name__)

COLORMAPS = ("gray", "viridis", "magma", "diverging")
SCALES = ("channel", "layer", "global")
SORTS = (
    "index",
    "mean",
    "max",
    "zeros",
    "gradcam",
    "effect",
    # Over the widget's dataset scan (fmwidget.scan): mean, max and active fraction per channel,
    # selectivity for `scan_label`, and Cohen's d between the two labels of `scan_pair`.
    "dataset_mean",
    "dataset_max",
    "dataset_active",
    "selectivity",
    "dataset_effect",
)
# Traits only the kernel writes: a constructor argument for them would be silently overwritten.
_KERNEL_TRAITS = (
    "num_samples",
    "revision",
    "status",
    "predictions",
    "ablation",
    "cam_methods",
    "scan_info",
    "steps",
    "now_label",
    "training",
    "frames",
)


class FeatureMapWidget(StepFeature, ScanFeature, AblationFeature, anywidget.AnyWidget):
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
        checkpoints: the model's weights at several points of training (state dicts, or paths
            read with ``weights_only=True``; a list, or a dict label → checkpoint): ``step``
            (default: the last) picks the one shown, and everything follows it; the model keeps
            its own weights. :meth:`refresh` and :meth:`record` show a training run live.
        preprocess: for ``inputs`` given as images (file paths, PIL images, numpy arrays; see
            :func:`fmwidget.to_batch`), what turns each into the model's ``(C, H, W)`` tensor, e.g.
            a torchvision weights' ``transforms()``; the view then shows the images themselves.
        cam_method: the Grad-CAM panel's method: ``"gradcam"`` (ours, with per-channel weights)
            or, where the ``grad-cam`` package is installed, a key of
            :data:`fmwidget.gradcam.CAM_METHODS` (``"gradcam++"``, ``"scorecam"``, ...);
            ``cam_methods`` lists what this widget offers. Score-CAM is slow: one forward per
            channel of the layer and input (:data:`fmwidget.gradcam.CHANNEL_COST`); the view
            says so, shows its progress and can cancel it.
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
    predictions = traitlets.List(traitlets.List(traitlets.Dict())).tag(sync=True)
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
    # The model ran in training mode (BatchNorm used batch statistics): the view says so.
    training = traitlets.Bool(False).tag(sync=True)
    # The view's long job (fmwidget.tasks): {id, label, done, total, unit, elapsed}, or None.
    task = traitlets.Dict(allow_none=True).tag(sync=True)
    # Video models: the input frame shown (each re-runs the model) and the clip's length (0:
    # no video layer).
    frame = traitlets.Int(0).tag(sync=True)
    frames = traitlets.Int(0).tag(sync=True)

    _preprocess: Callable[[Any], Any] | None = None

    @traitlets.default("ablation")
    def _no_ablation(self) -> None:
        # A Dict trait's default is {}; the protocol says null until the first ablation.
        return None

    @traitlets.default("task")
    def _no_task(self) -> None:
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
        scan: Scan | None = None,
        dataset: Any = None,
        checkpoints: Any = None,
        preprocess: Callable[[Any], Any] | None = None,
        colormap: str = "gray",
        scale: str = "channel",
        layer: str | None = None,
        height: int = 520,
        **kwargs: Any,
    ) -> None:
        view = self._checked_options(colormap, scale, height, layer, kwargs)
        inputs, pictures = model_inputs(model, inputs, preprocess)
        self._preprocess = preprocess
        first = self._first_step(model, checkpoints, view)
        source = Source(first, layers, labels, budget_bytes, frame=view.get("frame", 0))
        self._source: Source | None = source
        # Checked before the model runs (fingerprinting the model once).
        context = None if scan is None else DatasetContext.checked(scan, dataset, model)
        shown = pictures if image is None else image
        self._open(partial(source.run, inputs, shown, groups), layer, view)
        self._steps_ready = True
        if context is not None:
            self._set_datasets(context)

    @classmethod
    def from_activations(
        cls,
        activations: Mapping[str, torch.Tensor] | str | os.PathLike[str],
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
        passed. ``image``, ``groups`` and the view options are as for the constructor. A path
        reads a capture saved with ``Capture.save`` (``fmwidget.load``), with its pictures and
        class names: a teacher can ship activations without the model.

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
        if isinstance(activations, (str, os.PathLike)):
            activations = load(activations)
        widget = cls.__new__(cls)
        view = widget._checked_options(colormap, scale, height, layer, kwargs)
        widget._source = None
        build = partial(
            session_from_activations,
            activations,
            output=output,
            labels=labels,
            image=image,
            groups=groups,
        )
        widget._open(build, layer, view)
        return widget

    def _checked_options(
        self, colormap: str, scale: str, height: int, layer: str | None, extra: dict[str, Any]
    ) -> dict[str, Any]:
        """The view options, checked before the model runs (``colormap="jet"`` fails at once)."""
        view = dict(colormap=colormap, scale=scale, height=height, **extra)
        check_options(self, view if layer is None else {**view, "layer": layer}, _KERNEL_TRAITS)
        return view

    def _open(self, build: Callable[[], Session], layer: str | None, view: dict[str, Any]) -> None:
        """Build the first session, then start the widget (ipywidgets' constructor) on it."""
        self._incoming: set[str] = set()
        try:
            self._session = build()
            state = self._session.trait_state()
            if "group_pair" in view:
                # The user's pair wins over the default; its validator checks it.
                del state["group_pair"]
            methods = _available_cam_methods() if self._session.model is not None else ["gradcam"]
            super().__init__(
                **{**view, **state, "layer": layer or state["layer"], "revision": 1},
                cam_methods=methods,
                training=self._ran_in_training(),
            )
        except BaseException:
            # anywidget keeps every instance alive (its file watcher holds a callback bound to
            # it), failed ones too: nothing big may stay behind.
            self._release()
            raise
        self.on_msg(self._on_msg)

    # -- public API -------------------------------------------------------------------------

    @property
    def model(self) -> nn.Module | None:
        """The model the widget shows (``None`` after :meth:`close`, or without one:
        :meth:`from_activations`). With steps it is the user's model; the widget shows each
        step through a copy (:mod:`fmwidget.steps`)."""
        if self._source is None:
            return None
        return self._source.model if self._steps is None else self._steps.model

    @property
    def session(self) -> Session:
        """What the last capture owns (its store, report, output, inputs, pictures)."""
        return self._session

    @property
    def inputs(self) -> Any:
        """The inputs of the last capture; assigning new ones re-runs the model on them."""
        return self._session.inputs

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
        return CapturedLayers(self._session.require())

    @property
    def report(self) -> CaptureReport:
        """What was captured, what was skipped and why (``CaptureReport``)."""
        return self._session.require().report

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
        model = self._require_model("assigning new inputs re-runs the model").model
        inputs, pictures = model_inputs(model, inputs, self._preprocess)
        self._rerun(inputs, image=pictures if image is None else image, groups=groups)

    def _rerun(
        self,
        inputs: Any,
        *,
        image: Any,
        groups: Sequence[Hashable] | None,
        push: Callable[[int], None] | None = None,
        traits: Mapping[str, Any] | None = None,
    ) -> None:
        """Capture ``inputs`` into a new session and show it; ``push(revision)`` runs between
        the capture and the trait updates (a live refresh sends the shown layer there), and
        ``traits`` are set together with the new capture's."""
        source = self._require_model("assigning new inputs re-runs the model")
        self._model_for_run()
        if push is None:
            # A live refresh stays quiet: a busy banner would flash at every training step.
            self.status = {"state": "busy", "message": "running the model"}
        worker = self.__dict__.get("_worker")
        if worker is not None:
            # A job of the view reads the session about to go, and runs the same model.
            worker.cancel_all()
        # The buffers are about to be overwritten: the old session's tensors may live in them.
        self._session.close("the widget is re-running the model")
        # What the old session held goes back to the system before the new capture's peak.
        allocator.trim()
        try:
            self._session = source.run(inputs, image, groups)
        except Exception as error:
            message = f"re-running the model failed: {error}"
            self._session.close(
                f"no activations: the last re-run failed ({message}); "
                "assign new inputs to try again"
            )
            self.status = {"state": "error", "message": message}
            raise
        state = self._session.trait_state()
        state["training"] = self._ran_in_training()
        if self.layer in self._session.store:
            state["layer"] = self.layer
        revision = self.revision + 1
        if push is not None:
            push(revision)
        with self.hold_sync(), self.hold_trait_notifications():
            self.sample = min(self.sample, state["num_samples"] - 1)
            self.revision = revision
            # An ablation describes the previous inputs.
            self.set_trait("ablation", None)
            for name, value in {**state, **(traits or {})}.items():
                setattr(self, name, value)
        self._close_channel_if_out_of_range()

    def input_image(self, sample: int | None = None) -> np.ndarray:
        """The input of ``sample`` (default: the shown one) as the view shows it, ``(H, W, 3)``
        uint8: the ``image=`` picture, else the input tensor rescaled.

        Example:
            >>> w.input_image(0).shape  # doctest: +SKIP
            (64, 64, 3)
        """
        return self._session.require().input_image(self.sample if sample is None else sample)

    def save_html(
        self, path: str | os.PathLike[str], layers: str | Sequence[str] | None = None
    ) -> Path:
        """Write the view to one HTML file that works offline, without a kernel.

        ``layers``: ``None`` (the shown layer and its neighbours, within 8 MB), ``"all"`` (up to
        64 MB of activations) or layer names; see :mod:`fmwidget.export`.

        Example:
            >>> w.save_html("view.html", layers="all")  # doctest: +SKIP
        """
        return export.save_html(self, path, layers)

    def close(self) -> None:
        """Close the view and free every activation; the widget lets go of the model."""
        self._release()
        super().close()

    def _release(self) -> None:
        """Drop the activations, the model and the inputs (on close, or a failed constructor)."""
        worker = self.__dict__.pop("_worker", None)
        if worker is not None:
            # Before the session goes: the job may be reading it.
            worker.close()
        session = getattr(self, "_session", None)
        if session is not None:
            session.close("this FeatureMapWidget is closed; create a new one")
        self._source = None
        self._steps = None

    # -- trait validation: each check lives in fmwidget.validation or fmwidget.groups -----------

    @traitlets.validate("layer")
    def _valid_layer(self, proposal: dict[str, Any]) -> str:
        return self._checked(self._session.store.check_name, proposal)

    @traitlets.validate("channel")
    def _valid_channel(self, proposal: dict[str, Any]) -> int | None:
        if proposal["value"] is None:
            return None
        count = self._channel_count()
        return self._checked(check_channel, proposal, self.layer, count, hint=_CLOSES)

    @traitlets.validate("sample")
    def _valid_sample(self, proposal: dict[str, Any]) -> int:
        return self._checked(check_sample, proposal, self._session.num_samples)

    @traitlets.validate("selected")
    def _valid_selected(self, proposal: dict[str, Any]) -> list[int]:
        count = self._channel_count()
        return self._checked(check_channels, proposal, self.layer, count, "selected channels")

    @traitlets.validate("frame")
    def _valid_frame(self, proposal: dict[str, Any]) -> int:
        return self._checked(check_frame, proposal, self._session.frames)

    @traitlets.observe("frame")
    def _on_frame(self, change: dict[str, Any]) -> None:
        source = self._source
        if source is None or change["new"] == source.frame or not self._steps_ready:
            return
        # Every layer follows the frame: the model runs again, as for another step.
        source.frame = change["new"]
        self._rerun_same()

    @traitlets.validate("target")
    def _valid_target(self, proposal: dict[str, Any]) -> int | None:
        return self._checked(check_target, proposal, self._session.classes)

    @traitlets.validate("cam_method")
    def _valid_cam_method(self, proposal: dict[str, Any]) -> str:
        return self._checked(check_cam_method, proposal, self.cam_methods, always=True)

    @traitlets.validate("group_pair")
    def _valid_group_pair(self, proposal: dict[str, Any]) -> list[str]:
        return self._checked(check_group_pair, proposal, self.groups, always=True)

    def _checked(
        self,
        check: Callable[..., Any],
        proposal: dict[str, Any],
        *args: Any,
        hint: str = "",
        always: bool = False,
    ) -> Any:
        """What depends on the data is not checked once the widget is closed (there is none)."""
        if self._session.closed and not always:
            return proposal["value"]
        return trait_check(check, proposal["value"], *args, hint=hint)

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

    @traitlets.observe("layer")
    def _on_layer(self, change: dict[str, Any]) -> None:
        # Channel numbers belong to a layer: a selection made in the old one means nothing here,
        # unless the browser sent the new selection together with the new layer.
        if change["old"] != change["new"] and "selected" not in self._incoming:
            self.selected = []
        self._close_channel_if_out_of_range()

    # True while `symmetric` is on only because the colormap became diverging: leaving diverging
    # then turns it off again; a symmetric the user set (before or during diverging) stays.
    _symmetric_by_diverging = False

    @traitlets.observe("colormap")
    def _on_colormap(self, change: dict[str, Any]) -> None:
        if change["new"] == "diverging" and not self.symmetric:
            self.symmetric = True
            self._symmetric_by_diverging = True
        elif change["old"] == "diverging" and self._symmetric_by_diverging:
            self.symmetric = False

    @traitlets.observe("symmetric")
    def _on_symmetric(self, change: dict[str, Any]) -> None:
        # Runs before `_on_colormap` sets the flag, so only the user's own changes clear it.
        self._symmetric_by_diverging = False

    def _channel_count(self) -> int:
        store = self._session.store
        return store.shape(self.layer)[1] if self.layer in store else 0

    def _close_channel_if_out_of_range(self) -> None:
        if self.channel is not None and self.channel >= self._channel_count():
            self.channel = None

    def _ran_in_training(self) -> bool:
        """Whether the model of the last capture had a module in training mode."""
        model = self._session.model
        return model is not None and any_training(model)

    def _require_model(self, action: str) -> Source:
        if self._source is None and self._session.closed:
            raise RuntimeError(self._session.closed_because)
        if self._source is None:
            raise RuntimeError(
                f"{action}, and this widget has none: it shows precomputed activations "
                "(FeatureMapWidget.from_activations); build a new one from new activations"
            )
        return self._source

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The live view, plus a picture and a line of text for where widgets do not render."""
        view = (self.layer, self.sample, self.colormap, self.scale, self.symmetric)
        return with_picture(super()._repr_mimebundle_(**kwargs), self._session, *view)

    def _on_msg(self, _widget: Any, content: Any, _buffers: Sequence[Any]) -> None:
        worker = self.__dict__.get("_worker")
        if worker is None:
            # Long requests run on this worker's thread, so `cancel` reaches them (fmwidget.tasks).
            worker = self._worker = tasks.Worker(self._send_reply, partial(self.set_trait, "task"))
        router.receive(self, content, lambda: self.revision, worker, self._send_reply)

    def _send_reply(self, reply: tuple[dict[str, Any], list[Any]]) -> None:
        try:
            self.send(*reply)
        except Exception:
            _log.exception("fmwidget: could not send the reply to request %r", reply[0].get("id"))


_CLOSES = "; None closes the channel view"


def _available_cam_methods() -> list[str]:
    """Our Grad-CAM, plus the grad-cam package's methods where it is installed."""
    # find_spec does not import the package (it pulls in OpenCV): widgets stay quick to create.
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        return ["gradcam"]
    return ["gradcam", *CAM_METHODS]
