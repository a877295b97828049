"""The teaching notebooks run top to bottom, offline, in a fresh python3 kernel."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

pytestmark = pytest.mark.notebooks


def test_the_six_teaching_notebooks_are_there():
    assert [path.name for path in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_edges_to_objects.ipynb",
        "03_debugging_a_shortcut.ipynb",
        "04_comparing_two_models.ipynb",
        "05_what_does_this_channel_look_for.ipynb",
        "06_watch_a_cnn_learn.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_stored_clean(path):
    notebook = json.loads(path.read_text())
    assert notebook["metadata"]["kernelspec"] == KERNELSPEC
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    # The kernel must find the weights offline exactly as a user's would, and must not write
    # into the home directory: an empty torch cache proves no download is needed.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # The kernel imports this checkout's fmwidget, installed or not.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=180,
        resources={"metadata": {"path": str(path.parent)}},
    )
    # Raises CellExecutionError, with the failing cell and its traceback, on the first error.
    client.execute()
    assert not (tmp_path / "torch").exists(), "a notebook downloaded into the torch cache"
