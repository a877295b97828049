"""What was captured: layer tensors on their device, per-channel statistics, a memory budget.

The store keeps each captured layer as the model produced it (on its device) and knows, per layer,
the metadata the browser's layer list needs (``LayerMeta`` of ``docs/protocol.md``). Metadata comes
from one vectorized min/max pass per layer, made at hook time when the capture runs with a
:class:`LayerIntake` (``admit=``), and one host transfer for all layers; the full per-channel stats
of a sample (mean, zero fraction, NaN/Inf counts) are computed the first time that sample of that
layer is asked for, then kept. Beyond ``budget_bytes`` layers are not held: a capture with an intake
lets them go as they are produced (so the budget bounds the peak, not only what stays), and the
least recently used layers are evicted when others are recomputed. A layer not held is recomputed
on demand through a callback: one sample for a layer reply, the whole batch when all of it is read;
statistics stay.

Example:
    >>> import torch
    >>> from fmwidget.capture import capture
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    >>> store = ActivationStore(capture(model, torch.randn(2, 3, 8, 8)))
    >>> [m["name"] for m in store.layers_meta()], store.maps("0").shape
    (['0', '1'], torch.Size([2, 4, 6, 6]))
    >>> store.close()
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmwidget import allocator
from fmwidget.analysis import health_masks
from fmwidget.capture import (
    Capture,
    CaptureReport,
    LayerInfo,
    derive,
    derived_exactly,
    frozen_norm,
)
from fmwidget.names import UnknownLayerError, resolve_name
from fmwidget.wire import FLAG_CONSTANT, FLAG_DEAD, FLAG_NONFINITE, channel_stats

__all__ = [
    "ActivationStore",
    "LayerIntake",
    "UnknownLayerError",
    "default_budget_bytes",
    "precomputed",
]

_GIB = 1 << 30
_PAIRABLE = ("conv", "norm")


def default_budget_bytes(device: torch.device | str) -> int:
    """The store's default byte budget: 25% of a GPU's memory, 1 GiB elsewhere.

    Example:
        >>> default_budget_bytes("cpu") == 1 << 30
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 4
    return _GIB


def precomputed(activations: Mapping[str, torch.Tensor]) -> Capture:
    """Activations computed elsewhere, checked and described as a capture the store can hold.

    Every value must be a floating-point ``(N, C, H, W)`` tensor, all with the same ``N``. Layers
    keep the mapping's order. A mapping with ``info(name)`` (a :class:`fmwidget.capture.Capture`,
    ``widget.capture``) keeps each layer's module, kind and type; other layers are described as
    kind ``"other"``, type ``"Tensor"``. Tensors are detached, not copied. The capture's ``output``
    is ``None``.

    Example:
        >>> import torch
        >>> cap = precomputed({"diff": torch.zeros(2, 4, 8, 8)})
        >>> cap.info("diff").kind, ActivationStore(cap, filters=False).shape("diff")
        ('other', (2, 4, 8, 8))
    """
    if not isinstance(activations, Mapping) or not activations:
        got = "an empty mapping" if isinstance(activations, Mapping) else type(activations).__name__
        raise ValueError(f"activations must map layer names to (N, C, H, W) tensors; got {got}")
    described = getattr(activations, "info", None)
    tensors: dict[str, torch.Tensor] = {}
    infos: list[LayerInfo] = []
    batch: tuple[str, int] | None = None
    for name, value in activations.items():
        if not isinstance(name, str):
            raise TypeError(f"layer names must be strings; got {name!r}")
        if not isinstance(value, torch.Tensor) or value.dim() != 4:
            got = (
                str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__
            )
            raise ValueError(f"layer {name!r}: expected an (N, C, H, W) tensor, got {got}")
        if not value.is_floating_point():
            raise ValueError(
                f"layer {name!r}: expected floating-point values, got {value.dtype}; "
                "convert it with .float()"
            )
        if batch is None:
            batch = (name, value.shape[0])
        elif value.shape[0] != batch[1]:
            raise ValueError(
                f"layer {name!r} holds {value.shape[0]} samples but layer {batch[0]!r} holds "
                f"{batch[1]}: every layer must come from the same batch of inputs"
            )
        tensors[name] = value.detach()
        shape, dtype = tuple(value.shape), str(value.dtype).removeprefix("torch.")
        if callable(described):
            infos.append(dataclasses.replace(described(name), shape=shape, dtype=dtype))
        else:
            infos.append(LayerInfo(name, name, 1, "Tensor", "other", shape, dtype, None))
    return Capture(tensors, CaptureReport(infos), None)


