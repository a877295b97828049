"""Errors say what went wrong and what to do first: in fmwidget's words, without a chained
traceback ahead of them, and short (one entry per kind of reason, not one per module)."""

from __future__ import annotations

import traceback
from collections.abc import Callable

import pytest
import torch
import traitlets
from models import assert_no_hooks
from torch import nn

from fmwidget.capture import CaptureError, LayerTaps, capture
from fmwidget.gradcam import gradcam
from fmwidget.widget import FeatureMapWidget

torch.set_num_threads(1)


def _traceback(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


class Audio(nn.Module):
    """An audio network's shape: 300 modules, every output (N, C, L), no feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[nn.Sequential(nn.Conv1d(2, 2, 1), nn.ReLU()) for _ in range(150)]
        )
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(x).mean(2))


def test_nothing_to_capture_is_one_entry_per_reason() -> None:
    model = Audio().eval()
    with pytest.raises(CaptureError) as caught:
        capture(model, torch.randn(1, 2, 16))
    message = str(caught.value)
    assert message.startswith("nothing to capture: no selected module produced a 4-D")
    assert "select modules that do with layers=" in message
    first = "blocks.0.0: output is 3-D (1, 2, 16), not (N, C, H, W)"
    assert f"{first}; 299 more like it: 'blocks.0.1', " in message
    assert "fc: output is 2-D (1, 3), not (N, C, H, W)" in message
    assert len(message) < 600  # one line per module was 19,000 characters for swin3d
    assert _traceback(caught.value).count("\n") < 15
    assert_no_hooks(model)


def test_report_groups_skipped_modules_by_reason() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(16, 5), nn.Linear(5, 2))
    text = str(capture(model, torch.randn(1, 3, 2, 2)).report)
    assert "skipped 3 modules" in text
    assert "  1: output is 2-D (1, 16), not (N, C, H, W); 2 more like it: '2', '3'" in text


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.body = nn.Sequential(nn.Conv2d(5, 4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.conv1(x))


@pytest.mark.parametrize("how", ["capture", "taps"])
def test_a_failing_forward_is_told_first_and_keeps_the_original(how: str) -> None:
    model = Broken().eval()
    x = torch.randn(1, 3, 8, 8)
    run: Callable[[], object]
    if how == "capture":

        def run() -> object:
            return capture(model, x)
    else:

        def run() -> object:
            with LayerTaps(model, None, lambda _n, _t: None) as taps:
                return taps.forward(x)

    with pytest.raises(CaptureError) as caught:
        run()
    error = caught.value
    assert str(error).startswith(
        "layer 'body.0' (Conv2d) failed, which received (float32 (1, 4, 6, 6)); its weight is "
        "float32 (4, 5, 3, 3): RuntimeError: Given groups=1"
    )
    text = _traceback(error)
    assert "direct cause" not in text and "During handling" not in text
    assert text.count("\n") < 15
    assert isinstance(error.original, RuntimeError) and error.__cause__ is None
    assert_no_hooks(model)


def test_trait_errors_are_one_line_without_a_chain(
    make: Callable[..., FeatureMapWidget],
) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval()
    with pytest.raises(traitlets.TraitError) as caught:
        make(model, torch.randn(1, 3, 4, 4), layer="2")
    message = str(caught.value)
    assert message.startswith("unknown layer '2'; captured layers look like: '0', '1'")
    assert "\n" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert "direct cause" not in _traceback(caught.value)


def test_gradcam_on_a_layer_that_does_not_run_says_so() -> None:
    model = Broken().eval()
    model.body = nn.Sequential(nn.Conv2d(4, 4, 3))
    model.unused = nn.Conv2d(4, 4, 1)  # a module the forward never calls
    with pytest.raises(RuntimeError, match=r"layer 'unused' did not run in this forward"):
        gradcam(model, torch.randn(1, 3, 8, 8), "unused", target=0, progress=False)
