"""Video models: (N, C, T, H, W) layers captured a frame at a time, the frame slider, 3-D Grad-CAM.

Values are checked against clones of each module's 5-D output taken in a forward hook,
independently of fmwidget, read as the frame covering the chosen input frame (``k · T / clip``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchvision
import traitlets
from fakecomm import FakeComm
from models import reference_outputs, state_copy
from torch import nn

from fmwidget.capture import capture, capture_layer
from fmwidget.gradcam import gradcam_layer
from fmwidget.widget import FeatureMapWidget

torch.set_num_threads(1)

Make = Callable[..., FeatureMapWidget]
CLIP = 8


@pytest.fixture(scope="module")
def r3d() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18().eval()
    return model, torch.randn(2, 3, CLIP, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("frame", [0, 5, CLIP - 1])
def test_every_video_layer_is_its_frame_covering_the_input_frame(r3d, frame):
    model, x = r3d
    before = state_copy(model)
    cap = capture(model, x, frame=frame)
    with torch.no_grad(), reference_outputs(model) as raw:
        model(x)
    infos = cap.report.captured
    assert len(infos) == 58 and all(i.layout == "ncthw" for i in infos)
    for info in infos:
        full = raw[info.name]
        t = full.shape[2]
        assert info.frames == t and info.frame == frame * t // CLIP, info.name
        assert torch.equal(cap[info.name], full[:, :, info.frame]), info.name
        assert info.shape == tuple(cap[info.name].shape)
    # A temporal stride: layer2 halves the clip, layer4 has one frame left.
    assert cap.report.captured[-1].frames == 1
    assert {i.frames for i in infos} == {8, 4, 2, 1}
    assert "input frame" in str(cap.report) and f"(T={CLIP})" in str(cap.report)
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_a_clip_is_never_kept_only_its_frame(r3d):
    model, x = r3d
    cap = capture(model, x, frame=3)
    for name in cap:
        maps = cap[name]
        # Its own memory, one frame's worth: not a view into the 5-D clip.
        assert maps.is_contiguous()
        assert maps.untyped_storage().nbytes() == maps.numel() * maps.element_size(), name
    one = capture_layer(model, x, "layer1.0.conv1.0", frame=3)
    assert torch.equal(one, cap["layer1.0.conv1.0"])
    assert one.untyped_storage().nbytes() == one.numel() * one.element_size()


def test_frames_out_of_range_and_image_models_say_what_to_do(r3d):
    model, x = r3d
    with pytest.raises(ValueError, match=r"frame 8 is out of range: the clip has 8 frames \(0-7\)"):
        capture(model, x, frame=CLIP)
    with pytest.raises(ValueError, match="frame must be an input frame index"):
        capture(model, x, frame=-1)


def test_channels_last_video_transformer_layers_read_as_channels():
    torch.manual_seed(0)
    model = torchvision.models.video.swin3d_t().eval()
    x = torch.randn(1, 3, CLIP, 32, 32)
    cap = capture(model, x, frame=6)
    with torch.no_grad(), reference_outputs(model) as raw:
        model(x)
    layouts = {i.name: i.layout for i in cap.report.captured}
    assert layouts["patch_embed.proj"] == "ncthw"
    assert layouts["patch_embed.norm"] == "nthwc"
    assert layouts["features.0.0.mlp.0"] == "nthwc"
    checked = 0
    for info in cap.report.captured:
        full = raw.get(info.name)
        if full is None:
            continue
        if info.layout == "nthwc":
            expected = full[:, info.frame].permute(0, 3, 1, 2)
            assert info.shape[1] == full.shape[-1], info.name
        else:
            expected = full[:, :, info.frame]
        assert torch.equal(cap[info.name], expected), info.name
        checked += 1
    assert checked > 100
    # The patch embedding halves time (patch 2 × 4 × 4): input frame 6 is its frame 3.
    assert cap.report.captured[0].frame == 3


def _browser(widget: FeatureMapWidget) -> FakeComm:
    assert isinstance(widget.comm, FakeComm)
    return widget.comm


def test_the_frame_slider_moves_every_layer_both_ways(make: Make, r3d):
    model, x = r3d
    w = make(model, x, frame=2, layer="layer2.0.conv1.0")
    assert (w.frame, w.frames) == (2, CLIP)
    meta = next(m for m in w.layers if m["name"] == "layer2.0.conv1.0")
    assert (meta["layout"], meta["frames"], meta["frame"]) == ("ncthw", 4, 1)
    with torch.no_grad(), reference_outputs(model) as raw:
        model(x)
    revision = w.revision
    _browser(w).update(frame=7)
    assert w.frame == 7 and w.revision == revision + 1
    assert torch.equal(w.capture["layer2.0.conv1.0"], raw["layer2.0.conv1.0"][:, :, 3])
    assert torch.equal(w.capture["stem.0"], raw["stem.0"][:, :, 7])
    # The view is told each layer's new frame, and gets the shown layer pushed with the revision.
    metas = [u["layers"] for u in _browser(w).state_updates() if "layers" in u][-1]
    assert next(m["frame"] for m in metas if m["name"] == "layer2.0.conv1.0") == 3
    assert [p.kind for p in _browser(w).pushes()][-1:] == ["layer"]
    reply = _browser(w).request("layer", layer="stem.0", sample=1, revision=w.revision)
    assert reply.meta["shape"][0] == 64
    # Python sets it too; the input picture follows.
    w.frame = 0
    assert torch.equal(w.capture["stem.0"], raw["stem.0"][:, :, 0])
    assert not np.array_equal(w.input_image(0), make(model, x, frame=7).input_image(0))
    with pytest.raises(traitlets.TraitError, match="the clip has 8 frames"):
        w.frame = CLIP


def test_a_dropped_layer_is_recomputed_at_the_shown_frame(make: Make, r3d):
    model, x = r3d
    w = make(model, x, frame=5, budget_bytes=64 * 1024)
    with torch.no_grad(), reference_outputs(model) as raw:
        model(x)
    store = w.session.store
    assert store.evicted, "the budget should drop most layers"
    name = next(n for n in store.names if not store.is_resident(n) and raw[n].shape[2] == CLIP)
    assert torch.equal(w.capture[name], raw[name][:, :, 5])


def test_new_inputs_with_a_shorter_clip_keep_a_frame_within_it(make: Make, r3d):
    model, x = r3d
    w = make(model, x, frame=7)
    w.set_inputs(x[:, :, :4])
    assert (w.frame, w.frames) == (3, 4)


def test_an_image_model_has_no_frames(make: Make):
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    w = make(model, torch.randn(1, 3, 8, 8))
    assert w.frames == 0
    with pytest.raises(traitlets.TraitError, match="no video layers"):
        w.frame = 1


def test_gradcam_of_a_video_layer_is_3d_gradcam_frame_by_frame(r3d):
    model, x = r3d
    full = gradcam_layer(model, x, "layer3", target=3)
    # Independently: the layer's 5-D output and its gradient, weights over time and space.
    acts: list[torch.Tensor] = []
    handle = model.layer3.register_forward_hook(lambda _m, _a, out: acts.append(out))
    try:
        with torch.enable_grad():
            out = model(x.requires_grad_(False))
            a = acts[0]
            a.retain_grad()
            out[:, 3].sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    weights = a.grad.mean(dim=(2, 3, 4))
    expected = torch.relu(torch.einsum("nc,ncthw->nthw", weights, a.detach()))
    assert full.heatmap.shape == (2, 2, 4, 4)
    torch.testing.assert_close(full.heatmap, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(full.weights, weights, rtol=1e-4, atol=1e-7)
    one = gradcam_layer(model, x, "layer3", target=3, frame=5)
    torch.testing.assert_close(one.heatmap, expected[:, 5 * 2 // CLIP], rtol=1e-4, atol=1e-6)


def test_the_gradcam_panel_serves_the_shown_frame(make: Make, r3d):
    model, x = r3d
    w = make(model, x, frame=6, layer="layer3.0.conv1.0")
    reply = _browser(w).request(
        "gradcam", layer="layer3.0.conv1.0", sample=1, target=2, revision=w.revision
    )
    assert reply.meta.get("error") is None, reply.meta
    expected = gradcam_layer(model, x, "layer3.0.conv1.0", target=2, frame=6)
    np.testing.assert_allclose(
        reply.arrays["heatmap"], expected.heatmap[1].numpy(), rtol=1e-4, atol=1e-6
    )


def _small_mvit() -> nn.Module:
    """torchvision's MViT V2 (relative positions, residual pooling) with three blocks at 64×64."""
    from torchvision.models.video.mvit import MSBlockConfig, MViT

    def block(heads: int, c_in: int, c_out: int, stride_q: int, stride_kv: int) -> MSBlockConfig:
        return MSBlockConfig(
            num_heads=heads,
            input_channels=c_in,
            output_channels=c_out,
            kernel_q=[3, 3, 3],
            kernel_kv=[3, 3, 3],
            stride_q=[1, stride_q, stride_q],
            stride_kv=[1, stride_kv, stride_kv],
        )

    torch.manual_seed(0)
    return MViT(
        spatial_size=(64, 64),
        temporal_size=CLIP,
        block_setting=[block(1, 96, 96, 1, 4), block(2, 96, 192, 2, 2), block(2, 192, 192, 1, 2)],
        residual_pool=True,
        residual_with_cls_embed=False,
        rel_pos_embed=True,
        proj_after_attn=True,
        stochastic_depth_prob=0.0,
    ).eval()


