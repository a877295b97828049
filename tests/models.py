"""Small models for capture tests (importable by other test files), hook/flag checks, and clones of
every module's output taken in its own forward hook (what captures are checked against)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_mod

from fmwidget.calling import tensors_in
from fmwidget.capture import LayerInfo
from fmwidget.names import display

_MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)
_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def assert_no_hooks(model: nn.Module) -> None:
    """Fail if any module of ``model`` (or torch's global registry) still holds a hook."""
    for name, module in model.named_modules():
        for attr in _MODULE_HOOK_DICTS:
            assert not getattr(module, attr), f"{attr} left on module {name!r}"
    for attr in _GLOBAL_HOOK_DICTS:
        assert not getattr(module_mod, attr), f"global {attr} left registered"


def flags(model: nn.Module) -> dict[str, Any]:
    """Everything capture must leave alone: training flags, inplace flags, requires_grad."""
    state: dict[str, Any] = {}
    for name, module in model.named_modules():
        state[f"{name}.training"] = module.training
        if hasattr(module, "inplace"):
            state[f"{name}.inplace"] = module.inplace
    for name, param in model.named_parameters():
        state[f"{name}.requires_grad"] = param.requires_grad
    return state


class InplaceNet(nn.Module):
    """conv → bn → ReLU(inplace) → conv → bn, then ``out += skip`` and an in-place ReLU again."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(skip))
        out += skip
        return self.relu(out)


class AddedToNet(nn.Module):
    """conv → conv, then ``out += skip`` on the second conv's output (outside modules): the
    capture copies that layer, into the reused buffers when it has them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.conv1(x)
        out = self.conv2(skip)
        out += skip
        return torch.relu(out)


class ReusedNet(nn.Module):
    """One conv applied three times in a row: three entries, ``conv``, ``conv:2``, ``conv:3``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = self.act(self.conv(x))
        return x


@dataclass
class Features:
    """A dataclass output, as some detection backbones return."""

    fine: torch.Tensor
    score: torch.Tensor


class PairHead(nn.Module):
    """Returns a tuple: a 4-D map and a 2-D vector."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(x), x.mean(dim=(2, 3))


class DictHead(nn.Module):
    """Returns a dict with a 4-D map under 'out' and an integer mask under 'mask'."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": x * 2, "mask": (x > 0).long()}


class FeaturesHead(nn.Module):
    """Returns a dataclass."""

    def forward(self, x: torch.Tensor) -> Features:
        return Features(fine=x - 1, score=x.sum(dim=(1, 2, 3)))


class StructuredNet(nn.Module):
    """Tuple, dict and dataclass outputs in one model; the model returns a dict too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pair = PairHead()
        self.head = DictHead()
        self.feats = FeaturesHead()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        mapped, vector = self.pair(x)
        return {"logits": vector, "out": self.head(mapped)["out"], "fine": self.feats(x).fine}


class MismatchBlock(nn.Module):
    """Adds two branches whose spatial sizes differ: fails in the block's own code."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x


class FailingNet(nn.Module):
    """A conv that works, then a block that raises inside its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = MismatchBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


class Log(nn.Module):
    """Natural log: NaN for negative inputs, -inf at zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class NanNet(nn.Module):
    """A conv whose output goes through a log: NaN and -inf appear in a captured layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.log = Log()
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log(self.conv(x))


class TwoInputNet(nn.Module):
    """Takes an image and an optional keyword mask: for tuple and dict inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = nn.Sigmoid()

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv(image)
        return self.gate(x) if mask is None else self.gate(x * mask)


class FunctionalNet(nn.Module):
    """Activations with F.relu only: no activation module for hooks to see."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class MLP(nn.Module):
    """No spatial output anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 6)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def small_convnet(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """conv → bn → ReLU(inplace) → conv, in the given dtype (eval mode)."""
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 4, 3, padding=1),
    )
    return net.to(dtype).eval()


@contextmanager
def reference_outputs(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Every 3-D and 4-D floating tensor each module call returns, cloned in its forward hook,
    named as layer names are (``name``, ``name:k``, ``name[i]``): independent of fmwidget's
    capture."""
    clones: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}

    def hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def keep(_m: nn.Module, _a: Any, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            base = display(name) if calls[name] == 1 else f"{display(name)}:{calls[name]}"
            for key, t in tensors_in(out, base):
                if t.dim() in (3, 4, 5) and t.is_floating_point():
                    clones[key] = t.detach().clone()

        return keep

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()]
    try:
        yield clones
    finally:
        for h in handles:
            h.remove()


def as_read(raw: torch.Tensor, info: LayerInfo) -> torch.Tensor:
    """A module's own output read as the (N, C, H, W) maps its layout says it holds."""
    if info.layout == "nhwc":
        return raw.permute(0, 3, 1, 2)
    if info.layout == "ncthw":
        return raw[:, :, info.frame]
    if info.layout == "nthwc":
        return raw[:, info.frame].permute(0, 3, 1, 2)
    if info.layout == "tokens":
        h, w = info.shape[2:]
        patches = raw[:, info.extra_tokens :]
        return torch.stack([patches[:, i * w : (i + 1) * w].transpose(1, 2) for i in range(h)], 2)
    return raw


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer, to check the model was left as it was."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
