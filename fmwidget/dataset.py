"""The widget's dataset side: a :class:`~fmwidget.scan.Scan` and the dataset it was made from.

What the view gets from it: per layer the dataset statistics of every channel (for sorting and
for marking channels dead across the dataset), the selectivity for a label, effect sizes between
two labels, and per channel the top examples as receptive-field crops; clicking one makes that
image the widget's input (``docs/protocol.md``, "Dataset scans").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import traitlets
from torch import nn

from fmwidget.calling import tensors_in
from fmwidget.images import to_rgb8
from fmwidget.scan import Scan, as_batch, plain_label, split_item
from fmwidget.wire import FLAG_DATASET_DEAD, Payload

__all__ = ["DatasetContext", "ScanFeature"]


@dataclass
class DatasetContext:
    """A scan, and (optionally) the dataset its image indices refer to."""

    scan: Scan
    dataset: Any = None

    @classmethod
    def checked(cls, scan: Any, dataset: Any, model: nn.Module | None) -> DatasetContext:
        """``scan`` and ``dataset`` for a widget of ``model``, refused unless they belong to it."""
        if not isinstance(scan, Scan):
            raise TypeError(f"scan= takes an fmwidget.Scan, got {type(scan).__name__}")
        context = cls(scan, dataset)
        context.check(model)
        return context

    def check(self, model: nn.Module | None) -> None:
        """Refuse a scan made with another model, and a dataset of another size."""
        if model is not None:
            self.scan.check_model(model)
        if self.dataset is not None and hasattr(self.dataset, "__len__"):
            n = len(self.dataset)
            if self.scan.complete and n != self.scan.num_images:
                raise ValueError(
                    f"dataset= has {n} items but the scan covers {self.scan.num_images} images; "
                    "pass the dataset the scan was made from"
                )

    def info(self) -> dict[str, Any]:
        """The ``scan_info`` trait."""
        s = self.scan
        return {
            "images": s.num_images,
            "k": s.k,
            "complete": s.complete,
            "labels": [str(label) for label in s.labels],
            "layers": list(s.layers),
            "crops": self.dataset is not None,
        }

    def label(self, text: str) -> Any:
        """The scan label whose text is ``text`` (labels travel as text)."""
        for label in self.scan.labels:
            if str(label) == text:
                return label
        raise ValueError(f"label {text!r} is not in the scan; its labels: {self.info()['labels']}")

    def layer_payload(
        self,
        layer: str,
        channels: list[int] | None,
        label: str | None,
        pair: list[str],
    ) -> Payload:
        """What a ``layer`` reply carries about ``layer`` from the scan (nothing if not scanned)."""
        s = self.scan
        if layer not in s.layers:
            return {}, {}
        pick = slice(None) if channels is None else channels
        stats = s.stats(layer)
        arrays: dict[str, np.ndarray] = {
            "scan_mean": stats["mean"][pick].astype(np.float32),
            "scan_max": stats["max"][pick].astype(np.float32),
            "scan_active": stats["active"][pick].astype(np.float32),
        }
        meta: dict[str, Any] = {
            "images": s.num_images,
            "dead": int(stats["dead"].sum()),
            "label": None,
            "pair": [],
        }
        if label is not None and len(s.labels) >= 2:
            row = s.labels.index(self.label(label))
            arrays["scan_selectivity"] = s.selectivity(layer)[row][pick].astype(np.float32)
            meta["label"] = label
        if len(pair) == 2:
            a, b = self.label(pair[0]), self.label(pair[1])
            arrays["scan_effect"] = s.effect(layer, a, b)[pick].astype(np.float32)
            ia, ib = s.labels.index(a), s.labels.index(b)
            meta["pair"] = list(pair)
            meta["counts"] = {pair[0]: s.label_counts[ia], pair[1]: s.label_counts[ib]}
            meta["examples"] = {pair[0]: s.label_examples[ia], pair[1]: s.label_examples[ib]}
        return meta, arrays

    def dead_flags(self, layer: str, channels: list[int] | None) -> np.ndarray | None:
        """The ``FLAG_DATASET_DEAD`` bit per channel sent, or None if the layer was not scanned."""
        if layer not in self.scan.layers:
            return None
        dead = self.scan.stats(layer)["dead"]
        if channels is not None:
            dead = dead[channels]
        return (dead * FLAG_DATASET_DEAD).astype(np.uint8)

    def examples(self, layer: str, channel: int, model: nn.Module | None) -> Payload:
        """The ``examples`` reply: the channel's top examples, with crops when possible."""
        s = self.scan
        examples = s.top(layer, channel)
        labels = self._labels_of([e.index for e in examples])
        entries: list[dict[str, Any]] = [
            {"index": e.index, "value": e.value, "row": e.row, "col": e.col, "label": lab}
            for e, lab in zip(examples, labels, strict=True)
        ]
        meta: dict[str, Any] = {"layer": layer, "channel": channel, "examples": entries}
        if self.dataset is None or model is None:
            why = (
                "pass dataset= to the widget" if self.dataset is None else "the widget has no model"
            )
            meta.update(crops=False, note=f"no crops: {why}")
            return meta, {}
        crops = s.crops(layer, channel, self.dataset, model)
        offset = 0
        for entry, crop in zip(entries, crops, strict=True):
            h, w = crop.pixels.shape[:2]
            entry.update(box=list(crop.box), peak=list(crop.peak), shape=[h, w], offset=offset)
            offset += h * w * 3
        # Unmarked: the view rings the peak at its own resolution (a ring drawn into a crop of a
        # few pixels would cover it).
        pixels = np.concatenate([c.pixels.reshape(-1) for c in crops]) if crops else np.zeros(0)
        meta["crops"] = True
        return meta, {"pixels": pixels.astype(np.uint8)}

    def pictures(self, indices: list[int], max_side: int) -> Payload:
        """The ``pictures`` reply: dataset images as RGB uint8, each at most ``max_side`` pixels
        on its longer side (nearest-neighbour), one after another in ``pixels``."""
        entries: list[dict[str, Any]] = []
        parts = []
        offset = 0
        labels = self._labels_of(indices)
        for index, label in zip(indices, labels, strict=True):
            _, image = self.item(index)
            if image is None:
                raise ValueError(f"item {index} holds no (C, H, W) image to show")
            picture = to_rgb8(image.detach().float().cpu().permute(1, 2, 0).numpy())
            h, w = picture.shape[:2]
            step = max(1, -(-max(h, w) // max_side))
            picture = np.ascontiguousarray(picture[::step, ::step])
            entries.append(
                {"index": index, "label": label, "shape": list(picture.shape[:2]), "offset": offset}
            )
            parts.append(picture.reshape(-1))
            offset += picture.size
        return {"pictures": entries}, {"pixels": np.concatenate(parts).astype(np.uint8)}

    def item(self, index: int) -> tuple[Any, torch.Tensor | None]:
        """Dataset item ``index`` as a batch of one for the model, and its image (C, H, W)."""
        if self.dataset is None:
            raise ValueError("the widget has no dataset: pass dataset= to show dataset images")
        if not 0 <= index < len(self.dataset):
            raise IndexError(f"image {index} is out of range: the dataset has {len(self.dataset)}")
        inputs, _ = split_item(self.dataset[index])
        image = next((t for _, t in tensors_in(inputs, "") if t.dim() == 3), None)
        return as_batch(inputs), image

    def _labels_of(self, indices: list[int]) -> list[str | None]:
        if self.dataset is None or not self.scan.labels:
            return [None] * len(indices)
        out: list[str | None] = []
        for i in indices:
            _, label = split_item(self.dataset[i])
            out.append(None if label is None else str(plain_label(label)))
        return out


class ScanFeature(traitlets.HasTraits):
    """The widget's scan traits and API (mixed into ``FeatureMapWidget``).

    ``scan=`` / ``w.scan``: a :class:`~fmwidget.scan.Scan` of this model; ``dataset=`` /
    ``w.dataset``: the data it was made from (for crops, labels and :meth:`show_example`).
    """

    scan_info = traitlets.Dict(allow_none=True).tag(sync=True)
    scan_label = traitlets.Unicode(None, allow_none=True).tag(sync=True)
    scan_pair = traitlets.List(traitlets.Unicode()).tag(sync=True)

    _datasets: DatasetContext | None = None

    @traitlets.default("scan_info")
    def _no_scan(self) -> None:
        return None

    @property
    def scan(self) -> Scan | None:
        """The dataset scan the view shows (``None``: none); assigning one checks it was made
        with this widget's model and updates the view."""
        return None if self._datasets is None else self._datasets.scan

    @scan.setter
    def scan(self, scan: Scan | None) -> None:
        model = getattr(self, "model", None)
        self._set_datasets(
            None if scan is None else DatasetContext.checked(scan, self.dataset, model)
        )

    @property
    def dataset(self) -> Any:
        """The dataset of the scan: its images become crops, and :meth:`show_example` inputs."""
        return None if self._datasets is None else self._datasets.dataset

    @dataset.setter
    def dataset(self, dataset: Any) -> None:
        if self._datasets is None:
            raise ValueError("set w.scan first: a dataset is shown through its scan")
        model = getattr(self, "model", None)
        self._set_datasets(DatasetContext.checked(self._datasets.scan, dataset, model))

    @property
    def datasets(self) -> DatasetContext | None:
        """The scan and its dataset, as the request handlers read them."""
        return self._datasets

    def show_example(self, index: int) -> None:
        """Make image ``index`` of the dataset the widget's input (the model re-runs on it).

        Example:
            >>> w.show_example(w.scan.top("conv2", 3)[0].index)  # doctest: +SKIP
        """
        if self._datasets is None:
            raise ValueError("the widget has no scan: pass scan= and dataset= to the widget")
        inputs, image = self._datasets.item(index)
        self.set_inputs(inputs, image=None if image is None else image[None])  # type: ignore[attr-defined]

    def _set_datasets(self, context: DatasetContext | None) -> None:
        """Show ``context`` (already checked against the model), or no scan."""
        self._datasets = context
        with self.hold_trait_notifications():
            self.set_trait("scan_info", None if self._datasets is None else self._datasets.info())
            labels = [] if self.scan_info is None else self.scan_info["labels"]
            if self.scan_label not in labels:
                self.scan_label = None
            if not set(self.scan_pair) <= set(labels):
                self.scan_pair = []

    @traitlets.validate("scan_label")
    def _valid_scan_label(self, proposal: dict[str, Any]) -> str | None:
        label = proposal["value"]
        if label is not None:
            labels = [] if self.scan_info is None else self.scan_info["labels"]
            if label not in labels:
                raise traitlets.TraitError(
                    f"scan_label {label!r} is not a label of the widget's scan; its labels: "
                    f"{labels[:10]}"
                )
        return label

    @traitlets.validate("scan_pair")
    def _valid_scan_pair(self, proposal: dict[str, Any]) -> list[str]:
        pair = list(proposal["value"])
        labels = [] if self.scan_info is None else self.scan_info["labels"]
        if pair and (len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(labels)):
            raise traitlets.TraitError(
                f"scan_pair must be two different labels of the widget's scan {labels[:10]}, "
                f"got {pair}"
            )
        return pair
