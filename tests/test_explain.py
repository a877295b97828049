"""The `explain` request: how one value is computed (a conv taken apart, other layers' one line
with before → after) and its receptive field, from one forward per layer and sample."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakecomm import FakeComm, fake_comms
from torch import nn

from fmwidget import hovercache, wire
from fmwidget.capture import capture
from fmwidget.explain import describe, number
from fmwidget.hovercache import LayerFields
from fmwidget.receptive import receptive_field
from fmwidget.widget import FeatureMapWidget
from tests.models import InplaceNet, assert_no_hooks, flags

Make = Callable[..., FeatureMapWidget]


def _net() -> nn.Module:
    """RGB first conv, grouped conv, BN, in-place ReLU, depthwise conv → ReLU6, pools, head."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # 0: reads the picture
        nn.Conv2d(8, 6, 3, padding=1, groups=2, bias=False),  # 1: grouped
        nn.BatchNorm2d(6),  # 2
        nn.ReLU(inplace=True),  # 3
        nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6),  # 4: depthwise, dilated
        nn.ReLU6(),  # 5: the activation right after a conv
        nn.MaxPool2d(3, stride=2, padding=1),  # 6
        nn.AvgPool2d(2),  # 7
        nn.AdaptiveAvgPool2d(1),  # 8
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    with torch.no_grad():
        bn = net[2]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    return net.eval()


def _ask(w: FeatureMapWidget, **args: Any) -> wire.Reply:
    comm = w.comm
    assert isinstance(comm, FakeComm)
    reply = comm.request("explain", revision=w.revision, **args)
    # No NaN or Inf may reach the comm's JSON.
    json.dumps(reply.meta, allow_nan=False)
    return reply


def _explain(
    w: FeatureMapWidget, layer: str, channel: int, row: int, col: int, sample: int = 0
) -> wire.Reply:
    reply = _ask(w, layer=layer, sample=sample, channel=channel, row=row, col=col)
    assert reply.ok, reply.error
    return reply


def test_conv_breakdown_sums_to_the_captured_value(make: Make) -> None:
    net, x = _net(), torch.randn(2, 3, 17, 17)
    w = make(net, x)
    acts = capture(net, x)
    for layer, positions in {
        "0": [(0, 0, 0), (7, 8, 8), (3, 4, 1)],  # first layer, corners with padding
        "1": [(0, 0, 0), (5, 8, 3)],  # grouped: channel 5 reads inputs 4–7
        "4": [(2, 0, 8), (5, 4, 4)],  # depthwise: one input channel
    }.items():
        for channel, row, col in positions:
            r = _explain(w, layer, channel, row, col, sample=1)
            m, conv = r.meta, r.meta["conv"]
            value = float(acts[layer][1, channel, row, col])
            assert m["op"] == "conv" and m["matches"] is True
            assert m["value"] == pytest.approx(value)
            patch, kernel, sums = r.arrays["patch"], r.arrays["kernel"], r.arrays["per_channel"]
            assert patch.dtype == kernel.dtype == sums.dtype == np.float32
            assert patch.shape == kernel.shape == tuple(conv["shape"])
            np.testing.assert_allclose(sums, (patch * kernel).sum((1, 2)), rtol=1e-5, atol=1e-6)
            total = float(sums.astype(np.float64).sum()) + (conv["bias"] or 0.0)
            assert total == pytest.approx(value, rel=1e-4, abs=1e-5)
            assert conv["total"] == pytest.approx(value, rel=1e-4, abs=1e-5)
    first = _explain(w, "0", 1, 0, 0).meta["conv"]
    assert first["rgb"] is True and first["inputs"] == [0, 3]
    grouped = _explain(w, "1", 5, 2, 2).meta["conv"]
    assert grouped["rgb"] is False and grouped["inputs"] == [4, 8] and grouped["bias"] is None
    assert _explain(w, "4", 3, 1, 1).meta["conv"]["inputs"] == [3, 4]


