"""``pictures``: small pictures of dataset images (a group audit's examples of each group)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fmwidget import wire
from fmwidget.handlers.examples import datasets_of
from fmwidget.handlers.fields import BadRequest, View
from fmwidget.validation import is_int

#: At most this many pictures per request, each at most this many pixels on its longer side.
MAX_PICTURES = 16
MAX_SIDE = 64


@dataclass(frozen=True)
class PicturesRequest:
    indices: list[int]


def parse(content: dict[str, Any], view: View) -> PicturesRequest:
    datasets = datasets_of(view)
    indices = content.get("indices")
    if not isinstance(indices, list) or not indices or len(indices) > MAX_PICTURES:
        raise BadRequest(
            f"indices must be a list of 1 to {MAX_PICTURES} image indices, got {indices!r}"
        )
    n = datasets.scan.num_images
    bad = [i for i in indices if not is_int(i) or not 0 <= i < n]
    if bad:
        raise BadRequest(f"image indices {bad} are out of range: the scan covers {n} images")
    if datasets.dataset is None:
        raise BadRequest("the widget has no dataset: pass dataset= to the widget to see its images")
    return PicturesRequest([int(i) for i in indices])


def handle(request: PicturesRequest, view: View) -> wire.Payload:
    return datasets_of(view).pictures(request.indices, MAX_SIDE)
