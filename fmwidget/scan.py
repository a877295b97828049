"""What each channel responds to across a whole dataset, streamed on the model's device.

:func:`scan` runs a dataset through the model once. At hook time each selected layer's maps are
reduced per image and channel to three numbers, on the device, and merged into running results;
nothing per image is kept beyond ``k`` examples per channel, so memory does not depend on the
size of the dataset::

    s = fmwidget.scan(model, test_set, k=9)        # a Dataset, a DataLoader or batches
    s.top("layer4.1.conv2", 212)    # [Example(index=4031, value=9.1, row=3, col=5), ...]
    s.stats("layer4.1.conv2")["dead"].sum()        # channels never > 0 on any image
    s.selective("layer4.1.conv2", "cat", n=10)     # channels most selective for a label
    s.save("scan.safetensors"); Scan.load("scan.safetensors", model=model)

Definitions (what the results mean; the tests check them against a brute-force reference):

- A channel's **score** on an image is the spatial max of its map, located at the first
  row-major argmax (``row``, ``col``). **top-k** are the ``k`` images with the highest scores,
  ties going to the lower index. An image's index is its Dataset index (for an iterable of
  batches, its position in iteration order).
- Over the dataset: ``mean`` = the mean of the per-image spatial means; ``max`` = the max of the
  spatial maxes; ``active`` = the fraction of images whose spatial max is > 0; ``dead`` = never
  > 0 on any image. Images whose map holds NaN or Inf for a channel are left out of that
  channel's ``mean`` and ``max`` and counted in ``nonfinite``; in its top-k they rank after every
  finite score, with the value NaN.
- With labels: ``class_means(layer)`` is the (labels × channels) mean of spatial means per
  label, labels in sorted order; ``selectivity`` of a channel for label ``a`` is
  ``(μ_a − μ_rest) / (|μ_a| + |μ_rest|)`` with ``μ_rest`` the mean of the other labels' means
  (Morcos et al.'s class selectivity index, in [−1, 1]); ``effect(layer, a, b)`` is Cohen's d
  of the per-image spatial means between labels ``a`` and ``b`` (pooled standard deviation).

Values are right under in-place ops and for reused modules exactly as :func:`fmwidget.capture`
gives them: the maps are reduced when their module returns, before anything can change them.

Under ``torch.distributed`` (launched with ``torchrun``; NCCL on GPUs, gloo on CPUs) each rank
scans every ``world_size``-th image of a Dataset, the results merge exactly (top-k by gathering
every rank's candidates, sums by all-reduce) and every rank returns the same :class:`Scan`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fmwidget.calling import rebuild, tensors_in
from fmwidget.capture import LayerSelector, LayerTaps
from fmwidget.files import ModelMismatchError, check_model, model_record, read, write
from fmwidget.images import to_rgb8
from fmwidget.names import UnknownLayerError
from fmwidget.receptive import fields_and_centres

__all__ = ["Crop", "Example", "Scan", "ScanMismatchError", "scan"]

_NO_IMAGE = torch.iinfo(torch.int64).max  # the index of an empty top-k slot: sorts last on ties
_LABEL_KEYS = ("label", "labels", "target", "targets", "y")
_EXAMPLES_PER_LABEL = 8
_CHECKED_ITEMS = 8


class Example(NamedTuple):
    """One of a channel's top images: its index, its score and where the score is."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, a public field name
    value: float
    row: int
    col: int


@dataclass(frozen=True)
class Crop:
    """An example's receptive field cut out of its input.

    ``pixels`` is the crop, RGB uint8; ``picture`` the same with the peak marked (a ring around
    the centre of the receptive field, the input pixel the peak's position is centred on, also
    where the field is clipped by the border); ``box`` is ``(top, left, bottom, right)`` in the
    input (bottom/right exclusive) and ``peak`` the ``(y, x)`` of the mark inside the crop.
    """

    index: int
    value: float
    row: int
    col: int
    box: tuple[int, int, int, int]
    peak: tuple[int, int]
    pixels: np.ndarray
    picture: np.ndarray


ScanMismatchError = ModelMismatchError
"""A scan used with a model other than the one it was made with."""


