"""fmwidget.capture: naming, in-place safety, structured outputs, errors, the model untouched."""

from __future__ import annotations

import copy
import gc
import importlib
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fmwidget.capture import (
    ROOT_NAME,
    Capture,
    CaptureBuffers,
    CaptureError,
    capture,
)
from tests.models import (
    MLP,
    AddedToNet,
    FailingNet,
    FunctionalNet,
    InplaceNet,
    NanNet,
    ReusedNet,
    StructuredNet,
    TwoInputNet,
    as_read,
    assert_no_hooks,
    flags,
    reference_outputs,
    small_convnet,
)


def checked(model: nn.Module, inputs: Any, *args: Any, **kwargs: Any) -> Capture:
    """capture(), asserting afterwards that no hook is left and no flag moved, even on failure."""
    before = flags(model)
    try:
        return capture(model, inputs, *args, **kwargs)
    finally:
        assert_no_hooks(model)
        assert flags(model) == before


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def resnet_capture(resnet: nn.Module, image: torch.Tensor) -> Capture:
    return checked(resnet, image)


def resnet_reference(model: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """bn1, layer1.0.bn2 and layer1.0.relu:2 computed by calling the modules by hand."""
    with torch.no_grad():
        bn1 = model.bn1(model.conv1(x))
        stem = model.maxpool(F.relu(bn1))
        block = model.layer1[0]
        mid = F.relu(block.bn1(block.conv1(stem)))
        bn2 = block.bn2(block.conv2(mid))
        return {"bn1": bn1, "layer1.0.bn2": bn2, "layer1.0.relu:2": F.relu(bn2 + stem)}


def test_resnet18_names_every_call_in_order(resnet_capture: Capture) -> None:
    names = list(resnet_capture)
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert names[4:10] == [
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.relu",
        "layer1.0.conv2",
        "layer1.0.bn2",
        "layer1.0.relu:2",
    ]
    assert names[-1] == "avgpool"
    info = resnet_capture.info("layer1.0.relu:2")
    assert (info.module_name, info.call, info.type, info.kind) == (
        "layer1.0.relu",
        2,
        "ReLU",
        "act",
    )
    assert info.shape == (2, 64, 16, 16) and info.dtype == "float32"
    assert resnet_capture.report.skipped == [("fc", "output is 2-D (2, 1000), not (N, C, H, W)")]


def test_resnet18_inplace_ops_do_not_reach_stored_outputs(
    resnet: nn.Module, image: torch.Tensor, resnet_capture: Capture
) -> None:
    expected = resnet_reference(resnet, image)
    for name, want in expected.items():
        torch.testing.assert_close(resnet_capture[name], want, rtol=0, atol=0, msg=name)
    # ReLU(inplace=True) follows bn1 and `out += identity` follows bn2: both keep negatives.
    assert resnet_capture["bn1"].min() < 0
    assert resnet_capture["layer1.0.bn2"].min() < 0
    with torch.no_grad():
        torch.testing.assert_close(resnet_capture.output, resnet(image), rtol=0, atol=0)


def test_resnet18_pairs_layers_with_what_consumed_them_unchanged(resnet_capture: Capture) -> None:
    assert resnet_capture.info("conv1").input_from is None
    assert resnet_capture.info("bn1").input_from == "conv1"
    assert resnet_capture.info("relu").input_from == "bn1"
    assert resnet_capture.info("layer1.0.relu").input_from == "layer1.0.bn1"
    # relu:2 receives bn2 after `out += identity` changed it: not bn2's output any more.
    assert resnet_capture.info("layer1.0.relu:2").input_from is None
    assert resnet_capture.info("layer1.1.conv1").input_from == "layer1.0.relu:2"


def test_second_capture_copies_known_mutated_layers_at_once(image: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = AddedToNet().eval()
    first = checked(model, image)
    assert any("ran twice" in note for note in first.report.notes)
    with torch.no_grad():
        conv2 = model.conv2(model.conv1(image))
    torch.testing.assert_close(first["conv2"], conv2, rtol=0, atol=0)
    again = checked(model, image)
    assert not any("ran twice" in note for note in again.report.notes)
    for name in first:
        torch.testing.assert_close(again[name], first[name], rtol=0, atol=0, msg=name)


def test_a_resnet_runs_once_with_no_copy(resnet_capture: Capture) -> None:
    # Its norms (before `ReLU(inplace=True)` and `out += identity`) are computed from their
    # convs when read: nothing the forward changes in place was kept.
    assert not any("ran twice" in note for note in resnet_capture.report.notes)
    norms = [n for n in resnet_capture if resnet_capture.info(n).kind == "norm"]
    assert norms and all(n in resnet_capture.derived for n in norms)


def test_reports_outputs_consumed_only_by_functional_code(resnet_capture: Capture) -> None:
    (note,) = [n for n in resnet_capture.report.notes if "outside modules" in n]
    assert "'layer1.0.bn2'" in note


def test_pool_reuses_memory_and_invalidates_previous_capture(
    resnet: nn.Module, image: torch.Tensor, resnet_capture: Capture
) -> None:
    pool = CaptureBuffers(copy_all=True)
    first = checked(resnet, image, buffers=pool)
    for name in resnet_capture:
        torch.testing.assert_close(first[name], resnet_capture[name], rtol=0, atol=0, msg=name)
    pooled = ["conv1", "bn1", "layer1.0.bn2"]
    pointers = {name: first[name].data_ptr() for name in pooled}

    other = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    second = checked(resnet, other, buffers=pool)
    assert {name: second[name].data_ptr() for name in pooled} == pointers
    expected = resnet_reference(resnet, other)
    for name, want in expected.items():
        torch.testing.assert_close(second[name], want, rtol=0, atol=0, msg=name)
    with pytest.raises(CaptureError, match="reused by a later capture"):
        first["bn1"]


def test_pool_holds_the_copies_of_layers_changed_in_place(image: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = AddedToNet().eval()
    pool = CaptureBuffers()
    first = checked(model, image, buffers=pool)
    # conv2 is changed by `out += skip` after its hook: copied, into the pool.
    pointer = first["conv2"].data_ptr()
    other = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    second = checked(model, other, buffers=pool)
    assert second["conv2"].data_ptr() == pointer and pool.nbytes > 0
    with torch.no_grad():
        torch.testing.assert_close(second["conv2"], model.conv2(model.conv1(other)))
    with pytest.raises(CaptureError, match="reused by a later capture"):
        first["conv2"]


def test_mobilenet_v2_layers_blocks_and_pairing() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    cap = checked(model, x)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [n for n in cap if cap.info(n).kind == "conv"] == convs
    assert cap.info("features.0.2").input_from == "features.0.1"
    assert cap["features.0.1"].min() < 0  # before the in-place ReLU6
    with torch.no_grad():
        bn = model.features[0][1](model.features[0][0](x))
    torch.testing.assert_close(cap["features.0.1"], bn, rtol=0, atol=0)
    torch.testing.assert_close(cap["features.0.2"], bn.clamp(0, 6), rtol=0, atol=0)

    blocks = checked(model, x, layers=["features.1", "features.2.conv"])
    assert list(blocks) == ["features.1", "features.2.conv"]
    assert blocks.info("features.1").kind == "block"
    assert blocks.info("features.1").input_from is None
    torch.testing.assert_close(blocks["features.1"], cap["features.1.conv.2"], rtol=0, atol=0)


def test_layers_by_type_predicate_and_call_name(resnet: nn.Module, image: torch.Tensor) -> None:
    convs = checked(resnet, image, layers=nn.Conv2d)
    assert all(convs.info(n).type == "Conv2d" for n in convs) and len(convs) == 20
    assert list(checked(resnet, image, layers=lambda n, m: n.startswith("layer4.1."))) == [
        "layer4.1.conv1",
        "layer4.1.bn1",
        "layer4.1.relu",
        "layer4.1.conv2",
        "layer4.1.bn2",
        "layer4.1.relu:2",
    ]
    assert list(checked(resnet, image, layers=["layer1.0.relu"])) == [
        "layer1.0.relu",
        "layer1.0.relu:2",
    ]
    only_second = checked(resnet, image, layers=["layer1.0.relu:2", nn.MaxPool2d])
    assert list(only_second) == ["maxpool", "layer1.0.relu:2"]


def test_layers_matching_nothing_list_close_names(resnet: nn.Module, image: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"'layer1\.0\.rleu'.*close names: 'layer1\.0\.relu'"):
        checked(resnet, image, layers=["layer1.0.rleu"])
    with pytest.raises(ValueError, match=r"no module of type Conv3d.*Conv2d"):
        checked(resnet, image, layers=nn.Conv3d)
    with pytest.raises(ValueError, match="predicate matched no module"):
        checked(resnet, image, layers=lambda n, m: False)
    with pytest.raises(ValueError, match="without ':1'"):
        checked(resnet, image, layers=["layer1.0.relu:1"])
    with pytest.raises(
        ValueError, match=r"'layer1\.0\.relu:3' was not produced.*ran 2 time\(s\).*relu:2"
    ):
        checked(resnet, image, layers=["layer1.0.relu:3"])


def test_an_empty_layer_list_says_so(resnet: nn.Module, image: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"layers= is empty.*layers=None"):
        checked(resnet, image, layers=[])


def test_inplace_relu_and_augmented_add_in_small_model() -> None:
    torch.manual_seed(0)
    model = InplaceNet().eval()
    x = torch.randn(1, 3, 8, 8)
    cap = checked(model, x)
    with torch.no_grad():
        bn1 = model.bn1(model.conv1(x))
        bn2 = model.bn2(model.conv2(F.relu(bn1)))
    assert list(cap) == ["conv1", "bn1", "relu", "conv2", "bn2", "relu:2"]
    torch.testing.assert_close(cap["bn1"], bn1, rtol=0, atol=0)
    torch.testing.assert_close(cap["relu"], F.relu(bn1), rtol=0, atol=0)
    torch.testing.assert_close(cap["bn2"], bn2, rtol=0, atol=0)
    torch.testing.assert_close(cap["relu:2"], F.relu(bn2 + F.relu(bn1)), rtol=0, atol=0)


def test_model_in_training_mode_runs_once_and_keeps_its_state() -> None:
    torch.manual_seed(0)
    model = InplaceNet().train()
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 8, 8)
    forwards: list[int] = []
    counter = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        cap = capture(model, x)
    finally:
        counter.remove()
    assert_no_hooks(model)
    assert model.training and all(m.training for m in model.modules())
    with torch.no_grad():
        bn1 = F.batch_norm(model.conv1(x), None, None, model.bn1.weight, model.bn1.bias, True)
    assert len(forwards) == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} moved"
    torch.testing.assert_close(cap["bn1"], bn1)
    assert cap["bn1"].min() < 0


def test_reused_module_gets_one_entry_per_call() -> None:
    torch.manual_seed(0)
    model = ReusedNet()
    x = torch.randn(1, 4, 6, 6)
    cap = checked(model, x)
    assert list(cap) == ["conv", "act", "conv:2", "act:2", "conv:3", "act:3"]
    assert [cap.info(n).call for n in cap] == [1, 1, 2, 2, 3, 3]
    assert cap.info("conv:3").input_from == "act:2"
    with torch.no_grad():
        once = model.conv(x)
        twice = model.conv(torch.tanh(once))
    torch.testing.assert_close(cap["conv"], once, rtol=0, atol=0)
    torch.testing.assert_close(cap["conv:2"], twice, rtol=0, atol=0)


def test_tuple_dict_and_dataclass_outputs() -> None:
    torch.manual_seed(0)
    model = StructuredNet()
    x = torch.randn(1, 3, 5, 5)
    cap = checked(model, x)
    # Leaves only by default: PairHead holds a conv, so its tuple is captured only when asked for.
    assert list(cap) == ["stem", "pair.conv", "head['out']", "feats['fine']"]
    assert cap.info("head['out']").module_name == "head"
    assert cap.info("head['out']").input_from == "pair.conv"
    torch.testing.assert_close(cap["head['out']"], cap["pair.conv"] * 2, rtol=0, atol=0)
    torch.testing.assert_close(cap["feats['fine']"], cap["stem"] - 1, rtol=0, atol=0)
    assert set(cap.output) == {"logits", "out", "fine"}

    picked = checked(model, x, layers=["pair", "head['out']"])
    assert list(picked) == ["pair[0]", "head['out']"]
    assert picked.info("pair[0]").kind == "block"
    torch.testing.assert_close(picked["pair[0]"], cap["pair.conv"], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"'pair\[1\]' was not produced"):
        checked(model, x, layers=["pair[1]"])


def test_forward_failure_names_layer_and_what_it_received() -> None:
    model = FailingNet()
    with pytest.raises(
        CaptureError, match=r"'block' \(MismatchBlock\).*float32 \(1, 4, 8, 8\)"
    ) as e:
        checked(model, torch.randn(1, 3, 8, 8))
    assert isinstance(e.value, ValueError) and isinstance(e.value, RuntimeError)
    # Raised without the chain (our message comes first); the model's own error is kept.
    assert e.value.__cause__ is None and isinstance(e.value.original, RuntimeError)


def test_wrong_input_channels_name_the_first_conv(resnet: nn.Module) -> None:
    with pytest.raises(CaptureError) as e:
        checked(resnet, torch.randn(1, 1, 32, 32))
    message = str(e.value)
    assert "'conv1' (Conv2d)" in message
    assert "received (float32 (1, 1, 32, 32))" in message
    assert "weight is float32 (64, 3, 7, 7)" in message


def test_wrong_input_dtype_names_layer_and_dtypes() -> None:
    model = small_convnet(torch.bfloat16)
    with pytest.raises(CaptureError, match=r"'0' \(Conv2d\).*float32 \(1, 3, 4, 4\).*bfloat16"):
        checked(model, torch.randn(1, 3, 4, 4))


def test_nan_and_inf_pass_through_untouched() -> None:
    model = NanNet()
    x = torch.tensor([[[[1.0, 0.0], [4.0, 2.0]]]])
    cap = checked(model, x)
    log = cap["log"]
    assert torch.isnan(log[0, 1]).sum() == 3  # log of the negated positives
    assert torch.isneginf(log[0, 0, 0, 1]) and torch.isneginf(log[0, 1, 0, 1])
    torch.testing.assert_close(log[0, 0], torch.log(x[0, 0]), rtol=0, atol=0)


def test_tuple_and_dict_inputs() -> None:
    torch.manual_seed(0)
    model = TwoInputNet()
    image, mask = torch.randn(1, 3, 4, 4), torch.zeros(1, 1, 4, 4)
    positional = checked(model, (image,))
    keyword = checked(model, {"image": image, "mask": mask})
    torch.testing.assert_close(positional["conv"], keyword["conv"], rtol=0, atol=0)
    torch.testing.assert_close(keyword["gate"], torch.full((1, 4, 4, 4), 0.5), rtol=0, atol=0)
    with pytest.raises(TypeError, match="inputs must be a tensor"):
        checked(model, image.numpy())


def test_model_without_spatial_outputs_says_what_leaves_gave() -> None:
    with pytest.raises(CaptureError, match=r"nothing to capture.*fc1: output is 2-D \(2, 6\)"):
        checked(MLP(), torch.randn(2, 12))


def test_functional_activations_are_reported_not_guessed() -> None:
    cap = checked(FunctionalNet(), torch.randn(1, 3, 4, 4))
    assert list(cap) == ["conv1", "conv2"]
    assert any("F.relu" in note and "no activation module" in note for note in cap.report.notes)
    assert cap.info("conv2").input_from is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = small_convnet(dtype)
    x = torch.randn(1, 3, 6, 6).to(dtype)
    cap = checked(model, x)
    assert {cap.info(n).dtype for n in cap} == {str(dtype).removeprefix("torch.")}
    with torch.no_grad():
        bn = model[1](model[0](x))
    torch.testing.assert_close(cap["1"], bn, rtol=0, atol=0)
    assert cap["1"].min() < 0


def test_no_grad_by_default_and_differentiable_with_grad() -> None:
    torch.manual_seed(0)
    model = InplaceNet().eval()
    x = torch.randn(1, 3, 8, 8)
    assert not checked(model, x)["bn1"].requires_grad
    for p in model.parameters():
        p.requires_grad_(False)  # frozen model: activations must still be differentiable
    cap = checked(model, x, grad=True)
    score = cap.output.sum()
    (grad_bn2,) = torch.autograd.grad(score, cap["bn2"])
    with torch.no_grad():
        bn1 = model.bn1(model.conv1(x))
        bn2 = model.bn2(model.conv2(F.relu(bn1)))
    # d sum(relu(bn2 + skip)) / d bn2 = 1 where bn2 + skip > 0
    torch.testing.assert_close(grad_bn2, (bn2 + F.relu(bn1) > 0).float())
    torch.testing.assert_close(cap["bn1"].detach(), bn1, rtol=0, atol=0)
    with pytest.raises(ValueError, match="buffers= cannot be combined with grad=True"):
        checked(model, x, grad=True, buffers=CaptureBuffers())


def test_report_and_repr_are_plain_text(resnet_capture: Capture) -> None:
    text = str(resnet_capture.report)
    assert "layer1.0.relu:2" in text and "fc: output is 2-D" in text
    assert repr(resnet_capture).startswith("Capture(59 layers: 'conv1' (2, 64, 32, 32) … 'avgpool'")
    with pytest.raises(KeyError, match=r"close names: .*layer1\.0\.bn1"):
        resnet_capture["layer1.0.bn"]


def test_root_leaf_model_is_named() -> None:
    conv = nn.Conv2d(3, 2, 1)
    cap = checked(conv, torch.randn(1, 3, 2, 2))
    assert list(cap) == [ROOT_NAME]
    assert cap.info(ROOT_NAME).module_name == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_activations_stay_on_the_device() -> None:
    model = InplaceNet().cuda().eval()
    x = torch.randn(1, 3, 8, 8, device="cuda")
    cap = checked(model, x)
    assert all(t.device.type == "cuda" for t in cap.values())
    with torch.no_grad():
        bn2 = model.bn2(model.conv2(F.relu(model.bn1(model.conv1(x)))))
    torch.testing.assert_close(cap["bn2"], bn2, rtol=0, atol=0)


class _Witness(nn.Module):
    """Watches its own conv's outputs: how many from earlier forwards are alive as each starts.

    ``out += 1`` changes the conv's output after its hook saw it, so a capture runs twice; with
    ``fail=True`` a later step raises after the conv output was stored.
    """

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(5, 2)
        self.fail = fail
        self.outputs: list[weakref.ref[torch.Tensor]] = []
        self.alive_at_start: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.alive_at_start.append(sum(ref() is not None for ref in self.outputs))
        out = self.conv(x)
        self.outputs.append(weakref.ref(out))
        out += 1
        total = out.sum((1, 2, 3))
        del out
        if self.fail:
            return self.head(x.flatten(1))
        return total


def test_a_second_run_starts_after_the_first_runs_outputs_are_freed() -> None:
    model = _Witness().eval()
    cap = checked(model, torch.randn(2, 3, 16, 16))
    assert "ran twice" in str(cap.report)
    assert model.alive_at_start == [0, 0]


def test_a_failed_capture_frees_what_it_captured_while_the_error_is_kept() -> None:
    model = _Witness(fail=True).eval()
    with pytest.raises(CaptureError, match="'head'") as failure:
        checked(model, torch.randn(2, 3, 16, 16))
    gc.collect()
    # IPython keeps the last error (sys.last_value), and with it every frame of the traceback.
    assert failure.value.__traceback__ is not None
    assert model.outputs and all(ref() is None for ref in model.outputs)


def test_admit_sees_each_value_before_later_in_place_ops_and_can_let_it_go() -> None:
    torch.manual_seed(0)
    net = InplaceNet().eval()
    x = torch.randn(2, 3, 8, 8)
    reference = {name: t.clone() for name, t in capture(net, x).items()}
    seen: dict[str, torch.Tensor] = {}

    sources: dict[str, str | None] = {}

    def admit(name: str, t: torch.Tensor, module: nn.Module, source: str | None) -> bool:
        seen[name] = t.clone()
        sources[name] = source
        return name in ("conv1", "bn2")

    cap = capture(net, x, admit=admit)
    assert list(cap) == ["conv1", "bn2"] and cap.dropped == ("bn1", "relu", "conv2", "relu:2")
    assert [i.name for i in cap.report.captured] == list(reference)
    for name, value in reference.items():
        assert torch.equal(seen[name], value), name  # bn1 before the ReLU, bn2 before +=
    # bn2 is changed by `out += skip` after its hook: the kept one was copied (a second run).
    assert torch.equal(cap["bn2"], reference["bn2"])
    assert cap.info("conv2").input_from == "relu"  # pairing still knows what was let go
    assert sources == {i.name: i.input_from for i in cap.report.captured}
    with pytest.raises(KeyError, match="captured but not kept"):
        cap["bn1"]
    assert "bn1" not in cap
    assert_no_hooks(net)


def test_admit_cannot_be_combined_with_grad() -> None:
    with pytest.raises(ValueError, match="admit= cannot be combined with grad=True"):
        capture(InplaceNet(), torch.randn(1, 3, 8, 8), grad=True, admit=lambda *_: True)


# --- in-place modules run out of place on stored tensors -----------------------------------------


class _SideEffectNet(nn.Module):
    """Relies on ReLU(inplace=True) changing its input: its return value is dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        self.relu(out)
        return self.head(out)


class _ViewNet(_SideEffectNet):
    """Reads a view of the tensor the in-place ReLU changes, taken before the change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        left = out[:, :2]
        out = self.relu(out)
        return self.head(out) + left.sum()


class _StubbornReLU(nn.Module):
    """Says `inplace` but changes its input whatever the flag says."""

    def __init__(self) -> None:
        super().__init__()
        self.inplace = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp_(min=0)


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(3)
    model.bn.running_mean.normal_()
    return model.eval()


@pytest.fixture
def swap_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-place modules on kept tensors run out of place and swap memory whatever the size (the
    test tensors are smaller than where the capture starts swapping instead of copying)."""
    monkeypatch.setattr(importlib.import_module("fmwidget.capture"), "_SWAP_FROM", 0)


@pytest.mark.usefixtures("swap_small")
@pytest.mark.parametrize("net", [_SideEffectNet, _ViewNet])
def test_inplace_modules_keep_their_effect_and_their_input_values(net: type[nn.Module]) -> None:
    model = _randomised(net())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x)
        bn = model.bn(model.conv(x))
    cap = checked(model, x)
    # The model computed what it computes without fmwidget (the ReLU's effect on `out` kept),
    # and the stored norm output is from before the ReLU.
    torch.testing.assert_close(cap.output, expected, rtol=0, atol=0)
    torch.testing.assert_close(cap["bn"], bn, rtol=0, atol=0)
    torch.testing.assert_close(cap["relu"], bn.relu(), rtol=0, atol=0)
    assert cap["bn"].min() < 0 and model.relu.inplace is True


@pytest.mark.parametrize("swap", [True, False])
def test_an_inplace_module_that_ignores_its_flag_is_still_caught(
    swap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if swap:
        monkeypatch.setattr(importlib.import_module("fmwidget.capture"), "_SWAP_FROM", 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _StubbornReLU(), nn.Conv2d(4, 2, 1)).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        conv = model[0](x)
    cap = checked(model, x)
    torch.testing.assert_close(cap["0"], conv, rtol=0, atol=0)
    assert cap["0"].min() < 0
    assert model[1].inplace is True
    # Run out of place (swap), it is found changed after its hook, as `out += identity` is: the
    # forward ran again with a copy. A small tensor is copied before the module runs: once.
    assert any("ran twice" in note for note in cap.report.notes) is swap


def test_an_inplace_flag_of_the_class_is_protected_by_a_copy() -> None:
    class ClassFlag(nn.Module):
        inplace = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.clamp_(min=0)

    model = _SideEffectNet()
    model.relu = ClassFlag()
    model = _randomised(model)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        bn = model.bn(model.conv(x))
    cap = checked(model, x)
    torch.testing.assert_close(cap["bn"], bn, rtol=0, atol=0)
    assert not any("ran twice" in note for note in cap.report.notes)


@pytest.mark.usefixtures("swap_small")
def test_the_inplace_flag_is_restored_when_the_forward_fails() -> None:
    class FailingReLU(nn.ReLU):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert not self.inplace, "fmwidget runs it out of place"
            raise RuntimeError("the activation failed")

    # Straight after a conv, whose output it would overwrite: run out of place.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), FailingReLU(inplace=True)).eval()
    with pytest.raises(CaptureError, match="the activation failed"):
        checked(model, torch.randn(1, 3, 8, 8))
    assert model[1].inplace is True


@pytest.mark.parametrize(
    ("arch", "derived_type"),
    [
        # conv -> BatchNorm2d -> SiLU(inplace): the norm, from its conv; the SiLU from the norm.
        ("efficientnet_b0", "BatchNorm2d"),
        ("efficientnet_b0", "SiLU"),
        # StochasticDepth (eval: its input as it is) of a derived norm, later changed in place
        # by `result += input`: derived too, so the forward runs once.
        ("efficientnet_b0", "StochasticDepth"),
        # conv -> BatchNorm2d -> ReLU6(inplace): the clamp of a derived norm.
        ("mobilenet_v2", "ReLU6"),
        # Linear -> GELU on (N, H, W, C): the GELU, from the Linear's channels-last output.
        ("convnext_tiny", "GELU"),
        # conv -> ReLU(inplace) without a norm: the ReLU, from the conv it would overwrite.
        ("squeezenet1_1", "ReLU"),
    ],
)
def test_norms_and_activations_of_captured_layers_are_computed_when_read(
    arch: str, derived_type: str
) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), reference_outputs(model) as ref:
        model(x)
    cap = checked(model, x)
    of_type = [n for n in cap if cap.info(n).type == derived_type]
    assert of_type and all(n in cap.derived for n in of_type), arch
    for name in of_type:
        assert torch.equal(cap[name], as_read(ref[name], cap.info(name))), name
    # A store built on it serves a sample of a derived layer as the whole layer has it.
    from fmwidget.session import Source

    session = Source(model).run(x)
    try:
        store = session.store
        name = of_type[len(of_type) // 2]
        expected = as_read(ref[name], cap.info(name))
        assert not store.is_resident(name) and store.holds(name, 1)
        assert torch.equal(store.sample_maps(name, 1), expected[1])
        assert torch.equal(store.maps(name), expected)
    finally:
        session.close("done")


def test_conv_norm_activation_keeps_only_the_convs_tensor() -> None:
    """conv → BN → ReLU(inplace) → conv → BN, `out += skip`: the ReLU is computed from the norm
    computed from the conv, so the model's ReLU runs in place on the norm's output as in a bare
    forward, the forward runs once, and every value is the forward's."""
    from tests.models import InplaceNet

    torch.manual_seed(0)
    model = InplaceNet().eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        a = model.conv1(x)
        bn1 = model.bn1(a)
        relu = torch.relu(bn1)
        conv2 = model.conv2(relu)
        bn2 = model.bn2(conv2)
    cap = checked(model, x)
    assert not any("ran twice" in note for note in cap.report.notes)
    assert set(cap.derived) == {"bn1", "relu", "bn2"}
    assert cap.derived["relu"].source == "bn1" and cap.derived["bn1"].source == "conv1"
    assert cap.info("relu").input_from == "bn1"
    for name, want in {"conv1": a, "bn1": bn1, "relu": relu, "conv2": conv2, "bn2": bn2}.items():
        assert torch.equal(cap[name], want), name
    assert torch.equal(cap["relu:2"], torch.relu(bn2 + relu))


def test_a_derived_norm_keeps_the_statistics_of_its_capture() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    cap = checked(model, x)
    with torch.no_grad():
        before = model.bn1(model.conv1(x))
        # Training moves BatchNorm's running statistics; what was captured stays.
        model.train()
        model(torch.randn(4, 3, 32, 32) * 3)
        model.eval()
    assert "bn1" in cap.derived
    assert torch.equal(cap["bn1"], before)


def test_a_forward_of_the_model_on_another_thread_is_not_captured() -> None:
    class Spawner(nn.Module):
        """Runs its conv once on another thread (a widget's job, say), then itself."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            elsewhere = threading.Thread(target=lambda: self.conv(x * 2))
            elsewhere.start()
            elsewhere.join()
            return self.conv(x)

    model = Spawner().eval()
    x = torch.randn(1, 3, 8, 8)
    cap = checked(model, x)
    assert list(cap) == ["conv"]
    with torch.no_grad():
        torch.testing.assert_close(cap["conv"], model.conv(x), rtol=0, atol=0)


def test_a_derived_channels_last_activation_serves_one_sample() -> None:
    class Permute(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dims = [0, 2, 3, 1]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.permute(*self.dims)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Permute(), nn.Linear(4, 6), nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    cap = checked(model, x)
    assert cap.info("3").layout == "nhwc" and "3" in cap.derived
    with torch.no_grad():
        expected = model(x).permute(0, 3, 1, 2)
    assert torch.equal(cap["3"], expected)
    from fmwidget.session import Source

    session = Source(model).run(x)
    try:
        assert torch.equal(session.store.sample_maps("3", 1), expected[1])
    finally:
        session.close("done")


def test_module_names_walk_in_named_modules_order() -> None:
    """The fast walk gives what named_modules() gives: each module once (a shared one under its
    first name), parents before children, children in order, None children left out."""
    from fmwidget.calling import module_names, walk_modules

    shared = nn.Conv2d(3, 3, 1)
    model = nn.Sequential(
        nn.Sequential(shared, nn.ReLU()), shared, nn.Sequential(nn.Identity(), shared)
    )
    model.register_module("nothing", None)
    assert list(module_names(model).items()) == list(dict(model.named_modules()).items())
    assert walk_modules(model)[1] is False
    resnet = torchvision.models.resnet18()
    assert list(module_names(resnet).items()) == list(dict(resnet.named_modules()).items())


def test_allocator_trim_gives_back_freed_heap_memory() -> None:
    """Memory freed inside the C heap (below a tensor still alive) stays in the resident set until
    trim() hands it back, where the C library is glibc."""
    import re

    from fmwidget import allocator

    def rss_mib() -> float:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    if allocator._TRIM is None or not Path("/proc/self/status").exists():
        assert allocator.trim() is False
        return
    allocator.trim()
    # 64 KiB tensors (heap-sized, below glibc's mmap threshold), one in eight kept: the 56 MiB
    # freed are holes between live ones, which glibc keeps.
    many = [torch.ones(2**14) for _ in range(1024)]
    kept = many[::8]
    del many
    before = rss_mib()
    assert allocator.trim() is True
    assert rss_mib() < before - 28, "trim() gave back less than half of the 56 MiB freed"
    del kept


def test_a_norm_trained_between_captures_is_copied_again() -> None:
    """Each capture copies a norm's statistics as they are then: a training forward updates the
    running statistics without bumping their version counters, and a weight changed through
    ``.data`` bypasses them too, so nothing may stand for "unchanged since the last capture"."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    x = torch.randn(2, 3, 8, 8)

    def bare() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    first = capture(model, x)
    assert "1" in first.derived
    before = first["1"].clone()
    model.train()
    model(torch.randn(8, 3, 8, 8) * 3 + 1)
    model.eval()
    second = capture(model, x)
    assert torch.equal(second["1"], bare()) and not torch.equal(second["1"], before)
    assert torch.equal(first["1"], before)  # what the earlier capture copied stays
    model[1].weight.data.mul_(5.0)
    third = capture(model, x)
    assert torch.equal(third["1"], bare()) and not torch.equal(third["1"], second["1"])


def test_traced_and_scripted_children_are_captured_around() -> None:
    """A traced or scripted module inside an eager model (its hooks do not fire inside) does not
    keep what an eager one keeps in its __dict__; the eager layers around it are captured."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    traced = torch.jit.trace(nn.Conv2d(3, 4, 3).eval(), x)
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()).eval())
    model = nn.Sequential(traced, scripted, nn.ReLU()).eval()
    cap = capture(model, x)
    with torch.no_grad():
        assert torch.equal(cap["2"], model(x))
    assert "0" in cap and "2" in cap


def test_a_norm_of_a_view_of_a_layer_is_kept_as_it_is_not_derived() -> None:
    """A BatchNorm2d fed a same-shape view of a conv's output (a transpose, C == H) is kept as
    its own values: computing it from the conv's maps would give other ones, and so would
    taking its extremes from the conv's."""
    from fmwidget.store import LayerIntake, _extremes

    class Transposed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.bn = nn.BatchNorm2d(8)
            self.relu = nn.ReLU()
            with torch.no_grad():
                self.bn.running_mean.uniform_(-1, 1)
                self.bn.weight.uniform_(-2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.bn(self.conv(x).transpose(1, 2)))

    torch.manual_seed(0)
    model = Transposed().eval()
    x = torch.randn(2, 3, 8, 5)
    intake = LayerIntake(keep_all=True)
    cap = capture(model, x, admit=intake)
    with torch.no_grad():
        bn = model.bn(model.conv(x).transpose(1, 2))
    assert cap.info("bn").input_from == "conv" and "bn" not in cap.derived
    assert torch.equal(cap["bn"], bn) and torch.equal(cap["relu"], bn.relu())
    lo, hi = _extremes(bn)
    assert torch.equal(intake.taken["bn"].lo, lo) and torch.equal(intake.taken["bn"].hi, hi)