@dataclass
class _Taken:
    """What the store needs of one layer, taken at hook time (see :class:`LayerIntake`)."""

    lo: torch.Tensor  # (N, C) per-sample channel minimum, NaN where the channel has a NaN
    hi: torch.Tensor  # (N, C) maximum
    nbytes: int
    kept: bool
    # Only for a layer let go (its values are gone after the hook):
    full: torch.Tensor | None = None  # (N, C, 6) channel_stats, when it holds NaN/Inf
    means: torch.Tensor | None = None  # (N, C) float32 spatial means, for group comparisons


class LayerIntake:
    """The ``admit=`` of a widget's capture: each layer's statistics as it is produced, and
    whether it fits the memory budget.

    Layers are kept in call order while their bytes fit ``budget_bytes`` (default
    :func:`default_budget_bytes` of the first layer's device); one that does not fit is let go at
    once, so a capture never holds more than the budget beyond the forward's own memory. Of every
    layer it takes the per-sample, per-channel minimum and maximum (the layer list, the health
    flags), while the values are still in cache; of a layer let go also what cannot be read
    later without the whole batch again: masked statistics when it holds NaN/Inf, and with
    ``means=True`` the spatial means that group comparisons need. ``keep_all=True`` (a model in
    training mode: nothing could recompute a layer) keeps every layer.

    Example:
        >>> import torch
        >>> from fmwidget.capture import capture
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        >>> intake = LayerIntake(4 * 6 * 6 * 4)
        >>> cap = capture(model, torch.randn(1, 3, 8, 8), admit=intake)
        >>> list(cap), cap.dropped
        (['0'], ('1',))
        >>> store = ActivationStore(cap, intake=intake, recompute=lambda name: torch.zeros(1))
        >>> store.names, store.is_resident("1")
        (['0', '1'], False)
    """

    def __init__(
        self, budget_bytes: int | None = None, *, keep_all: bool = False, means: bool = False
    ) -> None:
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.keep_all = keep_all
        self.means = means
        self.taken: dict[str, _Taken] = {}
        self.kept_bytes = 0
        self._let_go = 0  # bytes let go since the heap was last trimmed

    def take_derived(
        self, name: str, maps: torch.Tensor, module: nn.Module, source: str | None
    ) -> None:
        """A layer the capture keeps as how to compute it (an activation of a kept layer,
        ``Capture.derived``): its statistics as for a layer let go, and no bytes."""
        self(name, maps, module, source, derived=True)

    def __call__(
        self,
        name: str,
        maps: torch.Tensor,
        module: nn.Module,
        source: str | None,
        *,
        derived: bool = False,
    ) -> bool:
        old = self.taken.pop(name, None)
        if old is not None and old.kept:
            # The capture's forward runs again (a layer changed in place): start that layer over.
            self.kept_bytes -= old.nbytes
        nbytes = maps.numel() * maps.element_size()
        if maps.shape[2] * maps.shape[3] == 0:
            # Empty maps: the store lists them as skipped; keeping them costs nothing.
            self.taken[name] = _Taken(maps.new_empty(0), maps.new_empty(0), 0, True)
            return True
        if self.budget_bytes is None:
            self.budget_bytes = default_budget_bytes(maps.device)
        keep = not derived and (self.keep_all or self.kept_bytes + nbytes <= self.budget_bytes)
        lo, hi = self._derived(maps, module, source) or _extremes(maps)
        taken = _Taken(lo, hi, nbytes, keep)
        if keep:
            self.kept_bytes += nbytes
        elif not derived:
            # What cannot be read later without the batch again (a derived layer can: it is
            # computed from its held source). A host sync, but only for layers let go: those
            # beyond the budget, i.e. big runs.
            if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
                taken.full = channel_stats(maps)
            if self.means:
                # The same reduction group_differences makes, so the effect sizes are identical.
                taken.means = maps.mean(dim=(2, 3), dtype=torch.float32)
            if maps.device.type == "cpu":
                self._trim_after(nbytes)
        self.taken[name] = taken
        return keep

    def _trim_after(self, nbytes: int) -> None:
        """Hand the C heap's free pages back each time the layers let go reach a quarter of the
        budget: the forward frees them as it goes on, and glibc, whose heap the kept layers
        break up, serves later tensors from fresh pages while their holes stay resident (the
        process would hold tens of MiB more than the budget with a small one). A trim costs the
        page faults of reusing those pages, once per quarter budget let go."""
        self._let_go += nbytes
        if self._let_go >= cast(int, self.budget_bytes) // 4:
            self._let_go = 0
            allocator.trim()

    def _derived(
        self, maps: torch.Tensor, module: nn.Module, source: str | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The extremes of a clamp (ReLU, ReLU6, Hardtanh) or of an eval-mode BatchNorm2d from
        those of its input, without a pass over the maps: a monotone function takes each
        channel's min and max to the min and max of its outputs (a norm with a negative scale
        swaps them), and the very function applied to those values gives them exactly: an
        elementwise kernel does the same arithmetic on each value wherever it sits (NaN stays)."""
        if source is None:
            return None
        clamp = _CLAMPS.get(type(module))
        if clamp is None and not frozen_norm(module):
            return None
        taken = self.taken.get(source)
        if (
            taken is None
            or taken.lo.shape != maps.shape[:2]
            or taken.lo.dtype != maps.dtype
            # The input is the source's whole output, not a view of part of it.
            or taken.nbytes != maps.numel() * maps.element_size()
        ):
            return None
        if clamp is not None:
            return clamp(module, taken.lo), clamp(module, taken.hi)
        norm: Any = module
        with torch.no_grad():
            # What nn.BatchNorm2d.forward calls in eval mode, on (N, C, 2): each channel's two.
            ends = F.batch_norm(
                torch.stack((taken.lo, taken.hi), dim=-1),
                norm.running_mean,
                norm.running_var,
                norm.weight,
                norm.bias,
                False,
                0.0,
                norm.eps,
            )
            return ends.amin(-1), ends.amax(-1)


def _relu(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.relu(x)


def _hardtanh(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    assert isinstance(module, nn.Hardtanh)
    return F.hardtanh(x, module.min_val, module.max_val)


# Exact types: what their forward computes is known (a subclass may compute something else).
_CLAMPS: dict[type, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    nn.ReLU: _relu,
    nn.ReLU6: _hardtanh,
    nn.Hardtanh: _hardtanh,
}


def _extremes(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel (min, max), ``(N, C)`` each; NaN propagates into both.

    Two reductions: on the CPU, torch.aminmax along a dim is ~20× slower than amin + amax.
    """
    if maps.is_contiguous():
        flat = maps.flatten(2)
        return flat.amin(-1), flat.amax(-1)
    return maps.amin(dim=(2, 3)), maps.amax(dim=(2, 3))


