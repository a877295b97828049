"""The static picture of the view: colours from the shared tables, the mimebundle, nbconvert."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import nbformat
import numpy as np
import torch
from fakecomm import fake_comms
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from PIL import Image

from fmwidget.picture import MAX_TILE, colormap_table, grid_png
from fmwidget.widget import FeatureMapWidget

ROOT = Path(__file__).resolve().parent.parent


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_the_colour_tables_are_the_front_ends() -> None:
    tables = json.loads((ROOT / "fmwidget" / "colormaps.json").read_text())["tables"]
    assert set(tables) == {"gray", "viridis", "magma", "diverging", "turbo"}
    viridis = colormap_table("viridis")
    assert viridis.shape == (256, 3)
    assert tuple(viridis[0]) == (0x44, 0x01, 0x54) and tuple(viridis[255]) == (0xFD, 0xE7, 0x25)


def test_tiles_show_each_channel_in_its_own_range_and_nan_in_magenta() -> None:
    maps = torch.zeros(4, 2, 2)
    maps[0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # its own range: 0 → bottom, 3 → top
    maps[1, 0, 0] = float("nan")
    picture = _rgb(grid_png(maps, colormap="viridis", title="t"))
    table = colormap_table("viridis")
    # 4 channels of 2×2 → 2 columns of MAX_TILE-pixel tiles under the header band.
    top, left = 26 + 2, 2
    assert tuple(picture[top + 1, left + 1]) == tuple(table[0])
    assert tuple(picture[top + MAX_TILE - 2, left + MAX_TILE - 2]) == tuple(table[255])
    second = left + MAX_TILE + 2
    assert tuple(picture[top + 1, second + 1]) == (255, 0, 255)


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(4)
    ).eval()


def test_the_mimebundle_carries_a_picture_and_one_line_of_text() -> None:
    net = _tiny()
    x = torch.randn(2, 3, 10, 10)
    net(x)
    with fake_comms():
        w = FeatureMapWidget(net, x, labels=["a", "b", "c", "d"], colormap="magma")
        data, _ = w._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in data
        assert data["text/plain"].startswith("FeatureMapWidget: 0 · Conv2d · 6×8×8 · sample 0 of 2")
        picture = _rgb(base64.b64decode(data["image/png"]))
        assert picture.shape[1] > 100 and picture.shape[0] > 26
        w.close()


def test_nbconvert_html_holds_the_picture(monkeypatch) -> None:
    code = (
        "import torch\nfrom fmwidget.widget import FeatureMapWidget\n"
        "net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()\n"
        "FeatureMapWidget(net, torch.randn(1, 3, 12, 12))"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    env = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", env)
    # As JupyterLab saves a notebook by default (its widget manager's saveState is off): the
    # outputs, without the widgets' state. GitHub, nbviewer and nbconvert then show the picture.
    NotebookClient(nb, kernel_name="python3", timeout=120, store_widget_state=False).execute()
    html, _ = HTMLExporter().from_notebook_node(nb)
    found = re.search(r'src="data:image/png;base64,([^"]+)"', html)
    assert found, "no picture in the HTML"
    picture = _rgb(base64.b64decode(found.group(1)))
    assert picture.shape[0] > 26 + MAX_TILE and tuple(picture[5, 5]) == (243, 243, 243)
