"""What one capture owns, and how a widget makes one.

A :class:`Session` holds everything that belongs to one run of the model on one batch: the
activation store, the capture report, the model's output and predictions, the inputs and their
pictures, the group labels and the Grad-CAM maps computed so far. A widget always has exactly one;
re-running on new inputs replaces it, and closing the widget closes it (after which it says why it
has nothing to serve). A :class:`Source` is what outlives sessions: the model, which layers to
capture, the class names, the memory budget and the buffers reused across runs.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).eval()
    >>> session = Source(model).run(torch.randn(2, 3, 8, 8))
    >>> session.num_samples, session.store.names
    (2, ['0'])
    >>> session.close("closed by the example")
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from fmwidget.calling import (
    any_training,
    input_clip,
    rebuild,
    tensors_in,
    training_flags,
    versions,
)
from fmwidget.capture import (
    CaptureBuffers,
    CaptureReport,
    LayerInfo,
    LayerSelector,
    capture,
    capture_layer,
)
from fmwidget.gradcam import top_classes
from fmwidget.groups import default_pair, group_labels
from fmwidget.images import input_picture, pictures_per_sample
from fmwidget.store import ActivationStore, LayerIntake, precomputed

__all__ = ["CamMaps", "CapturedLayers", "Session", "Source", "StaleCapture"]

#: How many predictions per sample the view gets.
TOP_PREDICTIONS = 5
#: How many (layer, target, method) Grad-CAM results a session keeps.
CAM_CACHE_ENTRIES = 16


class StaleCapture(RuntimeError):
    """An evicted layer cannot be recomputed: the model or its inputs changed since the capture."""


class CamMaps(NamedTuple):
    """A CAM method's maps for the whole batch, as the ``gradcam`` request serves them."""

    heatmap: torch.Tensor  # (N, H, W)
    weights: torch.Tensor  # (N, C) for our Grad-CAM; (N, 0) for methods without channel weights
    target: list[int] | None
    normalized: bool  # scaled to [0, 1] per image (the grad-cam package's methods)


@dataclass
class Session:
    """One capture: its activations and everything the view shows next to them."""

    store: ActivationStore
    report: CaptureReport
    output: Any
    inputs: Any
    model: nn.Module | None
    labels: list[str] | None
    num_samples: int
    images: list[np.ndarray] | None = None
    groups: list[str] = field(default_factory=list)
    predictions: list[list[dict[str, Any]]] = field(default_factory=list)
    classes: int | None = None
    pool: CaptureBuffers | None = None
    # Video: the input frame shown and how many the clip has (0: no video layer).
    frame: int = 0
    frames: int = 0
    # (layer, target, method, sample): sample is None for maps of the whole batch.
    cams: OrderedDict[tuple[str, int | None, str, int | None], CamMaps] = field(
        default_factory=OrderedDict
    )
    closed_because: str | None = None

    @classmethod
    def adopt(
        cls,
        store: ActivationStore,
        *,
        report: CaptureReport,
        output: Any,
        inputs: Any = None,
        model: nn.Module | None = None,
        labels: Sequence[str] | None = None,
        image: Any = None,
        groups: Sequence[Hashable] | None = None,
        pool: CaptureBuffers | None = None,
        frame: int = 0,
    ) -> Session:
        """A session serving ``store``; checks ``image=``, ``groups=`` and ``labels=``."""
        if not len(store):
            raise ValueError(f"every captured layer has empty maps: {store.skipped}")
        num_samples = store.shape(store.names[0])[0]
        names = None if labels is None else [str(label) for label in labels]
        predictions, classes = _predictions(output, num_samples, names)
        return cls(
            store=store,
            report=report,
            output=output,
            inputs=inputs,
            model=model,
            labels=names,
            num_samples=num_samples,
            images=None if image is None else pictures_per_sample(image, num_samples),
            groups=[] if groups is None else group_labels(groups, num_samples),
            predictions=predictions,
            classes=classes,
            pool=pool,
            frame=frame,
            frames=clip_length(inputs, report),
        )

    # -- what the view is told ---------------------------------------------------------------

    def trait_state(self) -> dict[str, Any]:
        """The kernel-owned trait values this session gives the widget."""
        metas = self.store.layers_meta()
        return {
            "layers": metas,
            "layer": metas[0]["name"],
            "num_samples": self.num_samples,
            "predictions": self.predictions,
            "status": {"state": "ready", "message": ""},
            "groups": self.groups,
            "group_pair": default_pair(self.groups),
            "frames": self.frames,
            "frame": self.frame,
        }

    def label(self, index: int | None) -> str | None:
        """The class name of ``index`` (``None`` without ``labels=``)."""
        return None if self.labels is None or index is None else self.labels[index]

    def input_image(self, sample: int) -> np.ndarray:
        """The input of ``sample`` as the view shows it, ``(H, W, 3)`` uint8."""
        if not 0 <= sample < self.num_samples:
            raise IndexError(
                f"sample {sample} is out of range: the batch has {self.num_samples} inputs"
            )
        if self.images is not None:
            return self.images[sample]
        return input_picture(self.inputs, sample, self.frame)

    def cam(
        self, key: tuple[str, int | None, str, int | None], compute: Callable[[], CamMaps]
    ) -> CamMaps:
        """The CAM maps of ``key`` (layer, target, method, and the sample for maps of one sample
        only), computed once and kept (LRU)."""
        found = self.cams.get(key)
        if found is None:
            found = compute()
            self.cams[key] = found
            while len(self.cams) > CAM_CACHE_ENTRIES:
                self.cams.popitem(last=False)
        else:
            self.cams.move_to_end(key)
        return found

    # -- lifetime ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.closed_because is not None

    def close(self, reason: str) -> None:
        """Free the activations and let go of the model and inputs; ``reason`` is what later
        reads are told (calling it again replaces the reason)."""
        self.closed_because = reason
        self.store.close()
        self.output = self.inputs = self.model = self.images = None
        self.pool = None
        self.cams = OrderedDict()

    def require(self) -> Session:
        """This session, if it still serves data; else a ``RuntimeError`` saying why not."""
        if self.closed_because is not None:
            raise RuntimeError(self.closed_because)
        return self