# -- the running reduction, per layer ----------------------------------------------------------


class _Running:
    """One layer's running results on the device: top-k and sums, merged batch by batch."""

    def __init__(self, channels: int, k: int, device: torch.device) -> None:
        self.k = k
        self.top_values = torch.full((channels, k), -math.inf, device=device)
        self.top_index = torch.full((channels, k), _NO_IMAGE, dtype=torch.int64, device=device)
        # Flat position of each example's maximum (empty slots: 0; their index marks them empty).
        self.top_pos = torch.zeros((channels, k), dtype=torch.int64, device=device)
        self.sum_mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.finite = torch.zeros(channels, dtype=torch.int64, device=device)
        self.max = torch.full((channels,), -math.inf, device=device)
        self.active = torch.zeros(channels, dtype=torch.int64, device=device)
        self.class_sum = torch.zeros((0, channels), dtype=torch.float64, device=device)
        self.class_sumsq = torch.zeros((0, channels), dtype=torch.float64, device=device)
        self.width = 0

    def add(
        self, maps: torch.Tensor, index: torch.Tensor, codes: torch.Tensor | None, n_labels: int
    ) -> None:
        self.width = maps.shape[-1]
        flat = maps.detach().flatten(2)
        if flat.dtype != torch.float32:
            flat = flat.float()
        b, c = flat.shape[:2]
        # Where the maximum is, is needed only for the images that enter the top-k: with a batch
        # well over k, find it for those alone (below), since along a dim the CPU's max with
        # indices is ~8× slower than amax.
        if b >= 2 * self.k:
            score, pos = flat.amax(-1), None
        else:
            score, pos = flat.max(-1)  # (B, C): the first row-major argmax
        mean = flat.mean(-1)
        ok = torch.isfinite(score) & torch.isfinite(mean)
        finite_max = torch.where(ok, score, -math.inf)
        # Images with NaN/Inf rank last, yet above empty slots (-inf), which sort after them.
        ranked = torch.where(ok, score, torch.finfo(torch.float32).min)
        mean_ok = torch.where(ok, mean, 0.0).double()
        self.max = torch.maximum(self.max, finite_max.amax(0))
        self.active += (score > 0).sum(0)
        self.sum_mean += mean_ok.sum(0)
        self.finite += ok.sum(0)
        if codes is not None:
            self._grow(n_labels)
            self.class_sum.index_add_(0, codes, mean_ok)
            self.class_sumsq.index_add_(0, codes, mean_ok * mean_ok)
        if pos is not None:
            self.merge(ranked.T, index.expand(c, b), pos.T)
            return
        # This batch's candidates carry their batch row as a negative position (-1 - row); those
        # that made the top-k get their argmax after the merge, on the device, with no sync.
        rows = torch.arange(b, device=flat.device)
        self.merge(ranked.T, index.expand(c, b), (-1 - rows).expand(c, b))
        new = self.top_pos < 0
        channel = torch.arange(c, device=flat.device)[:, None]
        picked = flat[(-1 - self.top_pos).clamp(0, b - 1), channel]  # (C, k, H·W)
        self.top_pos = torch.where(new, picked.argmax(-1), self.top_pos)

    def merge(
        self, values: torch.Tensor, index: torch.Tensor, pos: torch.Tensor, ordered: bool = True
    ) -> None:
        """Fold candidates (C, m) into the top-k: highest value first, ties to the lower index.

        ``ordered``: every candidate's index is above those already kept, ascending along a row
        (a scan's batches come in index order), so one stable sort by value breaks ties right;
        otherwise (candidates gathered from ranks) they are sorted by index first.
        """
        values = torch.cat([self.top_values, values], 1)
        index = torch.cat([self.top_index, index], 1)
        pos = torch.cat([self.top_pos, pos], 1)
        if not ordered:
            by_index = torch.argsort(index, dim=1, stable=True)
            values, index, pos = (t.gather(1, by_index) for t in (values, index, pos))
        by_value = torch.argsort(values, dim=1, descending=True, stable=True)[:, : self.k]
        self.top_values, self.top_index, self.top_pos = (
            t.gather(1, by_value) for t in (values, index, pos)
        )

    def _grow(self, n_labels: int) -> None:
        have = self.class_sum.shape[0]
        if n_labels > have:
            extra = (n_labels - have, self.class_sum.shape[1])
            zeros = self.class_sum.new_zeros(extra)
            self.class_sum = torch.cat([self.class_sum, zeros])
            self.class_sumsq = torch.cat([self.class_sumsq, zeros.clone()])


