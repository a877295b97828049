"""The binary formats between the kernel and the browser: protocol version 1.

This module is the one place that knows how activations travel. ``docs/protocol.md`` is the
contract; this docstring summarises the parts implemented here.

Reply envelope (one Jupyter custom message per request)::

    {"type": "reply", "v": 1, "id": 17, "kind": "layer", "ok": true,
     "meta": {...}, "arrays": [{"name": "values", "dtype": "uint8", "shape": [64, 56, 56]}, ...]}

``buffers[i]`` holds ``arrays[i]``: C-contiguous, little-endian, one of ``uint8``, ``float32``,
``int32``, ``uint32``. Buffers are flat byte ``memoryview``s of numpy arrays, so nothing is copied
between the array and the socket (no JSON lists, no base64). An error reply has ``"ok": false``,
an ``"error"`` text and no buffers.

Layer values (``kind: "layer"``), per channel on the channel's own finite range ``[min, max]``:
``q = round((v - min) / (max - min) * 254)`` in 0..254, ``q = 255`` for NaN or ±Inf, and a constant
channel (``max == min``) is all 0. Dequantize with ``v = min + q / 254 * (max - min)`` in double
precision (as the browser and :func:`dequantize` do); the error is at most ``(max - min) / 508``,
plus 1e-4 of a step from quantizing in float32 (a value that close to halfway between two levels may
get the farther one). In float32 arithmetic the result is also rounded to a float32: that adds up to
half the float32 spacing at the value, as large as a step for a near-constant channel (a range of a
few hundred spacings: 0.82 steps in timm's efficientvit_b0). Quantization runs on the tensor's
device; only the uint8 result is copied to the host. When ``C·H·W > max_values`` the maps are
average-pooled by the smallest integer factor ``f`` that fits (partial windows at the edges average
what they cover) before quantizing.

Per-channel stats rows (float32): ``[min, max, mean, zeros, nan, inf]``: ``min``/``max``/``mean``
over finite values (0 when a channel has none), ``zeros`` the fraction of exact zeros, ``nan`` and
``inf`` counts. Flags (uint8 bits, over the whole batch): 1 dead, 2 constant, 4 has NaN/Inf.

Example:
    >>> import torch
    >>> maps = torch.randn(8, 16, 16)
    >>> stats = channel_stats(maps)
    >>> meta, arrays = layer_payload(maps, stats, np.zeros(8, np.uint8))
    >>> content, buffers = encode_reply(1, "layer", meta, arrays)
    >>> reply = decode(content, buffers)
    >>> values = dequantize(reply.arrays["values"], reply.arrays["stats"])
    >>> bool(np.abs(values - maps.numpy()).max() <= (stats[:, 1] - stats[:, 0]).max() / 508 + 1e-6)
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

VERSION = 1
DEFAULT_MAX_VALUES = 4_194_304
LEVELS = 254
NONFINITE = 255
STATS_FIELDS = ("min", "max", "mean", "zeros", "nan", "inf")
FLAG_DEAD = 1
FLAG_CONSTANT = 2
FLAG_NONFINITE = 4
#: Set when a scan (``fmwidget.scan``) found the channel never > 0 on any image of its dataset.
FLAG_DATASET_DEAD = 8

_DTYPES: dict[str, np.dtype[Any]] = {
    "uint8": np.dtype("<u1"),
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "uint32": np.dtype("<u4"),
}


#: What a request handler returns: the reply's ``meta`` and its named arrays.
Payload = tuple[dict[str, Any], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Reply:
    """A decoded reply: what the browser's codec sees, as numpy arrays.

    Example:
        >>> reply = decode(*encode_error(3, "layer", "unknown layer 'x'"))
        >>> reply.ok, reply.error
        (False, "unknown layer 'x'")
    """

    id: Any
    kind: Any
    ok: bool
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None


def channel_stats(maps: torch.Tensor) -> torch.Tensor:
    """Per-channel ``[min, max, mean, zeros, nan, inf]`` of feature maps, on their device.

    ``maps`` is ``(..., C, H, W)``; every leading dimension (the batch, say) is reduced over in the
    same vectorized call. Returns float32 ``(..., C, 6)`` on ``maps.device``.

    Example:
        >>> channel_stats(torch.tensor([[[0.0, 2.0], [float("nan"), 4.0]]]))
        tensor([[0.0000, 4.0000, 2.0000, 0.2500, 1.0000, 0.0000]])
    """
    if maps.dim() < 3:
        raise ValueError(
            f"channel_stats expects maps shaped (..., C, H, W), got {tuple(maps.shape)}"
        )
    flat = maps.flatten(-2)
    if flat.dtype != torch.float32:
        flat = flat.float()
    size = flat.shape[-1]
    out = torch.zeros((*flat.shape[:-1], 6), dtype=torch.float32, device=flat.device)
    if size == 0 or flat.numel() == 0:
        return out
    # Counting through uint8 is ~1.5× faster on the CPU than summing bools as float32; counts
    # are exact either way.
    zeros = (flat == 0).view(torch.uint8).sum(-1, dtype=torch.int32)
    out[..., 3] = zeros.float() / size
    # amin + amax, not aminmax: along a dim, the CPU's aminmax is ~20× slower. Both propagate
    # NaN and reach ±Inf, so they also tell (one device→host sync) whether every value is finite,
    # without an isfinite pass over the maps (itself slower than both); activations almost
    # always are, and the masked path needs three full-size temporaries.
    lo, hi = flat.amin(-1), flat.amax(-1)
    if bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
        out[..., 0] = lo
        out[..., 1] = hi
        out[..., 2] = flat.mean(-1)
        return out
    finite = torch.isfinite(flat)
    n_finite = finite.sum(-1)
    n_nan = torch.isnan(flat).sum(-1)
    inf = torch.tensor(math.inf, device=flat.device)
    lo = torch.where(finite, flat, inf).amin(-1)
    hi = torch.where(finite, flat, -inf).amax(-1)
    some = n_finite > 0
    out[..., 0] = torch.where(some, lo, 0.0)
    out[..., 1] = torch.where(some, hi, 0.0)
    out[..., 2] = torch.where(finite, flat, 0.0).sum(-1) / n_finite.clamp(min=1)
    out[..., 4] = n_nan.float()
    out[..., 5] = (size - n_finite - n_nan).float()
    return out


def downsample_factor(channels: int, height: int, width: int, max_values: int) -> int:
    """Smallest integer pooling factor ``f`` with ``channels·⌈height/f⌉·⌈width/f⌉ ≤ max_values``.

    Example:
        >>> downsample_factor(64, 224, 224, 1_000_000)
        2
    """
    if max_values < channels:
        raise ValueError(
            f"max_values={max_values} is smaller than the number of channels ({channels}); "
            "ask for fewer channels or a larger max_values"
        )
    # channels·⌈h/f⌉·⌈w/f⌉ ≥ channels·h·w/f², so no factor below this square root can fit.
    f = max(1, math.isqrt((channels * height * width) // max_values))
    while channels * -(-height // f) * -(-width // f) > max_values:
        f += 1
    return f


def quantize(maps: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Quantize ``(C, H, W)`` maps to uint8 on their device, channel c on ``[lo[c], hi[c]]``.

    Finite values map to 0..254, NaN/±Inf to 255, a constant channel (``hi == lo``) to 0.

    Example:
        >>> maps = torch.tensor([[[0.0, 1.0, float("inf")]]])
        >>> quantize(maps, torch.tensor([0.0]), torch.tensor([1.0]))
        tensor([[[  0, 254, 255]]], dtype=torch.uint8)
    """
    values = maps if maps.dtype == torch.float32 else maps.float()
    half_lo = lo.to(device=values.device, dtype=torch.float32)[:, None, None] * 0.5
    half_hi = hi.to(device=values.device, dtype=torch.float32)[:, None, None] * 0.5
    # On halves: max - min of float32 values can overflow (±3.4e38 gives inf), the difference of
    # their halves cannot, and halving a normal float is exact. Dividing by the span, rather than
    # multiplying by LEVELS / span, stays finite for tiny spans; a constant channel divides by inf.
    half_span = half_hi - half_lo
    half_span = torch.where(half_span > 0, half_span, math.inf)
    q = (values * 0.5 - half_lo).div_(half_span).mul_(LEVELS).round_().clamp_(0, LEVELS)
    q = torch.where(torch.isfinite(values), q, float(NONFINITE))
    return q.to(torch.uint8)