#: How many samples of layers not held (recomputed one sample at a time) the store keeps.
SAMPLE_CACHE = 4


@dataclass
class _Layer:
    info: LayerInfo
    shape: tuple[int, int, int, int]
    nbytes: int
    flags: np.ndarray
    meta: dict[str, Any]
    stats: dict[int, torch.Tensor] = field(default_factory=dict)
    means: torch.Tensor | None = None
    # The captured per-sample channel (min, max), (N, C) tensors on the layer's device, to check
    # a recomputed sample against; None when the layer holds NaN/Inf.
    extremes: tuple[torch.Tensor, torch.Tensor] | None = None


class ActivationStore:
    """Captured layers on their device, their statistics, and a byte budget.

    ``capture`` is a :class:`fmwidget.capture.Capture` (its tensors are ``(N, C, H, W)``). The store
    keeps its own references, so once the capture itself is dropped, an evicted layer's memory is
    freed. Layers with empty maps are left out and listed in :attr:`skipped`.

    ``budget_bytes`` (default :func:`default_budget_bytes` of the first layer's device) bounds the
    bytes of layer tensors held. Eviction needs ``recompute(name) -> Tensor``, which must return the
    layer's output for the same inputs; without it every layer stays.
    ``recompute_sample(name, sample) -> Tensor`` (optional) returns one sample's ``(C, H, W)``
    maps of a layer not held, at the cost of one sample's forward: what a ``layer`` or ``channel``
    reply needs (:meth:`sample_maps`); the last :data:`SAMPLE_CACHE` such samples are kept. Its
    result is checked against the captured per-channel extremes: equal, or within float rounding
    (another kernel for another batch size), it is served; else the whole layer is recomputed.

    ``intake`` is the :class:`LayerIntake` the capture ran with (``admit=intake``): the store then
    takes each layer's statistics from it, and the layers it let go (``capture.dropped``) start
    out evicted; ``budget_bytes`` defaults to the intake's.

    ``filters=False`` says no model stands behind the activations (see :func:`precomputed`): no
    layer then offers the conv kernel that produced it (``LayerMeta.filter`` is false).

    Example:
        >>> import torch
        >>> from fmwidget.capture import capture
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.ReLU())
        >>> store = ActivationStore(capture(model, torch.ones(1, 1, 4, 4)))
        >>> store.stats("1", 0).shape, store.flags("1").shape
        (torch.Size([2, 6]), (2,))
    """

    def __init__(
        self,
        capture: Capture,
        *,
        budget_bytes: int | None = None,
        recompute: Callable[[str], torch.Tensor] | None = None,
        recompute_sample: Callable[[str, int], torch.Tensor] | None = None,
        filters: bool = True,
        intake: LayerIntake | None = None,
    ) -> None:
        self._recompute = recompute
        self._recompute_sample = recompute_sample
        self._filters = filters
        self._closed = False
        self._layers: dict[str, _Layer] = {}
        # Most recently used last; early layers are touched last so the first ones shown stay.
        self._resident: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._samples: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self.skipped: list[tuple[str, str]] = []
        # Block name -> the layer whose output tensor the block returned (LayerInfo.aliases).
        self._aliases: dict[str, str] = {}
        # Activations computed from their source layer when read (Capture.derived): never
        # evicted for good, since reading them costs one pass over the source, no forward.
        self._derived = dict(capture.derived) if intake is not None else {}
        dropped = set(capture.dropped)
        if dropped and (intake is None or recompute is None):
            raise ValueError(
                f"the capture let {len(dropped)} layers go at hook time: pass the LayerIntake it "
                "ran with (intake=) and a recompute= callback"
            )
        first_device: torch.device | None = None
        pending: list[tuple[LayerInfo, _Taken]] = []
        for info in capture.report.captured:
            if info.shape[2] * info.shape[3] == 0:
                self.skipped.append((info.name, f"output shape {tuple(info.shape)} is empty"))
                continue
            gone = info.name in dropped or info.name in self._derived
            maps = None if gone else capture[info.name]
            taken = intake.taken.get(info.name) if intake is not None else None
            if taken is None:
                if maps is None:
                    raise ValueError(f"the intake= did not see layer {info.name!r}")
                lo, hi = _extremes(maps)
                taken = _Taken(lo, hi, maps.numel() * maps.element_size(), True)
            if first_device is None:
                first_device = taken.lo.device
            pending.append((info, taken))
            self._aliases.update(dict.fromkeys(info.aliases, info.name))
            if maps is not None:
                self._resident[info.name] = maps
        self._describe_all(pending)
        self._pair_activations()
        if budget_bytes is None and intake is not None:
            budget_bytes = intake.budget_bytes
        if budget_bytes is None:
            budget_bytes = default_budget_bytes(first_device or "cpu")
        if budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        for name in reversed(list(self._resident)):
            self._resident.move_to_end(name)
        self._evict(keep=None)

    # -- reading -----------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Names of the layers held, in call order."""
        return list(self._layers)

    def __contains__(self, name: object) -> bool:
        return name in self._layers

    def __len__(self) -> int:
        return len(self._layers)

    def layers_meta(self) -> list[dict[str, Any]]:
        """``LayerMeta`` dicts of every layer, in call order (fresh copies, JSON-ready)."""
        return [dict(layer.meta) for layer in self._layers.values()]

    def check_name(self, name: str) -> str:
        """The layer ``name`` refers to (itself, or the layer a block name is an alias of) if the
        store holds it, else ``UnknownLayerError`` with close names."""
        if self._closed:
            raise RuntimeError("this ActivationStore is closed")
        return resolve_name(name, self._layers, self._aliases)

    def meta(self, name: str) -> dict[str, Any]:
        """``LayerMeta`` of one layer."""
        return dict(self._layer(name).meta)

    def info(self, name: str) -> LayerInfo:
        """The capture's ``LayerInfo`` of one layer."""
        return self._layer(name).info

    def shape(self, name: str) -> tuple[int, int, int, int]:
        """``(N, C, H, W)`` of a layer."""
        return self._layer(name).shape

    def maps(self, name: str) -> torch.Tensor:
        """The layer's ``(N, C, H, W)`` tensor on its device, recomputed if it was evicted."""
        name = self.check_name(name)
        layer = self._layer(name)
        tensor = self._resident.get(name)
        if tensor is not None:
            self._resident.move_to_end(name)
            return tensor
        if name in self._derived:
            # From the nearest held layer of its chain; the layers in between are not kept.
            maps = derive(self._derived, name, self._resident, self.maps)
        elif self._recompute is None:
            raise RuntimeError(
                f"layer {name!r} is no longer held and the store cannot recompute it"
            )
        else:
            maps = self._recompute(name)
        if tuple(maps.shape) != layer.shape:
            raise RuntimeError(
                f"recomputing layer {name!r} gave shape {tuple(maps.shape)}, captured "
                f"{layer.shape}: did the model change since the capture?"
            )
        self._resident[name] = maps
        self._evict(keep=name)
        return maps

    def sample_maps(self, name: str, sample: int) -> torch.Tensor:
        """One sample's ``(C, H, W)`` maps of a layer on its device.

        For a layer not held, only that sample is recomputed (``recompute_sample``), one sample's
        forward instead of the whole batch's; without it, the whole layer is.
        """
        name = self.check_name(name)
        layer = self._checked_sample(name, sample)
        tensor = self._resident.get(name)
        if tensor is not None:
            self._resident.move_to_end(name)
            return tensor[sample]
        if name in self._derived:
            if derived_exactly(self._derived, name):
                source = self._derived[name].source
                return self._derived[name].apply(self.sample_maps(source, sample))
            return self.maps(name)[sample]
        if self._recompute_sample is None:
            return self.maps(name)[sample]
        key = (name, sample)
        maps = self._samples.get(key)
        if maps is not None:
            self._samples.move_to_end(key)
            return maps
        maps = self._recompute_sample(name, sample)
        if tuple(maps.shape) != layer.shape[1:]:
            raise RuntimeError(
                f"recomputing sample {sample} of layer {name!r} gave shape {tuple(maps.shape)}, "
                f"captured {layer.shape[1:]}: did the model change since the capture?"
            )
        if not self._as_captured(layer, sample, maps):
            # Not the batch's values beyond float rounding (a model whose samples interact, say):
            # the whole batch gives them.
            return self.maps(name)[sample]
        self._samples[key] = maps
        while len(self._samples) > SAMPLE_CACHE:
            self._samples.popitem(last=False)
        self._evict(keep=name)
        return maps

    def stats(self, name: str, sample: int) -> torch.Tensor:
        """Per-channel ``[min, max, mean, zeros, nan, inf]`` of one sample, ``(C, 6)`` on device."""
        layer = self._checked_sample(name, sample)
        cached = layer.stats.get(sample)
        if cached is None:
            cached = layer.stats[sample] = channel_stats(self.sample_maps(name, sample))
        return cached

    def spatial_means(self, name: str) -> torch.Tensor:
        """``(N, C)`` float32 mean of each sample's channel maps (what group comparisons use).

        A layer let go at capture time with ``LayerIntake(means=True)`` serves them without
        recomputing anything.
        """
        name = self.check_name(name)
        layer = self._layer(name)
        if layer.means is not None and name not in self._resident:
            return layer.means
        return self.maps(name).mean(dim=(2, 3), dtype=torch.float32)

    def flags(self, name: str) -> np.ndarray:
        """Per-channel health bits over the batch: 1 dead, 2 constant, 4 has NaN/Inf."""
        return self._layer(name).flags

    @property
    def resident_bytes(self) -> int:
        """Bytes of layer tensors held now (recomputed samples included)."""
        layers = sum(self._layers[name].nbytes for name in self._resident)
        return layers + sum(t.numel() * t.element_size() for t in self._samples.values())

    def holds(self, name: str, sample: int) -> bool:
        """Whether ``sample`` of layer ``name`` is in memory (else serving it runs the model)."""
        name = self.check_name(name)
        derived = self._derived.get(name)
        if derived is not None and name not in self._resident:
            return self.holds(derived.source, sample)
        return name in self._resident or (name, sample) in self._samples

    def is_resident(self, name: str) -> bool:
        """Whether the layer's tensor is held (False once evicted, until next asked for)."""
        return name in self._resident

    @property
    def evicted(self) -> bool:
        """Whether some layer is not held now (the capture did not fit the budget); a derived
        activation (computed from its held source when read) does not count."""
        return any(n not in self._resident and n not in self._derived for n in self._layers)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Drop every tensor, statistic and the recompute callback (and the model's modules the
        derived layers would run)."""
        self._resident.clear()
        self._samples.clear()
        self._layers.clear()
        self._derived.clear()
        self._recompute = self._recompute_sample = None
        self._closed = True

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _as_captured(layer: _Layer, sample: int, maps: torch.Tensor) -> bool:
        """Whether one recomputed sample has the captured per-channel min and max, up to float
        rounding: a convolution may take other kernels for another batch size (oneDNN on the
        CPU: one for 2-15 samples, another from 16), which changes the last bits, not more."""
        if layer.extremes is None:
            return True
        lo, hi = _extremes(maps[None])
        want_lo = layer.extremes[0][sample].to(lo.device)
        want_hi = layer.extremes[1][sample].to(hi.device)
        if torch.equal(lo[0], want_lo) and torch.equal(hi[0], want_hi):
            return True
        # 256 ulps of the layer's scale: rounding differences of a deep network stay far below,
        # a sample that depends on the others (batch statistics in eval mode) lands far above.
        scale = torch.maximum(want_lo.abs().max(), want_hi.abs().max()).float()
        tolerance = 256 * torch.finfo(maps.dtype).eps * scale
        error = torch.maximum((lo[0] - want_lo).abs().max(), (hi[0] - want_hi).abs().max())
        return bool(error.float() <= tolerance)

    def _checked_sample(self, name: str, sample: int) -> _Layer:
        layer = self._layer(name)
        n = layer.shape[0]
        if not 0 <= sample < n:
            raise IndexError(f"sample {sample} is out of range for a batch of {n}")
        return layer

    def _layer(self, name: str) -> _Layer:
        if self._closed:
            raise RuntimeError("this ActivationStore is closed")
        layer = self._layers.get(name)
        if layer is None:
            layer = self._layers[resolve_name(name, self._layers, self._aliases)]
        return layer

    def _describe_all(self, pending: list[tuple[LayerInfo, _Taken]]) -> None:
        """Metadata and health flags of every layer from its extremes, vectorized over all layers:
        one host transfer (one device sync) and one health_masks call for the whole network."""
        if not pending:
            return
        # Each channel's extremes over the batch, every layer's channels end to end; NaN
        # propagates through amin/amax, so a layer with NaN/Inf shows in its own min or max.
        # Every layer has the batch's N samples: one (N, ΣC) tensor each, one reduction each.
        lows, highs = _host_values(
            [
                _joined([taken.lo for _, taken in pending]).amin(0),
                _joined([taken.hi for _, taken in pending]).amax(0),
            ]
        )
        counts = [info.shape[1] for info, _ in pending]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        layer_lo = np.minimum.reduceat(lows, starts)
        layer_hi = np.maximum.reduceat(highs, starts)
        nonfinite = np.zeros(len(lows), dtype=bool)
        precomputed: dict[int, dict[int, torch.Tensor]] = {}
        for bad_layer in np.flatnonzero(~(np.isfinite(layer_lo) & np.isfinite(layer_hi))):
            i = int(bad_layer)
            # A (rare) layer with NaN/Inf needs the masked statistics of every sample; a layer
            # let go had them taken at hook time.
            info, taken = pending[i]
            full = taken.full
            if full is None:
                maps = self._resident.get(info.name)
                if maps is None:
                    # Derived from a held layer (Capture.derived): computed here, once.
                    maps = derive(self._derived, info.name, self._resident)
                full = channel_stats(maps)
            precomputed[i] = dict(enumerate(full.unbind(0)))
            host = full.cpu().numpy()
            bad = host[..., 4] + host[..., 5]
            has_finite = bad < info.shape[2] * info.shape[3]
            lo = np.where(has_finite, host[..., 0], np.inf).min(0)
            hi = np.where(has_finite, host[..., 1], -np.inf).max(0)
            seg = slice(starts[i], starts[i] + counts[i])
            lows[seg], highs[seg], nonfinite[seg] = lo, hi, (bad > 0).any(0)
            finite_lo, finite_hi = lo[np.isfinite(lo)], hi[np.isfinite(hi)]
            layer_lo[i] = finite_lo.min() if finite_lo.size else 0.0
            layer_hi[i] = finite_hi.max() if finite_hi.size else 0.0
        dead_all, constant_all = health_masks(
            torch.from_numpy(lows), torch.from_numpy(highs), torch.from_numpy(nonfinite)
        )
        dead, constant = dead_all.numpy(), constant_all.numpy()
        flags_all = (
            dead * FLAG_DEAD + constant * FLAG_CONSTANT + nonfinite * FLAG_NONFINITE
        ).astype(np.uint8)
        # As Python numbers at once: per-element numpy scalars cost more than the rest here.
        mins, maxs = layer_lo.tolist(), layer_hi.tolist()
        dead_counts = np.add.reduceat(dead, starts).tolist()
        constant_counts = np.add.reduceat(constant, starts).tolist()
        nonfinite_counts = np.add.reduceat(nonfinite, starts).tolist()
        bounds = np.append(starts, len(lows)).tolist()
        for i, (info, taken) in enumerate(pending):
            n, c, h, w = info.shape
            meta = {
                "name": info.name,
                "module": info.module_name,
                "call": info.call,
                "type": info.type,
                "shape": [n, c, h, w],
                "dtype": str(info.dtype).removeprefix("torch."),
                "min": mins[i],
                "max": maxs[i],
                "dead": dead_counts[i],
                "constant": constant_counts[i],
                "nonfinite": nonfinite_counts[i],
                "kind": info.kind,
                "pre": None,
                "post": None,
                "filter": self._filters and info.type == "Conv2d",
                "aliases": list(info.aliases),
                # What the module computed: "nchw", "nhwc" (shown permuted), "tokens" (patch maps).
                "layout": info.layout,
                "extra_tokens": info.extra_tokens,
                # Video: the layer's frames (T) and the one shown; 0 and 0 for images.
                "frames": info.frames,
                "frame": info.frame,
            }
            stats = precomputed.get(i)
            self._layers[info.name] = _Layer(
                info,
                (n, c, h, w),
                taken.nbytes,
                flags_all[bounds[i] : bounds[i + 1]],
                meta,
                {} if stats is None else stats,
                taken.means,
                None if stats is not None else (taken.lo, taken.hi),
            )

    def _pair_activations(self) -> None:
        for name, layer in self._layers.items():
            source = self._layers.get(layer.info.input_from or "")
            if layer.info.kind != "act" or source is None or source.info.kind not in _PAIRABLE:
                continue
            if source.meta["post"] is not None:
                continue
            layer.meta["pre"] = source.info.name
            source.meta["post"] = name
            if self._filters and source.info.type == "Conv2d":
                layer.meta["filter"] = True

    def _evict(self, keep: str | None) -> None:
        if self._recompute is None:
            return
        while self.resident_bytes > self.budget_bytes:
            if len(self._samples) > 1:
                # Recomputed samples go first (oldest first), all but the one just asked for.
                self._samples.popitem(last=False)
                continue
            victim = next((name for name in self._resident if name != keep), None)
            if victim is None:
                return
            del self._resident[victim]


def _joined(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``(N, C_i)`` tensors side by side as one ``(N, ΣC)`` (dtypes promote; a model spread over
    devices meets on the host)."""
    if len({t.device for t in tensors}) > 1:
        tensors = [t.cpu() for t in tensors]
    return torch.cat(tensors, dim=1)


def _host_values(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """``tensors`` as numpy arrays of their shapes, float32 (exact for every float dtype but
    float64, which stays float64; numpy has no bfloat16).

    On the CPU the arrays share the tensors' memory (no copy, and no sync to save); elsewhere all
    of them come over in one device→host copy per device, not one (a sync each) per tensor.
    """
    if not tensors:
        return []
    wide = any(t.dtype == torch.float64 for t in tensors)
    dtype = torch.float64 if wide else torch.float32
    if all(t.device.type == "cpu" for t in tensors):
        return [t.to(dtype).numpy() for t in tensors]
    flat = torch.cat([t.reshape(-1).to(dtype=dtype, device=tensors[0].device) for t in tensors])
    host = flat.cpu().numpy()
    ends = np.cumsum([t.numel() for t in tensors])[:-1]
    return [part.reshape(t.shape) for part, t in zip(np.split(host, ends), tensors, strict=True)]
