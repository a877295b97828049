"""Fixtures shared by the test files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fakecomm import fake_comms

from fmwidget.widget import FeatureMapWidget


@pytest.fixture
def make() -> Iterator[Callable[..., FeatureMapWidget]]:
    """Build widgets that talk to fake comms; every one is closed after the test."""
    widgets: list[FeatureMapWidget] = []

    def create(*args: Any, **kwargs: Any) -> FeatureMapWidget:
        widget = FeatureMapWidget(*args, **kwargs)
        widgets.append(widget)
        return widget

    with fake_comms():
        yield create
    for widget in widgets:
        widget.close()
