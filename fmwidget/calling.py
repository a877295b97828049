"""How fmwidget calls a user's model, walks its inputs and outputs, and leaves it as it was.

One convention for ``inputs`` everywhere (capture, Grad-CAM, ablation, recompute, scans): a tensor
is the one positional argument, a tuple or list the positional arguments, a mapping the keyword
arguments::

    >>> split_inputs({"x": 1})
    ((), {'x': 1})
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from fmwidget.names import COMPILED_PART, display, hint, parse_layer_name

__all__ = [
    "LayerRef",
    "Tap",
    "call_model",
    "eager_model",
    "is_compiled",
    "module_names",
    "normal_tensors",
    "rebuild",
    "resolve_layer",
    "run_eagerly",
    "split_inputs",
    "state_kept",
    "tapped",
    "tensors_in",
    "training_flags",
    "versions",
]

#: How deep :func:`tensors_in` and :func:`rebuild` look into nested outputs.
MAX_NESTING = 4


def split_inputs(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``inputs`` as ``(args, kwargs)`` for ``model(*args, **kwargs)``."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    hint = ""
    if type(inputs).__module__.startswith(("PIL", "numpy")) or isinstance(
        inputs, (str, os.PathLike)
    ):
        hint = (
            "; for images (file paths, PIL images, arrays) use x, pictures = "
            "fmwidget.to_batch(images, preprocess), or pass them to FeatureMapWidget with "
            "preprocess="
        )
    raise TypeError(
        "inputs must be a tensor, a tuple/list of positional arguments or a dict of keyword "
        f"arguments; got {type(inputs).__name__}{hint}"
    )


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model`` called on ``inputs`` (see :func:`split_inputs`), eagerly (:func:`run_eagerly`)."""
    args, kwargs = split_inputs(inputs)
    with run_eagerly(model):
        return model(*args, **kwargs)


# -- torch.compile'd models: hooked and run as their original modules ----------------------------
#
# Module hooks do not run inside a compiled graph (capture saw nothing once the compiled model had
# run), and hooks added to a compiled model make Dynamo guard on them and recompile. So fmwidget
# hooks the original modules and runs compiled code as plain Python for the forward (the
# "force_eager" stance: nothing is compiled or recompiled, the user's compiled code stays cached).


def _optimized_module() -> type | None:
    # Nothing is compiled before Dynamo is imported; importing it here would cost a second.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(eval_frame, "OptimizedModule", None)


