"""Grad-CAM: which places in a layer's feature maps drive a class score.

Our own Grad-CAM takes one forward and one `torch.autograd.grad` call: the layer's output A is
copied at hook time and the copy is what flows on, so later in-place ops (`ReLU(inplace=True)`,
`out += identity`) change the copy and never A. The gradient is taken with respect to A alone, so
no `.grad` is written on the model's parameters, and frozen parameters (`requires_grad=False`) work.

Other CAM methods (Grad-CAM++, LayerCAM, Score-CAM, EigenCAM, ...) come from the `grad-cam` package
(`pip install grad-cam`) when it is installed; see :func:`gradcam`. Most take one forward and one
backward; Score-CAM (:data:`CHANNEL_COST`) runs the model once per channel of the layer and input,
which is minutes on a wide layer: it shows a progress bar, and Ctrl-C stops it (or Cancel in the
view, :mod:`fmwidget.tasks`), leaving the model as it was.

Example::

    import torchvision
    from fmwidget.gradcam import gradcam
    model = torchvision.models.resnet18().eval()
    heat = gradcam(model, torch.randn(2, 3, 64, 64), "layer4")  # (2, 2, 2), >= 0
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from fmwidget import tasks
from fmwidget.calling import (
    LayerRef,
    call_model,
    eager_model,
    normal_tensors,
    resolve_layer,
    run_eagerly,
    state_kept,
    tapped,
)
from fmwidget.capture import CaptureError, layer_layout
from fmwidget.layouts import NCHW, Layout, as_clip, as_map, may_reorder
from fmwidget.validation import CAM_LABELS

__all__ = [
    "CAM_METHODS",
    "CHANNEL_COST",
    "GradCamResult",
    "TopClass",
    "gradcam",
    "gradcam_layer",
    "top_classes",
]

Target = int | Sequence[int] | torch.Tensor | Callable[[Any], torch.Tensor] | None

#: Methods :func:`gradcam` accepts besides "gradcam", each a class of the `grad-cam` package.
CAM_METHODS: dict[str, str] = {
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "hirescam": "HiResCAM",
    "gradcam-elementwise": "GradCAMElementWise",
}

#: Methods whose cost scales with the layer's channels: one forward of the model per channel and
#: input (the grad-cam package batches 16 at a time). Score-CAM on a 1280-channel layer took 54.7 s
#: from the view (issue 12); every other method takes one forward and at most one backward. The
#: view's method picker says so with the count for the shown layer (js/views/gradcam.ts).
CHANNEL_COST: dict[str, str] = {
    "scorecam": "one forward per channel",
    "ablationcam": "one forward per channel",
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

    index: int  # type: ignore[assignment]  # shadows tuple.index, a public field name
    label: str | None
    prob: float


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


def _layout(model: nn.Module, inputs: Any, ref: LayerRef, frame: int = 0) -> Layout:
    """How `capture` reads the layer (a channels-last or token layer's channels are its last
    dimension): found by a forward up to it, only for models where it may not be (N, C, H, W)."""
    if not may_reorder(eager_model(model)):
        return NCHW
    try:
        return layer_layout(model, inputs, ref.name, frame)
    except CaptureError:
        return NCHW  # no map capture reads: the (N, C, H, W) check after the forward says so


def gradcam_layer(
    model: nn.Module,
    inputs: Any,
    layer: str | nn.Module,
    target: Target = None,
    *,
    frame: int | None = None,
    progress: bool = True,
) -> GradCamResult:
    """Grad-CAM at `layer` with its per-channel weights.

    Args:
        model: any module; its hooks, `.grad`, `requires_grad`, `training` and buffers are left
            as they were.
        inputs: a tensor (called as `model(inputs)`), a tuple (`model(*inputs)`) or a mapping
            (`model(**inputs)`).
        layer: a name from `model.named_modules()`, `name:k` for the k-th call of a reused module,
            `name[i]` / `name['key']` for a tensor inside a tuple/dict output, or the module itself:
            every name `capture` gives, and block names (`layer4`, the same tensor as the layer
            it is an alias of). Its output must be a map as `capture` reads it: (N, C, H, W),
            channels-last (N, H, W, C) or a transformer block's patch tokens (`LayerInfo.layout`;
            for models with LayerNorms or attention a forward up to the layer finds out which).
            A `torch.compile`d model runs as its original modules, eagerly, and is not recompiled.
        target: None for the predicted class per sample, an int class, one int per sample, or a
            callable `f(model_output)` returning a score per sample (N,) or one scalar.
        frame: for a video layer ((N, C, T, H, W), channels-last (N, T, H, W, C) or a video
            transformer's tokens, `LayerInfo.frames` > 0): the channel
            weights are the gradient's mean over the whole clip (time and space, 3-D Grad-CAM),
            and the heatmap is (N, T, H, W), one map per frame of the layer; with `frame` (an input
            frame, as `capture(frame=)`), the (N, H, W) map of the layer's frame covering it.
        progress: show a progress bar in the cell when the call takes over a second (Ctrl-C
            stops it and leaves the model as it was).

    The model runs in whatever mode it is in; in training mode BatchNorm mixes the batch, so each
    sample's map also reflects the others (use `model.eval()` for per-image maps).

    Example::

        res = gradcam_layer(model, x, "layer4", target=281)
        res.heatmap.shape, res.weights.shape   # (N, 2, 2), (N, 512)
    """
    ref = resolve_layer(model, layer)
    layout = _layout(model, inputs, ref, frame or 0)
    held: list[torch.Tensor] = []

    def substitute(out: torch.Tensor) -> torch.Tensor:
        # A owns its memory (a module may return a view of a tensor mutated later) and is a leaf, so
        # the gradient is taken w.r.t. A only; downstream gets a copy that in-place ops may change.
        a = out.detach().clone().requires_grad_(True)
        held.append(a)
        return a.clone()

    with (
        tasks.progress(f"Grad-CAM on {ref.name}", 1, "forwards", bar=progress) as p,
        torch.inference_mode(False),
        torch.enable_grad(),
        state_kept(model),
        tapped(ref, substitute) as tap,
        tasks.watched(model, p),
    ):
        output = call_model(model, normal_tensors(inputs))
        tap.check_called()
        a = held[0]
        if a.ndim != {"tokens": 3, "ncthw": 5, "nthwc": 5}.get(layout.kind, 4):
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
    if layout.frames:
        heatmap, weights = _clip_cam(grad, a.detach(), layout, frame)
        return GradCamResult(heatmap=heatmap, weights=weights, target=indices, scores=scores)
    grad, maps = as_map(grad, layout), as_map(a.detach(), layout)
    weights = grad.mean(dim=(2, 3))
    heatmap = torch.relu(torch.einsum("nc,nchw->nhw", weights, maps))
    return GradCamResult(heatmap=heatmap, weights=weights, target=indices, scores=scores)


def _clip_cam(
    grad: torch.Tensor, acts: torch.Tensor, layout: Layout, frame: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D Grad-CAM of a video layer: weights over the whole clip, a map per frame (or the one
    frame of ``layout`` when ``frame`` is given)."""
    grad, acts = as_clip(grad, layout), as_clip(acts, layout)
    weights = grad.mean(dim=(2, 3, 4))
    if frame is None:
        return torch.relu(torch.einsum("nc,ncthw->nthw", weights, acts)), weights
    return torch.relu(torch.einsum("nc,nchw->nhw", weights, acts[:, :, layout.frame])), weights


def gradcam(
    model: nn.Module,
    inputs: Any,
    layer: str | nn.Module,
    target: Target = None,
    *,
    method: str = "gradcam",
    progress: bool = True,
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
    recorded activation intact. A channels-last or token layer is handed to the package as its
    (N, C, H, W) maps (its `reshape_transform`), as `capture` reads it; a video layer is refused
    (the package's maps are 2-D). It switches the model to eval mode and writes `.grad` in its
    backward; both are restored afterwards.

    Cost: one forward and one backward, except for the methods of :data:`CHANNEL_COST`: Score-CAM
    runs the model once per channel of `layer` and input (C x N forwards, 16 to a batch), a minute
    on a 1280-channel layer on a CPU. With `progress` a bar shows how far it is once the call takes
    over a second; Ctrl-C stops it and leaves the model as it was (hooks, `.grad`, modes, buffers).

    Example::

        heat = gradcam(model, x, "layer4")                       # ours, (N, 2, 2) for 64x64 inputs
        heat_pp = gradcam(model, x, "layer4", method="gradcam++")  # needs `pip install grad-cam`
    """
    if method == "gradcam":
        return gradcam_layer(model, inputs, layer, target, progress=progress).heatmap
    if method not in CAM_METHODS:
        raise ValueError(
            f"unknown method {method!r}; choose 'gradcam' or one of {sorted(CAM_METHODS)}"
        )
    return _package_cam(model, inputs, resolve_layer(model, layer), target, method, progress)


def _package_cam(
    model: nn.Module, inputs: Any, ref: LayerRef, target: Any, method: str, bar: bool
) -> torch.Tensor:
    """Run one of the `grad-cam` package's methods and leave the model as it was."""
    # The package calls the model itself: a compiled one runs as its original modules, eagerly,
    # so that the package's hooks fire and nothing is recompiled.
    model = eager_model(model)
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
    layout = _layout(model, inputs, ref)
    if layout.frames:
        raise ValueError(
            f"method={method!r} (the grad-cam package) draws 2-D maps, and layer {ref.name!r} is "
            "video; method='gradcam' gives 3-D Grad-CAM, a map per frame"
        )
    # The package reads (N, C, H, W): a channels-last or token layer is handed over as its maps.
    reshape = None if layout == NCHW else (lambda t: as_map(t, layout))
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    cam = getattr(pytorch_grad_cam, CAM_METHODS[method])(
        model=model, target_layers=[ref.module], reshape_transform=reshape
    )
    # Registered after the package's hooks, so they record the layer's own output and the rest of
    # the network (with its in-place ops) runs on a copy.
    handle = ref.module.register_forward_hook(
        lambda _m, _a, out: out.clone() if isinstance(out, torch.Tensor) else None
    )
    label = f"{CAM_LABELS.get(method, method)} on {ref.name}"
    try:
        with (
            _cam_progress(label, method, model, ref, inputs, bar, layout),
            state_kept(model),
            tasks.quiet_bars(),
            run_eagerly(model),
        ):
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


@contextlib.contextmanager
def _cam_progress(
    label: str,
    method: str,
    model: nn.Module,
    ref: LayerRef,
    inputs: torch.Tensor,
    bar: bool,
    layout: Layout = NCHW,
) -> Iterator[tasks.Progress]:
    """Progress of one grad-cam package call: in channels for the methods of CHANNEL_COST (their
    first forward records the activations; each later one scores a batch of masked inputs, one
    per channel), else in forwards."""
    if method not in CHANNEL_COST:
        with tasks.progress(label, 1, "forwards", bar=bar) as p, tasks.watched(model, p):
            yield p
        return
    n = inputs.shape[0]

    def masked(i: int, args: tuple[Any, ...]) -> int:
        return 0 if i == 0 else tasks.batch_size(args)

    with (
        # The total is known once the first forward shows the layer's channels.
        tasks.progress(label, 0, "channels", bar=bar) as p,
        tasks.watched(model, p, masked),
    ):

        def seen(_m: nn.Module, _a: Any, out: Any) -> None:
            if not p.total and isinstance(out, torch.Tensor) and out.ndim >= 2:
                channels = out.shape[1] if layout == NCHW else as_map(out, layout).shape[1]
                p.total = int(channels) * n

        handle = ref.module.register_forward_hook(seen)
        try:
            yield p
        finally:
            handle.remove()


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