def test_the_activation_after_a_conv_explains_both(make: Make) -> None:
    net, x = _net(), torch.randn(1, 3, 17, 17) * 3
    w = make(net, x)
    acts = capture(net, x)
    assert w.layers[5]["pre"] == "4"
    for row, col in [(0, 0), (3, 5), (8, 8)]:
        r = _explain(w, "5", 2, row, col)
        m = r.meta
        assert m["op"] == "conv+act" and m["conv"]["layer"] == "4" and m["matches"] is True
        conv_value = float(acts["4"][0, 2, row, col])
        assert m["conv"]["total"] == pytest.approx(conv_value, rel=1e-4, abs=1e-5)
        assert m["activation"]["text"] == "ReLU6: clamp to [0, 6]"
        assert m["activation"]["before"] == pytest.approx(conv_value, rel=1e-6, abs=1e-6)
        assert m["activation"]["after"] == pytest.approx(min(6.0, max(0.0, conv_value)), abs=1e-6)
        assert m["value"] == pytest.approx(float(acts["5"][0, 2, row, col]))


def test_batchnorm_and_inplace_relu_before_and_after(make: Make) -> None:
    torch.manual_seed(1)
    net = InplaceNet()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    net.eval()
    x = torch.randn(2, 3, 9, 9)
    w = make(net, x)
    # Computed independently with the functional ops, nothing in place.
    with torch.no_grad():
        c1 = F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1)
        b1 = F.batch_norm(
            c1, net.bn1.running_mean, net.bn1.running_var, net.bn1.weight, net.bn1.bias, eps=1e-5
        )
        skip = b1.clamp(min=0)
        c2 = F.conv2d(skip, net.conv2.weight, net.conv2.bias, padding=1)
        b2 = F.batch_norm(
            c2, net.bn2.running_mean, net.bn2.running_var, net.bn2.weight, net.bn2.bias, eps=1e-5
        )
        summed = b2 + skip
    bn = net.bn1
    for sample, channel, row, col in [(0, 0, 0, 0), (1, 5, 4, 7), (1, 7, 8, 8)]:
        m = _explain(w, "bn1", channel, row, col, sample=sample).meta
        assert m["op"] == "layer" and m["matches"] is True
        before = float(c1[sample, channel, row, col])
        assert m["before"] == pytest.approx(before, rel=1e-5, abs=1e-6)
        assert m["after"] == pytest.approx(float(b1[sample, channel, row, col]), rel=1e-5, abs=1e-6)
        mean, var = float(bn.running_mean[channel]), float(bn.running_var[channel])
        gamma, beta = float(bn.weight[channel].detach()), float(bn.bias[channel].detach())
        sign = lambda v: f"+ {number(v)}" if v >= 0 else f"− {number(-v)}"  # noqa: E731
        assert m["text"] == (
            f"BatchNorm2d: (x {sign(-mean)}) / √({number(var)} + 1e-05) · {number(gamma)} "
            f"{sign(beta)}"
        )
        # The in-place ReLU, first call: its input is bn1's output, not the ReLU's result.
        m = _explain(w, "relu", channel, row, col, sample=sample).meta
        assert m["text"] == "ReLU: max(0, x)" and m["matches"] is True
        assert m["before"] == pytest.approx(
            float(b1[sample, channel, row, col]), rel=1e-5, abs=1e-6
        )
        assert m["after"] == pytest.approx(float(skip[sample, channel, row, col]), abs=1e-6)
        # Its second call follows `out += skip`, and overwrites that sum in place.
        m = _explain(w, "relu:2", channel, row, col, sample=sample).meta
        expected = float(summed[sample, channel, row, col])
        assert m["before"] == pytest.approx(expected, rel=1e-5, abs=1e-5)
        assert m["after"] == pytest.approx(max(0.0, expected), rel=1e-5, abs=1e-5)
        assert m["value"] == pytest.approx(max(0.0, expected), rel=1e-5, abs=1e-5)