# -- the data -----------------------------------------------------------------------------------


@dataclass
class _Labels:
    """Labels seen so far: a code per label (in order of first sight), counts and examples."""

    codes: dict[Hashable, int] = field(default_factory=dict)
    counts: list[int] = field(default_factory=list)
    examples: list[list[int]] = field(default_factory=list)

    def encode(self, labels: Sequence[Hashable], indices: Sequence[int]) -> list[int]:
        out = []
        for label, index in zip(labels, indices, strict=True):
            code = self.codes.get(label)
            if code is None:
                code = self.codes[label] = len(self.codes)
                self.counts.append(0)
                self.examples.append([])
            self.counts[code] += 1
            if len(self.examples[code]) < _EXAMPLES_PER_LABEL:
                self.examples[code].append(index)
            out.append(code)
        return out


def _is_dataset(data: Any) -> bool:
    return (
        not isinstance(data, torch.utils.data.DataLoader)
        and hasattr(data, "__getitem__")
        and hasattr(data, "__len__")
        and not isinstance(data, (str, bytes, Mapping))
    )


def split_item(item: Any) -> tuple[Any, Any]:
    """An item or batch as ``(model inputs, label or None)``."""
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, (tuple, list)):
        if not item:
            raise ValueError("an item of the data is empty")
        return item[0], item[1] if len(item) > 1 else None
    if isinstance(item, Mapping):
        key = next((k for k in _LABEL_KEYS if k in item), None)
        inputs = {k: v for k, v in item.items() if k != key}
        return inputs, None if key is None else item[key]
    raise TypeError(
        "the data's items must be tensors, (tensor, label, ...) tuples or dicts of model inputs; "
        f"got {type(item).__name__}"
    )


def _shapes(inputs: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for _, t in tensors_in(inputs, "")]


def _check_items(data: Any, n: int) -> None:
    """Look at a few items before the long work: same input shapes everywhere."""
    picks = sorted({round(i * (n - 1) / max(1, _CHECKED_ITEMS - 1)) for i in range(_CHECKED_ITEMS)})
    first: list[tuple[int, ...]] | None = None
    for i in picks:
        inputs, _ = split_item(data[i])
        shapes = _shapes(inputs)
        if not shapes:
            raise ValueError(f"item {i} of the data holds no tensor to give the model")
        if first is None:
            first = shapes
        elif shapes != first:
            raise ValueError(
                f"the data's items have mixed shapes: item {picks[0]} is {first[0]}, item {i} "
                f"is {shapes[0]}; resize them to one shape (e.g. a transforms.Resize in the "
                "Dataset) so they can be batched"
            )


def _collate(items: list[tuple[int, Any]]) -> tuple[list[int], Any, list[Any] | None]:
    indices = [i for i, _ in items]
    split = [split_item(item) for _, item in items]
    shapes = [_shapes(inputs) for inputs, _ in split]
    for i, s in zip(indices, shapes, strict=True):
        if s != shapes[0]:
            raise ValueError(
                f"the data's items have mixed shapes: item {indices[0]} is {shapes[0][0]}, item "
                f"{i} is {s[0]}; resize them to one shape so they can be batched"
            )
    inputs = torch.utils.data.default_collate([inputs for inputs, _ in split])
    labels = [label for _, label in split]
    return indices, inputs, None if labels[0] is None else [plain_label(x) for x in labels]


class _Indexed(torch.utils.data.Dataset):
    """(index, item) for the indices this rank scans."""

    def __init__(self, data: Any, indices: range) -> None:
        self.data = data
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        index = self.indices[i]
        return index, self.data[index]


def plain_label(label: Any) -> Any:
    """A label as a JSON-able, hashable Python value."""
    if isinstance(label, torch.Tensor):
        label = label.item() if label.numel() == 1 else tuple(label.tolist())
    elif isinstance(label, np.generic):
        label = label.item()
    if isinstance(label, (bool, int, float, str)) or label is None:
        return label
    return str(label)


