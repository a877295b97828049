"""Grad-CAM: which places in a layer's feature maps drive a class score.

Our own Grad-CAM takes one forward and one `torch.autograd.grad` call: the layer's output A is
copied at hook time and the copy is what flows on, so later in-place ops (`ReLU(inplace=True)`,
`out += identity`) change the copy and never A. The gradient is taken with respect to A alone, so
no `.grad` is written on the model's parameters, and frozen parameters (`requires_grad=False`) work.

Other CAM methods (Grad-CAM++, LayerCAM, Score-CAM, EigenCAM, ...) come from the `grad-cam` package
(`pip install grad-cam`) when it is installed; see :func:`gradcam`.

Example::

    import torchvision
    from fmwidget.gradcam import gradcam
    model = torchvision.models.resnet18().eval()
    heat = gradcam(model, torch.randn(2, 3, 64, 64), "layer4")  # (2, 2, 2), >= 0
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from fmwidget.capture import ROOT_NAME, _state_kept

__all__ = ["CAM_METHODS", "GradCamResult", "TopClass", "gradcam", "gradcam_layer", "top_classes"]

Target = int | Sequence[int] | torch.Tensor | Callable[[Any], torch.Tensor] | None

#: Methods :func:`gradcam` accepts besides "gradcam", each a class of the `grad-cam` package.
CAM_METHODS: dict[str, str] = {
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "hirescam": "HiResCAM",
    "gradcam-elementwise": "GradCAMElementWise",
}


@dataclass(frozen=True)
class GradCamResult:
    """Grad-CAM at one layer.

    Attributes:
        heatmap: (N, H, W) at the layer's resolution, ReLU(sum_c weights[n, c] * A[n, c]);
            not normalized.
        weights: (N, C) per-channel weights, the spatial mean of d(score)/dA.
        target: the class index used per sample, or None when `target` was a callable.
        scores: the target score per sample (N,), or a 0-d tensor when a callable returned a scalar.
    """

    heatmap: torch.Tensor
    weights: torch.Tensor
    target: list[int] | None
    scores: torch.Tensor


class TopClass(NamedTuple):
    """One entry of :func:`top_classes`: class index, label (None without labels), probability."""

    index: int
    label: str | None
    prob: float


# --- layer naming and output taps (shared with fmwidget.analysis) ------------------------------

_NAME = re.compile(
    r"^(?P<module>.*?)(?::(?P<call>[1-9][0-9]*))?"
    r"(?P<index>(?:\[(?:-?[0-9]+|'[^']*'|\"[^\"]*\")\])*)$"
)
_INDEX = re.compile(r"\[(-?[0-9]+|'[^']*'|\"[^\"]*\")\]")


@dataclass(frozen=True)
class _LayerRef:
    """Where a layer name points: the k-th call (1-based) of a module and a path into its output."""

    name: str
    module: nn.Module
    call: int
    index: tuple[int | str, ...]


def _resolve_layer(model: nn.Module, layer: str | nn.Module) -> _LayerRef:
    """Resolve a layer name (`name`, `name:k`, `name[0]`, `name['key']`) or a module."""
    modules = dict(model.named_modules())
    modules[ROOT_NAME] = model
    if isinstance(layer, nn.Module):
        for name, module in modules.items():
            if module is layer:
                return _LayerRef(name or ROOT_NAME, module, 1, ())
        raise ValueError(
            f"the module {type(layer).__name__} passed as `layer` is not part of the model"
        )
    if not isinstance(layer, str):
        raise TypeError(f"`layer` must be a layer name or a module, got {type(layer).__name__}")
    if layer in modules:
        return _LayerRef(layer, modules[layer], 1, ())
    match = _NAME.match(layer)
    if match is None or match["module"] not in modules:
        close = difflib.get_close_matches(layer, list(modules), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"layer {layer!r} is not a module of the model (names come from model.named_modules(), "
            f"'name:2' is the 2nd call of a module, 'name[0]' a tensor in its output){hint}"
        )
    index = tuple(
        int(tok) if tok[0] not in "'\"" else tok[1:-1] for tok in _INDEX.findall(match["index"])
    )
    return _LayerRef(layer, modules[match["module"]], int(match["call"] or 1), index)


def _replace_at(
    obj: Any, path: tuple[int | str, ...], fn: Callable[[torch.Tensor], torch.Tensor], name: str
) -> Any:
    """`obj` with the tensor at `path` replaced by `fn(tensor)`, containers on the way rebuilt."""
    if not path:
        if not isinstance(obj, torch.Tensor):
            raise TypeError(
                f"layer {name!r} outputs a {type(obj).__name__}, not a tensor; name a tensor "
                f"inside it, e.g. {name}[0] or {name}['key']"
            )
        return fn(obj)
    key, rest = path[0], path[1:]
    if isinstance(obj, tuple | list) and isinstance(key, int) and -len(obj) <= key < len(obj):
        items = list(obj)
        items[key] = _replace_at(items[key], rest, fn, name)
        if isinstance(obj, list):
            return items
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, Mapping) and key in obj:
        new = copy.copy(obj)
        new[key] = _replace_at(obj[key], rest, fn, name)
        return new
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and hasattr(obj, str(key)):
        new = copy.copy(obj)
        object.__setattr__(new, str(key), _replace_at(getattr(obj, str(key)), rest, fn, name))
        return new
    raise KeyError(f"layer {name!r}: the output ({type(obj).__name__}) has no entry [{key!r}]")


class _Tap:
    """Forward hook on one call of a module: swaps the chosen output tensor for `fn(tensor)`."""

    def __init__(self, ref: _LayerRef, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.ref = ref
        self.fn = fn
        self.calls = 0

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        self.calls += 1
        if self.calls != self.ref.call:
            return None
        return _replace_at(output, self.ref.index, self.fn, self.ref.name)

    def check_called(self) -> None:
        if self.calls < self.ref.call:
            raise RuntimeError(
                f"layer {self.ref.name!r} was called {self.calls} time(s) in the forward, so call "
                f"{self.ref.call} never happened"
            )


@contextmanager
def _tapped(ref: _LayerRef, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[_Tap]:
    """Install a `_Tap` for the duration of the block; the hook is removed even on error."""
    tap = _Tap(ref, fn)
    handle = ref.module.register_forward_hook(tap)
    try:
        yield tap
    finally:
        handle.remove()


def _normal_tensors(inputs: Any) -> Any:
    """Inputs made under `torch.inference_mode()` cannot enter an autograd graph; copy those."""
    if isinstance(inputs, torch.Tensor):
        return inputs.clone() if inputs.is_inference() else inputs
    if isinstance(inputs, Mapping):
        return {k: _normal_tensors(v) for k, v in inputs.items()}
    if isinstance(inputs, tuple | list):
        return type(inputs)(_normal_tensors(v) for v in inputs)
    return inputs


def _run(model: nn.Module, inputs: Any) -> Any:
    """Call the model: a tensor as is, a tuple/list positionally, a mapping as keywords."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