@dataclass
class Source:
    """What outlives a session: the model, the layers to capture, class names, memory budget,
    and the capture buffers reused from one run to the next."""

    model: nn.Module
    selector: LayerSelector | None = None
    labels: Sequence[str] | None = None
    budget_bytes: int | None = None
    # The input frame video layers show (capture(frame=)).
    frame: int = 0
    buffers: CaptureBuffers = field(default_factory=CaptureBuffers)
    # Shapes, dtypes and devices of the inputs the buffers were last filled for.
    _buffers_for: tuple[tuple[str, tuple[int, ...], str, str], ...] | None = field(
        default=None, init=False, repr=False
    )

    def __post_init__(self) -> None:
        # Names and types are kept as given; a one-shot iterable must survive re-runs.
        selector = self.selector
        if not (selector is None or isinstance(selector, (str, type)) or callable(selector)):
            self.selector = list(selector)

    def run(
        self, inputs: Any, image: Any = None, groups: Sequence[Hashable] | None = None
    ) -> Session:
        """Capture ``inputs`` into a new session.

        Statistics are taken as each layer is produced, and a layer that does not fit the budget
        is let go at once (recomputed when shown), so the peak stays within the bare forward's own
        plus ``budget_bytes``. The previous session must be closed first: its tensors may live in
        the reused buffers.
        """
        model = self.model
        # Recomputing in training mode would give other values (dropout, batch statistics), so
        # such a model's layers all stay.
        training = any_training(model)
        signature = tuple(
            (name, tuple(t.shape), str(t.dtype), str(t.device))
            for name, t in tensors_in(inputs, "")
        )
        if signature != self._buffers_for:
            # Other shapes make other buffers: the old ones would only add to this run's peak.
            self.buffers.clear()
            self._buffers_for = signature
        intake = LayerIntake(self.budget_bytes, keep_all=training, means=groups is not None)
        frame = self.frame = _frame_within(self.frame, inputs)
        captured = capture(
            model, inputs, self.selector, buffers=self.buffers, admit=intake, frame=frame
        )
        report, output = captured.report, captured.output
        recompute = None if training else Recompute(model, inputs, frame)
        try:
            store = ActivationStore(
                captured,
                budget_bytes=self.budget_bytes,
                recompute=recompute,
                recompute_sample=None if recompute is None else recompute.sample,
                intake=intake,
            )
        finally:
            # From here only the store holds the activations; a traceback keeps this frame.
            del captured
        try:
            if store.evicted:
                # A recomputed layer would evict the held ones, which live in the pool: their
                # memory is freed only without it.
                self.buffers.clear()
                self._buffers_for = None
            return Session.adopt(
                store,
                report=report,
                output=output,
                inputs=inputs,
                model=model,
                labels=self.labels,
                image=image,
                groups=groups,
                pool=self.buffers,
                frame=frame,
            )
        except BaseException:
            store.close()
            raise


def from_activations(
    activations: Mapping[str, torch.Tensor],
    *,
    output: Any = None,
    labels: Sequence[str] | None = None,
    image: Any = None,
    groups: Sequence[Hashable] | None = None,
) -> Session:
    """A session over activations computed elsewhere, with no model behind it."""
    captured = precomputed(activations)
    # A loaded capture (fmwidget.load) brings its output, pictures and class names.
    if output is None:
        output = getattr(activations, "output", None)
    if image is None:
        image = getattr(activations, "images", None)
    if labels is None:
        labels = getattr(activations, "labels", None)
    store = ActivationStore(captured, filters=False)
    try:
        return Session.adopt(
            store, report=captured.report, output=output, labels=labels, image=image, groups=groups
        )
    except BaseException:
        store.close()
        raise


def _frame_within(frame: int, inputs: Any) -> int:
    """``frame``, or the last frame of a shorter clip among new ``inputs``."""
    clip = input_clip(inputs)
    return min(frame, clip - 1) if clip and frame > 0 else frame


