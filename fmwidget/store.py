"""What was captured: layer tensors on their device, per-channel statistics, a memory budget.

The store keeps each captured layer as the model produced it (on its device) and knows, per layer,
the metadata the browser's layer list needs (``LayerMeta`` of ``docs/protocol.md``). Metadata comes
from one vectorized min/max pass per layer at construction; the full per-channel stats of a sample
(mean, zero fraction, NaN/Inf counts) are computed the first time that sample of that layer is asked
for, then kept. Beyond ``budget_bytes`` the least recently used layers are dropped and recomputed on
demand through a callback (a forward pass capturing just that layer); statistics stay.

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
from typing import Any

import numpy as np
import torch

from fmwidget.analysis import health_masks
from fmwidget.capture import Capture, CaptureReport, LayerInfo
from fmwidget.names import UnknownLayerError
from fmwidget.wire import FLAG_CONSTANT, FLAG_DEAD, FLAG_NONFINITE, channel_stats

__all__ = ["ActivationStore", "UnknownLayerError", "default_budget_bytes", "precomputed"]

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
class _Layer:
    info: LayerInfo
    shape: tuple[int, int, int, int]
    nbytes: int
    flags: np.ndarray
    meta: dict[str, Any]
    stats: dict[int, torch.Tensor] = field(default_factory=dict)


class ActivationStore:
    """Captured layers on their device, their statistics, and a byte budget.

    ``capture`` is a :class:`fmwidget.capture.Capture` (its tensors are ``(N, C, H, W)``). The store
    keeps its own references, so once the capture itself is dropped, an evicted layer's memory is
    freed. Layers with empty maps are left out and listed in :attr:`skipped`.

    ``budget_bytes`` (default :func:`default_budget_bytes` of the first layer's device) bounds the
    bytes of layer tensors held. Eviction needs ``recompute(name) -> Tensor``, which must return the
    layer's output for the same inputs; without it every layer stays.

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
        filters: bool = True,
    ) -> None:
        self._recompute = recompute
        self._filters = filters
        self._closed = False
        self._layers: dict[str, _Layer] = {}
        # Most recently used last; early layers are touched last so the first ones shown stay.
        self._resident: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.skipped: list[tuple[str, str]] = []
        first_device: torch.device | None = None
        for info in capture.report.captured:
            maps = capture[info.name]
            if maps.shape[2] * maps.shape[3] == 0:
                self.skipped.append((info.name, f"output shape {tuple(maps.shape)} is empty"))
                continue
            if first_device is None:
                first_device = maps.device
            self._layers[info.name] = self._describe(info, maps)
            self._resident[info.name] = maps
        self._pair_activations()
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
        """``name`` if the store holds that layer, else ``UnknownLayerError`` with close names."""
        if name not in self._layers:
            raise UnknownLayerError(name, self._layers)
        return name

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
        layer = self._layer(name)
        tensor = self._resident.get(name)
        if tensor is not None:
            self._resident.move_to_end(name)
            return tensor
        if self._recompute is None:
            raise RuntimeError(
                f"layer {name!r} is no longer held and the store cannot recompute it"
            )
        maps = self._recompute(name)
        if tuple(maps.shape) != layer.shape:
            raise RuntimeError(
                f"recomputing layer {name!r} gave shape {tuple(maps.shape)}, captured "
                f"{layer.shape}: did the model change since the capture?"
            )
        self._resident[name] = maps
        self._evict(keep=name)
        return maps

    def stats(self, name: str, sample: int) -> torch.Tensor:
        """Per-channel ``[min, max, mean, zeros, nan, inf]`` of one sample, ``(C, 6)`` on device."""
        layer = self._layer(name)
        n = layer.shape[0]
        if not 0 <= sample < n:
            raise IndexError(f"sample {sample} is out of range for a batch of {n}")
        cached = layer.stats.get(sample)
        if cached is None:
            cached = layer.stats[sample] = channel_stats(self.maps(name)[sample])
        return cached

    def flags(self, name: str) -> np.ndarray:
        """Per-channel health bits over the batch: 1 dead, 2 constant, 4 has NaN/Inf."""
        return self._layer(name).flags

    @property
    def resident_bytes(self) -> int:
        """Bytes of layer tensors held now."""
        return sum(self._layers[name].nbytes for name in self._resident)

    def is_resident(self, name: str) -> bool:
        """Whether the layer's tensor is held (False once evicted, until next asked for)."""
        return name in self._resident

    @property
    def evicted(self) -> bool:
        """Whether some layer is not held now (the capture did not fit the budget)."""
        return len(self._resident) < len(self._layers)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Drop every tensor, statistic and the recompute callback."""
        self._resident.clear()
        self._layers.clear()
        self._recompute = None
        self._closed = True

    # -- internals ---------------------------------------------------------------------------

    def _layer(self, name: str) -> _Layer:
        if self._closed:
            raise RuntimeError("this ActivationStore is closed")
        layer = self._layers.get(name)
        if layer is None:
            raise UnknownLayerError(name, self._layers)
        return layer

    def _describe(self, info: LayerInfo, maps: torch.Tensor) -> _Layer:
        n, c, h, w = maps.shape
        flat = maps.reshape(n, c, h * w)
        # Two reductions: on the CPU, torch.aminmax along a dim is ~20× slower than amin + amax.
        # float64 holds every floating dtype exactly, bfloat16 included (numpy has none).
        lo, hi = flat.amin(-1).double().cpu().numpy(), flat.amax(-1).double().cpu().numpy()
        precomputed: dict[int, torch.Tensor] = {}
        nonfinite = np.zeros(c, dtype=bool)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            # NaN poisons min/max: this (rare) layer needs the masked statistics of every sample.
            full = channel_stats(maps)
            precomputed = dict(enumerate(full.unbind(0)))
            host = full.cpu().numpy()
            bad = host[..., 4] + host[..., 5]
            has_finite = bad < h * w
            lo = np.where(has_finite, host[..., 0], np.inf)
            hi = np.where(has_finite, host[..., 1], -np.inf)
            nonfinite = (bad > 0).any(0)
        dead_mask, constant_mask = health_masks(
            torch.from_numpy(lo.min(0)), torch.from_numpy(hi.max(0)), torch.from_numpy(nonfinite)
        )
        dead, constant = dead_mask.numpy(), constant_mask.numpy()
        flags = (dead * FLAG_DEAD + constant * FLAG_CONSTANT + nonfinite * FLAG_NONFINITE).astype(
            np.uint8
        )
        batch_lo = lo[np.isfinite(lo)]
        batch_hi = hi[np.isfinite(hi)]
        meta = {
            "name": info.name,
            "module": info.module_name,
            "call": info.call,
            "type": info.type,
            "shape": [n, c, h, w],
            "dtype": str(info.dtype).removeprefix("torch."),
            "min": float(batch_lo.min()) if batch_lo.size else 0.0,
            "max": float(batch_hi.max()) if batch_hi.size else 0.0,
            "dead": int(dead.sum()),
            "constant": int(constant.sum()),
            "nonfinite": int(nonfinite.sum()),
            "kind": info.kind,
            "pre": None,
            "post": None,
            "filter": self._filters and info.type == "Conv2d",
        }
        nbytes = maps.numel() * maps.element_size()
        return _Layer(info, (n, c, h, w), nbytes, flags, meta, precomputed)

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
            victim = next((name for name in self._resident if name != keep), None)
            if victim is None:
                return
            del self._resident[victim]