# --- Grad-CAM -----------------------------------------------------------------------------------


def _target_indices(target: Target, output: Any, n: int) -> list[int]:
    """Class index per sample from `target` (None = predicted class), checked against the output."""
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != n:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"a class-index target needs the model to return (N, classes) = ({n}, K) scores; it "
            f"returned {got}. Pass target=callable(output) -> score per sample instead"
        )
    k = output.shape[1]
    if target is None:
        indices = output.argmax(dim=1).tolist()
    elif isinstance(target, int) and not isinstance(target, bool):
        indices = [target] * n
    else:
        flat = torch.as_tensor(target).reshape(-1)
        if flat.is_floating_point() or flat.dtype == torch.bool:
            raise TypeError(f"target must hold class indices (ints), got dtype {flat.dtype}")
        indices = flat.tolist()
        if len(indices) != n:
            raise ValueError(f"target has {len(indices)} class indices for a batch of {n} inputs")
    bad = [t for t in indices if not 0 <= t < k]
    if bad:
        raise ValueError(f"target class {bad[0]} is out of range for a model with {k} classes")
    return indices


def gradcam_layer(
    model: nn.Module, inputs: Any, layer: str | nn.Module, target: Target = None
) -> GradCamResult:
    """Grad-CAM at `layer` with its per-channel weights.

    Args:
        model: any module; its hooks, `.grad`, `requires_grad`, `training` and buffers are left
            as they were.
        inputs: a tensor (called as `model(inputs)`), a tuple (`model(*inputs)`) or a mapping
            (`model(**inputs)`).
        layer: a name from `model.named_modules()`, `name:k` for the k-th call of a reused module,
            `name[i]` / `name['key']` for a tensor inside a tuple/dict output, or the module itself.
            Its output must be (N, C, H, W).
        target: None for the predicted class per sample, an int class, one int per sample, or a
            callable `f(model_output)` returning a score per sample (N,) or one scalar.

    The model runs in whatever mode it is in; in training mode BatchNorm mixes the batch, so each
    sample's map also reflects the others (use `model.eval()` for per-image maps).

    Example::

        res = gradcam_layer(model, x, "layer4", target=281)
        res.heatmap.shape, res.weights.shape   # (N, 2, 2), (N, 512)
    """
    ref = _resolve_layer(model, layer)
    held: list[torch.Tensor] = []

    def substitute(out: torch.Tensor) -> torch.Tensor:
        # A owns its memory (a module may return a view of a tensor mutated later) and is a leaf, so
        # the gradient is taken w.r.t. A only; downstream gets a copy that in-place ops may change.
        a = out.detach().clone().requires_grad_(True)
        held.append(a)
        return a.clone()

    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        _state_kept(model),
        _tapped(ref, substitute) as tap,
    ):
        output = _run(model, _normal_tensors(inputs))
        tap.check_called()
        a = held[0]
        if a.ndim != 4:
            raise ValueError(
                f"Grad-CAM needs layer {ref.name!r} to output (N, C, H, W); "
                f"it output {tuple(a.shape)}"
            )
        n = a.shape[0]
        if callable(target):
            score = target(output)
            if not isinstance(score, torch.Tensor) or score.numel() not in (1, n):
                got = (
                    tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
                )
                raise ValueError(
                    f"target(output) must return a score per sample ({n},) or a scalar; got {got}"
                )
            indices = None
            scores = score.detach().reshape(()) if score.ndim == 0 else score.detach().reshape(-1)
        else:
            indices = _target_indices(target, output, n)
            score = output[torch.arange(n, device=output.device), indices]
            scores = score.detach()
        if not score.requires_grad:
            raise ValueError(f"the target score does not depend on layer {ref.name!r}")
        (grad,) = torch.autograd.grad(score.sum(), a, allow_unused=True)
        if grad is None:
            raise ValueError(f"the target score does not depend on layer {ref.name!r}")
    weights = grad.mean(dim=(2, 3))
    heatmap = torch.relu(torch.einsum("nc,nchw->nhw", weights, a.detach()))
    return GradCamResult(heatmap=heatmap, weights=weights, target=indices, scores=scores)