def _batches(
    data: Any, batch_size: int, num_workers: int, rank: int, world: int
) -> tuple[Iterator[tuple[list[int], Any, list[Any] | None]], int | None]:
    """Batches as (image indices, model inputs, labels or None), and how many images."""
    if _is_dataset(data):
        n = len(data)
        if n == 0:
            raise ValueError("the dataset is empty: there is nothing to scan")
        _check_items(data, n)
        mine = range(rank, n, world)
        loader = torch.utils.data.DataLoader(
            _Indexed(data, mine),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
        )
        return iter(loader), len(mine)
    if world > 1:
        raise ValueError(
            "under torch.distributed, scan shards the data itself: pass a Dataset (not a "
            "DataLoader or an iterable), so that every image is scanned exactly once"
        )
    sized: Any = data.dataset if isinstance(data, torch.utils.data.DataLoader) else None
    total = len(sized) if hasattr(sized, "__len__") else None

    def iterate() -> Iterator[tuple[list[int], Any, list[Any] | None]]:
        start = 0
        for batch in data:
            inputs, labels = split_item(batch)
            shapes = _shapes(inputs)
            if not shapes:
                raise ValueError(f"batch {start} of the data holds no tensor to give the model")
            size = shapes[0][0]
            indices = list(range(start, start + size))
            start += size
            if labels is not None:
                labels = [plain_label(x) for x in labels]
                if len(labels) != size:
                    raise ValueError(f"a batch has {size} inputs but {len(labels)} labels")
            yield indices, inputs, labels

    return iterate(), total


def _to_device(inputs: Any, device: torch.device) -> Any:
    return rebuild(inputs, lambda t: t.to(device, non_blocking=True))


# -- scan ---------------------------------------------------------------------------------------


