"""ActivationStore: statistics and health flags, layer metadata, the byte budget, close."""

from __future__ import annotations

import gc
import math
import weakref

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from fmwidget.capture import capture
from fmwidget.store import ActivationStore, UnknownLayerError
from fmwidget.wire import FLAG_CONSTANT, FLAG_DEAD, FLAG_NONFINITE
from tests.reference import numpy_stats


class _Spoil(nn.Module):
    """Puts NaN/Inf into channels 2 and 3, zeros channel 4 of sample 0 only, and makes channel 5
    constant within each sample but different between samples."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[0, 2, 0, 0] = math.nan
        x[1, 3, 1, 1] = math.inf
        x[0, 4] = 0.0
        x[0, 5] = 1.0
        x[1, 5] = 2.0
        return x


class _Health(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.spoil = _Spoil()
        with torch.no_grad():
            # Channel 0: conv constant −1, so its ReLU is dead; channel 1: constant 2 throughout.
            self.conv.weight[:2] = 0.0
            self.conv.bias[:2] = torch.tensor([-1.0, 2.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spoil(self.relu(self.conv(x)))


@pytest.fixture(scope="module")
def health() -> tuple[ActivationStore, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = _Health().eval()
    cap = capture(model, torch.randn(2, 3, 8, 8))
    copies = {name: t.clone() for name, t in cap.items()}
    return ActivationStore(cap), copies


def test_flags_mark_dead_constant_and_nonfinite_channels(health) -> None:
    store, _ = health
    np.testing.assert_array_equal(store.flags("conv"), [2, 2, 0, 0, 0, 0])
    np.testing.assert_array_equal(store.flags("relu"), [FLAG_DEAD, FLAG_CONSTANT, 0, 0, 0, 0])
    expected = [FLAG_DEAD, FLAG_CONSTANT, FLAG_NONFINITE, FLAG_NONFINITE, 0, 0]
    np.testing.assert_array_equal(store.flags("spoil"), expected)


def test_layer_meta_counts_and_ranges(health) -> None:
    store, copies = health
    metas = {m["name"]: m for m in store.layers_meta()}
    assert list(metas) == ["conv", "relu", "spoil"]
    spoil = copies["spoil"].numpy()
    finite = spoil[np.isfinite(spoil)]
    assert metas["spoil"] == {
        "name": "spoil",
        "module": "spoil",
        "call": 1,
        "type": "_Spoil",
        "shape": [2, 6, 8, 8],
        "dtype": "float32",
        "min": float(finite.min()),
        "max": float(finite.max()),
        "dead": 1,
        "constant": 1,
        "nonfinite": 2,
        "kind": "other",
        "pre": None,
        "post": None,
        "filter": False,
        # The model's output is this very tensor.
        "aliases": ["(model)"],
        "layout": "nchw",
        "extra_tokens": 0,
        "frames": 0,
        "frame": 0,
    }
    assert (metas["relu"]["dead"], metas["relu"]["constant"], metas["relu"]["nonfinite"]) == (
        1,
        1,
        0,
    )
    assert metas["conv"]["min"] == pytest.approx(float(copies["conv"].min()))


def test_activation_pairs_with_its_conv_and_gets_its_filter(health) -> None:
    store, _ = health
    conv, relu = store.meta("conv"), store.meta("relu")
    assert (conv["post"], conv["pre"], conv["filter"]) == ("relu", None, True)
    assert (relu["pre"], relu["post"], relu["filter"]) == ("conv", None, True)


def test_stats_match_numpy_for_every_sample(health) -> None:
    store, copies = health
    for name, tensor in copies.items():
        for sample in range(2):
            np.testing.assert_allclose(
                store.stats(name, sample).numpy(),
                numpy_stats(tensor[sample].numpy()),
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"{name}[{sample}]",
            )


def test_stats_of_a_resnet_match_numpy() -> None:
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None).eval()
    cap = capture(model, torch.randn(2, 3, 64, 64))
    store = ActivationStore(cap)
    for name in ("bn1", "layer1.0.relu", "layer2.0.downsample.1", "avgpool"):
        np.testing.assert_allclose(
            store.stats(name, 1).numpy(), numpy_stats(cap[name][1].numpy()), rtol=1e-4, atol=1e-5
        )
        metas = {m["name"]: m for m in store.layers_meta()}
        assert metas[name]["min"] == pytest.approx(float(cap[name].min()))
        assert metas[name]["max"] == pytest.approx(float(cap[name].max()))
    # ResNet's stem: the in-place ReLU follows bn1, so bn1 pairs with it (conv1 does not).
    assert (store.meta("bn1")["post"], store.meta("relu")["pre"]) == ("relu", "bn1")
    assert not store.meta("relu")["filter"]


def test_bfloat16_layers_get_their_metadata_and_stats() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).to(torch.bfloat16).eval()
    cap = capture(model, torch.randn(2, 3, 8, 8, dtype=torch.bfloat16))
    store = ActivationStore(cap)
    maps = cap["0"].float()
    meta = store.meta("0")
    assert (meta["dtype"], meta["min"], meta["max"]) == (
        "bfloat16",
        maps.min().item(),
        maps.max().item(),
    )
    assert store.meta("1")["pre"] == "0"
    expected = numpy_stats(maps[1].numpy())
    np.testing.assert_allclose(store.stats("0", 1).numpy(), expected, rtol=1e-6)


def test_unknown_layer_lists_close_names(health) -> None:
    store, _ = health
    with pytest.raises(UnknownLayerError, match=r"unknown layer 'rel'; close names: 'relu'"):
        store.maps("rel")
    with pytest.raises(IndexError, match="sample 2 is out of range for a batch of 2"):
        store.stats("relu", 2)


def _four_convs() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(2)
    model = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=1) for _ in range(4)]).eval()
    return model, torch.randn(2, 4, 16, 16)


def test_budget_evicts_least_recently_used_and_recomputes_equal_values() -> None:
    model, x = _four_convs()
    original = {name: t.clone() for name, t in capture(model, x).items()}
    layer_bytes = original["0"].numel() * 4
    calls: list[str] = []

    def recompute(name: str) -> torch.Tensor:
        calls.append(name)
        return capture(model, x, [name])[name]

    store = ActivationStore(capture(model, x), budget_bytes=2 * layer_bytes, recompute=recompute)
    # The first layers are the ones kept: they are what a view shows first.
    assert [store.is_resident(n) for n in "0123"] == [True, True, False, False]
    assert store.resident_bytes == 2 * layer_bytes and store.evicted
    store.maps("0")
    assert torch.equal(store.maps("2"), original["2"])
    assert calls == ["2"]
    assert [store.is_resident(n) for n in "0123"] == [True, False, True, False]
    for name in "0123":
        assert torch.equal(store.maps(name), original[name])
    assert calls == ["2", "1", "2", "3"]
    assert store.resident_bytes <= 2 * layer_bytes


def test_statistics_stay_when_their_layer_is_evicted() -> None:
    model, x = _four_convs()
    calls: list[str] = []

    def recompute(name: str) -> torch.Tensor:
        calls.append(name)
        return capture(model, x, [name])[name]

    layer_bytes = 2 * 4 * 16 * 16 * 4
    store = ActivationStore(capture(model, x), budget_bytes=layer_bytes, recompute=recompute)
    first = store.stats("0", 1).clone()
    store.maps("1")
    assert not store.is_resident("0")
    assert torch.equal(store.stats("0", 1), first) and calls == ["1"]
    assert store.flags("0").shape == (4,)


def test_an_evicted_tensor_is_freed() -> None:
    model, x = _four_convs()
    cap = capture(model, x)
    last = weakref.ref(cap["3"])
    store = ActivationStore(cap, budget_bytes=1, recompute=lambda n: capture(model, x, [n])[n])
    del cap
    gc.collect()
    assert last() is None
    assert store.names == ["0", "1", "2", "3"]


def test_without_recompute_nothing_is_evicted() -> None:
    model, x = _four_convs()
    store = ActivationStore(capture(model, x), budget_bytes=1)
    assert all(store.is_resident(n) for n in store.names) and not store.evicted


def test_recompute_with_another_shape_is_an_error() -> None:
    model, x = _four_convs()
    store = ActivationStore(
        capture(model, x), budget_bytes=1, recompute=lambda n: torch.zeros(1, 4, 16, 16)
    )
    with pytest.raises(RuntimeError, match=r"recomputing layer '3' gave shape \(1, 4, 16, 16\)"):
        store.maps("3")


def test_close_frees_everything() -> None:
    model, x = _four_convs()
    cap = capture(model, x)
    refs = [weakref.ref(t) for t in cap.values()]
    store = ActivationStore(cap)
    store.stats("0", 0)
    del cap
    store.close()
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert store.closed and store.resident_bytes == 0
    with pytest.raises(RuntimeError, match="closed"):
        store.maps("0")


def test_budget_must_be_positive() -> None:
    model, x = _four_convs()
    with pytest.raises(ValueError, match="budget_bytes must be positive, got 0"):
        ActivationStore(capture(model, x), budget_bytes=0)


def test_a_dropped_layer_is_recomputed_by_a_forward_that_stops_at_it() -> None:
    """Recompute runs the modules up to the layer, not the rest of the model."""
    from fmwidget.capture import capture_layer
    from fmwidget.session import Recompute
    from tests.models import InplaceNet, assert_no_hooks

    torch.manual_seed(0)
    net = InplaceNet().eval()
    calls: list[str] = []
    spy = net.conv2.register_forward_pre_hook(lambda m, a: calls.append("conv2"))
    x = torch.randn(2, 3, 8, 8)
    reference = capture(net, x)["bn1"]  # bn1 is overwritten in place by the ReLU after it
    calls.clear()
    got = Recompute(net, x)("bn1")
    torch.testing.assert_close(got, reference)
    assert calls == []  # the forward stopped before conv2
    torch.testing.assert_close(capture_layer(net, x, "relu:2"), capture(net, x)["relu:2"])
    spy.remove()
    assert_no_hooks(net)


# -- a capture that keeps only what fits (LayerIntake) -------------------------------------------


class _Batched(nn.Module):
    """Records the batch each forward gets: what a recompute ran on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.inner(x)


