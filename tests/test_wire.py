"""The binary formats of protocol v1: quantization, downsampling, envelopes, decode."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fmwidget import wire
from tests.reference import numpy_stats


def _layer_reply(maps: torch.Tensor, **kwargs) -> wire.Reply:
    stats = wire.channel_stats(maps)
    flags = np.zeros(maps.shape[0], np.uint8)
    meta, arrays = wire.layer_payload(maps, stats, flags, **kwargs)
    return wire.decode(*wire.encode_reply(7, "layer", meta, arrays))


def test_docstring_examples_run() -> None:
    assert doctest.testmod(wire).failed == 0


def test_round_trip_error_is_within_a_508th_of_the_range() -> None:
    maps = torch.randn(16, 23, 31) * torch.logspace(-3, 3, 16)[:, None, None]
    reply = _layer_reply(maps)
    values = wire.dequantize(reply.arrays["values"], reply.arrays["stats"])
    span = (reply.arrays["stats"][:, 1] - reply.arrays["stats"][:, 0])[:, None, None]
    error = np.abs(values - maps.numpy())
    assert (error <= span / 508 + 1e-6 * np.abs(maps.numpy()) + 1e-12).all()
    assert reply.meta == {
        "shape": [16, 23, 31],
        "stored": [16, 23, 31],
        "downsample": 1,
        "channels": None,
    }


def test_min_and_max_map_to_0_and_254() -> None:
    maps = torch.randn(3, 9, 9)
    q = _layer_reply(maps).arrays["values"].reshape(3, -1)
    flat = maps.reshape(3, -1)
    assert (q[np.arange(3), flat.argmin(1).numpy()] == 0).all()
    assert (q[np.arange(3), flat.argmax(1).numpy()] == 254).all()


def test_float32_extremes_use_the_whole_range() -> None:
    # max - min overflows float32 here; the values must still spread over 0..254.
    big = torch.finfo(torch.float32).max
    maps = torch.tensor([[[big, -big, 0.0, big / 4]], [[1e8, 1e8 + 8, 1e8 + 16, 1e8]]])
    q = _layer_reply(maps).arrays["values"]
    np.testing.assert_array_equal(q[:, 0], [[254, 0, 127, 159], [0, 127, 254, 0]])


def test_nan_and_inf_become_255_and_are_counted() -> None:
    maps = torch.randn(2, 4, 4)
    maps[0, 0, 0] = math.nan
    maps[0, 1, 1] = math.inf
    maps[0, 2, 2] = -math.inf
    reply = _layer_reply(maps)
    q = reply.arrays["values"]
    assert q[0, 0, 0] == q[0, 1, 1] == q[0, 2, 2] == 255
    assert (q[1] != 255).all()
    stats = reply.arrays["stats"]
    finite = maps[0][torch.isfinite(maps[0])]
    assert stats[0, 0] == finite.min() and stats[0, 1] == finite.max()
    assert stats[0, 4] == 1 and stats[0, 5] == 2
    values = wire.dequantize(q, stats)
    assert np.isnan(values[0, 0, 0]) and np.isfinite(values[1]).all()


def test_constant_and_all_nonfinite_channels() -> None:
    maps = torch.randn(3, 5, 5)
    maps[0] = 2.5
    maps[1] = math.nan
    reply = _layer_reply(maps)
    assert (reply.arrays["values"][0] == 0).all()
    assert (reply.arrays["values"][1] == 255).all()
    stats = reply.arrays["stats"]
    np.testing.assert_array_equal(stats[0], [2.5, 2.5, 2.5, 0, 0, 0])
    np.testing.assert_array_equal(stats[1], [0, 0, 0, 0, 25, 0])
    np.testing.assert_array_equal(wire.dequantize(reply.arrays["values"], stats)[0], 2.5)


@pytest.mark.parametrize("leading", [(), (3,)])
def test_channel_stats_match_numpy(leading: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    maps = torch.randn(*leading, 6, 7, 8)
    maps[maps > 1.5] = 0.0
    maps[..., 0, 0, :3] = torch.tensor([math.nan, math.inf, -math.inf])
    maps[..., 1, :, :] = math.nan
    stats = wire.channel_stats(maps)
    assert stats.shape == (*leading, 6, 6) and stats.dtype == torch.float32
    expected = np.stack([numpy_stats(m) for m in maps.reshape(-1, 6, 7, 8).numpy()])
    np.testing.assert_allclose(stats.reshape(-1, 6, 6).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_channel_stats_of_half_and_integer_maps() -> None:
    half = torch.arange(8, dtype=torch.float16).reshape(2, 2, 2)
    ints = torch.arange(8, dtype=torch.int32).reshape(2, 2, 2)
    for maps in (half, ints):
        np.testing.assert_array_equal(
            wire.channel_stats(maps).numpy(), [[0, 3, 1.5, 0.25, 0, 0], [4, 7, 5.5, 0, 0, 0]]
        )


@pytest.mark.parametrize(
    ("shape", "max_values", "factor"),
    [
        ((64, 56, 56), 4_194_304, 1),
        ((64, 56, 56), 64 * 56 * 56, 1),
        ((64, 56, 56), 64 * 56 * 56 - 1, 2),
        ((64, 56, 56), 64 * 28 * 28, 2),
        ((64, 56, 56), 64 * 28 * 28 - 1, 3),
        ((3, 1000, 1000), 4_194_304, 1),
        ((512, 224, 224), 4_194_304, 3),
        ((8, 7, 5), 8, 7),
    ],
)
def test_downsample_factor_is_the_smallest_that_fits(shape, max_values, factor) -> None:
    c, h, w = shape
    assert wire.downsample_factor(c, h, w, max_values) == factor
    assert c * math.ceil(h / factor) * math.ceil(w / factor) <= max_values
    if factor > 1:
        assert c * math.ceil(h / (factor - 1)) * math.ceil(w / (factor - 1)) > max_values


def test_downsample_factor_rejects_too_many_channels() -> None:
    with pytest.raises(ValueError, match="max_values=10 is smaller than the number of channels"):
        wire.downsample_factor(11, 4, 4, 10)


def test_downsampled_reply_averages_and_keeps_full_resolution_stats() -> None:
    maps = torch.randn(4, 9, 10)
    reply = _layer_reply(maps, max_values=4 * 5 * 5)
    assert reply.meta["downsample"] == 2 and reply.meta["stored"] == [4, 5, 5]
    assert reply.meta["shape"] == [4, 9, 10]
    np.testing.assert_array_equal(reply.arrays["stats"], wire.channel_stats(maps).numpy())
    # The bottom row of windows covers one input row: its average is over what it covers.
    pooled = F.avg_pool2d(maps, 2, 2, ceil_mode=True)
    np.testing.assert_allclose(pooled[:, 4, 0], maps[:, 8, 0:2].mean(-1), rtol=1e-6)
    values = wire.dequantize(reply.arrays["values"], reply.arrays["stats"])
    span = (reply.arrays["stats"][:, 1] - reply.arrays["stats"][:, 0])[:, None, None]
    assert (np.abs(values - pooled.numpy()) <= span / 508 + 1e-6).all()


def test_channel_subset_is_full_resolution() -> None:
    maps = torch.randn(32, 40, 40)
    flags = np.arange(32, dtype=np.uint8) % 8
    stats = wire.channel_stats(maps)
    assert _layer_reply(maps, max_values=8192).meta["downsample"] == 3
    meta, arrays = wire.layer_payload(maps, stats, flags, max_values=8192, channels=[5, 2, 31])
    assert meta == {
        "shape": [32, 40, 40],
        "stored": [3, 40, 40],
        "downsample": 1,
        "channels": [5, 2, 31],
    }
    np.testing.assert_array_equal(arrays["stats"], stats.numpy()[[5, 2, 31]])
    np.testing.assert_array_equal(arrays["flags"], flags[[5, 2, 31]])
    full = _layer_reply(maps)
    np.testing.assert_array_equal(arrays["values"], full.arrays["values"][[5, 2, 31]])


def test_a_channel_subset_larger_than_max_values_is_downsampled_too() -> None:
    maps = torch.randn(8, 40, 40)
    meta, _ = wire.layer_payload(
        maps, wire.channel_stats(maps), np.zeros(8, np.uint8), max_values=4000, channels=[0, 1, 2]
    )
    assert meta["downsample"] == 2 and meta["stored"] == [3, 20, 20]


def test_bytes_on_the_wire_per_activation_of_a_64x56x56_layer() -> None:
    maps = torch.randn(64, 56, 56)
    stats = wire.channel_stats(maps)
    meta, arrays = wire.layer_payload(maps, stats, np.zeros(64, np.uint8))
    meta.update(layer="layer1.0.conv1", sample=0, revision=1)
    content, buffers = wire.encode_reply(12, "layer", meta, arrays)
    total = len(json.dumps(content)) + sum(b.nbytes for b in buffers)
    assert total / maps.numel() <= 1.05


def test_envelope_is_json_with_flat_zero_copy_buffers() -> None:
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    ids = np.array([1, 2], dtype=np.int32)
    content, buffers = wire.encode_reply(17, "channel", {"shape": [3, 4]}, {"a": values, "b": ids})
    assert json.loads(json.dumps(content)) == {
        "type": "reply",
        "v": 1,
        "id": 17,
        "kind": "channel",
        "ok": True,
        "meta": {"shape": [3, 4]},
        "arrays": [
            {"name": "a", "dtype": "float32", "shape": [2, 3, 4]},
            {"name": "b", "dtype": "int32", "shape": [2]},
        ],
    }
    assert all(isinstance(b, memoryview) and b.format == "B" and b.ndim == 1 for b in buffers)
    assert np.shares_memory(np.frombuffer(buffers[0], np.float32), values)
    assert bytes(buffers[1]) == b"\x01\x00\x00\x00\x02\x00\x00\x00"


def test_encode_refuses_dtypes_the_browser_cannot_read() -> None:
    with pytest.raises(ValueError, match="dtype float64 cannot travel"):
        wire.encode_reply(1, "layer", {}, {"x": np.zeros(2)})


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 5])
def test_decode_does_not_depend_on_the_buffer_offset(offset: int) -> None:
    maps = torch.randn(5, 6, 7)
    reply = _layer_reply(maps)
    content, buffers = wire.encode_reply(1, "layer", reply.meta, reply.arrays)
    shifted = []
    for buffer in buffers:
        backing = bytearray(offset) + bytes(buffer) + bytearray(3)
        shifted.append(memoryview(backing)[offset : offset + buffer.nbytes])
    moved = wire.decode(content, shifted)
    for name, array in reply.arrays.items():
        np.testing.assert_array_equal(moved.arrays[name], array)
        assert moved.arrays[name].flags.aligned


def test_error_reply_has_no_buffers() -> None:
    content, buffers = wire.encode_error(9, "gradcam", "Grad-CAM is not available")
    assert buffers == []
    assert content == {
        "type": "reply",
        "v": 1,
        "id": 9,
        "kind": "gradcam",
        "ok": False,
        "error": "Grad-CAM is not available",
    }
    reply = wire.decode(content, buffers)
    assert not reply.ok and reply.error == "Grad-CAM is not available" and reply.arrays == {}


def test_decode_rejects_mismatched_buffers_and_versions() -> None:
    content, buffers = wire.encode_reply(1, "input", {}, {"image": np.zeros((2, 2, 3), np.uint8)})
    with pytest.raises(ValueError, match=r"needs 12 bytes, its buffer has 11"):
        wire.decode(content, [bytes(buffers[0])[:11]])
    with pytest.raises(ValueError, match="lists 1 arrays but carries 0 buffers"):
        wire.decode(content, [])
    with pytest.raises(ValueError, match="not a version-1 reply"):
        wire.decode({**content, "v": 2}, buffers)


def test_channel_payload_is_exact_float32_with_its_filter() -> None:
    values = torch.tensor([[1.0, math.nan], [math.inf, -2.0]], dtype=torch.float64)
    kernel = torch.randn(3, 5, 5)
    meta, arrays = wire.channel_payload(values, kernel)
    assert meta == {"shape": [2, 2], "filter_shape": [3, 5, 5]}
    np.testing.assert_array_equal(arrays["values"], values.float().numpy())
    np.testing.assert_array_equal(arrays["filter"], kernel.numpy())
    meta, arrays = wire.channel_payload(values)
    assert meta["filter_shape"] is None and set(arrays) == {"values"}


def test_image_and_gradcam_payloads_check_their_shapes() -> None:
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\), got float32 \(4, 4, 3\)"):
        wire.image_payload(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"got \(1, 7, 7\) and \(512,\)"):
        wire.gradcam_payload(torch.zeros(1, 7, 7), torch.zeros(512))
    meta, arrays = wire.gradcam_payload(torch.ones(7, 7), torch.arange(4.0))
    assert meta == {"shape": [7, 7]} and arrays["weights"].dtype == np.float32
