"""Layers that are not plain (N, C, H, W) maps of the input batch: channels-last outputs,
transformer tokens, attention internals and first dimensions that are not the batch.

Values are checked against clones taken in a forward hook, independently of fmwidget, read the
way each layout means: (N, H, W, C) permuted, tokens after the extra ones laid out row by row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import timm
import torch
import torchvision
from fakecomm import FakeComm
from models import reference_outputs
from torch import nn

from fmwidget.capture import LayerTaps, capture, capture_layer
from fmwidget.files import load
from fmwidget.gradcam import gradcam
from fmwidget.widget import FeatureMapWidget

torch.set_num_threads(1)


def _vit(**kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, **kwargs).eval()


# --- channels-last --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def convnext() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.convnext_tiny().eval(), torch.rand(2, 3, 32, 32)


def test_channels_last_layers_are_permuted_views(convnext: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = convnext
    cap = capture(model, x)
    with torch.no_grad(), reference_outputs(model) as raw:
        model(x)
    # CNBlock: Conv2d, Permute(0, 2, 3, 1), LayerNorm, Linear(96, 384), GELU, Linear, Permute back.
    layouts = {i.name: i.layout for i in cap.report.captured if i.name.startswith("features.1.0")}
    assert layouts == {
        "features.1.0.block.0": "nchw",
        "features.1.0.block.1": "nhwc",
        "features.1.0.block.2": "nhwc",
        "features.1.0.block.3": "nhwc",
        "features.1.0.block.4": "nhwc",
        "features.1.0.block.5": "nhwc",
        "features.1.0.block.6": "nchw",
        "features.1.0.stochastic_depth": "nchw",
        "features.1.0": "nchw",
    }
    assert cap["features.1.0.block.3"].shape == (2, 384, 8, 8)  # channels are the Linear's
    for info in cap.report.captured:
        act, own = cap[info.name], raw[info.name.split(":")[0]]
        if info.layout == "nhwc":
            assert torch.equal(act, own.permute(0, 3, 1, 2)), info.name
            assert act._base is not None and act.shape[1] == own.shape[3]  # a view, not a copy
        elif info.call == 1:
            assert torch.equal(act, own), info.name
        assert tuple(act.shape) == info.shape
    assert any("channels-last (N, H, W, C)" in note for note in cap.report.notes)
    assert "nhwc" in str(cap.report)


def test_named_layers_read_as_in_the_default_capture(
    convnext: tuple[nn.Module, torch.Tensor],
) -> None:
    # What the widget recomputes for a layer its memory budget dropped must be the same map.
    model, x = convnext
    cap = capture(model, x)
    names = [i.name for i in cap.report.captured if i.name.startswith("features.3.1")]
    assert {cap.info(n).layout for n in names} == {"nchw", "nhwc"}
    named = capture(model, x, names)
    for name in names:
        assert named.info(name).layout == cap.info(name).layout, name
        assert torch.equal(named[name], cap[name]), name
        assert torch.equal(capture_layer(model, x, name), cap[name]), name


def test_channels_last_is_inherited_through_elementwise_modules() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.LayerNorm(8)
            self.fc = nn.Linear(8, 5)
            self.act = nn.GELU()
            self.drop = nn.Dropout(0.0)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(5, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.drop(self.act(self.fc(self.norm(self.conv(x).permute(0, 2, 3, 1)))))
            return self.conv2(self.relu(y).permute(0, 3, 1, 2))

    torch.manual_seed(0)
    model, x = Block().eval(), torch.rand(2, 3, 6, 7)
    cap = capture(model, x)
    assert {i.name: i.layout for i in cap.report.captured} == {
        "conv": "nchw",
        "norm": "nhwc",
        "fc": "nhwc",
        "act": "nhwc",
        "drop": "nhwc",
        "relu": "nhwc",
        "conv2": "nchw",
    }
    assert cap["drop"].shape == (2, 5, 6, 7)
    for name in ("relu", "drop"):  # named alone, from the modules that fed them
        assert torch.equal(capture(model, x, [name])[name], cap[name])
    with torch.no_grad():
        y = model.fc(model.norm(model.conv(x).permute(0, 2, 3, 1)))
    torch.testing.assert_close(cap["act"], nn.functional.gelu(y).permute(0, 3, 1, 2))


def test_layernorm2d_stays_channels_first() -> None:
    # timm's LayerNorm2d is an nn.LayerNorm over C that permutes inside: (N, C, H, W) out.
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False).eval()
    cap = capture(model, torch.rand(1, 3, 32, 32))
    assert {i.layout for i in cap.report.captured} == {"nchw"}


def test_channels_last_under_grad_gives_gradients_of_the_map() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), _Permute((0, 2, 3, 1)), nn.Linear(4, 6)).eval()
    x = torch.rand(2, 3, 5, 5)
    cap = capture(model, x, grad=True)
    (grad,) = torch.autograd.grad((cap.output**2).sum(), cap["2"])
    assert grad.shape == (2, 6, 5, 5)
    torch.testing.assert_close(grad, 2 * cap["2"].detach())


class _Permute(nn.Module):
    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


# --- vision transformer tokens --------------------------------------------------------------


def _patch_maps(tokens: torch.Tensor, extra: int, h: int, w: int) -> torch.Tensor:
    """(N, extra + h·w, D) -> (N, D, h, w), token by token (independent of fmwidget's view)."""
    n, _, d = tokens.shape
    out = torch.empty(n, d, h, w)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = tokens[:, extra + i * w + j, :]
    return out


def test_vit_blocks_are_patch_token_maps() -> None:
    model, x = _vit(), torch.rand(2, 3, 64, 64)
    cap = capture(model, x)
    with torch.no_grad(), reference_outputs(model) as raw:
        model(x)
    names = [i.name for i in cap.report.captured]
    assert names == ["patch_embed.proj"] + [f"blocks.{k}" for k in range(12)]
    for k in range(12):
        info = cap.info(f"blocks.{k}")
        assert (info.layout, info.extra_tokens, info.shape) == ("tokens", 1, (2, 192, 4, 4))
        assert torch.equal(cap[info.name], _patch_maps(raw[info.name], 1, 4, 4))
        assert cap[info.name]._base is not None  # a view of the block's own output
    assert cap.aliases["blocks"] == "blocks.11"
    notes = " ".join(cap.report.notes)
    assert "12 layers are transformer tokens" in notes and "the first 1 tokens" in notes
    assert "no activation module" not in notes
    # Differentiable: gradients with respect to the map itself.
    graded = capture(model, x, grad=True)
    (grad,) = torch.autograd.grad(graded.output[:, 2].sum(), graded["blocks.3"])
    _, raw_grad = _independent_cam(model, x, dict(model.named_modules())["blocks.3"], 2)
    torch.testing.assert_close(grad, _patch_maps(raw_grad, 1, 4, 4))


def test_attention_internals_are_left_out_unless_named() -> None:
    model, x = _vit(), torch.rand(2, 3, 64, 64)
    cap = capture(model, x)
    assert not any(".attn" in n for n in cap)
    reasons = dict(cap.report.skipped)
    assert "inside an attention module" in reasons["blocks.0.attn.q_norm"]
    assert any("modules inside attention layers were left out" in n for n in cap.report.notes)
    named = capture(model, x, ["blocks.0.attn.q_norm"])
    assert named["blocks.0.attn.q_norm"].shape == (2, 3, 17, 64)  # (N, heads, tokens, head dim)


def test_distillation_token_and_non_square_grid() -> None:
    torch.manual_seed(0)
    deit = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=64
    ).eval()
    cap = capture(deit, torch.rand(1, 3, 64, 64))
    assert cap.info("blocks.0").extra_tokens == 2
    assert any("the first 2 tokens" in n for n in cap.report.notes)
    x = torch.rand(1, 3, 64, 96)
    wide = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(64, 96)).eval()
    cap = capture(wide, x)
    assert cap["blocks.5"].shape == (1, 192, 4, 6)
    with torch.no_grad(), reference_outputs(wide) as raw:
        wide(x)
    assert torch.equal(cap["blocks.5"], _patch_maps(raw["blocks.5"], 1, 4, 6))
    # Named alone (the patch embedding unselected), the grid still comes from its convolution.
    assert torch.equal(capture_layer(wide, x, "blocks.5"), cap["blocks.5"])
    assert capture(wide, x, ["blocks.5"]).info("blocks.5").shape == (1, 192, 4, 6)


