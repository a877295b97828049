"""The wheel carries the built front end and the shipped weights; it imports with no Node."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        timeout=600,
    )
    (found,) = out.glob("fmwidget-*.whl")
    return found


def test_wheel_contains_bundle_and_assets(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "fmwidget/static/widget.js" in names
    assert "fmwidget/static/widget.css" in names
    assert "fmwidget/static/standalone.js" in names
    assert any(n.startswith("fmwidget/assets/") and n.endswith(".pt") for n in names), names


def test_wheel_imports_without_node(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # Only the interpreter's own directory on PATH: no node, no npm.
    env = dict(os.environ, PYTHONPATH=str(site), PATH=str(Path(sys.executable).parent))
    code = (
        "import fmwidget, pathlib, shutil;"
        "assert shutil.which('node') is None;"
        f"assert pathlib.Path(fmwidget.__file__).parent.parent == pathlib.Path({str(site)!r});"
        "from fmwidget import FeatureMapWidget;"
        "assert 'render' in str(FeatureMapWidget._esm);"
        "print('ok')"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