def gradcam(
    model: nn.Module,
    inputs: Any,
    layer: str | nn.Module,
    target: Target = None,
    *,
    method: str = "gradcam",
) -> torch.Tensor:
    """Class activation map at `layer`.

    With `method="gradcam"` (the default, no extra package): (N, H, W) at the layer's resolution,
    non-negative, not normalized — `gradcam_layer(...).heatmap`; see :func:`gradcam_layer` for
    `inputs`, `layer` and `target`.

    Other methods (the keys of `CAM_METHODS`: "gradcam++", "layercam", "scorecam", "eigencam",
    ...) run the `grad-cam` package's classes and return what they define: (N, H_in, W_in),
    upsampled to the input size and scaled to [0, 1] per image. They need a tensor `inputs`, a
    `layer` naming a module's first call, and `target` as None, class index(es), or a list of
    `pytorch_grad_cam` target objects. The package records activations with module forward hooks;
    we add a hook after its own that hands a copy downstream, so later in-place ops leave its
    recorded activation intact. It switches the model to eval mode and writes `.grad` in its
    backward; both are restored afterwards.

    Example::

        heat = gradcam(model, x, "layer4")                       # ours, (N, 2, 2) for 64x64 inputs
        heat_pp = gradcam(model, x, "layer4", method="gradcam++")  # needs `pip install grad-cam`
    """
    if method == "gradcam":
        return gradcam_layer(model, inputs, layer, target).heatmap
    if method not in CAM_METHODS:
        raise ValueError(
            f"unknown method {method!r}; choose 'gradcam' or one of {sorted(CAM_METHODS)}"
        )
    return _package_cam(model, inputs, _resolve_layer(model, layer), target, method)