def test_torchvision_vit_tokens_and_taps() -> None:
    torch.manual_seed(0)
    model, x = torchvision.models.vit_b_16(image_size=64).eval(), torch.rand(1, 3, 64, 64)
    cap = capture(model, x)
    blocks = [n for n in cap if n.startswith("encoder.layers.")]
    assert len(blocks) == 12 and cap[blocks[0]].shape == (1, 768, 4, 4)
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, t: torch.Tensor) -> None:
        seen[name] = t.clone()

    with LayerTaps(model, None, keep) as taps:
        taps.forward(x)
    assert seen.keys() == set(cap) and all(torch.equal(seen[n], cap[n]) for n in cap)


def test_token_layers_save_and_load(tmp_path: Any) -> None:
    model, x = _vit(), torch.rand(1, 3, 64, 64)
    cap = capture(model, x)
    cap.save(tmp_path / "vit.safetensors")
    loaded = load(tmp_path / "vit.safetensors")
    assert loaded.info("blocks.3") == cap.info("blocks.3")
    assert torch.equal(loaded["blocks.3"], cap["blocks.3"])


# --- first dimension not the batch ----------------------------------------------------------


class _PairNet(nn.Module):
    """RAFT's pattern: one encoder on both images at once (2B), a context encoder on one (B)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.context = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(13, 2, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa, fb = self.encoder(torch.cat([a, b])).chunk(2)
        return self.head(torch.cat([fa, fb, self.context(a)], 1)).mean((2, 3))


def test_layers_whose_first_dimension_is_not_the_batch_are_left_out() -> None:
    torch.manual_seed(0)
    model, a, b = _PairNet().eval(), torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    cap = capture(model, (a, b))
    assert list(cap) == ["context.0", "context.1", "head"]
    assert {t.shape[0] for t in cap.values()} == {3}
    note = next(n for n in cap.report.notes if "not the batch of 3" in n)
    assert note.startswith("2 layers whose first dimension is not the batch of 3")
    assert "'encoder.0'" in note
    named = capture(model, (a, b), ["encoder.0", "head"])
    assert named["encoder.0"].shape == (6, 4, 8, 8)


def test_a_model_whose_layers_all_disagree_keeps_every_layer() -> None:
    class Folded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(6, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x.reshape(1, -1, *x.shape[2:]))

    cap = capture(Folded().eval(), torch.rand(2, 3, 4, 4))
    assert cap["conv"].shape == (1, 4, 4, 4)
    with LayerTaps(Folded().eval(), None, lambda n, t: None) as taps:
        taps.forward(torch.rand(2, 3, 4, 4))
    assert list(taps.infos) == ["conv"]


def test_raft_encodes_both_images_in_one_call(make: Callable[..., FeatureMapWidget]) -> None:
    torch.manual_seed(0)
    model = torchvision.models.optical_flow.raft_small().eval()
    images = (torch.rand(2, 3, 128, 128), torch.rand(2, 3, 128, 128))
    cap = capture(model, images)
    assert {t.shape[0] for t in cap.values()} == {2}
    assert not any(n.startswith("feature_encoder.") for n in cap)
    assert any("not the batch of 2" in n for n in cap.report.notes)
    w = make(model, images)
    assert w.num_samples == 2
    browser = w.comm
    assert isinstance(browser, FakeComm)
    for name in (cap.report.captured[0].name, cap.report.captured[-1].name):
        assert browser.request("layer", layer=name, sample=1, revision=1).ok
        bad = browser.request("layer", layer=name, sample=2, revision=1)
        assert not bad.ok and bad.error is not None
        assert "sample 2 is out of range" in bad.error and "IndexError" not in bad.error


def test_swin_v2_position_bias_table_is_not_a_layer() -> None:
    torch.manual_seed(0)
    model = torchvision.models.swin_v2_t().eval()
    cap = capture(model, torch.rand(1, 3, 64, 64))
    assert not any("cpb_mlp" in n for n in cap)
    assert {t.shape[0] for t in cap.values()} == {1}
    assert cap.info("features.1.0").layout == "nhwc"
    assert cap["features.1.0"].shape == (1, 96, 16, 16)
    # A block named on its own reads as the layer it returns (Conv2d, Permute, LayerNorm).
    assert cap.aliases["features.0"] == "features.0.2"
    named = capture(model, torch.rand(1, 3, 64, 64), ["features.0"])
    assert named.info("features.0").layout == "nhwc"


def test_widget_serves_token_and_channels_last_maps(make: Callable[..., FeatureMapWidget]) -> None:
    model, x = _vit(), torch.rand(2, 3, 64, 64)
    w = make(model, x)
    with torch.no_grad(), reference_outputs(model) as raw:
        model(x)
    browser = w.comm
    assert isinstance(browser, FakeComm)
    assert [m["name"] for m in w.layers][:2] == ["patch_embed.proj", "blocks.0"]
    reply = browser.request("layer", layer="blocks.3", sample=1, revision=1)
    assert reply.ok and reply.meta["shape"] == [192, 4, 4]
    channel = browser.request("channel", layer="blocks.3", sample=1, channel=7, revision=1)
    want = _patch_maps(raw["blocks.3"], 1, 4, 4)[1, 7]
    np.testing.assert_array_equal(channel.arrays["values"], want.numpy())


def _independent_cam(model: nn.Module, x: torch.Tensor, module: nn.Module, target: int) -> Any:
    """Grad-CAM from the module's raw output, its channels being the last dimension."""
    held: list[torch.Tensor] = []

    def keep(_m: nn.Module, _a: Any, out: torch.Tensor) -> None:
        out.retain_grad()
        held.append(out)

    handle = module.register_forward_hook(keep)
    try:
        model(x)[:, target].sum().backward()
    finally:
        handle.remove()
    model.zero_grad(set_to_none=True)
    return held[0].detach(), held[0].grad


