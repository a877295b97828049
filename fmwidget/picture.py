"""A static picture of the grid, drawn in the kernel: what shows where widgets do not render.

The widget's mimebundle carries it as ``image/png`` next to the live view: JupyterLab shows the
widget, while GitHub, nbviewer, VS Code without widgets and ``nbconvert --to html`` show this
picture. Colours come from ``fmwidget/colormaps.json``, the same tables the front end draws with.

    >>> import torch
    >>> png = grid_png(torch.rand(6, 8, 8), colormap="viridis", title="conv1 · 6×8×8")
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from fmwidget.session import Session

__all__ = ["colormap_table", "grid_png", "view_png", "view_title", "with_picture"]

_log = logging.getLogger("fmwidget.widget")

#: Width the picture aims for, in pixels (a notebook cell's width).
WIDTH = 800
#: The largest side of a tile, in pixels.
MAX_TILE = 64
_GAP = 2
_HEADER = 26
_BACKGROUND = (243, 243, 243)
_GAP_COLOR = (255, 255, 255)
_TEXT = (33, 33, 33)
# Palette slots: 252 levels of the colormap, then NaN, gap, header band and text.
_LEVELS = 252
_NAN, _GAP_INDEX, _HEADER_INDEX, _TEXT_INDEX = 252, 253, 254, 255


@cache
def _tables() -> dict[str, object]:
    return json.loads((resources.files("fmwidget") / "colormaps.json").read_text())


@cache
def colormap_table(name: str) -> np.ndarray:
    """The (256, 3) uint8 colour table of a colormap (``gray``, ``viridis``, ``magma``,
    ``diverging``, ``turbo``), as the front end uses it."""
    tables = _tables()["tables"]
    assert isinstance(tables, dict)
    if name not in tables:
        raise ValueError(f"unknown colormap {name!r}; expected one of {', '.join(tables)}")
    raw = bytes.fromhex(tables[name])
    return np.frombuffer(raw, dtype=np.uint8).reshape(256, 3)


def grid_png(
    maps: torch.Tensor,
    *,
    colormap: str = "gray",
    ranges: torch.Tensor | None = None,
    title: str = "",
    width: int = WIDTH,
) -> bytes:
    """``maps`` (C, H, W) as a grid of colour tiles under a one-line ``title``, PNG-encoded.

    ``ranges`` (C, 2) gives each channel's [low, high] (default: its own finite min and max, the
    view's "channel" scale). NaN and ±Inf are magenta, as in the view. Tiles are sampled nearest-
    neighbour (never larger than :data:`MAX_TILE` pixels), and the picture is a palette PNG: one
    byte per pixel, 252 levels of the colormap, so a notebook stays small.
    """
    values = maps.detach().float().cpu()
    c, h, w = values.shape
    cols = max(1, math.ceil(math.sqrt(c * h / max(1, w))))
    rows = math.ceil(c / cols)
    tile = max(1, min(MAX_TILE, (width - _GAP * (cols + 1)) // cols))
    if h >= w:
        tile_h, tile_w = tile, max(1, round(tile * w / h))
    else:
        tile_h, tile_w = max(1, round(tile * h / w)), tile
    if ranges is None:
        ranges = _own_ranges(values)
    lo = ranges[:, 0].view(c, 1, 1)
    span = (ranges[:, 1] - ranges[:, 0]).view(c, 1, 1)
    unit = torch.where(span > 0, (values - lo) / torch.where(span > 0, span, 1.0), 0.0)
    index = (unit.clamp(0, 1) * (_LEVELS - 1)).round().to(torch.uint8).numpy()
    index[~torch.isfinite(values).numpy()] = _NAN
    ys = (np.arange(tile_h) * h // tile_h)[:, None]
    xs = (np.arange(tile_w) * w // tile_w)[None, :]
    canvas = np.full(
        (_HEADER + rows * (tile_h + _GAP) + _GAP, cols * (tile_w + _GAP) + _GAP),
        _GAP_INDEX,
        np.uint8,
    )
    canvas[:_HEADER] = _HEADER_INDEX
    for k in range(c):
        r, q = divmod(k, cols)
        top, left = _HEADER + _GAP + r * (tile_h + _GAP), _GAP + q * (tile_w + _GAP)
        canvas[top : top + tile_h, left : left + tile_w] = index[k][ys, xs]
    picture = Image.fromarray(canvas, mode="P")
    picture.putpalette(_palette(colormap))
    draw = ImageDraw.Draw(picture)
    draw.text((8, 6), title.replace("×", "x"), fill=_TEXT_INDEX, font=ImageFont.load_default())
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _palette(colormap: str) -> list[int]:
    """252 colours of the map, then NaN magenta, the gap, the header band and the text."""
    table = colormap_table(colormap)
    levels = table[np.round(np.linspace(0, 255, _LEVELS)).astype(int)]
    extra = np.array([(255, 0, 255), _GAP_COLOR, _BACKGROUND, _TEXT], np.uint8)
    return np.concatenate([levels, extra]).reshape(-1).tolist()


def _own_ranges(values: torch.Tensor) -> torch.Tensor:
    flat = values.flatten(1)
    finite = torch.isfinite(flat)
    lo = torch.where(finite, flat, math.inf).amin(1)
    hi = torch.where(finite, flat, -math.inf).amax(1)
    some = finite.any(1)
    return torch.stack([torch.where(some, lo, 0.0), torch.where(some, hi, 0.0)], 1)


def view_png(
    session: Session, layer: str, sample: int, colormap: str, scale: str, symmetric: bool
) -> bytes:
    """The picture of what a widget shows: ``layer`` of ``sample`` with the view's colormap and
    scale, titled with the layer, its type and shape, and the top prediction."""
    store = session.store
    meta = store.meta(layer)
    maps = store.maps(layer)[sample]
    c = maps.shape[0]
    if scale == "channel":
        ranges = _own_ranges(maps.detach().float().cpu())
    else:
        metas = [meta] if scale == "layer" else store.layers_meta()
        lo, hi = min(m["min"] for m in metas), max(m["max"] for m in metas)
        ranges = torch.tensor([[lo, hi]]).repeat(c, 1)
    if symmetric:
        top = ranges.abs().amax(1)
        ranges = torch.stack([-top, top], 1)
    return grid_png(
        maps, colormap=colormap, ranges=ranges, title=view_title(session, layer, sample)
    )


def view_title(session: Session, layer: str, sample: int) -> str:
    """One line naming what the view shows: layer, type, shape, sample, top prediction."""
    meta = session.store.meta(layer)
    _, c, h, w = meta["shape"]
    parts = [layer, meta["type"], f"{c}×{h}×{w}"]
    if session.num_samples > 1:
        parts.append(f"sample {sample} of {session.num_samples}")
    if session.predictions:
        best = session.predictions[sample][0]
        name = best["label"] if best["label"] is not None else f"class {best['index']}"
        prob = "NaN" if best["prob"] is None else f"{best['prob']:.0%}"
        parts.append(f"{name} {prob}")
    return " · ".join(parts)


def with_picture(
    bundle: tuple[dict[str, Any], dict[str, Any]] | None,
    session: Session,
    layer: str,
    sample: int,
    colormap: str,
    scale: str,
    symmetric: bool,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A widget's mimebundle with ``image/png`` (:func:`view_png`) and a one-line ``text/plain``
    added; as it was when there is nothing to draw (a failed re-run) or drawing fails."""
    if bundle is None or session.closed:
        return bundle
    data, metadata = bundle
    try:
        png = view_png(session, layer, sample, colormap, scale, symmetric)
        title = view_title(session, layer, sample)
    except Exception:
        _log.exception("fmwidget: could not draw the static picture of the view")
        return bundle
    data = {**data, "image/png": base64.b64encode(png).decode("ascii")}
    data["text/plain"] = f"FeatureMapWidget: {title}"
    return data, metadata
