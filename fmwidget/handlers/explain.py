"""``explain``: how one value of a channel's map is computed, and which input pixels it sees.

For a ``Conv2d`` layer (and the activation right after one) the value taken apart: the patch
under the kernel, the kernel, the per-input-channel sums, the bias and their total; for other
layers one line of what the layer does with this channel's numbers and the value before it; for
every layer the receptive field of the position as a box on the input. The costly parts are done
once per (layer, sample) and kept with the session (:mod:`fmwidget.hovercache`), so later hovers
cost a few tensor reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fmwidget import wire
from fmwidget.breakdown import breakdown_at
from fmwidget.calling import LayerRef, resolve_layer, tensors_in
from fmwidget.explain import Step, describe
from fmwidget.handlers.channel import conv_filter
from fmwidget.handlers.fields import (
    BadRequest,
    View,
    channel_field,
    int_field,
    layer_field,
    sample_field,
)
from fmwidget.hovercache import LayerFields, for_session
from fmwidget.layer_input import layer_inputs
from fmwidget.session import Session

NO_MODEL = (
    "this widget was built from activations, with no model behind them: only the value is known"
)


VIDEO = (
    "a video layer: its values are computed over several frames, and the breakdown and the "
    "receptive field are shown for image layers (N, C, H, W) only"
)


@dataclass(frozen=True)
class ExplainRequest:
    layer: str
    sample: int
    channel: int
    row: int
    col: int


def parse(content: dict[str, Any], view: View) -> ExplainRequest:
    session = view.session
    name = layer_field(content, session)
    sample = sample_field(content, session)
    channel = channel_field(content, name, session)
    row, col = int_field(content, "row"), int_field(content, "col")
    _, _, h, w = session.store.shape(name)
    if not (0 <= row < h and 0 <= col < w):
        raise BadRequest(
            f"position (row {row}, col {col}) is outside layer {name!r}'s {h}×{w} maps "
            f"(rows 0–{h - 1}, cols 0–{w - 1})"
        )
    return ExplainRequest(name, sample, channel, row, col)


def handle(request: ExplainRequest, view: View) -> wire.Payload:
    session = view.session
    name, sample, channel, row, col = (
        request.layer,
        request.sample,
        request.channel,
        request.row,
        request.col,
    )
    store = session.store
    value = float(store.maps(name)[sample, channel, row, col])
    meta: dict[str, Any] = {
        "layer": name,
        "sample": sample,
        "channel": channel,
        "row": row,
        "col": col,
        "type": store.meta(name)["type"],
        "value": _finite(value),
        "op": "value",
        "text": "",
        "before": None,
        "after": None,
        "window_shape": None,
        "conv": None,
        "activation": None,
        "matches": None,
        "box": None,
        "input_shape": None,
        "note": "",
    }
    model = session.model
    if model is None:
        meta["note"] = NO_MODEL
        return meta, {}
    if store.info(name).frames:
        meta["note"] = VIDEO
        return meta, {}
    _receptive_box(session, name, row, col, meta)
    ref = resolve_layer(model, name)
    pre = store.meta(name)["pre"]
    conv_ref = _conv_partner(session, model, ref, pre)
    refs = [ref] if conv_ref is None or conv_ref is ref else [conv_ref, ref]
    try:
        got = for_session(session).layer_inputs(
            session, name, sample, lambda: layer_inputs(model, session.inputs, refs, sample)
        )
    except ValueError as error:
        raise BadRequest(str(error)) from error
    arrays: dict[str, np.ndarray] = {}
    if conv_ref is not None:
        conv_x = got.tensors[0]
        if conv_x is None:
            raise BadRequest(f"layer {conv_ref.name!r} was not called with a tensor")
        conv: Any = conv_ref.module
        b = breakdown_at(conv, conv_x[got.sample], channel, row, col, conv_ref.name)
        _, rgb = conv_filter(session, conv_ref.name, channel)
        meta["op"] = "conv"
        meta["text"] = _conv_text(conv)
        meta["conv"] = {
            "layer": conv_ref.name,
            "bias": _finite(b.bias),
            "total": _finite(b.total),
            "inputs": [b.inputs.start, b.inputs.stop],
            "shape": list(b.kernel.shape),
            "rgb": rgb,
        }
        arrays = {
            "patch": _float32(b.patch),
            "kernel": _float32(b.kernel),
            "per_channel": _float32(b.per_channel),
        }
        computed = b.total
        scale = float((b.patch.double() * b.kernel.double()).abs().sum()) + abs(b.bias or 0.0)
        if len(refs) == 2:
            step = describe(ref.module, got.tensors[1], got.sample, channel, row, col)
            meta["op"] = "conv+act"
            meta["activation"] = {
                "layer": name,
                "text": step.text,
                "before": _finite(step.before),
                "after": _finite(step.after),
            }
            computed = step.after if step.after is not None else math.nan
        meta["matches"] = _matches(computed, value, scale)
    else:
        out_shape = tuple(store.shape(name)[1:])
        step = describe(ref.module, got.tensors[0], got.sample, channel, row, col, out_shape)
        meta.update(_step_meta(step))
        if step.window is not None:
            arrays["window"] = _float32(step.window)
        if step.after is not None:
            scale = abs(step.after) + abs(step.before or 0.0)
            if step.window is not None and step.window.numel():
                scale += float(step.window.double().abs().max())
            meta["matches"] = _matches(step.after, value, scale)
    if meta["matches"] is False:
        meta["note"] = (
            "the recomputed value differs from the captured one: the model or its inputs changed "
            "since the capture, or it runs in training mode (dropout, batch statistics); "
            "assign w.inputs = ... to capture again"
        )
    return meta, arrays


def _conv_partner(
    session: Session, model: nn.Module, ref: LayerRef, pre: str | None
) -> LayerRef | None:
    """The conv whose value is taken apart: the layer itself, or the conv an activation follows."""
    if isinstance(ref.module, nn.Conv2d) and not ref.index:
        return ref
    if pre is None or session.store.shape(pre) != session.store.shape(ref.name):
        return None
    pre_ref = resolve_layer(model, pre)
    if isinstance(pre_ref.module, nn.Conv2d) and not pre_ref.index:
        return pre_ref
    return None


def _receptive_box(session: Session, name: str, row: int, col: int, meta: dict[str, Any]) -> None:
    """Put the position's receptive field and the input's size into ``meta`` (or a note)."""
    image = next((t for _, t in tensors_in(session.inputs, "") if t.dim() == 4), None)
    if image is None:
        meta["note"] = "no (N, C, H, W) image among the inputs: no receptive field to show"
        return
    in_hw = (int(image.shape[-2]), int(image.shape[-1]))
    _, _, out_h, out_w = session.store.shape(name)
    model = session.model
    try:
        fields = for_session(session).fields(
            name, lambda: LayerFields(model, session.inputs, name, (out_h, out_w), in_hw)
        )
        meta["box"] = list(fields.box(row, col))
    except (ValueError, RuntimeError, TypeError) as error:
        meta["note"] = f"the receptive field could not be measured: {error}"
        return
    meta["input_shape"] = list(in_hw)


def _conv_text(conv: nn.Conv2d) -> str:
    kh, kw = conv.kernel_size
    parts = [f"Conv2d {kh}×{kw}"]
    if conv.stride != (1, 1):
        parts.append(f"stride {conv.stride[0] if len(set(conv.stride)) == 1 else conv.stride}")
    if conv.dilation != (1, 1):
        parts.append(f"dilation {conv.dilation[0]}")
    per_group = conv.in_channels // conv.groups
    if conv.groups == conv.in_channels and conv.groups > 1:
        parts.append("depthwise")
    elif conv.groups > 1:
        parts.append(f"{conv.groups} groups")
    bias = " plus the bias" if conv.bias is not None else ""
    reads = f"{per_group} input channel{'s' if per_group > 1 else ''}"
    return (
        f"{', '.join(parts)}: the kernel times the {reads} under it, element by element, "
        f"summed{bias}"
    )


def _step_meta(step: Step) -> dict[str, Any]:
    return {
        "op": "layer",
        "text": step.text,
        "before": _finite(step.before),
        "after": _finite(step.after),
        "window_shape": None if step.window is None else list(step.window.shape),
    }


def _matches(computed: float, value: float, scale: float) -> bool | None:
    """Whether the recomputed value is the captured one, to float32 rounding (None: not finite)."""
    if not (math.isfinite(computed) and math.isfinite(value)):
        return None
    return abs(computed - value) <= 1e-5 + 1e-4 * scale + 1e-4 * abs(value)


def _finite(v: float | None) -> float | None:
    """A number for JSON: NaN and ±Inf become null (the view says "not finite")."""
    return v if v is not None and math.isfinite(v) else None


def _float32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()