def test_gradcam_weighs_the_channels_of_channels_last_and_token_layers() -> None:
    torch.manual_seed(0)
    convnext, x = torchvision.models.convnext_tiny().eval(), torch.rand(2, 3, 32, 32)
    linear = dict(convnext.named_modules())["features.3.1.block.3"]
    a, g = _independent_cam(convnext, x, linear, 4)  # (N, H, W, C)
    want = torch.relu((a * g.mean((1, 2), keepdim=True)).sum(3))
    got = gradcam(convnext, x, "features.3.1.block.3", target=4, progress=False)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    vit = _vit()
    x = torch.rand(2, 3, 64, 64)
    block = dict(vit.named_modules())["blocks.5"]
    a, g = _independent_cam(vit, x, block, 3)  # (N, 1 + 16, D)
    patches, grads = a[:, 1:], g[:, 1:]
    want = torch.relu((patches * grads.mean(1, keepdim=True)).sum(2)).reshape(2, 4, 4)
    got = gradcam(vit, x, "blocks.5", target=3, progress=False)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_timm_swin_window_reversal_outside_modules_stays_channels_last() -> None:
    # timm's Swin block reverses its attention windows in code outside modules, then drop_path1.
    torch.manual_seed(0)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=2
    ).eval()
    x = torch.rand(1, 3, 64, 64)
    cap = capture(model, x)
    with torch.no_grad(), reference_outputs(model) as raw:
        model(x)
    name = "layers.1.blocks.1.drop_path1"
    assert cap.info(name).layout == "nhwc" and cap[name].shape == (1, 192, 8, 8)
    assert torch.equal(cap[name], raw[name].permute(0, 3, 1, 2))
    assert torch.equal(capture_layer(model, x, name), cap[name])
    assert {i.layout for i in cap.report.captured if i.kind == "block"} == {"nhwc"}