def scan(
    model: nn.Module,
    data: Any,
    layers: LayerSelector | None = None,
    k: int = 9,
    batch_size: int = 64,
    labels: Sequence[Hashable] | None = None,
    progress: bool = True,
    *,
    num_workers: int = 0,
    device: torch.device | str | None = None,
) -> Scan:
    """Stream ``data`` through ``model`` and keep, per channel of ``layers``, its top-``k``
    images and its dataset statistics (definitions in the module docstring).

    ``data`` is a ``torch.utils.data.Dataset`` (items: a tensor, a ``(tensor, label, ...)``
    tuple or a dict of model inputs with an optional ``"label"``; a list counts as one, as for
    a DataLoader), a DataLoader, or an iterator of such batches (``iter(batches)``).
    ``labels`` gives a label per image instead of the items' own (for a Dataset, one per
    item). ``layers`` takes the names and selectors of
    :func:`fmwidget.capture.capture` (default: the same layers). Batches go to ``device``
    (default: the model's). A progress bar shows images/s; an interrupt (Ctrl-C, the notebook's
    stop button) returns the partial scan so far, whose ``complete`` is False.

    Example::

        s = scan(model, datasets.MNIST(...), layers=["conv1", "conv2"], k=16)
        s.top("conv2", 5)[0]     # Example(index=..., value=..., row=..., col=...)
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer (examples kept per channel), got {k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if device is None:
        device = next(model.parameters(), torch.empty(0)).device
    device = torch.device(device)
    given_labels = None if labels is None else [plain_label(x) for x in labels]
    if given_labels is not None and _is_dataset(data) and len(given_labels) != len(data):
        raise ValueError(
            f"labels= has {len(given_labels)} labels for a dataset of {len(data)} items"
        )
    batches, total = _batches(data, batch_size, num_workers, rank, world)
    stream = _Stream(k, device, given_labels)
    bar = _progress_bar(total, progress and rank == 0)
    images, complete, started = 0, True, time.perf_counter()
    try:
        with LayerTaps(model, layers, stream.reduce) as taps:
            try:
                for indices, inputs, batch_labels in batches:
                    stream.feed(taps, indices, inputs, batch_labels)
                    images += len(indices)
                    bar.update(len(indices))
            except KeyboardInterrupt:
                if distributed:
                    raise
                complete = False
            infos = dict(taps.infos)
    finally:
        bar.close()
    running, seen = stream.running, stream.labels
    if images == 0:
        raise ValueError("the data gave no images: there is nothing to scan")
    if given_labels is not None and complete and images != len(given_labels):
        raise ValueError(f"labels= has {len(given_labels)} labels for {images} images")
    result = _Result(running, seen, images)
    if distributed:
        result = _merge_ranks(result, k)
    return Scan._from_result(
        result, infos, k, complete, model_record(model), time.perf_counter() - started
    )


class _Stream:
    """The running results of a scan, fed one batch at a time; ``reduce`` is the taps' callback."""

    def __init__(self, k: int, device: torch.device, given_labels: list[Any] | None) -> None:
        self.k = k
        self.device = device
        self.given_labels = given_labels
        self.running: dict[str, _Running] = {}
        self.labels = _Labels()
        self.index = torch.empty(0, dtype=torch.int64)
        self.codes: torch.Tensor | None = None

    def feed(
        self, taps: LayerTaps, indices: list[int], inputs: Any, labels: list[Any] | None
    ) -> None:
        """Run one batch (images ``indices``) through the tapped model."""
        given = self.given_labels
        if given is not None:
            if indices[-1] >= len(given):
                raise ValueError(f"labels= has {len(given)} labels, and the data has more images")
            labels = [given[i] for i in indices]
        # Host → device copies that do not wait; the reductions never come back per batch.
        self.index = torch.tensor(indices, dtype=torch.int64).to(self.device, non_blocking=True)
        self.codes = None
        if labels is not None:
            codes = torch.tensor(self.labels.encode(labels, indices), dtype=torch.int64)
            self.codes = codes.to(self.device, non_blocking=True)
        taps.forward(_to_device(inputs, self.device))

    def reduce(self, name: str, maps: torch.Tensor) -> None:
        layer = self.running.get(name)
        if layer is None:
            layer = self.running[name] = _Running(maps.shape[1], self.k, maps.device)
        index, codes = self.index, self.codes
        if index.device != maps.device:
            index = index.to(maps.device)
        if codes is not None and codes.device != maps.device:
            codes = codes.to(maps.device)
        layer.add(maps, index, codes, len(self.labels.codes))


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int | None, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="scan", smoothing=0.1)


# -- merging ranks ------------------------------------------------------------------------------


@dataclass
class _Result:
    running: dict[str, _Running]
    labels: _Labels
    images: int


def _merge_ranks(result: _Result, k: int) -> _Result:
    """Every rank's results merged exactly, identical on every rank."""
    world = dist.get_world_size()
    gloo = dist.get_backend() == "gloo"
    # Labels: each rank saw its own; agree on one order (sorted, as the results report them).
    mine = {
        "codes": list(result.labels.codes),
        "counts": result.labels.counts,
        "examples": result.labels.examples,
        "images": result.images,
    }
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine)
    merged = _Labels()
    order = sorted({label for r in everyone for label in r["codes"]}, key=_label_key)
    for label in order:
        merged.codes[label] = len(merged.codes)
        merged.counts.append(0)
        merged.examples.append([])
    for r in everyone:
        for label, count, examples in zip(r["codes"], r["counts"], r["examples"], strict=True):
            code = merged.codes[label]
            merged.counts[code] += count
            merged.examples[code] = sorted(merged.examples[code] + examples)[:_EXAMPLES_PER_LABEL]
    remap = [merged.codes[label] for label in result.labels.codes]
    for layer in result.running.values():
        device = layer.top_values.device
        work = torch.device("cpu") if gloo else device

        reduced = partial(_all_reduce, work=work, home=device)
        gathered = partial(_all_gather, work=work, home=device, world=world)

        values, index, pos = (
            gathered(t) for t in (layer.top_values, layer.top_index, layer.top_pos)
        )
        layer.top_values = torch.full_like(layer.top_values, -math.inf)
        layer.top_index = torch.full_like(layer.top_index, _NO_IMAGE)
        layer.top_pos = torch.zeros_like(layer.top_pos)
        layer.merge(values, index, pos, ordered=False)
        layer.sum_mean = reduced(layer.sum_mean)
        layer.finite = reduced(layer.finite)
        layer.active = reduced(layer.active)
        layer.max = reduced(layer.max, op=dist.ReduceOp.MAX)
        channels = layer.sum_mean.shape[0]
        for attr in ("class_sum", "class_sumsq"):
            local = getattr(layer, attr)
            full = local.new_zeros((len(order), channels))
            if remap:
                full.index_add_(0, torch.tensor(remap, device=local.device), local[: len(remap)])
            setattr(layer, attr, reduced(full))
    total = sum(r["images"] for r in everyone)
    return _Result(result.running, merged, total)


