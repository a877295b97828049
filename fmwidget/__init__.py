"""fmwidget: see what a CNN sees — every feature map of a PyTorch model as a zoomable grid in Jupyter."""

__version__ = "0.1.0"