def clip_length(inputs: Any, report: CaptureReport) -> int:
    """The frames of a video capture: the input clip's T (the first 5-D input tensor's), else
    the most any layer has; 0 when no layer is video."""
    frames = [info.frames for info in report.captured if info.frames]
    if not frames:
        return 0
    return input_clip(inputs) or max(frames)


def _predictions(
    output: Any, num_samples: int, labels: list[str] | None
) -> tuple[list[list[dict[str, Any]]], int | None]:
    """The top classes per sample (with names), and the number of classes; none without logits.

    A probability that is not finite (NaN inputs) is ``None``: no NaN reaches the comm's JSON.
    """
    logits = isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] > 1
    if not logits or output.shape[0] != num_samples:
        if labels is not None:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise ValueError(
                f"labels= needs a model that outputs (N, classes) logits; it output {got}"
            )
        return [], None
    classes = int(output.shape[1])
    if labels is not None and len(labels) != classes:
        raise ValueError(f"labels= has {len(labels)} names but the model outputs {classes} classes")
    rows = [
        [
            {
                "index": t.index,
                "label": None if labels is None else labels[t.index],
                "prob": t.prob if math.isfinite(t.prob) else None,
            }
            for t in row
        ]
        for row in top_classes(output, k=TOP_PREDICTIONS)
    ]
    return rows, classes


class CapturedLayers(Mapping[str, torch.Tensor]):
    """Layer name → activation of a widget's last run (what ``FeatureMapWidget.capture`` is).

    A layer that lives in the widget's reused capture buffers (``pool``: copies the capture had
    to make, see :class:`fmwidget.capture.CaptureBuffers`) is handed out as a copy, since the next
    run overwrites those buffers; other layers are handed out as they are. Either way a tensor
    read here keeps its values when the widget re-runs.

    Example:
        >>> acts = w.capture  # doctest: +SKIP
        >>> acts["layer1.0.conv1"].shape, acts.info("layer1.0.conv1").kind  # doctest: +SKIP
        (torch.Size([2, 64, 16, 16]), 'conv')
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self._store = session.store
        self.report = session.report
        self.output = session.output
        self._pool = session.pool

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


class Recompute:
    """The store's recompute callback: a forward that stops once the layer is produced, for the
    whole batch (``recompute(name)``) or for one sample (``recompute.sample(name, sample)``).

    That gives the captured values only for the model and inputs as they were at the capture: it
    refuses, naming the cause and the fix, once training flags, inputs or weights changed.

    One sample runs as a batch of two copies of it: the input tensors whose first dimension is
    the batch are sliced to that sample (in eval mode samples do not interact; training mode
    keeps every layer instead). Two, because oneDNN (the CPU's convolutions) takes one kernel
    for a batch of one, another for 2-15 and another from 16 samples, each rounding differently:
    a batch of two gives the captured values bit for bit for batches of 2-15 (every layer of
    ResNet-50, MobileNetV2, EfficientNet-B0 checked), and within float rounding beyond (the
    store checks each recomputed sample against the captured extremes, and recomputes the whole
    batch when it is further off).
    """

    def __init__(self, model: nn.Module, inputs: Any, frame: int = 0) -> None:
        self._model = model
        self._inputs = inputs
        self._frame = frame
        self._flags = training_flags(model)
        self._inputs_seen, self._weights_seen = versions(model, inputs)
        self._sliceable = [t for _, t in tensors_in(inputs, "") if t.dim() > 0]

    def __call__(self, name: str) -> torch.Tensor:
        return self._run(name, self._inputs)

    def sample(self, name: str, sample: int) -> torch.Tensor:
        """``(C, H, W)`` maps of one sample of layer ``name``, from a forward of that sample."""
        if not self._sliceable:
            return self._run(name, self._inputs)[sample]
        # The first input tensor (the images, typically) says how long the batch dimension is.
        n = self._sliceable[0].shape[0]
        if n <= 2:
            return self._run(name, self._inputs)[sample]

        def two_of_sample(t: torch.Tensor) -> torch.Tensor:
            # New memory: a model that changes its input in place must not reach the captured ones.
            if t.dim() == 0 or t.shape[0] != n:
                return t
            one = t[sample : sample + 1]
            return torch.cat([one, one])

        maps = self._run(name, rebuild(self._inputs, two_of_sample))
        if maps.shape[0] != 2:
            # The model did not map input samples to output samples one to one.
            return self._run(name, self._inputs)[sample]
        return maps[0]

    def _run(self, name: str, inputs: Any) -> torch.Tensor:
        inputs_now, weights_now = versions(self._model, self._inputs)
        again = "assign w.inputs = ... to re-run the model as it is now"
        if training_flags(self._model) != self._flags:
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
            maps = capture_layer(self._model, inputs, name, self._frame)
            # A model may change its own inputs in place; that is not a change by the user.
            self._inputs_seen, self._weights_seen = versions(self._model, self._inputs)
            return maps
        raise StaleCapture(
            f"layer {name!r} was dropped to stay within budget_bytes, and recomputing it would "
            f"not give the captured values: {cause}; {fix}"
        )