def _all_reduce(
    t: torch.Tensor, *, work: torch.device, home: torch.device, op: Any = None
) -> torch.Tensor:
    t = t.to(work).contiguous()
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op is None else op)
    return t.to(home)


def _all_gather(
    t: torch.Tensor, *, work: torch.device, home: torch.device, world: int
) -> torch.Tensor:
    """Every rank's (C, m) ``t`` side by side: (C, world × m)."""
    t = t.to(work).contiguous()
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t)
    return torch.cat(parts, 1).to(home)


def _label_key(label: Any) -> tuple[int, Any]:
    """Sorted order of labels of mixed types: numbers, then text."""
    if isinstance(label, (int, float)) and not isinstance(label, bool):
        return (0, label)
    return (1, str(label))


# -- the result ---------------------------------------------------------------------------------


class Scan:
    """The result of :func:`scan`: per layer and channel, the top-k images and dataset statistics.

    Attributes:
        layers: the scanned layer names, in call order.
        num_images: how many images the results cover.
        k: examples kept per channel.
        complete: False when the scan was interrupted (the results cover the first images).
        labels: the labels seen, sorted (empty without labels); ``label_counts`` per label.
        fingerprint: the model's (see :func:`fingerprint`).
        seconds: how long the scan took.
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        meta: dict[str, Any],
    ) -> None:
        self._tensors = tensors
        self._meta = meta
        self.layers: list[str] = list(meta["layers"])
        self.num_images: int = int(meta["num_images"])
        self.k: int = int(meta["k"])
        self.complete: bool = bool(meta["complete"])
        self.labels: list[Any] = list(meta["labels"])
        self.label_counts: list[int] = list(meta["label_counts"])
        self.label_examples: list[list[int]] = [list(e) for e in meta["label_examples"]]
        self.fingerprint: str = str(meta["model"]["fingerprint"])
        self.seconds: float = float(meta.get("seconds", 0.0))
        self.shapes: dict[str, list[int]] = {n: list(s) for n, s in meta["shapes"].items()}

    @classmethod
    def _from_result(
        cls,
        result: _Result,
        infos: Mapping[str, Any],
        k: int,
        complete: bool,
        model: dict[str, Any],
        seconds: float,
    ) -> Scan:
        names = [n for n in infos if n in result.running]
        order = sorted(result.labels.codes, key=_label_key)
        perm = [result.labels.codes[label] for label in order]
        tensors: dict[str, torch.Tensor] = {}
        for i, name in enumerate(names):
            layer = result.running[name]
            width = max(1, layer.width)
            present = layer.top_index != _NO_IMAGE
            cpu = {
                "top_values": torch.where(
                    layer.top_values == torch.finfo(torch.float32).min, math.nan, layer.top_values
                ),
                "top_index": torch.where(present, layer.top_index, -1),
                "top_row": torch.where(present, layer.top_pos // width, -1),
                "top_col": torch.where(present, layer.top_pos % width, -1),
                "mean": layer.sum_mean / layer.finite.clamp(min=1),
                "max": layer.max,
                "active": layer.active,
                "finite": layer.finite,
                "class_sum": layer.class_sum[perm] if perm else layer.class_sum[:0],
                "class_sumsq": layer.class_sumsq[perm] if perm else layer.class_sumsq[:0],
            }
            for key, value in cpu.items():
                tensors[f"{i}.{key}"] = value.detach().cpu().contiguous()
        meta = {
            "layers": names,
            "shapes": {n: list(infos[n].shape[1:]) for n in names},
            "num_images": result.images,
            "k": k,
            "complete": complete,
            "labels": order,
            "label_counts": [result.labels.counts[c] for c in perm],
            "label_examples": [result.labels.examples[c] for c in perm],
            "model": model,
            "seconds": seconds,
        }
        return cls(tensors, meta)

    def __repr__(self) -> str:
        state = "" if self.complete else ", interrupted"
        return (
            f"Scan({len(self.layers)} layers, {self.num_images} images, k={self.k}"
            f"{', ' + str(len(self.labels)) + ' labels' if self.labels else ''}{state})"
        )

    # -- queries ---------------------------------------------------------------------------

    def top(self, layer: str, channel: int) -> list[Example]:
        """The channel's top images, best first (fewer than ``k`` if the data had fewer)."""
        i = self._layer(layer)
        c = self._channel(layer, channel)
        t = self._tensors
        rows = zip(
            t[f"{i}.top_index"][c].tolist(),
            t[f"{i}.top_values"][c].tolist(),
            t[f"{i}.top_row"][c].tolist(),
            t[f"{i}.top_col"][c].tolist(),
            strict=True,
        )
        return [Example(index, value, row, col) for index, value, row, col in rows if index >= 0]

    def stats(self, layer: str) -> dict[str, np.ndarray]:
        """Per-channel ``mean``, ``max``, ``active`` (fraction), ``dead`` (bool) and ``nonfinite``
        (images with NaN/Inf), each an array of shape (C,)."""
        i = self._layer(layer)
        t = self._tensors
        active = t[f"{i}.active"].double().numpy()
        return {
            "mean": t[f"{i}.mean"].numpy(),
            "max": t[f"{i}.max"].double().numpy(),
            "active": active / max(1, self.num_images),
            "dead": active == 0,
            "nonfinite": self.num_images - t[f"{i}.finite"].numpy(),
        }

    def class_means(self, layer: str) -> np.ndarray:
        """(labels × channels) mean of spatial means per label; rows follow :attr:`labels`."""
        sums = self._class_tensor(layer, "class_sum")
        return sums / np.maximum(1, np.asarray(self.label_counts, dtype=np.float64))[:, None]

    def selectivity(self, layer: str) -> np.ndarray:
        """(labels × channels) class selectivity index in [−1, 1] (module docstring)."""
        means = self.class_means(layer)
        n = means.shape[0]
        if n < 2:
            raise ValueError("selectivity needs at least two labels in the scan")
        rest = (means.sum(0, keepdims=True) - means) / (n - 1)
        denom = np.abs(means) + np.abs(rest)
        return np.divide(means - rest, denom, out=np.zeros_like(means), where=denom > 0)

    def selective(self, layer: str, label: Any, n: int = 10) -> list[int]:
        """The ``n`` channels most selective for ``label``, most selective first."""
        row = self._label(label)
        scores = self.selectivity(layer)[row]
        order = np.lexsort((np.arange(scores.size), -scores))
        return [int(c) for c in order[:n]]

    def effect(self, layer: str, a: Any, b: Any) -> np.ndarray:
        """Cohen's d per channel of the per-image spatial means between labels ``a`` and ``b``."""
        ia, ib = self._label(a), self._label(b)
        sums, sumsq = (
            self._class_tensor(layer, "class_sum"),
            self._class_tensor(layer, "class_sumsq"),
        )
        na, nb = self.label_counts[ia], self.label_counts[ib]
        if na + nb < 3 or min(na, nb) < 1:
            raise ValueError(f"labels {a!r} and {b!r} have {na} and {nb} images; d needs 3 or more")
        ma, mb = sums[ia] / na, sums[ib] / nb
        va = (sumsq[ia] - na * ma * ma) / max(1, na - 1)
        vb = (sumsq[ib] - nb * mb * mb) / max(1, nb - 1)
        pooled = np.sqrt(np.maximum(0.0, ((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)))
        return np.divide(ma - mb, pooled, out=np.zeros_like(ma), where=pooled > 0)

    def crop(self, layer: str, channel: int, rank: int, dataset: Any, model: nn.Module) -> Crop:
        """The ``rank``-th example's receptive-field crop from ``dataset``, peak marked.

        The receptive field is measured on ``model`` (see :mod:`fmwidget.receptive`).
        """
        examples = self.top(layer, channel)
        if not 0 <= rank < len(examples):
            raise IndexError(
                f"rank {rank} is out of range: the channel has {len(examples)} examples"
            )
        return _crops(layer, [examples[rank]], dataset, model)[0]

    def crops(self, layer: str, channel: int, dataset: Any, model: nn.Module) -> list[Crop]:
        """:meth:`crop` of every example of the channel, best first (one receptive-field pass)."""
        return _crops(layer, self.top(layer, channel), dataset, model)

    # -- files -----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the scan to one safetensors file (tensors, and the metadata as JSON in it)."""
        write(path, "scan", self._tensors, self._meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module | None = None) -> Scan:
        """Read a scan saved with :meth:`save`; with ``model``, refuse one made with another model.

        safetensors holds only tensors and text: loading runs no code.
        """
        tensors, meta = read(path, "scan")
        loaded = cls(tensors, meta)
        if model is not None:
            loaded.check_model(model)
        return loaded

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`ScanMismatchError` unless ``model`` is the one this scan was made with."""
        check_model(self._meta["model"], model, "scan")

    # -- internals -------------------------------------------------------------------------

    def _layer(self, layer: str) -> int:
        try:
            return self.layers.index(layer)
        except ValueError:
            raise UnknownLayerError(layer, self.layers) from None

    def _channel(self, layer: str, channel: int) -> int:
        count = self.shapes[layer][0]
        if not isinstance(channel, int) or not 0 <= channel < count:
            raise IndexError(f"channel {channel!r} is out of range: layer {layer!r} has {count}")
        return channel

    def _label(self, label: Any) -> int:
        if not self.labels:
            raise ValueError("this scan has no labels: pass labels= (or labelled items) to scan")
        try:
            return self.labels.index(plain_label(label))
        except ValueError:
            raise KeyError(
                f"label {label!r} is not in the scan; its labels: {self.labels[:10]}"
            ) from None

    def _class_tensor(self, layer: str, key: str) -> np.ndarray:
        if not self.labels:
            raise ValueError("this scan has no labels: pass labels= (or labelled items) to scan")
        return self._tensors[f"{self._layer(layer)}.{key}"].numpy()


def _crops(layer: str, examples: list[Example], dataset: Any, model: nn.Module) -> list[Crop]:
    if not examples:
        return []
    images = []
    for ex in examples:
        inputs, _ = split_item(dataset[ex.index])
        image = next((t for _, t in tensors_in(inputs, "") if t.dim() == 3), None)
        if image is None:
            raise ValueError(f"item {ex.index} holds no (C, H, W) image to crop")
        images.append(image)
    fields = fields_and_centres(model, as_batch(inputs), layer, [(e.row, e.col) for e in examples])
    out = []
    for ex, image, ((top, left, bottom, right), centre) in zip(
        examples, images, fields, strict=True
    ):
        patch = image[:, top:bottom, left:right].detach().float().cpu().permute(1, 2, 0)
        pixels = to_rgb8(patch.numpy())
        peak = (centre[0] - top, centre[1] - left)
        box = (top, left, bottom, right)
        out.append(Crop(ex.index, ex.value, ex.row, ex.col, box, peak, pixels, _mark(pixels, peak)))
    return out


def as_batch(inputs: Any) -> Any:
    """One item's model inputs as a batch of one."""
    return rebuild(inputs, lambda t: t[None])


def _mark(pixels: np.ndarray, peak: tuple[int, int]) -> np.ndarray:
    """``pixels`` with a ring around ``peak`` (magenta over a dark edge, visible on any image)."""
    out = pixels.copy()
    h, w = out.shape[:2]
    r = max(2, min(h, w) // 8)
    yy, xx = np.ogrid[:h, :w]
    d = np.sqrt((yy - peak[0]) ** 2 + (xx - peak[1]) ** 2)
    out[(d >= r + 0.5) & (d < r + 1.5)] = (0, 0, 0)
    out[(d >= r - 0.5) & (d < r + 0.5)] = (255, 0, 255)
    return out