def test_video_transformer_tokens_are_frames_of_patch_maps():
    model = _small_mvit()
    x = torch.randn(1, 3, CLIP, 64, 64)
    cap = capture(model, x, frame=5)
    tokens = {}
    handles = [
        model.blocks[i].register_forward_hook(
            lambda _m, _a, out, i=i: tokens.__setitem__(i, out[0].detach().clone())
        )
        for i in range(3)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    for i in range(3):
        info = cap.info(f"blocks.{i}[0]")
        # (N, 1 + T·h·w, D): a class token, then frame by frame, row by row.
        assert (info.layout, info.extra_tokens, info.frames, info.frame) == ("tokens", 1, 4, 2)
        h, w = info.shape[2:]
        expected = tokens[i][:, 1:].reshape(1, 4, h, w, -1)[:, 2].permute(0, 3, 1, 2)
        assert torch.equal(cap[f"blocks.{i}[0]"], expected)
    assert capture_layer(model, x, "blocks.1[0]", 5).equal(cap["blocks.1[0]"])
    heat = gradcam_layer(model, x, "blocks.2[0]", target=0, frame=5).heatmap
    assert heat.shape == (1, 8, 8) and torch.isfinite(heat).all()


def test_the_channel_view_of_a_video_layer_says_what_it_cannot_take_apart(make: Make, r3d):
    model, x = r3d
    w = make(model, x, frame=4)
    reply = _browser(w).request(
        "explain", layer="stem.0", sample=0, channel=3, row=2, col=5, revision=w.revision
    )
    assert reply.meta["value"] == pytest.approx(float(w.capture["stem.0"][0, 3, 2, 5]))
    assert "a video layer" in reply.meta["note"] and reply.meta["box"] is None