def test_timm_edgenext_mlps_are_channels_last_and_its_xca_weights_left_out() -> None:
    torch.manual_seed(0)
    model, x = (
        timm.create_model("edgenext_xx_small", pretrained=False).eval(),
        torch.rand(1, 3, 64, 64),
    )
    cap = capture(model, x)
    with torch.no_grad(), reference_outputs(model) as raw:
        model(x)
    for name in (
        "stages.0.blocks.0.norm",
        "stages.0.blocks.0.mlp.fc1",
        "stages.0.blocks.0.mlp.act",
    ):
        assert cap.info(name).layout == "nhwc", name
        assert torch.equal(cap[name], raw[name].permute(0, 3, 1, 2)), name
    assert cap["stages.0.blocks.0.mlp.fc1"].shape == (1, 96, 16, 16)  # 4 × 24 channels
    assert not any(".xca." in n for n in cap)
    assert cap.info("stages.1.downsample.0").layout == "nchw"  # LayerNorm2d


def test_cnn_attention_modules_keep_their_feature_maps() -> None:
    # ResNeSt's main 3×3 convolution runs inside timm's SplitAttn: a CNN "attention", not q/k/v.
    torch.manual_seed(0)
    model = timm.create_model("resnest14d", pretrained=False).eval()
    cap = capture(model, torch.rand(1, 3, 64, 64))
    assert cap.info("layer1.0.conv2.conv").shape == (1, 128, 16, 16)
    assert not any("attention" in note for note in cap.report.notes)