def test_batch_statistics_in_training_mode_leave_the_model_as_it_was(make: Make) -> None:
    net = _net().train()
    x = torch.randn(3, 3, 17, 17)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    before = flags(net)
    w = make(net, x)
    acts = w.capture
    m = _explain(w, "2", 4, 3, 2, sample=2).meta
    assert "this batch's mean and variance (3 inputs)" in m["text"]
    assert m["matches"] is True
    assert m["value"] == pytest.approx(float(acts["2"][2, 4, 3, 2]), rel=1e-5, abs=1e-5)
    assert flags(net) == before
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_windows_and_element_wise_layers_recompute_the_module_output() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 6, 11, 13)
    modules = [
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.MaxPool2d(2, stride=1, dilation=2),
        nn.AvgPool2d(3, stride=2, padding=1),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        nn.AvgPool2d(3, stride=2, ceil_mode=True, padding=1),
        nn.AdaptiveAvgPool2d((4, 5)),
        nn.AdaptiveMaxPool2d(3),
        nn.Upsample(scale_factor=2),
        nn.Upsample(size=(17, 20)),
        nn.Linear(13, 4),
        nn.GroupNorm(3, 6),
        nn.LayerNorm([11, 13]),
        nn.LayerNorm(13),
        nn.InstanceNorm2d(6),
        nn.PReLU(6),
        nn.Hardswish(),
        nn.LeakyReLU(0.2),
        nn.GELU(),
        nn.ELU(),
        nn.SiLU(),
        nn.Softplus(beta=2),
        nn.Softmax(dim=1),
        nn.Dropout(0.3).eval(),
        nn.Identity(),
    ]
    for module in modules:
        if isinstance(module, nn.PReLU):
            with torch.no_grad():
                module.weight.uniform_(0.05, 0.5)
        with torch.no_grad():
            out = module(x.clone())
        _, c, h, wd = out.shape
        for channel, row, col in [(0, 0, 0), (c - 1, h - 1, wd - 1), (c // 2, h // 2, wd // 3)]:
            step = describe(module, x, 1, channel, row, col, (c, h, wd))
            assert step.after is not None, type(module).__name__
            want = float(out[1, channel, row, col])
            assert step.after == pytest.approx(want, rel=1e-5, abs=1e-5), (
                module,
                channel,
                row,
                col,
            )
            assert step.text.startswith(type(module).__name__)
    text = describe(nn.MaxPool2d(3, stride=2, padding=1), x, 0, 0, 0, 0).text
    assert text == "MaxPool2d 3×3 stride 2: the largest of 4 inputs"  # a corner: 2 × 2 inside
    assert describe(nn.ReLU6(), x, 0, 0, 0, 0).text == "ReLU6: clamp to [0, 6]"
    assert describe(nn.Hardswish(), x, 0, 0, 0, 0).text == "Hardswish: x · relu6(x + 3) / 6"


def test_an_unknown_layer_gets_its_type_name() -> None:
    class Mystery(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t.flip(-1)

    x = torch.randn(1, 2, 4, 4)
    step = describe(Mystery(), x, 0, 1, 2, 3, (2, 4, 4))
    assert step.text == "Mystery (its input here → its output)"
    assert step.before == pytest.approx(float(x[0, 1, 2, 3])) and step.after is None
    assert describe(Mystery(), x, 0, 1, 2, 3, (2, 8, 8)).text == "Mystery"


def test_the_box_is_the_receptive_field(make: Make) -> None:
    net, x = _net(), torch.randn(2, 3, 17, 17)
    w = make(net, x)
    for layer, (h, wd) in [("0", (9, 9)), ("5", (9, 9)), ("6", (5, 5)), ("7", (2, 2))]:
        for row, col in [(0, 0), (h - 1, wd - 1), (h // 2, 0), (1, wd - 1)]:
            m = _explain(w, layer, 0, row, col).meta
            assert m["box"] == list(receptive_field(net, x, layer, row, col)), (layer, row, col)
            assert m["input_shape"] == [17, 17]


def test_fields_are_derived_once_for_a_conv_net_and_measured_otherwise() -> None:
    net, x = _net(), torch.randn(1, 3, 17, 17)
    fields = LayerFields(net, x, "6", (5, 5), (17, 17))
    assert fields.derived
    for row in range(5):
        for col in range(5):
            assert fields.box(row, col) == receptive_field(net, x, "6", row, col)
    assert fields.measurements == 1
    decoder = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3)
    ).eval()
    y = torch.randn(1, 1, 13, 13)
    fields = LayerFields(decoder, y, "2", (12, 12), (13, 13))
    assert not fields.derived
    for row, col in [(0, 0), (3, 4), (5, 11), (3, 4)]:
        assert fields.box(row, col) == receptive_field(decoder, y, "2", row, col)
    assert fields.measurements == 3  # the first measurement, then two new positions


def test_bad_requests_get_a_clear_error(make: Make) -> None:
    w = make(_net(), torch.randn(1, 3, 17, 17))
    r = _ask(w, layer="0", sample=0, channel=0, row=9, col=0)
    assert not r.ok and "position (row 9, col 0) is outside layer '0''s 9×9 maps" in str(r.error)
    r = _ask(w, layer="0", sample=0, channel=0, row=0, col=-1)
    assert not r.ok and "outside" in str(r.error)
    r = _ask(w, layer="0", sample=0, channel=8, row=0, col=0)
    assert not r.ok and "channel 8" in str(r.error)
    r = _ask(w, layer="0", sample=3, channel=0, row=0, col=0)
    assert not r.ok and "sample 3" in str(r.error)
    r = _ask(w, layer="nope", sample=0, channel=0, row=0, col=0)
    assert not r.ok and "nope" in str(r.error)
    r = _ask(w, layer="0", sample=0, channel=0, row="1", col=0)
    assert not r.ok and "'row'" in str(r.error)


def test_one_early_stopping_forward_per_layer_and_sample(make: Make) -> None:
    net, x = _net(), torch.randn(2, 3, 17, 17)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    before = flags(net)
    w = make(net, x)
    seen: list[nn.Module] = []
    first, last = net[0], net[10]
    handles = [m.register_forward_pre_hook(lambda m, args: seen.append(m)) for m in (first, last)]
    try:
        # The receptive-field copy of the model is made before counting (a deep copy would
        # carry the counting hooks along; they are told apart by identity below).
        _explain(w, "2", 0, 0, 0)
        seen.clear()
        for row in range(9):
            for col in range(0, 9, 2):
                _explain(w, "3", 1, row, col, sample=1)
        assert sum(m is first for m in seen) == 1  # one forward for 45 hovers
        assert not any(m is last for m in seen)  # it stopped at the layer
        _explain(w, "3", 1, 0, 0, sample=0)
        assert sum(m is first for m in seen) == 2  # another sample, another forward
    finally:
        for handle in handles:
            handle.remove()
    assert flags(net) == before
    assert_no_hooks(net)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_the_cache_is_small_and_goes_with_the_session(make: Make) -> None:
    net, x = _net(), torch.randn(2, 3, 17, 17)
    w = make(net, x)
    session = w._session
    for layer in ("0", "2", "3", "5"):
        _explain(w, layer, 0, 1, 1)
    cache = hovercache.for_session(session)
    assert len(cache._inputs) == hovercache.INPUT_ENTRIES
    w.inputs = torch.randn(2, 3, 17, 17)  # a re-run: a new session
    _explain(w, "0", 0, 1, 1)
    assert id(session) not in hovercache._CACHES


def test_changed_weights_are_read_again_and_flagged(make: Make) -> None:
    net, x = _net(), torch.randn(1, 3, 17, 17)
    w = make(net, x)
    assert _explain(w, "2", 0, 2, 2).meta["matches"] is True
    with torch.no_grad():
        net[1].weight.mul_(2.0)
    m = _explain(w, "2", 0, 2, 2).meta
    assert m["matches"] is False and "changed since the capture" in m["note"]


def test_without_a_model_the_reply_has_the_value_and_a_note() -> None:
    maps = torch.randn(1, 2, 4, 4)
    maps[0, 1, 2, 2] = float("nan")
    with fake_comms():
        w = FeatureMapWidget.from_activations({"a": maps})
        try:
            m = _explain(w, "a", 0, 1, 3).meta
            assert m["op"] == "value" and m["value"] == pytest.approx(float(maps[0, 0, 1, 3]))
            assert "no model" in m["note"] and m["box"] is None and m["conv"] is None
            assert _explain(w, "a", 1, 2, 2).meta["value"] is None  # NaN: null, never in JSON
        finally:
            w.close()
