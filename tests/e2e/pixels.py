"""What the screen shows, as numbers: the grid canvas as pixels, where each tile and map lies.

Shared by the end-to-end tests of JupyterLab and of saved HTML files: both check tiles on screen
against the kernel's values with these.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image


def canvas_picture(page) -> tuple[np.ndarray, dict]:
    """The grid canvas as on screen (WebGL and overlay composited), and its layout attributes."""
    canvas = page.locator("canvas[aria-label='Feature maps']")
    attrs = canvas.evaluate(
        "c => Object.fromEntries(Object.entries(c.dataset).map(([k, v]) => [k, Number(v)]))"
    )
    png = canvas.screenshot()
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)
    box = canvas.bounding_box()
    # The screenshot's crop starts at floor(box), while the canvas is composited at round(box).
    attrs["dx"] = round(box["x"]) - math.floor(box["x"])
    attrs["dy"] = round(box["y"]) - math.floor(box["y"])
    attrs["left"], attrs["top"] = box["x"], box["y"]
    return img, attrs


def tile_on_screen(
    img: np.ndarray, attrs: dict, index: int, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gray levels of tile ``index`` on screen, and ``values`` sampled at the same screen pixels."""
    h, w = values.shape
    x0, y0 = tile_origin(attrs, index)
    step = attrs["tileWidth"] / w
    # One pixel in from the tile's edges, which may blend with the gap when composited.
    xs = np.arange(int(np.ceil(x0)) + 1, int(x0 + attrs["tileWidth"]) - 1)
    ys = np.arange(int(np.ceil(y0)) + 1, int(y0 + attrs["tileHeight"]) - 1)
    cols = np.clip(np.floor((xs + 0.5 - x0) / step).astype(int), 0, w - 1)
    rows = np.clip(np.floor((ys + 0.5 - y0) / step).astype(int), 0, h - 1)
    shown = img[np.ix_(ys + attrs["dy"], xs + attrs["dx"])].mean(axis=2)
    want = values[np.ix_(rows, cols)]
    # The channel number sits in the tile's top-left corner: leave that corner out.
    keep = np.ones(shown.shape, dtype=bool)
    keep[: len(ys) // 5, : len(xs) // 3] = False
    return shown[keep], want[keep]


def drawn_map(box_w: float, box_h: float, w: int, h: int) -> tuple[float, float, float, float]:
    """Where a (h, w) map drawn to fit (aspect kept, centred) lies in a box: x, y, width, height."""
    k = min(box_w / w, box_h / h)
    return (box_w - w * k) / 2, (box_h - h * k) / 2, w * k, h * k


def tile_origin(attrs: dict, index: int) -> tuple[float, float]:
    col, row = index % int(attrs["columns"]), index // int(attrs["columns"])
    return col * attrs["cellWidth"], row * attrs["cellHeight"]