def _intake_store(
    model: nn.Module, x: torch.Tensor, budget: int, *, means: bool = False
) -> tuple[ActivationStore, list[str]]:
    from fmwidget.session import Recompute
    from fmwidget.store import LayerIntake

    intake = LayerIntake(budget, means=means)
    cap = capture(model, x, admit=intake)
    recompute = Recompute(model, x)
    store = ActivationStore(
        cap, recompute=recompute, recompute_sample=recompute.sample, intake=intake
    )
    return store, list(cap.dropped)


def test_an_intake_keeps_layers_while_they_fit_and_describes_the_rest_alike() -> None:
    from tests.models import InplaceNet

    torch.manual_seed(0)
    model = InplaceNet().eval()
    x = torch.randn(3, 3, 12, 12)
    full = ActivationStore(capture(model, x))
    layer_bytes = 3 * 8 * 12 * 12 * 4
    store, dropped = _intake_store(model, x, layer_bytes)
    # Kept in call order while they fit; bn1 and the in-place ReLU after it are kept as how to
    # compute them from conv1 (no bytes, no forward to read them); conv2 does not fit, and what
    # follows it has no held layer to be computed from.
    assert [n for n in store.names if store.is_resident(n)] == ["conv1"]
    assert dropped == ["conv2", "bn2", "relu:2"] and store.resident_bytes <= layer_bytes
    assert store.holds("bn1", 0) and store.holds("relu", 0) and not store.holds("bn2", 0)
    assert store.layers_meta() == full.layers_meta()
    for name in store.names:
        np.testing.assert_array_equal(store.flags(name), full.flags(name))
        for sample in range(3):
            assert torch.equal(store.sample_maps(name, sample), full.maps(name)[sample]), name
            assert torch.equal(store.stats(name, sample), full.stats(name, sample)), name