def dequantize(values: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Reverse :func:`quantize` with the ``stats`` rows of a reply; 255 becomes NaN.

    In float64, as the browser computes it: within half a step of the true value even for a
    near-constant channel, where a float32 result would add up to half a float32 spacing.

    Example:
        >>> stats = np.array([[2, 4, 3, 0, 0, 1]], np.float32)
        >>> dequantize(np.array([[[0, 254, 255]]], np.uint8), stats)
        array([[[ 2.,  4., nan]]])
    """
    lo = stats[:, 0, None, None].astype(np.float64)
    hi = stats[:, 1, None, None].astype(np.float64)
    out = lo + values.astype(np.float64) / LEVELS * (hi - lo)
    out[values == NONFINITE] = np.nan
    return out


def layer_payload(
    maps: torch.Tensor,
    stats: torch.Tensor,
    flags: np.ndarray,
    *,
    max_values: int = DEFAULT_MAX_VALUES,
    channels: Sequence[int] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Arrays and meta of a ``layer`` reply for one sample's ``(C, H, W)`` maps.

    ``stats`` is that sample's ``(C, 6)`` from :func:`channel_stats`, ``flags`` the batch flags.
    ``channels`` selects a subset; it is downsampled only if it alone exceeds ``max_values``.
    Returns ``(meta, arrays)`` with meta keys ``shape``, ``stored``, ``downsample``, ``channels``.

    Example:
        >>> maps, flags = torch.zeros(4, 8, 8), np.zeros(4, np.uint8)
        >>> meta, arrays = layer_payload(maps, channel_stats(maps), flags, channels=[1, 3])
        >>> meta["stored"], arrays["values"].shape
        ([2, 8, 8], (2, 8, 8))
    """
    if maps.dim() != 3:
        raise ValueError(
            f"layer_payload expects one sample's maps (C, H, W), got {tuple(maps.shape)}"
        )
    c, h, w = maps.shape
    if channels is not None:
        index = torch.as_tensor(list(channels), dtype=torch.long)
        maps = maps.index_select(0, index.to(maps.device))
        stats = stats.index_select(0, index.to(stats.device))
        flags = np.asarray(flags)[index.numpy()]
    f = downsample_factor(maps.shape[0], h, w, max_values)
    pooled = maps if f == 1 else F.avg_pool2d(maps.float(), f, f, ceil_mode=True)
    values = quantize(pooled, stats[:, 0], stats[:, 1]).cpu().numpy()
    meta = {
        "shape": [c, h, w],
        "stored": list(values.shape),
        "downsample": f,
        "channels": None if channels is None else [int(i) for i in channels],
    }
    arrays = {
        "values": values,
        "stats": stats.detach().cpu().numpy().astype(np.float32, copy=False),
        "flags": np.asarray(flags, dtype=np.uint8),
    }
    return meta, arrays


def channel_payload(
    values: torch.Tensor, filter: torch.Tensor | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Arrays and meta of a ``channel`` reply: exact float32 ``(H, W)`` values, optional kernel.

    Example:
        >>> meta, arrays = channel_payload(torch.ones(5, 5), torch.ones(3, 3, 3))
        >>> meta
        {'shape': [5, 5], 'filter_shape': [3, 3, 3]}
    """
    if values.dim() != 2:
        raise ValueError(f"channel_payload expects one map (H, W), got {tuple(values.shape)}")
    arrays = {"values": _host_float32(values)}
    if filter is not None:
        if filter.dim() != 3:
            raise ValueError(f"a filter must be (Cin, kh, kw), got {tuple(filter.shape)}")
        arrays["filter"] = _host_float32(filter)
    meta = {
        "shape": list(values.shape),
        "filter_shape": None if filter is None else list(filter.shape),
    }
    return meta, arrays


def image_payload(image: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Arrays and meta of an ``input`` reply from an RGB uint8 ``(H, W, 3)`` picture.

    Example:
        >>> image_payload(np.zeros((4, 6, 3), np.uint8))[0]
        {'shape': [4, 6, 3]}
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"an input image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return {"shape": list(image.shape)}, {"image": image}


def gradcam_payload(
    heatmap: torch.Tensor, weights: torch.Tensor
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Arrays and meta of a ``gradcam`` reply: float32 ``(H, W)`` heatmap, ``(C,)`` weights.

    Example:
        >>> gradcam_payload(torch.zeros(7, 7), torch.zeros(512))[0]
        {'shape': [7, 7]}
    """
    if heatmap.dim() != 2 or weights.dim() != 1:
        raise ValueError(
            f"Grad-CAM needs a (H, W) heatmap and (C,) weights, got {tuple(heatmap.shape)} "
            f"and {tuple(weights.shape)}"
        )
    arrays = {"heatmap": _host_float32(heatmap), "weights": _host_float32(weights)}
    return {"shape": list(heatmap.shape)}, arrays


def encode_reply(
    request_id: Any, kind: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> tuple[dict[str, Any], list[memoryview]]:
    """Build ``(content, buffers)`` for ``widget.send`` from named numpy arrays.

    Each buffer is a flat byte view of a C-contiguous little-endian array: zero-copy when the
    array already is one.

    Example:
        >>> image = np.zeros((2, 2, 3), np.uint8)
        >>> content, buffers = encode_reply(1, "input", {}, {"image": image})
        >>> content["arrays"], buffers[0].nbytes
        ([{'name': 'image', 'dtype': 'uint8', 'shape': [2, 2, 3]}], 12)
    """
    specs: list[dict[str, Any]] = []
    buffers: list[memoryview] = []
    for name, array in arrays.items():
        dtype_name = _dtype_name(array.dtype)
        array = np.ascontiguousarray(array, dtype=_DTYPES[dtype_name])
        specs.append({"name": name, "dtype": dtype_name, "shape": list(array.shape)})
        buffers.append(memoryview(array.data).cast("B"))
    content = {
        "type": "reply",
        "v": VERSION,
        "id": request_id,
        "kind": kind,
        "ok": True,
        "meta": dict(meta),
        "arrays": specs,
    }
    return content, buffers


def encode_error(
    request_id: Any, kind: Any, message: str
) -> tuple[dict[str, Any], list[memoryview]]:
    """Build ``(content, buffers)`` of an error reply (no buffers).

    Example:
        >>> encode_error(4, "channel", "channel 70 is out of range")[0]["ok"]
        False
    """
    content = {"type": "reply", "v": VERSION, "id": request_id, "kind": kind, "ok": False}
    content["error"] = message
    return content, []


def decode(content: Mapping[str, Any], buffers: Sequence[Any]) -> Reply:
    """Reverse :func:`encode_reply` / :func:`encode_error`, as the browser's codec does.

    Buffers may be any bytes-like objects, at any offset in a larger buffer; arrays are views when
    the offset suits the dtype's alignment and copies otherwise.

    Example:
        >>> reply = decode(*encode_reply(2, "channel", {"shape": [1, 2]},
        ...                              {"values": np.ones((1, 2), np.float32)}))
        >>> reply.arrays["values"]
        array([[1., 1.]], dtype=float32)
    """
    if content.get("type") != "reply" or content.get("v") != VERSION:
        raise ValueError(
            f"not a version-{VERSION} reply: type={content.get('type')!r}, v={content.get('v')!r}"
        )
    if not content.get("ok"):
        return Reply(content.get("id"), content.get("kind"), False, error=str(content.get("error")))
    specs = content.get("arrays", [])
    if len(specs) != len(buffers):
        raise ValueError(f"reply lists {len(specs)} arrays but carries {len(buffers)} buffers")
    arrays: dict[str, np.ndarray] = {}
    for spec, buffer in zip(specs, buffers, strict=True):
        dtype = _DTYPES.get(spec["dtype"])
        if dtype is None:
            raise ValueError(f"array {spec['name']!r} has unsupported dtype {spec['dtype']!r}")
        shape = tuple(spec["shape"])
        view = memoryview(buffer).cast("B")
        expected = math.prod(shape) * dtype.itemsize
        if view.nbytes != expected:
            raise ValueError(
                f"array {spec['name']!r} {spec['dtype']} {list(shape)} needs {expected} bytes, "
                f"its buffer has {view.nbytes}"
            )
        array = np.frombuffer(view, dtype=dtype).reshape(shape)
        arrays[spec["name"]] = array if array.flags.aligned else array.copy()
    return Reply(content["id"], content["kind"], True, dict(content.get("meta", {})), arrays)


def _dtype_name(dtype: np.dtype) -> str:
    for name, wire_dtype in _DTYPES.items():
        if np.dtype(dtype).newbyteorder("=") == wire_dtype.newbyteorder("="):
            return name
    raise ValueError(f"dtype {dtype} cannot travel; use one of {', '.join(_DTYPES)}")


def _host_float32(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