def eager_model(model: nn.Module) -> nn.Module:
    """The module ``torch.compile(model)`` wraps (``model._orig_mod``), else ``model`` itself.

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> eager_model(torch.compile(net)) is net, eager_model(net) is net
        (True, True)
    """
    wrapper = _optimized_module()
    while wrapper is not None and isinstance(model, wrapper):
        model = cast(nn.Module, model._orig_mod)
    return model


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` or one of its modules is ``torch.compile``'d (wrapped or in place)."""
    return walk_modules(model)[1]


@contextmanager
def run_eagerly(model: nn.Module, compiled: bool | None = None) -> Iterator[None]:
    """For the block, ``model``'s compiled code runs eagerly: hooks fire, nothing compiles
    (``compiled``: :func:`is_compiled` of it, when the caller knows already)."""
    if not (is_compiled(model) if compiled is None else compiled):
        yield
        return
    with torch.compiler.set_stance("force_eager"):
        yield


def module_names(model: nn.Module) -> dict[str, nn.Module]:
    """``model.named_modules()`` as fmwidget names them: a compiled model's original modules,
    without the ``_orig_mod`` parts of the names (``_orig_mod.conv1`` is ``conv1``)."""
    return walk_modules(eager_model(model))[0]


def walk_modules(model: nn.Module) -> tuple[dict[str, nn.Module], bool]:
    """:func:`module_names` of ``model``, and whether some module is compiled: one walk, in the
    order of ``named_modules()`` (each module once, under its first name), about twice as fast as
    it (no generator per level)."""
    wrapper = _optimized_module()
    named: dict[str, nn.Module] = {}
    seen: set[nn.Module] = set()
    compiled = False
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        prefix, module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        wrapped = wrapper is not None and isinstance(module, wrapper)
        if wrapper is not None and (wrapped or "_compiled_call_impl" in module.__dict__):
            compiled = compiled or wrapped or module.__dict__["_compiled_call_impl"] is not None
        if not wrapped:
            named[prefix] = module
        children = module._modules
        if children:
            dot = prefix + "." if prefix else ""
            for name, child in reversed(children.items()):
                if child is not None:
                    strip = wrapper is not None and name == COMPILED_PART
                    stack.append((prefix if strip else dot + name, child))
    return named, compiled


def normal_tensors(inputs: Any) -> Any:
    """Inputs made under ``torch.inference_mode()`` cannot enter an autograd graph; copy those."""
    if isinstance(inputs, torch.Tensor):
        return inputs.clone() if inputs.is_inference() else inputs
    if isinstance(inputs, Mapping):
        return {k: normal_tensors(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(normal_tensors(v) for v in inputs)
    return inputs


def tensors_in(value: Any, prefix: str, depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside a (nested) tuple/list/dict/dataclass, named ``prefix[0]['key']``."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif depth >= MAX_NESTING:
        return
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from tensors_in(v, f"{prefix}[{i}]", depth + 1)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from tensors_in(v, f"{prefix}[{k!r}]", depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from tensors_in(getattr(value, f.name), f"{prefix}[{f.name!r}]", depth + 1)


def input_clip(inputs: Any) -> int | None:
    """The frames (T) of the first (N, C, T, H, W) clip among ``inputs``; ``None`` without one."""
    return next((t.shape[2] for _, t in tensors_in(inputs, "") if t.dim() == 5), None)


def rebuild(value: Any, swap: Callable[[torch.Tensor], torch.Tensor], depth: int = 0) -> Any:
    """The same structure as ``value`` with every tensor replaced by ``swap(tensor)``."""
    if isinstance(value, torch.Tensor):
        return swap(value)
    if depth >= MAX_NESTING:
        return value
    if isinstance(value, tuple):
        items = [rebuild(v, swap, depth + 1) for v in value]
        if hasattr(value, "_fields"):
            return type(value)(*items)
        return type(value)(items) if type(value) is not tuple else tuple(items)
    if isinstance(value, list):
        new_list = copy.copy(value)
        new_list[:] = [rebuild(v, swap, depth + 1) for v in value]
        return new_list
    if isinstance(value, Mapping):
        new_map: Any = copy.copy(value)
        for k, v in value.items():
            new_map[k] = rebuild(v, swap, depth + 1)
        return new_map
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        new: Any = copy.copy(value)
        for f in dataclasses.fields(value):
            object.__setattr__(new, f.name, rebuild(getattr(value, f.name), swap, depth + 1))
        return new
    return value


@contextmanager
def state_kept(model: nn.Module) -> Iterator[None]:
    """Restore buffers (BatchNorm running stats) after the block if any module is in training mode.

    A forward in training mode updates running statistics; a visualization must not change them.
    """
    if not any_training(model):
        yield
        return
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def training_flags(model: nn.Module) -> tuple[bool, ...]:
    """Every module's ``training`` flag, in ``modules()`` order (a compiled wrapper's own left
    out: its forward runs the original modules)."""
    return tuple(module.training for module in walk_modules(model)[0].values())


def any_training(model: nn.Module) -> bool:
    """Whether some module of ``model`` is in training mode."""
    return any(module.training for module in walk_modules(model)[0].values())


def versions(model: nn.Module, inputs: Any) -> tuple[tuple[int, ...], int]:
    """Version counters of the input tensors, and their sum over parameters and buffers: every
    in-place change (an optimizer step, ``load_state_dict``) moves them.

    Read from each module's own parameter and buffer dicts in one walk: ``parameters()`` and
    ``buffers()`` walk the model once each, with a generator per module (3-4× slower; this runs
    at every widget build and every recompute). A tensor shared by two modules counts twice,
    in every call alike."""
    total = 0
    for module in walk_modules(model)[0].values():
        for group in (module._parameters, module._buffers):
            total += sum(_version(t) for t in group.values() if t is not None)
    return tuple(_version(t) for _, t in tensors_in(inputs, "")), total


def _version(tensor: torch.Tensor) -> int:
    # Inference tensors keep no version counter; they cannot be changed outside inference mode.
    return 0 if tensor.is_inference() else tensor._version


# -- layers by name, and taps that swap one output tensor ---------------------------------------


@dataclass(frozen=True)
class LayerRef:
    """Where a layer name points: the k-th call (1-based) of a module and a path into its output."""

    name: str
    module: nn.Module
    call: int
    index: tuple[int | str, ...]


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> LayerRef:
    """Resolve a layer name (``name``, ``name:k``, ``name[0]``, ``name['key']``) or a module.

    Names are those of :func:`module_names`: a block (``layer4``) taps the block's own output, the
    same tensor as the captured layer it is an alias of; ``_orig_mod.`` parts are ignored.
    """
    modules = module_names(model)
    if isinstance(layer, nn.Module):
        layer = eager_model(layer)
        for name, module in modules.items():
            if module is layer:
                return LayerRef(display(name), module, 1, ())
        raise ValueError(
            f"the module {type(layer).__name__} passed as `layer` is not part of the model"
        )
    if not isinstance(layer, str):
        raise TypeError(f"`layer` must be a layer name or a module, got {type(layer).__name__}")
    parsed = parse_layer_name(layer)
    if parsed.module not in modules:
        raise ValueError(
            f"layer {layer!r} is not a module of the model (names come from model.named_modules(), "
            f"'name:2' is the 2nd call of a module, 'name[0]' a tensor in its output); "
            f"{hint(layer, [display(n) for n in modules])}"
        )
    name = str(parsed) if COMPILED_PART in layer else layer
    return LayerRef(name, modules[parsed.module], parsed.call, parsed.path)


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
    if isinstance(obj, (tuple, list)) and isinstance(key, int) and -len(obj) <= key < len(obj):
        items = list(obj)
        items[key] = _replace_at(items[key], rest, fn, name)
        if isinstance(obj, list):
            return items
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, Mapping) and key in obj:
        new: Any = copy.copy(obj)
        new[key] = _replace_at(obj[key], rest, fn, name)
        return new
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and hasattr(obj, str(key)):
        new = copy.copy(obj)
        object.__setattr__(new, str(key), _replace_at(getattr(obj, str(key)), rest, fn, name))
        return new
    raise KeyError(f"layer {name!r}: the output ({type(obj).__name__}) has no entry [{key!r}]")


class Tap:
    """Forward hook on one call of a module: swaps the chosen output tensor for `fn(tensor)`."""

    def __init__(self, ref: LayerRef, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.ref = ref
        self.fn = fn
        self.calls = 0

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        self.calls += 1
        if self.calls != self.ref.call:
            return None
        return _replace_at(output, self.ref.index, self.fn, self.ref.name)

    def check_called(self) -> None:
        if self.calls == 0:
            raise RuntimeError(
                f"layer {self.ref.name!r} did not run in this forward: name a module the model "
                "calls for these inputs (fmwidget.capture(model, x).report lists them)"
            )
        if self.calls < self.ref.call:
            raise RuntimeError(
                f"layer {self.ref.name!r} was called {self.calls} time(s) in the forward, so call "
                f"{self.ref.call} never happened"
            )


@contextmanager
def tapped(ref: LayerRef, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[Tap]:
    """Install a `Tap` for the duration of the block; the hook is removed even on error."""
    tap = Tap(ref, fn)
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