def test_clamp_extremes_taken_from_their_input_equal_those_of_their_maps() -> None:
    """ReLU6 and ReLU layers get their min/max from the layer before them, not from a pass."""
    torch.manual_seed(0)
    for model in (torchvision.models.mobilenet_v2(), torchvision.models.resnet18()):
        model.eval()
        x = torch.randn(3, 3, 32, 32)
        x[1, 0, 0, 0] = math.nan  # a NaN goes through every clamp as it goes through the maps
        full = ActivationStore(capture(model, x))
        store, _ = _intake_store(model, x, 1 << 40)
        assert store.layers_meta() == full.layers_meta()
        for name in store.names:
            np.testing.assert_array_equal(store.flags(name), full.flags(name))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_norm_extremes_taken_from_their_input_equal_those_of_their_maps(
    memory_format: torch.memory_format, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An eval-mode BatchNorm2d gets its min/max from its input's, not from a pass, bit for bit:
    with any statistics, a negative scale (min and max swap), a zero one, NaN and infinities."""
    from fmwidget import store as store_module

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    for norm in model.modules():
        if isinstance(norm, nn.BatchNorm2d):
            c = norm.num_features
            weight = torch.randn(c)
            weight[::5] = 0.0
            with torch.no_grad():
                norm.running_mean.copy_(torch.randn(c))
                norm.running_var.copy_(torch.rand(c) * 3 + 0.05)
                norm.weight.copy_(weight)
                norm.bias.copy_(torch.randn(c))
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=memory_format)
    x[1, 0, 0, 0] = math.nan
    x[2, 1, 4, 4] = math.inf
    x[2, 2, 5, 5] = -math.inf
    passes = []
    extremes = store_module._extremes
    monkeypatch.setattr(
        store_module, "_extremes", lambda maps: passes.append(maps.shape) or extremes(maps)
    )
    intake = store_module.LayerIntake(keep_all=True)
    cap = capture(model, x, admit=intake)
    monkeypatch.undo()
    norms = [i.name for i in cap.report.captured if i.type == "BatchNorm2d"]
    for name in norms:
        lo, hi = extremes(cap[name])
        taken = intake.taken[name]
        for want, got in ((lo, taken.lo), (hi, taken.hi)):
            assert torch.equal(want.isnan(), got.isnan()), name
            assert torch.equal(want.nan_to_num(0.0), got.nan_to_num(0.0)), name
    # One pass per layer that is neither a norm nor a clamp (each conv, each residual sum).
    passing = [i for i in cap.report.captured if i.type not in ("BatchNorm2d", "ReLU6")]
    assert len(passes) == len(passing) < len(cap.report.captured) / 2
    assert len(norms) == 52
    store, full = ActivationStore(cap, intake=intake), ActivationStore(capture(model, x))
    assert store.layers_meta() == full.layers_meta()
    for name in store.names:
        np.testing.assert_array_equal(store.flags(name), full.flags(name))


def test_a_dropped_layer_is_served_from_a_forward_of_its_sample_only() -> None:
    torch.manual_seed(0)
    model = _Batched(torchvision.models.resnet18(weights=None)).eval()
    x = torch.randn(5, 3, 48, 48)
    reference = {name: t.clone() for name, t in capture(model, x).items()}
    store, dropped = _intake_store(model, x, 1)
    name = "inner.layer3.1.conv2"
    assert name in dropped and not store.is_resident(name)
    model.inputs.clear()
    got = store.sample_maps(name, 3)
    # Two copies of sample 3 (a batch of one takes other conv kernels on the CPU), nothing else.
    assert len(model.inputs) == 1 and model.inputs[0].shape[0] == 2
    assert torch.equal(model.inputs[0][0], x[3]) and torch.equal(model.inputs[0][1], x[3])
    assert torch.equal(got, reference[name][3])
    assert torch.equal(store.stats(name, 3), ActivationStore(capture(model, x)).stats(name, 3))
    model.inputs.clear()
    store.sample_maps(name, 3)  # kept for the next reply
    assert model.inputs == []
    assert not store.is_resident(name)


def test_a_recomputed_sample_unlike_the_capture_beyond_rounding_falls_back_to_the_batch() -> None:
    model, x = _four_convs()
    reference = capture(model, x)
    from fmwidget.store import LayerIntake

    intake = LayerIntake(1)
    cap = capture(model, x, admit=intake)
    calls: list[str] = []

    def whole(name: str) -> torch.Tensor:
        calls.append(name)
        return capture(model, x, [name])[name]

    def off(name: str, sample: int) -> torch.Tensor:
        # Rounding-level off for layer 1, as if the sample depended on the others for layer 2.
        factor = 1 + 1e-7 if name == "1" else 1.01
        return capture(model, x, [name])[name][sample] * factor

    store = ActivationStore(cap, recompute=whole, recompute_sample=off, intake=intake)
    torch.testing.assert_close(store.sample_maps("1", 1), reference["1"][1])
    assert calls == [] and not store.is_resident("1")
    assert torch.equal(store.sample_maps("2", 1), reference["2"][1])
    assert calls == ["2"] and store.is_resident("2")


def test_a_dropped_layer_keeps_its_group_means_and_nonfinite_statistics() -> None:
    from fmwidget.groups import group_effect
    from tests.models import NanNet

    model = NanNet().eval()
    x = torch.linspace(-1, 1, 4 * 36).reshape(4, 1, 6, 6)
    full = ActivationStore(capture(model, x))
    store, dropped = _intake_store(model, x, 1, means=True)
    assert dropped == ["conv", "log"]
    assert store.layers_meta() == full.layers_meta()
    np.testing.assert_array_equal(store.flags("log"), full.flags("log"))
    assert store.flags("log")[0] & FLAG_NONFINITE
    assert torch.equal(store.stats("log", 2), full.stats("log", 2))
    labels, pair = ["a", "a", "b", "b"], ["a", "b"]
    for name in ("conv", "log"):
        means = store.spatial_means(name)
        assert not store.is_resident(name)
        expected = full.maps(name).mean(dim=(2, 3), dtype=torch.float32)
        torch.testing.assert_close(means, expected, rtol=0, atol=0, equal_nan=True)
        got, _ = group_effect(means[:, :, None, None], labels, pair)
        want, _ = group_effect(full.maps(name), labels, pair)
        np.testing.assert_array_equal(got, want)
