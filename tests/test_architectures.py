"""Real architectures from torchvision and timm (random weights, 64×64, batch 1), end to end.

For each: every captured layer equals an independent clone of that module call's output taken at
hook time (bit for bit), every block alias is a block whose own output equals its layer's, the
model is left exactly as it was, activations are recognised whatever library defines them, and
every layer quantizes within the documented bound. Channels-last layers (ConvNeXt's MLPs, Swin)
and transformer tokens (ViT blocks) are compared the way their layout reads: permuted, or the
patch tokens laid out row by row; video models (8-frame clips) as the frame covering input frame 5.
The longer sweep over 157 architectures is issue 11's; this one is kept to a few seconds per model
for CI.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import timm
import torch
import torchvision
from models import as_read, assert_no_hooks, flags, reference_outputs, state_copy
from torch import nn

from fmwidget import wire
from fmwidget.capture import Capture, capture, capture_layer
from fmwidget.gradcam import gradcam
from fmwidget.names import parse_layer_name

torch.set_num_threads(1)

ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "tv_resnet18": lambda: torchvision.models.resnet18(),
    "tv_mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(),
    "tv_convnext_tiny": lambda: torchvision.models.convnext_tiny(),
    "tv_swin_t": lambda: torchvision.models.swin_t(),
    "tv_vit_b_16": lambda: torchvision.models.vit_b_16(image_size=64),
    "timm_convnext_atto": lambda: timm.create_model("convnext_atto", pretrained=False),
    "timm_efficientnet_b0": lambda: timm.create_model("efficientnet_b0", pretrained=False),
    "timm_efficientvit_b0": lambda: timm.create_model("efficientvit_b0", pretrained=False),
    # timm's own activation classes (not torch's) throughout.
    "timm_mobilenetv3_timm_acts": lambda: timm.create_model(
        "mobilenetv3_small_050", pretrained=False, act_layer=timm.layers.activations.HardSwish
    ),
    # Video: (N, C, T, H, W) layers, and a channels-last (N, T, H, W, C) video transformer.
    "tv_r2plus1d_18": lambda: torchvision.models.video.r2plus1d_18(),
    "tv_swin3d_t": lambda: torchvision.models.video.swin3d_t(),
}

# Video models run on a clip of 8 frames of 32×32 and are captured at input frame 5.
_VIDEO_MODELS = {"tv_r2plus1d_18", "tv_swin3d_t"}
FRAME = 5

# Transformers whose maps are token blocks only (no activation module outputs a map).
_TOKEN_MODELS = {"tv_vit_b_16"}

# Activations by what a reader calls them: any leaf of these classes must be kind "act".
_ACTIVATION_CLASSES = {"ReLU", "ReLU6", "GELU", "SiLU", "Swish", "Hardswish", "HardSwish"}
_ACTIVATION_CLASSES |= {"Sigmoid", "Hardsigmoid", "HardSigmoid", "Tanh", "Mish"}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def case(request: pytest.FixtureRequest) -> tuple[str, nn.Module, torch.Tensor, Capture]:
    torch.manual_seed(0)
    model = ARCHITECTURES[request.param]().eval()
    video = request.param in _VIDEO_MODELS
    x = torch.rand(1, 3, 8, 32, 32) if video else torch.rand(1, 3, 64, 64)
    before, state = flags(model), state_copy(model)
    cap = capture(model, x, frame=FRAME if video else 0)
    assert_no_hooks(model)
    assert flags(model) == before
    for key, value in state_copy(model).items():
        assert torch.equal(value, state[key]), f"{request.param}: {key} changed"
    return request.param, model, x, cap


def test_values_equal_a_clone_taken_at_hook_time(
    case: tuple[str, nn.Module, torch.Tensor, Capture],
) -> None:
    arch, model, x, cap = case
    with torch.no_grad(), reference_outputs(model) as ref:
        model(x)
    assert len(cap) > 10
    for name, act in cap.items():
        assert torch.equal(act, as_read(ref[name], cap.info(name))), f"{arch}: {name}"
    for alias, layer in cap.aliases.items():
        # The block's own output, cloned when the block returned, is the layer's.
        read = as_read(ref[alias], cap.info(layer))
        assert torch.equal(read, cap[layer]), f"{arch}: {alias} -> {layer}"
        assert cap[alias] is cap[layer]


def test_block_names_resolve(case: tuple[str, nn.Module, torch.Tensor, Capture]) -> None:
    arch, model, _x, cap = case
    modules = dict(model.named_modules())
    blocks = [n for n, m in modules.items() if n and next(m.children(), None) is not None]
    covered = {parse_layer_name(a).module for a in cap.aliases}
    covered |= {i.module_name for i in cap.report.captured if i.kind == "block"}
    # Every block with a 4-D output is reachable by its name: an alias or a layer of its own.
    with torch.no_grad(), reference_outputs(model) as ref:
        model(case[2])
    with_maps = [b for b in blocks if b in ref and ref[b].dim() in (4, 5)]
    assert covered and set(with_maps) <= covered, (arch, set(with_maps) - covered)
    for alias in cap.aliases:
        assert cap.resolve(alias) == cap.aliases[alias]
        assert alias in cap.info(cap.aliases[alias]).aliases


def test_activations_are_recognised(case: tuple[str, nn.Module, torch.Tensor, Capture]) -> None:
    arch, _model, _x, cap = case
    kinds = {i.type: i.kind for i in cap.report.captured}
    acts = {t for t in kinds if t in _ACTIVATION_CLASSES}
    # A ViT's activations run inside its MLPs, on tokens: only whole blocks are maps.
    assert acts or arch in _TOKEN_MODELS, arch
    assert all(kinds[t] == "act" for t in acts), (arch, kinds)
    assert not any("no activation module" in note for note in cap.report.notes), arch


def test_every_layer_quantizes_within_half_a_step(
    case: tuple[str, nn.Module, torch.Tensor, Capture],
) -> None:
    arch, _model, _x, cap = case
    worst = 0.0
    for name, act in cap.items():
        maps = act[0].float()
        stats = wire.channel_stats(maps)
        q = wire.quantize(maps, stats[:, 0], stats[:, 1]).numpy()
        values = wire.dequantize(q, stats.numpy())
        span = (stats[:, 1] - stats[:, 0]).double().numpy()[:, None, None]
        spread = np.broadcast_to(span > 0, values.shape)
        steps = (
            np.abs(values - maps.double().numpy())[spread]
            / np.broadcast_to(span / wire.LEVELS, values.shape)[spread]
        )
        worst = max(worst, float(steps.max(initial=0.0)))
        assert (values[~spread] == maps.numpy()[~spread]).all(), (arch, name)
    assert worst <= 0.5 + 1e-4, (arch, worst)


def test_named_layers_are_served_as_captured(
    case: tuple[str, nn.Module, torch.Tensor, Capture],
) -> None:
    # What the widget recomputes for a layer its memory budget dropped: the same map.
    arch, model, x, cap = case
    infos = cap.report.captured
    odd = [i for i in infos if i.layout != "nchw"][:2]
    frame = FRAME if arch in _VIDEO_MODELS else 0
    for info in {i.name: i for i in [infos[0], infos[len(infos) // 2], infos[-1], *odd]}.values():
        served = capture_layer(model, x, info.name, frame)
        assert torch.equal(served, cap[info.name]), (arch, info.name)
        alone = capture(model, x, [info.name], frame=frame).info(info.name)
        assert (alone.layout, alone.frame) == (info.layout, info.frame)


def test_gradcam_by_block_name_is_gradcam_of_its_layer(
    case: tuple[str, nn.Module, torch.Tensor, Capture],
) -> None:
    arch, model, x, cap = case
    alias, layer = next(reversed(cap.aliases.items()))
    torch.testing.assert_close(
        gradcam(model, x, alias, target=1, progress=False),
        gradcam(model, x, layer, target=1, progress=False),
        rtol=0,
        atol=0,
        msg=f"{arch}: {alias} vs {layer}",
    )