def _package_cam(
    model: nn.Module, inputs: Any, ref: _LayerRef, target: Any, method: str
) -> torch.Tensor:
    """Run one of the `grad-cam` package's methods and leave the model as it was."""
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as err:
        raise ImportError(
            f"method={method!r} runs on the grad-cam package, which is not installed: "
            "pip install grad-cam"
        ) from err
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(
            f"method={method!r} needs `inputs` as one tensor, got {type(inputs).__name__}"
        )
    if ref.call != 1 or ref.index:
        raise ValueError(
            f"method={method!r} hooks whole modules: name a module's first call, not {ref.name!r} "
            "(method='gradcam' handles repeated calls and tensors inside outputs)"
        )
    if target is None or (isinstance(target, list) and target and callable(target[0])):
        targets = target
    else:
        n = inputs.shape[0]
        if isinstance(target, int):
            target = [target] * n
        targets = [
            ClassifierOutputTarget(int(t)) for t in torch.as_tensor(target).reshape(-1).tolist()
        ]
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    cam = getattr(pytorch_grad_cam, CAM_METHODS[method])(model=model, target_layers=[ref.module])
    # Registered after the package's hooks, so they record the layer's own output and the rest of
    # the network (with its in-place ops) runs on a copy.
    handle = ref.module.register_forward_hook(
        lambda _m, _a, out: out.clone() if isinstance(out, torch.Tensor) else None
    )
    try:
        with _state_kept(model):
            # A leaf input that needs grad gives the package a graph even with frozen parameters.
            heat = cam(input_tensor=inputs.detach().clone().requires_grad_(True), targets=targets)
    finally:
        handle.remove()
        cam.activations_and_grads.release()
        for module, mode in modes:
            module.training = mode
        for param, grad in grads:
            param.grad = grad
    return torch.from_numpy(heat).to(inputs.device)


def top_classes(
    output: torch.Tensor, labels: Sequence[str] | Mapping[int, str] | None = None, k: int = 5
) -> list[list[TopClass]]:
    """The `k` most probable classes per sample from (N, classes) logits (softmax over classes).

    Example::

        top_classes(model(x), labels=weights.meta["categories"], k=3)
        # [[TopClass(index=285, label='Egyptian cat', prob=0.71), ...], ...]
    """
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"top_classes needs (N, classes) logits; got {got}")
    probs = torch.softmax(output.detach().float(), dim=1)
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)

    def label(i: int) -> str | None:
        if labels is None:
            return None
        if isinstance(labels, Mapping):
            return labels.get(i)
        return labels[i] if i < len(labels) else None

    return [
        [TopClass(i, label(i), p) for i, p in zip(row_i, row_p, strict=True)]
        for row_i, row_p in zip(indices.tolist(), values.tolist(), strict=True)
    ]
