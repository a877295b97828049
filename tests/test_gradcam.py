"""Grad-CAM against an independent autograd computation on in-place-free copies of the model."""

from __future__ import annotations

import copy
import sys
import types

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from fmwidget.gradcam import CAM_METHODS, gradcam, gradcam_layer, top_classes


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def _inputs(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _basic_block_out_of_place(self: BasicBlock, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


def _without_inplace(model: nn.Module) -> nn.Module:
    """A deep copy with in-place ops switched off: `inplace=False`, residuals added out of place."""
    clean = copy.deepcopy(model)
    for module in clean.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
        if isinstance(module, BasicBlock):
            module.forward = types.MethodType(_basic_block_out_of_place, module)
    return clean


def _reference(
    model: nn.Module, x: torch.Tensor, layer: str, targets: list[int], call: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM by hand on a model without in-place ops: keep the k-th output, grad w.r.t. it."""
    seen: list[torch.Tensor] = []
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda _m, _a, out: seen.append(out)
    )
    try:
        out = model(x)
    finally:
        handle.remove()
    act = seen[call - 1]
    score = out[torch.arange(len(targets)), targets].sum()
    (grad,) = torch.autograd.grad(score, act)
    weights = grad.mean(dim=(2, 3))
    return torch.relu((weights[:, :, None, None] * act).sum(dim=1)).detach(), weights


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@pytest.mark.parametrize("layer", ["bn1", "layer1.0.bn2", "layer4"])
def test_resnet18_matches_manual_autograd_without_inplace_ops(layer: str) -> None:
    model, x = _resnet18(), _inputs()
    result = gradcam_layer(model, x, layer)
    predicted = model(x).argmax(dim=1).tolist()
    heat, weights = _reference(_without_inplace(model), x, layer, predicted)
    assert result.target == predicted
    assert result.heatmap.shape == heat.shape
    assert heat.abs().max() > 0
    torch.testing.assert_close(result.weights, weights, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(result.heatmap, heat, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layer", ["bn1", "layer1.0.bn2"])
def test_these_layers_are_really_modified_in_place_later(layer: str) -> None:
    # Guards the test above: a plain hook keeping the output sees the later in-place op's result.
    model, x = _resnet18(), _inputs()
    kept: list[torch.Tensor] = []
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda _m, _a, out: kept.append(out)
    )
    with torch.no_grad():
        model(x)
    handle.remove()
    clean_kept: list[torch.Tensor] = []
    clean = _without_inplace(model)
    handle = dict(clean.named_modules())[layer].register_forward_hook(
        lambda _m, _a, out: clean_kept.append(out)
    )
    with torch.no_grad():
        clean(x)
    handle.remove()
    assert (kept[0] >= 0).all()
    assert (clean_kept[0] < 0).any()


class _Net(nn.Module):
    """Reuses `conv2` and `act`, adds a residual in place when `inplace`."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        y = self.conv2(x)
        if self.inplace:
            y += x
        else:
            y = y + x
        y = self.conv2(self.act(y))
        if self.inplace:
            y.mul_(0.5)
        else:
            y = y * 0.5
        return self.head(y.mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("layer", "module", "call"), [("conv2", "conv2", 1), ("conv2:2", "conv2", 2)]
)
def test_custom_net_with_reused_modules_matches_manual(layer: str, module: str, call: int) -> None:
    torch.manual_seed(2)
    model = _Net(inplace=True).eval()
    clean = _Net(inplace=False).eval()
    clean.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 12, 12)
    result = gradcam_layer(model, x, layer, target=[1, 3])
    heat, weights = _reference(clean, x, module, [1, 3], call=call)
    torch.testing.assert_close(result.weights, weights)
    torch.testing.assert_close(result.heatmap, heat)
    assert result.target == [1, 3]


def test_layer_given_as_module_equals_its_name() -> None:
    model, x = _resnet18(), _inputs(2)
    by_module = gradcam(model, x, model.layer3)
    torch.testing.assert_close(by_module, gradcam(model, x, "layer3"))


def test_target_variants_agree() -> None:
    model, x = _resnet18(), _inputs(2)
    as_int = gradcam_layer(model, x, "layer3", target=7)
    torch.testing.assert_close(as_int.scores, model(x)[:, 7].detach())
    assert as_int.target == [7, 7]
    per_sample = gradcam_layer(model, x, "layer3", target=lambda out: out[:, 7])
    scalar = gradcam_layer(model, x, "layer3", target=lambda out: out[:, 7].sum())
    assert per_sample.target is None
    assert scalar.scores.ndim == 0
    for other in (per_sample, scalar):
        torch.testing.assert_close(other.heatmap, as_int.heatmap)
        torch.testing.assert_close(other.weights, as_int.weights)
    mixed = gradcam_layer(model, x, "layer3", target=[7, 11])
    as_tensor = gradcam_layer(model, x, "layer3", target=torch.tensor([7, 11]))
    only_second = gradcam_layer(model, x[1:], "layer3", target=11)
    torch.testing.assert_close(mixed.heatmap[0], as_int.heatmap[0])
    torch.testing.assert_close(mixed.heatmap[1], only_second.heatmap[0])
    torch.testing.assert_close(as_tensor.heatmap, mixed.heatmap)


def test_model_left_clean_and_existing_grads_untouched() -> None:
    model, x = _resnet18(), _inputs(2)
    model.train()
    model.layer2.eval()
    modes = [m.training for m in model.modules()]
    buffers = [b.clone() for b in model.buffers()]
    marker = torch.full_like(model.fc.weight, 3.0)
    model.fc.weight.grad = marker
    model.fc.bias.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    gradcam(model, x, "layer1.0.bn2")
    assert _hook_count(model) == 0
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.fc.weight.grad is marker
    assert (marker == 3.0).all()
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")
    for before, after in zip(buffers, model.buffers(), strict=True):
        torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_hooks_removed_when_it_fails() -> None:
    model, x = _resnet18(), _inputs(2)
    with pytest.raises(ValueError, match="out of range for a model with 1000 classes"):
        gradcam(model, x, "layer4", target=1000)
    assert _hook_count(model) == 0


def test_frozen_parameters() -> None:
    model, x = _resnet18(), _inputs(2)
    expected = gradcam_layer(model, x, "layer2")
    model.requires_grad_(False)
    result = gradcam_layer(model, x, "layer2")
    torch.testing.assert_close(result.heatmap, expected.heatmap)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_works_under_no_grad_and_inference_mode() -> None:
    model, x = _resnet18(), _inputs(2)
    expected = gradcam(model, x, "layer2")
    with torch.no_grad():
        torch.testing.assert_close(gradcam(model, x, "layer2"), expected)
    with torch.inference_mode():
        torch.testing.assert_close(gradcam(model, x.clone(), "layer2"), expected)


def test_errors_name_what_the_user_controls() -> None:
    model, x = _resnet18(), _inputs(2)
    with pytest.raises(ValueError, match=r"layer .layer9.*close names"):
        gradcam(model, x, "layer9")
    with pytest.raises(
        ValueError, match=r"layer 'fc' to output \(N, C, H, W\); it output \(2, 1000\)"
    ):
        gradcam(model, x, "fc")
    with pytest.raises(RuntimeError, match=r"'layer4:2' was called 1 time"):
        gradcam(model, x, "layer4:2")
    with pytest.raises(ValueError, match="target has 3 class indices for a batch of 2"):
        gradcam(model, x, "layer4", target=[1, 2, 3])
    with pytest.raises(ValueError, match="does not depend on layer 'layer4'"):
        gradcam(model, x, "layer4", target=lambda out: out.detach()[:, 0])
    with pytest.raises(ValueError, match=r"unknown method 'gradcam\+'"):
        gradcam(model, x, "layer4", method="gradcam+")
    assert _hook_count(model) == 0


class _Split(nn.Module):
    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return y * 1, {"b": y * 2}


class _TupleOutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.split = _Split()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, rest = self.split(self.stem(x))
        return self.head((a + rest["b"]).mean(dim=(2, 3)))


def test_tensor_inside_a_tuple_output() -> None:
    torch.manual_seed(3)
    model = _TupleOutNet().eval()
    x = torch.randn(2, 3, 8, 8)
    first = gradcam_layer(model, x, "split[0]", target=0)
    second = gradcam_layer(model, x, "split[1]['b']", target=0)
    # a + b feeds the head, so d(score)/da == d(score)/db, and b == 2a.
    torch.testing.assert_close(second.weights, first.weights)
    torch.testing.assert_close(second.heatmap, 2 * first.heatmap)
    assert first.heatmap.max() > 0
    with pytest.raises(TypeError, match=r"outputs a tuple, not a tensor; .*split\[0\]"):
        gradcam(model, x, "split", target=0)


def test_package_method_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(ImportError, match="pip install grad-cam"):
        gradcam(_resnet18(), _inputs(1), "layer4", method="gradcam++")


def test_gradcam_plus_plus_through_package_is_inplace_safe_and_clean() -> None:
    pytest.importorskip("pytorch_grad_cam")
    assert "gradcam++" in CAM_METHODS
    model, x = _resnet18(), _inputs(2)
    clean = _without_inplace(model)
    model.train()
    buffers = [b.clone() for b in model.buffers()]
    heat = gradcam(model, x, "layer1.0.bn2", target=[3, 5], method="gradcam++")
    expected = gradcam(clean, x, "layer1.0.bn2", target=[3, 5], method="gradcam++")
    assert heat.shape == (2, 64, 64)
    assert heat.max() > 0
    torch.testing.assert_close(heat, expected, rtol=1e-4, atol=1e-5)
    assert _hook_count(model) == 0
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for before, after in zip(buffers, model.buffers(), strict=True):
        torch.testing.assert_close(after, before, rtol=0, atol=0)


class _Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def _channels_last_net() -> nn.Module:
    """A Linear on (N, H, W, C), then the same values as (N, C, H, W) out of an Identity."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        _Permute(0, 2, 3, 1),
        nn.Linear(6, 5),
        _Permute(0, 3, 1, 2),
        nn.Identity(),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 4),
    ).eval()


@pytest.mark.parametrize("method", ["gradcam++", "layercam", "scorecam"])
def test_package_methods_read_a_channels_last_layer_as_channels(method: str) -> None:
    pytest.importorskip("pytorch_grad_cam")
    model, x = _channels_last_net(), torch.rand(2, 3, 12, 12)
    # "2" computes (N, H, W, C); "4" returns the very same values as (N, C, H, W).
    last = gradcam(model, x, "2", target=[1, 3], method=method, progress=False)
    first = gradcam(model, x, "4", target=[1, 3], method=method, progress=False)
    assert last.shape == (2, 12, 12) and last.max() > 0
    torch.testing.assert_close(last, first, rtol=1e-4, atol=1e-5)


def test_package_methods_refuse_video_layers() -> None:
    pytest.importorskip("pytorch_grad_cam")
    model = nn.Sequential(nn.Conv3d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.rand(1, 3, 4, 8, 8)
    model(x)
    with pytest.raises(ValueError, match="draws 2-D maps, and layer '0' is video"):
        gradcam(model, x, "0", method="gradcam++", progress=False)


def test_top_classes() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    probs = torch.softmax(logits, dim=1)
    top = top_classes(logits, labels=["cat", "dog", "fox"], k=2)
    assert [(t.index, t.label) for t in top[0]] == [(1, "dog"), (2, "fox")]
    assert top[1][0].prob == pytest.approx(float(probs[1, 0]))
    assert [t.label for t in top_classes(logits, labels={0: "cat"}, k=5)[1]] == ["cat", None, None]
    assert len(top_classes(logits)[0]) == 3
    with pytest.raises(ValueError, match=r"\(N, classes\) logits; got \(3,\)"):
        top_classes(logits[0])
