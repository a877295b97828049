"""fmwidget: see what a CNN sees — every feature map of a PyTorch CNN as a zoomable grid in Jupyter.

>>> import fmwidget
>>> w = fmwidget.demo()                                   # MobileNetV2 (ImageNet) on a real photo
>>> w = fmwidget.FeatureMapWidget(model, images)         # any PyTorch CNN
>>> acts = fmwidget.capture(model, images)               # {layer name: (N, C, H, W) tensor}
>>> s = fmwidget.scan(model, dataset)                    # top-k images and statistics per channel
"""

from fmwidget.analysis import (
    ablate,
    channel_health,
    compare_layers,
    group_differences,
    rank_channels,
)
from fmwidget.breakdown import conv_breakdown
from fmwidget.capture import (
    Capture,
    CaptureBuffers,
    CaptureError,
    CaptureReport,
    LayerInfo,
    capture,
)
from fmwidget.compare import CompareWidget, compare
from fmwidget.demo import demo
from fmwidget.files import load
from fmwidget.gradcam import gradcam, gradcam_layer, top_classes
from fmwidget.inputs import to_batch
from fmwidget.receptive import receptive_field
from fmwidget.scan import Example, Scan, scan
from fmwidget.widget import FeatureMapWidget
from fmwidget.wire import decode, dequantize

__version__ = "0.1.0"

__all__ = [
    "Capture",
    "CaptureBuffers",
    "CaptureError",
    "CaptureReport",
    "CompareWidget",
    "Example",
    "FeatureMapWidget",
    "LayerInfo",
    "Scan",
    "ablate",
    "capture",
    "channel_health",
    "compare",
    "compare_layers",
    "conv_breakdown",
    "decode",
    "demo",
    "dequantize",
    "gradcam",
    "gradcam_layer",
    "group_differences",
    "load",
    "rank_channels",
    "receptive_field",
    "scan",
    "to_batch",
    "top_classes",
]
