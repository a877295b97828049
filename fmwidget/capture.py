"""Capture the activations of every layer of a PyTorch CNN with forward hooks.

One call runs the model once (on its own device, under ``torch.no_grad()`` unless ``grad=True``)
and returns a read-only mapping from layer name to activation tensor, in call order::

    cap = capture(model, images)       # every leaf module with an (N, C, H, W) output
    cap["layer1.0.bn1"].shape          # torch.Size([8, 64, 56, 56])
    print(cap.report)                  # what was captured, what was skipped and why

Every layer is returned as (N, C, H, W) with N the inputs' batch: channels-last (N, H, W, C)
outputs (a ``Linear`` or ``LayerNorm`` on a 4-D tensor, as in ConvNeXt and Swin) as a permuted
view, a vision transformer block's tokens as the maps of its patch tokens (``LayerInfo.layout``,
:mod:`fmwidget.layouts`).

Names are qualified module names from ``model.named_modules()``. A module called k times in one
forward (torchvision's ResNet blocks call their ``relu`` twice) gives k entries: ``name``,
``name:2``, … The root module, when captured, is named ``(model)``. Tensors inside
tuple/list/dict/dataclass outputs are named ``name[0]`` / ``name['key']``. A block (a module with
children) whose output is the very tensor a captured layer returned is an alias of that layer
(``cap["layer4"]``, ``LayerInfo.aliases``); one whose output is a new tensor (``x + y`` at its end)
is captured under its own name. A ``torch.compile``'d model is captured through its original
modules, run eagerly (no recompile), named without ``_orig_mod.``.

In-place safety: a stored activation never shows a later in-place change (``ReLU(inplace=True)``,
``out += identity``). Outputs are kept by reference and their ``_version`` recorded; a module with
``inplace=True`` about to overwrite a stored tensor runs out of place, the tensor taking the
result's memory (``Tensor.set_``), or, for a small or shared tensor, gets it copied first (forward
pre-hook). Eval-mode BatchNorm2d and elementwise activations of kept layers are not kept at all but
computed when read (:class:`Derived`), so a conv → BN → ReLU(inplace) block keeps one tensor. Every
version is checked after the forward; if other code changed a stored tensor (``out += identity``
inside a block's ``forward``), the forward runs once more, copying exactly those layers at hook
time. Those names are remembered per model, so later captures of the same model copy them at once
and run once. A :class:`CaptureBuffers` pool makes those copies land in memory reused across
captures, or (``copy_all=True``) copies every output at hook time.

``admit=`` sees every layer's value at hook time and says whether to keep it: what the widget's
memory budget uses to compute statistics as each layer is produced and keep only what fits, so a
capture's peak stays within the bare forward's own plus what is kept.

Flags are never switched and state is left as it was: the model runs exactly as it is. A model in
training mode runs once, copying everything, instead of ever running twice (a second run would draw
new dropout masks), and its buffers (BatchNorm running statistics) are restored afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import torch
from torch import nn
from torch.nn import functional as F

from fmwidget.calling import (
    eager_model,
    input_clip,
    module_names,
    rebuild,
    run_eagerly,
    split_inputs,
    state_kept,
    tensors_in,
    walk_modules,
)
from fmwidget.layouts import (
    NCHW,
    NHWC,
    Frame,
    Layout,
    as_map,
    attention_class,
    from_map,
    map_layout,
    reorders_class,
    reorders_dims,
    token_layout,
)
from fmwidget.names import (
    COMPILED_PART,
    ROOT_NAME,
    display,
    examples,
    hint,
    parse_layer_name,
    resolve_name,
)

__all__ = [
    "ROOT_NAME",
    "Capture",
    "CaptureBuffers",
    "CaptureError",
    "CaptureReport",
    "LayerInfo",
    "LayerSelector",
    "LayerTaps",
    "capture",
    "capture_layer",
    "layer_layout",
]

_NOTE_EXAMPLES = 5

#: ``admit(name, tensor, module, source) -> keep?``: see :func:`capture`.
Admit = Callable[[str, torch.Tensor, nn.Module, "str | None"], bool]

LayerSelector = (
    str | type[nn.Module] | Callable[[str, nn.Module], bool] | Iterable[str | type[nn.Module]]
)


class CaptureError(RuntimeError, ValueError):
    """The model could not be captured: a forward failed, or nothing had an (N, C, H, W) output.

    The message names the layer that failed and what it received. It is raised without a chain,
    so that a traceback starts with it; the model's own exception, with its traceback into the
    model's code, is ``original`` (``None`` when nothing failed).
    """

    original: BaseException | None = None


@dataclass(frozen=True)
class LayerInfo:
    """What one captured activation is: where it came from, its shape and what fed it.

    ``input_from`` names the captured layer whose output tensor was this module's first input
    (matched by tensor identity, or by being a view of it), else ``None``: it pairs a conv/norm
    with the activation that follows it.

    ``aliases`` are the blocks (container modules) whose output was this very tensor, checked by
    identity when the block returned (``layer4`` and ``layer4.1`` of a ResNet-18 for
    ``layer4.1.relu:2``): every name that takes a layer accepts them. A block whose output is
    some other tensor (it ends in ``x + y`` outside modules) is captured under its own name, kind
    ``block``.

    ``layout`` says what the module's own output was (``shape`` is always the (N, C, H, W) map
    the capture returns): ``nchw``; ``nhwc``, channels last, returned as ``permute(0, 3, 1, 2)``;
    or ``tokens``, a transformer block's (N, extra_tokens + H·W, C) output, returned as the map of
    its patch tokens, the ``extra_tokens`` class/register/distillation tokens left out; or, for
    video, ``ncthw`` (N, C, T, H, W) and ``nthwc`` (N, T, H, W, C), returned as the maps of one
    frame: ``frame`` of the layer's ``frames`` (T), the one covering the capture's input frame
    (see :mod:`fmwidget.layouts`). ``frames`` is 0 for image layers.
    """

    name: str
    module_name: str
    call: int
    type: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    input_from: str | None
    aliases: tuple[str, ...] = ()
    layout: str = "nchw"
    extra_tokens: int = 0
    frames: int = 0
    frame: int = 0

    def __post_init__(self) -> None:
        # A loaded capture (fmwidget.load) gives a JSON list.
        object.__setattr__(self, "aliases", tuple(self.aliases))


@dataclass
class CaptureReport:
    """What a capture took, what it left out (with the reason) and what it could not see."""

    captured: list[LayerInfo]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        header: tuple[str, ...] = ("name", "type", "kind", "shape", "dtype", "input from")
        rows: list[tuple[str, ...]] = [
            (i.name, i.type, i.kind, "×".join(map(str, i.shape)), i.dtype, i.input_from or "")
            for i in self.captured
        ]
        if any(i.layout != "nchw" for i in self.captured):
            header += ("layout",)
            rows = [(*r, _layout_text(i)) for r, i in zip(rows, self.captured, strict=True)]
        if any(i.aliases for i in self.captured):
            header += ("block aliases",)
            rows = [(*r, ", ".join(i.aliases)) for r, i in zip(rows, self.captured, strict=True)]
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
        lines = [f"captured {len(self.captured)} layers"]
        lines += [
            "  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} modules")
            lines += [f"  {line}" for line in _grouped(self.skipped)]
        if self.notes:
            lines.append("notes")
            lines += [f"  - {note}" for note in self.notes]
        return "\n".join(lines)


def _layout_text(info: LayerInfo) -> str:
    frame = f"frame {info.frame} (T={info.frames})" if info.frames else ""
    if info.layout == "tokens":
        tokens = f"tokens (+{info.extra_tokens})" if info.extra_tokens else "tokens"
        return f"{tokens}, {frame}" if frame else tokens
    if info.layout == "nthwc":
        return f"{frame}, channels-last"
    return frame or ("" if info.layout == "nchw" else info.layout)


class CaptureBuffers:
    """Memory reused across captures of the same model, for callers that re-run on new inputs.

    Copies a capture has to make (a stored output an ``inplace=True`` module is about to overwrite,
    a layer known to be changed later by ``out += identity``) go into buffers kept from the
    previous capture (same layer name, shape, dtype and device) instead of fresh memory; other
    outputs are kept by reference as without a pool. With ``copy_all=True`` every output is copied
    at hook time: mutation-proof by construction, never a second forward, and the forward can
    reuse all of its own memory — worth it where fresh allocations are dear (measure with
    ``benchmarks/capture_overhead.py``), at the price of holding every layer twice during the run.

    A new capture with the pool overwrites the buffers of the previous one, so that previous
    :class:`Capture` becomes invalid (reading it raises :class:`CaptureError`) and tensors taken
    from it earlier may change: keep one capture per pool. Not thread-safe.

    Example::

        pool = CaptureBuffers()
        cap = capture(model, batch1, buffers=pool)
        cap = capture(model, batch2, buffers=pool)  # same memory; the first cap is invalid
    """

    def __init__(self, copy_all: bool = False) -> None:
        self.copy_all = copy_all
        self._buffers: dict[str, torch.Tensor] = {}
        self._generation = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the pool's buffers."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def clear(self) -> None:
        """Free the buffers (the capture that used them becomes invalid)."""
        self._buffers.clear()
        self._generation += 1

    def __repr__(self) -> str:
        return f"CaptureBuffers({len(self._buffers)} buffers, {self.nbytes / 2**20:.1f} MiB)"

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` lives in one of the pool's buffers (the next capture overwrites it).

        Example::

            pool = CaptureBuffers(copy_all=True)
            cap = capture(model, x, buffers=pool)
            pool.holds(cap["conv1"]), pool.holds(cap["conv1"].clone())  # True, False
        """
        storage = tensor.untyped_storage().data_ptr()
        return any(b.untyped_storage().data_ptr() == storage for b in self._buffers.values())

    def _start(self) -> None:
        # Buffers are about to be overwritten, even if this capture fails half-way.
        self._generation += 1

    def _take(self, name: str, like: torch.Tensor) -> torch.Tensor:
        buf = self._buffers.get(name)
        if (
            buf is None
            or buf.shape != like.shape
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            buf = self._buffers[name] = torch.empty_like(like)
        return buf

    def _keep_only(self, names: set[str]) -> None:
        for name in [n for n in self._buffers if n not in names]:
            del self._buffers[name]


#: Activations whose output is a function of their input alone, value by value, with nothing
#: random and no parameters: torch's own, and timm's (``timm.layers.activations``, same names).
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.Mish,
    nn.Softplus,
)
_TIMM_ELEMENTWISE = frozenset(
    {"Swish", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Mish", "HardMish", "GELU"}
)


#: Of those, the ones made of comparisons and one multiply: the same bits for every value
#: whichever kernel path computes it (vectorized or not, any slice). The others (exp, erf, ...)
#: give the same bits for the same tensor layout, which the first read of a layer uses.
_EXACT = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU)

# What _Selection.fast says of a module whose output may be kept as Derived.
_NORM, _ACTIVATION = 1, 2
_STRIDED = torch.strided


def elementwise_activation(module: nn.Module) -> bool:
    """Whether ``module`` is one of the known value-by-value activations (its exact class: a
    subclass may compute something else)."""
    cls = type(module)
    found = _ELEMENTWISE_BY_TYPE.get(cls)
    if found is None:
        found = _ELEMENTWISE_BY_TYPE[cls] = cls in _ELEMENTWISE or (
            cls.__module__ == "timm.layers.activations" and cls.__name__ in _TIMM_ELEMENTWISE
        )
    return found


_ELEMENTWISE_BY_TYPE: dict[type, bool] = {}


def frozen_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a ``BatchNorm2d`` (the class itself) that normalizes with its
    running statistics: in eval mode, a fixed per-channel affine map of its input."""
    if type(module) is not nn.BatchNorm2d or module.training:
        return False
    buffers = module._buffers
    return buffers.get("running_mean") is not None and buffers.get("running_var") is not None


def _norm_tensors(module: nn.Module) -> tuple[torch.Tensor | None, ...]:
    """Running mean, running var, weight, bias (read past nn.Module.__getattr__)."""
    buffers, params = module._buffers, module._parameters
    return (
        buffers.get("running_mean"),
        buffers.get("running_var"),
        params.get("weight"),
        params.get("bias"),
    )


@dataclass(slots=True, eq=False)
class Derived:
    """A layer kept as how to compute it: ``module`` applied to the maps of captured layer
    ``source``, its input, read in ``layout``: an elementwise activation, or an eval-mode
    ``BatchNorm2d`` (its statistics, weight and bias copied at the capture, in ``norm``, so that
    later training does not change what it gives). The same function on the same values gives
    the same values; it costs one pass when read, and no memory until then.

    ``source`` may itself be derived: the activation after a derived norm is computed from the
    norm, computed from the conv (:func:`derive`), and a leaf that returns a derived layer's output
    as it is (``Dropout``, ``StochasticDepth`` in eval mode) shares its ``Derived``. A
    conv → norm → ReLU(inplace=True) block keeps only the conv's tensor; the model's ReLU runs in
    place on the norm's output and frees it as in the bare forward, with nothing to copy.

    ``exact``: a clamp-like activation, exact on any slice (one sample of it); the others are
    computed on the source's whole tensor in the memory order the model's forward had, where the
    kernel takes the same path value for value."""

    module: nn.Module
    source: str
    layout: Layout = NCHW
    # A norm's running mean, running var, weight and bias as at the capture: a copy of them all
    # (one tensor per device and dtype) and where each one is in it (None: no such tensor).
    norm: tuple[tuple[torch.Tensor, int, int] | None, ...] | None = None

    @staticmethod
    def frozen(derived: dict[str, Derived]) -> dict[str, Derived]:
        """``derived`` with each norm's statistics, weight and bias copied as they are now, in
        one copy for all of them (per device and dtype): set on the run's own Derived objects,
        so that layers sharing one (a Dropout after a norm) still do."""
        # Derived norms are eval-mode BatchNorm2d by construction; a layer that is another's
        # output as it is (Dropout, StochasticDepth) shares its Derived.
        unique = {id(d): d for d in derived.values()}
        norms = [d for d in unique.values() if d.norm is None and frozen_norm(d.module)]
        if not norms:
            return derived
        parts = [_norm_tensors(d.module) for d in norms]
        groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for four in parts:
            for t in four:
                if t is not None:
                    groups.setdefault((t.device, t.dtype), []).append(t)
        at: dict[int, tuple[torch.Tensor, int, int]] = {}
        with torch.no_grad():
            for group in groups.values():
                flat = torch.cat(group)  # 1-D (C,) each
                start = 0
                for t in group:
                    size = t.shape[0]
                    at[id(t)] = (flat, start, size)
                    start += size
        for d, four in zip(norms, parts, strict=True):
            d.norm = tuple(None if t is None else at[id(t)] for t in four)
        return derived

    @property
    def exact(self) -> bool:
        return type(self.module) in _EXACT

    def apply(self, maps: torch.Tensor) -> torch.Tensor:
        """The layer's maps from its source's (a new tensor; ``maps`` is not changed): (N, C, H, W),
        or one sample's (C, H, W)."""
        if maps.dim() == 3:
            return self.apply(maps[None])[0]
        if self.layout.kind != "nhwc":
            return self._forward(maps)
        # The (N, H, W, C) tensor the module had, with its strides: the kernel takes its path.
        return as_map(self._forward(maps.permute(0, 2, 3, 1)), self.layout)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            mean, var, weight, bias = (
                None if at is None else at[0].narrow(0, at[1], at[2]) for at in self.norm
            )
            eps = cast(float, cast(Any, self.module).eps)
            with torch.no_grad():
                # What nn.BatchNorm2d.forward calls in eval mode, with the statistics of then.
                return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        module: Any = self.module
        with torch.no_grad():
            if module.__dict__.get("inplace") is not True:
                if getattr(module, "inplace", False) is True:
                    x = x.clone()  # an in-place flag not of the instance's own: not to be flipped
                return cast(torch.Tensor, module.forward(x))
            module.__dict__["inplace"] = False
            try:
                return cast(torch.Tensor, module.forward(x))
            finally:
                module.__dict__["inplace"] = True


def derive(
    derived: Mapping[str, Derived],
    name: str,
    have: Mapping[str, torch.Tensor],
    read: Callable[[str], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Derived layer ``name`` computed from the nearest layer of its chain in ``have`` (else from
    the chain's stored layer, read with ``read``), without keeping the layers in between: a
    ReLU6 of a BatchNorm of a conv is two passes over the conv's maps."""
    steps: list[Derived] = []
    while name in derived and name not in have:
        steps.append(derived[name])
        name = derived[name].source
    maps = have[name] if name in have or read is None else read(name)
    for step in reversed(steps):
        maps = step.apply(maps)
    return maps


def derived_exactly(derived: Mapping[str, Derived], name: str) -> bool:
    """Whether every step of ``name``'s chain is exact on one sample (clamps all the way)."""
    while name in derived:
        if not derived[name].exact:
            return False
        name = derived[name].source
    return True


class Capture(Mapping[str, torch.Tensor]):
    """Activations of one forward pass, by layer name, in call order (a read-only mapping).

    ``report`` says what was captured and skipped, ``output`` is the model's output (detached
    unless the capture ran with ``grad=True``), ``info(name)`` describes one layer. A block name
    (``cap["layer4"]``) reads the layer it is an alias of (``LayerInfo.aliases``); iteration
    gives each layer once, under its own name. The layers of ``derived`` (an eval-mode
    BatchNorm2d or an elementwise activation of a kept layer) are computed from it when first
    read, bit for bit what the forward gave.

    Example::

        cap = capture(model, x)
        for name, act in cap.items():
            print(name, cap.info(name).kind, tuple(act.shape))
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        report: CaptureReport,
        output: Any,
        pool: CaptureBuffers | None = None,
        derived: Mapping[str, Derived] | None = None,
    ) -> None:
        self._tensors = tensors
        #: Activations computed from the layer they were applied to when first read (Derived).
        self.derived: dict[str, Derived] = dict(derived or {})
        self._infos = {i.name: i for i in report.captured}
        self._order = [n for n in self._infos if n in tensors or n in self.derived]
        #: Block name -> the captured layer whose output tensor the block returned.
        self.aliases: dict[str, str] = {a: i.name for i in report.captured for a in i.aliases}
        #: Layers seen and described (in ``report.captured``) but let go at hook time by
        #: ``admit=``: they are not in the mapping.
        self.dropped: tuple[str, ...] = tuple(
            n for n in self._infos if n not in tensors and n not in self.derived
        )
        self.report = report
        self.output = output
        self._pool = pool
        self._generation = pool._generation if pool is not None else 0
        #: Pictures of the inputs (one (H, W, 3) uint8 array per sample) when saved with them.
        self.images: list[Any] | None = None
        #: Class names of the output's classes, when saved with them.
        self.labels: list[str] | None = None
        self._model: weakref.ref[nn.Module] | None = None

    def save(self, path: str | os.PathLike[str], *, images: Any = None, labels: Any = None) -> None:
        """Write this capture to one safetensors file (no code runs when it is loaded).

        The layers (in their dtype), the report, the model's output when it is a tensor, and
        optionally ``images`` (the pictures the view shows, as for the widget's ``image=``) and
        ``labels`` (class names). The model that made the capture is fingerprinted, so that
        ``fmwidget.load(path, model=other)`` is refused. A teacher can ship the file and show it
        without the model: ``FeatureMapWidget.from_activations(fmwidget.load(path))``.
        """
        from fmwidget.files import save_capture

        model = None if self._model is None else self._model()
        images = self.images if images is None else images
        labels = self.labels if labels is None else list(labels)
        save_capture(self, path, model=model, images=images, labels=labels)

    def __getitem__(self, name: str) -> torch.Tensor:
        if self._pool is not None and self._pool._generation != self._generation:
            raise CaptureError(
                "this capture's buffers were reused by a later capture with the same "
                "CaptureBuffers; read the newer capture, or capture without buffers= to keep both"
            )
        tensor = self._tensors.get(name)
        if tensor is not None:
            return tensor
        layer = self.resolve(name)
        if layer in self.derived and layer not in self._tensors:
            self._tensors[layer] = derive(self.derived, layer, self._tensors)
        if layer not in self._tensors:
            raise KeyError(
                f"layer {layer!r} was captured but not kept: admit= let it go at hook time"
            )
        return self._tensors[layer]

    def resolve(self, name: str) -> str:
        """The captured layer ``name`` refers to: itself, or the layer a block name is an alias
        of (``_orig_mod.`` parts ignored); :class:`UnknownLayerError` lists close names."""
        return resolve_name(name, self._infos, self.aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def info(self, name: str) -> LayerInfo:
        """Describe one captured layer (module, call index, kind, shape, dtype, what fed it)."""
        return self._infos[self.resolve(name)]

    def __repr__(self) -> str:
        infos = self.report.captured
        if not infos:
            return "Capture(0 layers)"
        ends = [f"{i.name!r} {tuple(i.shape)}" for i in (infos[0], infos[-1])]
        span = ends[0] if len(infos) == 1 else f"{ends[0]} … {ends[1]}"
        return f"Capture({len(infos)} layers: {span}; {len(self.report.skipped)} skipped)"


def capture(
    model: nn.Module,
    inputs: Any,
    layers: LayerSelector | None = None,
    *,
    grad: bool = False,
    buffers: CaptureBuffers | None = None,
    admit: Admit | None = None,
    frame: int = 0,
) -> Capture:
    """Run ``model`` once on ``inputs`` and capture the (N, C, H, W) activations of its layers.

    Args:
        model: any ``nn.Module``; it is left as it was: no hook stays, no flag is switched, and
            in training mode its buffers (BatchNorm running statistics) are restored after the
            forward.
        inputs: a tensor, a tuple/list of positional arguments, or a dict of keyword arguments.
        layers: ``None`` for every leaf module with a 4-D floating output (and every block
            whose output is a new 4-D tensor; the others become aliases), and every transformer
            block's tokens, but not modules inside attention layers nor outputs whose first
            dimension is not the inputs' batch (each left out with a note); or layer names (a
            plain name selects every call of a module, ``name:k`` only the k-th, ``name[0]`` one
            element of a tuple output; a block such as ``layer1`` is captured under its own
            name), module types
            (``nn.Conv2d``), a mix of both, or a predicate ``(name, module) -> bool``.
        grad: run with autograd on and return activations that are part of the graph (each one
            differentiable even when the parameters are frozen), for gradients via tensor hooks.
        buffers: a :class:`CaptureBuffers` pool to copy into, reused across captures (not with
            ``grad``).
        admit: called as ``admit(name, tensor, module, source)`` the moment each layer is
            produced (before any later in-place op); ``source`` is the captured layer whose
            output tensor itself, unchanged, was the module's input (``LayerInfo.input_from``;
            ``None`` where the input was a view of it, which ``input_from`` names). A false result
            lets the layer go: it is described in the report and listed in ``Capture.dropped``
            but not kept, so it costs no memory and no copy. A layer the capture keeps as how to
            compute it (``Capture.derived``: an eval-mode BatchNorm2d or an elementwise
            activation of a kept layer, computed when read) goes to ``admit.take_derived`` when
            the admit has one (``LayerIntake``: statistics, no bytes), else to ``admit``.
            When the forward has to run twice (see the module docstring), it is called again for
            every layer of the second run. Not with ``grad``.
        frame: for video models (an (N, C, T, H, W) clip in, 5-D outputs): the input frame
            whose maps to return. Each video layer's (N, C, H, W) maps are its frame covering
            that input frame (``LayerInfo.frame`` of ``LayerInfo.frames``; a layer with a
            temporal stride has fewer), copied as the layer is produced, so the peak holds one
            frame per layer, not the clip.

    Raises:
        ValueError: ``layers`` matches nothing (the message lists close names).
        CaptureError: the forward failed (the message names the layer and what it received), or
            no selected module had an (N, C, H, W) output.

    Example::

        cap = capture(torchvision.models.resnet18().eval(), torch.rand(1, 3, 64, 64))
        cap["bn1"].min() < 0                      # True: the in-place ReLU left bn1 alone
        capture(model, x, layers=[nn.Conv2d])     # only convolutions
    """
    if grad and buffers is not None:
        raise ValueError(
            "buffers= cannot be combined with grad=True: pooled copies are not part of the "
            "autograd graph; capture the layers you need gradients for without buffers="
        )
    if grad and admit is not None:
        raise ValueError(
            "admit= cannot be combined with grad=True: every layer is kept for autograd"
        )
    args, kwargs = split_inputs(inputs)
    video = video_frame(args, kwargs, frame)
    user_model = model
    model = eager_model(model)
    selection = _Selection.build(model, layers)
    compiled = model is not user_model or selection.compiled
    training = selection.training
    if buffers is not None:
        buffers._start()
    known = _KNOWN_MUTATED.get(model, frozenset())
    notes: list[str] = [_COMPILED_NOTE] if compiled else []
    copy_all = training or (buffers is not None and buffers.copy_all)
    batch = _batch_size(args, kwargs)
    run: _Run | None = None
    try:
        # state_kept walks the model again; the selection already knows whether it must.
        with state_kept(model) if training else contextlib.nullcontext():
            run = _run(
                model, args, kwargs, selection, grad, copy_all, known, buffers, admit, batch, video
            )
            if not run.described and run.off_batch and not training:
                # No layer's first dimension is the inputs' (a sequence-first model): read the
                # first dimension as the batch, as before. (Training mode never runs twice.)
                run.release()
                batch = None
                run = _run(
                    model,
                    args,
                    kwargs,
                    selection,
                    grad,
                    copy_all,
                    known,
                    buffers,
                    admit,
                    batch,
                    video,
                )
            mutated = frozenset() if copy_all else run.mutated()
            if mutated:
                _KNOWN_MUTATED[model] = known | mutated
                # Otherwise the first run's outputs stay alive through the second one.
                run.release()
                run = _run(
                    model,
                    args,
                    kwargs,
                    selection,
                    grad,
                    False,
                    known | mutated,
                    buffers,
                    admit,
                    batch,
                    video,
                )
                notes.append(
                    f"the forward ran twice: {examples(sorted(mutated))} changed in place after "
                    "their module returned (e.g. `out += identity`), so the second run copied "
                    "them at hook time; later captures of this model copy them at once"
                )
                if run.mutated():
                    # Control flow changed between runs: copying everything cannot be wrong.
                    run.release()
                    run = _run(
                        model,
                        args,
                        kwargs,
                        selection,
                        grad,
                        True,
                        frozenset(),
                        buffers,
                        admit,
                        batch,
                        video,
                    )
        if buffers is not None:
            buffers._keep_only(run.own_buffers)
        captured = run.finish(selection, notes, buffers)
        captured._model = weakref.ref(user_model)
        return captured
    except BaseException:
        # The traceback keeps this frame (IPython keeps the last one): let go of the tensors.
        if run is not None:
            run.release()
        raise


_COMPILED_NOTE = (
    "the model is torch.compile'd: it was captured by running its original modules eagerly "
    "(hooks do not run inside compiled graphs), without recompiling it; layer names leave out "
    "'_orig_mod.'"
)

# Layers of a model that some code outside modules changed in place after their hook saw them.
_KNOWN_MUTATED: weakref.WeakKeyDictionary[nn.Module, frozenset[str]] = weakref.WeakKeyDictionary()

_KIND_BY_TYPE: dict[type, str] = {}
_KIND_BASES: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("conv", (nn.modules.conv._ConvNd,)),
    (
        "norm",
        (
            nn.modules.batchnorm._NormBase,
            nn.GroupNorm,
            nn.LayerNorm,
            nn.LocalResponseNorm,
            nn.RMSNorm,
        ),
    ),
    (
        "act",
        tuple(
            c
            for c in vars(nn.modules.activation).values()
            if isinstance(c, type)
            and issubclass(c, nn.Module)
            and c.__module__ == nn.modules.activation.__name__
            and c is not nn.MultiheadAttention
        ),
    ),
    (
        "pool",
        (
            nn.modules.pooling._MaxPoolNd,
            nn.modules.pooling._AvgPoolNd,
            nn.modules.pooling._AdaptiveAvgPoolNd,
            nn.modules.pooling._AdaptiveMaxPoolNd,
            nn.modules.pooling._LPPoolNd,
        ),
    ),
    ("linear", (nn.Linear, nn.Bilinear, nn.LazyLinear)),
)


# An activation by its class name (or a base's), lower case without underscores: timm's own GELU,
# Sigmoid, HardSwishMe, QuickGELU, StarReLU, and other libraries' classes like them.
_ACT_NAME = re.compile(
    r"^(?:hard|quick|leaky|star|squared|scaled|fast|approx)?"
    r"(?:relu6?|gelu|silu|swish|mish|sigmoid|tanh|elu|selu|celu|softplus|softsign|glu)"
    r"(?:tanh|squared|me|jit|fn|act)?$"
)
# Activation functions a parameter-free module's forward may call (F.gelu, x.sigmoid(), ...).
_ACT_FUNCTIONS = frozenset(
    {
        "relu", "relu_", "relu6", "gelu", "silu", "silu_", "mish", "mish_", "sigmoid", "sigmoid_",
        "tanh", "tanh_", "hardswish", "hardsigmoid", "hardtanh", "hard_swish", "hard_sigmoid",
        "hard_mish", "swish", "quick_gelu", "elu", "elu_", "selu", "celu", "softplus",
        "leaky_relu", "leaky_relu_", "logsigmoid", "softsign", "glu",
    }
)  # fmt: skip


def _kind(module: nn.Module) -> str:
    """``conv``, ``norm``, ``act``, ``pool``, ``linear``, ``block`` (has children) or ``other``.

    conv/norm/pool/linear and torch's own activations (``torch.nn.modules.activation``) by their
    torch base classes. Any other leaf module is an activation when what it is says so: its class
    name or a base class's names one (``_ACT_NAME``: timm's ``GELU``, ``Sigmoid``, ``Swish``,
    ``HardSwishMe``, ``QuickGELU``, ``StarReLU``), or it has no parameters and its ``forward``
    calls an activation function (``F.gelu(x)``, ``x.sigmoid()``): a wrapper around one.
    """
    cls = type(module)
    kind = _KIND_BY_TYPE.get(cls)
    if kind is None:
        kind = next((k for k, bases in _KIND_BASES if issubclass(cls, bases)), None)
        if kind is None:
            if next(module.children(), None) is not None:
                kind = "block"
            else:
                kind = "act" if _is_activation(module) else "other"
        _KIND_BY_TYPE[cls] = kind
    return kind


def _is_activation(module: nn.Module) -> bool:
    classes = [c for c in type(module).__mro__ if issubclass(c, nn.Module) and c is not nn.Module]
    if any(_ACT_NAME.match(c.__name__.lower().replace("_", "")) for c in classes):
        return True
    if next(module.parameters(), None) is not None:
        return False
    code = getattr(type(module).forward, "__code__", None)
    return code is not None and not _ACT_FUNCTIONS.isdisjoint(code.co_names)


class _ClassFacts(NamedTuple):
    """What a module's class alone says, for :meth:`_Selection.build` (a model has a few classes
    and many modules)."""

    inplace: Any  # the class's ``inplace`` attribute (an instance's own overrides it)
    dims: Any  # the class's ``dims`` attribute (a Permute's permutation; the instance's wins)
    reorders: bool  # fmwidget.layouts.reorders_class
    attention: bool
    scripted: bool


_CLASS_FACTS: dict[type, _ClassFacts] = {}


def _class_facts(cls: type) -> _ClassFacts:
    facts = _CLASS_FACTS[cls] = _ClassFacts(
        getattr(cls, "inplace", False),
        getattr(cls, "dims", None),
        reorders_class(cls),
        attention_class(cls),
        issubclass(cls, torch.jit.ScriptModule),
    )
    return facts


@dataclass
class _Selection:
    """Which modules get hooks, and which of their outputs are kept."""

    names: dict[nn.Module, str]  # hooked module -> qualified name
    blocks: dict[nn.Module, str]  # containers hooked for aliases (every leaf is hooked)
    exact: dict[str, set[str]]  # module name -> only these capture names (absent: every output)
    inplace: list[nn.Module]  # modules that overwrite their input
    all_leaves: bool  # every leaf is hooked, so "consumed by no module" is knowable
    training: bool  # some module is in training mode (from the same walk of the model)
    # layers=None: what is not a feature map of the input (attention internals, a first
    # dimension other than the batch) is left out; named layers are kept as they are.
    default: bool = False
    attention: frozenset[str] = frozenset()  # attention modules (class name says so)
    attention_inner: frozenset[str] = frozenset()  # modules inside one: q/k/v, weights
    # Modules not selected, hooked only to know the layouts named layers are read in (what a
    # channels-last input makes of a GELU; a patch embedding's grid): named layers read as in
    # the default capture.
    trackers: dict[nn.Module, str] = field(default_factory=dict)
    # Modules without children (the others are blocks).
    leaves: frozenset[nn.Module] = frozenset()
    # No layer of the model can be other than (N, C, H, W) as it is, but by a Linear on a 4-D
    # tensor (fmwidget.layouts.may_reorder): hooks skip the layout bookkeeping until one does.
    plain: bool = False
    # Some module is torch.compile'd (wrapped or in place): the forward runs it eagerly.
    compiled: bool = False
    # Selected leaves whose every output is kept under its own name (no Linear, no name[i]
    # selection, not inside attention): what _Run.on_output's fast path may take, each with
    # whether its output may be kept as Derived (_NORM: an eval-mode BatchNorm2d, _ACTIVATION:
    # an elementwise activation, 0: neither).
    fast: dict[nn.Module, int] = field(default_factory=dict)

    @classmethod
    def build(cls, model: nn.Module, layers: LayerSelector | None) -> _Selection:
        named, compiled = walk_modules(model)
        by_module = {m: n for n, m in named.items()}
        # One pass for what the selection needs of every module (each attribute read from the
        # instance or its class: nn.Module.__getattr__ makes a miss slow; what only the class
        # says is cached per class).
        leaves, inplace, attention_list, scripted = [], [], [], set()
        training = reorder = False
        facts_of = _CLASS_FACTS
        for m, n in by_module.items():
            facts = facts_of.get(type(m)) or _class_facts(type(m))
            own = m.__dict__
            children = m._modules
            if not children or all(child is None for child in children.values()):
                leaves.append(m)
            if own.get("inplace", facts.inplace) is True:
                inplace.append(m)
            training = training or m.training
            if not reorder:
                dims = own.get("dims", facts.dims)
                reorder = facts.reorders or (dims is not None and reorders_dims(dims))
            if facts.attention and n:
                attention_list.append(n)
            if facts.scripted:
                scripted.add(m)
        exact: dict[str, set[str]] = {}
        if layers is None:
            chosen = leaves
        elif isinstance(layers, type) or not callable(layers):
            items = [layers] if isinstance(layers, (str, type)) else list(layers)
            if not items:
                raise ValueError(
                    "layers= is empty: name at least one layer (a name or a module type), or pass "
                    "layers=None for every layer"
                )
            chosen = []
            whole: set[nn.Module] = set()
            for item in items:
                found, name = cls._match(item, named)
                chosen += found
                if name is None:
                    whole.update(found)
                else:
                    exact.setdefault(by_module[found[0]], set()).add(name)
            for module in whole:
                exact.pop(by_module[module], None)
        else:
            chosen = [m for n, m in named.items() if layers(n, m)]
            if not chosen:
                raise ValueError(
                    "the layers= predicate matched no module; module names look like: "
                    f"{examples([display(n) for n in named])}"
                )
        names = {m: by_module[m] for m in dict.fromkeys(chosen)}
        blocks = {}
        if layers is None:
            # A scripted container runs its children as TorchScript, where no hook fires.
            blocks = {m: n for m, n in by_module.items() if m not in names and m not in scripted}
        attention = frozenset(attention_list)
        prefixes = tuple(a + "." for a in attention)
        inner = frozenset(n for n in named if n.startswith(prefixes)) if prefixes else frozenset()
        fast = {
            m: _NORM if frozen_norm(m) else _ACTIVATION if elementwise_activation(m) else 0
            for m in leaves
            if m in names
            and names[m] not in exact
            and not isinstance(m, nn.Linear)
            and not (layers is None and names[m] in inner)
        }
        return cls(
            names,
            blocks,
            exact,
            inplace,
            all(m in names for m in leaves),
            training,
            leaves=frozenset(leaves),
            plain=not reorder,
            compiled=compiled,
            fast=fast,
            default=layers is None,
            attention=attention,
            attention_inner=inner,
            trackers={}
            if layers is None
            else {m: n for m, n in by_module.items() if n and m not in names and m not in scripted},
        )

    @staticmethod
    def _match(
        item: str | type[nn.Module], named: dict[str, nn.Module]
    ) -> tuple[list[nn.Module], str | None]:
        """The modules ``item`` selects, and the one capture name it asks for (None: all)."""
        if isinstance(item, type):
            found = [m for m in named.values() if isinstance(m, item)]
            if not found:
                present = sorted({type(m).__name__ for m in named.values()})
                raise ValueError(
                    f"no module of type {item.__name__} in the model; types present: "
                    f"{', '.join(present)}"
                )
            return found, None
        if not isinstance(item, str):
            raise TypeError(
                "layers= takes names, module types or a predicate (name, module) -> bool; got "
                f"{type(item).__name__}"
            )
        if COMPILED_PART in item:
            item = str(parse_layer_name(item))
        if item in named or item == ROOT_NAME:
            return [named["" if item == ROOT_NAME else item]], None
        parsed = parse_layer_name(item)
        if parsed.module in named and (parsed.call != 1 or parsed.path):
            return [named[parsed.module]], item
        candidates = [display(n) for n in named]
        raise ValueError(f"no layer named {item!r} in the model; {hint(item, candidates)}")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        where = "" if value.device.type == "cpu" else f" on {value.device}"
        return f"{_dtype_name(value.dtype)} {tuple(value.shape)}{where}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


def _dtype_name(dtype: torch.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


_DTYPE_NAMES: dict[torch.dtype, str] = {}


def _skip_reason(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.dim() != 4:
            return f"output is {value.dim()}-D {tuple(value.shape)}, not (N, C, H, W)"
        if value.layout != torch.strided:
            return f"output is a {value.layout} tensor, not a dense one"
        return f"output is {_dtype_name(value.dtype)}, not floating point"
    return f"output {_describe(value)} holds no 4-D floating tensor"


def _grouped(skipped: Iterable[tuple[str, str]]) -> list[str]:
    """One line per kind of reason (shapes aside), with the first module's own and a count: a
    video network's 400 modules with 5-D outputs are one line, not 400."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for name, reason in skipped:
        groups.setdefault(_SHAPES.sub("(…)", reason), []).append((display(name), reason))
    lines = []
    for members in groups.values():
        (first, reason), others = members[0], [n for n, _ in members[1:]]
        more = f"; {len(others)} more like it: {examples(others)}" if others else ""
        lines.append(f"{first}: {reason}{more}")
    return lines


# A parenthesised shape or description, one level of nesting deep.
_SHAPES = re.compile(r"\((?:[^()]|\([^()]*\))*\)")


_ATTENTION_REASON = (
    "inside an attention module: q/k/v and attention weights are not feature maps; name it in "
    "layers= to capture it"
)


def video_frame(args: tuple[Any, ...], kwargs: dict[str, Any], frame: int) -> Frame:
    """Input frame ``frame`` of the inputs' clip (the first 5-D tensor's T), checked."""
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise ValueError(f"frame must be an input frame index (an int >= 0), got {frame!r}")
    clip = input_clip((args, kwargs))
    if clip is not None and frame >= clip:
        raise ValueError(
            f"frame {frame} is out of range: the clip has {clip} frames (0-{clip - 1})"
        )
    return Frame(frame, clip)


def _batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """The batch of the inputs: the first tensor's first dimension, or the length of a list of
    3-D images (torchvision's detection models)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.shape[0] if value.dim() else None
        if (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, torch.Tensor) and v.dim() == 3 for v in value)
        ):
            return len(value)
    return None


@dataclass(slots=True)
class _Seen:
    """A tensor object seen as some captured output: for input pairing, aliases and protection."""

    ref: weakref.ref[torch.Tensor]
    names: list[str]
    version: int


class _Run:
    """State of one forward pass: hooks write here, ``finish`` turns it into a :class:`Capture`."""

    def __init__(
        self,
        selection: _Selection,
        grad: bool,
        copy_all: bool,
        copy_names: frozenset[str],
        pool: CaptureBuffers | None,
        admit: Admit | None = None,
        batch: int | None = None,
        frame: Frame | None = None,
    ) -> None:
        self.exact = selection.exact
        self.hooked = selection.names
        self.fast = selection.fast if type(self) is _Run and not (grad or copy_all) else {}
        self.leaves = selection.leaves
        # Every layer so far is (N, C, H, W) as it is, and nothing can make one otherwise but a
        # Linear: layouts need no bookkeeping (see _Selection.plain).
        self.plain = selection.plain
        self.default = selection.default
        self.attention = selection.attention
        self.attention_inner = selection.attention_inner
        # Outputs whose first dimension is not this are left out (default selection only).
        self.batch = batch
        # The input frame video layers show (fmwidget.layouts.Frame).
        self.frame = frame or Frame()
        self.grad = grad
        self.copy_all = copy_all
        self.copy_names = copy_names
        self.pool = pool
        self.admit = admit
        self.stored: dict[str, torch.Tensor] = {}
        # Every layer seen, kept or let go by admit, in call order: its map shape and dtype,
        # and where it came from (module name, call, module, input_from); :meth:`info` reads it.
        self.described: dict[
            str, tuple[tuple[int, ...], torch.dtype, str, int, nn.Module, str | None]
        ] = {}
        self.versions: dict[str, int] = {}
        self.seen: dict[int, _Seen] = {}
        self.calls: dict[str, int] = {}
        self.consumed: set[str] = set()
        self.pending_source: dict[nn.Module, tuple[str | None, bool]] = {}
        # Whether the module call being taken had the source's output tensor itself as its
        # input (pairing), not a view of it.
        self.direct = False
        self.pending_layout: dict[nn.Module, Layout] = {}
        # Activations kept as how to compute them from the stored layer they ran on.
        self.derived: dict[str, Derived] = {}
        # In-place modules running out of place on a stored tensor: module -> (it, its version).
        self.swapping: dict[nn.Module, tuple[torch.Tensor, int]] = {}
        self.skipped: dict[str, str] = {}
        # Block output name -> the captured layer whose output tensor it was.
        self.aliases: dict[str, str] = {}
        self.own_buffers: set[str] = set()
        self.output: Any = None
        # What each described layer's stored tensor is (fmwidget.layouts) where it is not NCHW,
        # which most are (read with .get(name, NCHW)); with grad, the map a layer's onward
        # tensor was computed from, so that gradients with respect to it flow.
        self.layouts: dict[str, Layout] = {}
        self.views: dict[str, torch.Tensor] = {}
        # Channel count -> (h, w) of the latest convolution output: a patch embedding's grid.
        self.grids: dict[int, tuple[int, int]] = {}
        # Token count T·h·w -> (T, h, w) of the latest 5-D output: a video transformer's grid.
        self.clip_grids: dict[int, tuple[int, int, int]] = {}
        # 3-D outputs of leaf modules: a block returning one is no token block of its own.
        self.leaf_outputs: dict[int, weakref.ref[torch.Tensor]] = {}
        # Layers left out because their first dimension is not the batch: name -> map shape;
        # their tensors, so that a block returning one is not one more of them.
        self.off_batch: dict[str, tuple[int, ...]] = {}
        self.left_out: dict[int, weakref.ref[torch.Tensor]] = {}
        # Outputs of unselected modules (named selections): id -> (tensor, layout, version).
        self.tracked: dict[int, tuple[weakref.ref[torch.Tensor], Layout, int]] = {}
        # (H, W, C) of channels-last layers, never the (C, H, W) of another layer.
        self.nhwc_shapes: set[tuple[int, ...]] = set()
        self.nchw_shapes: set[tuple[int, ...]] = set()

    def source(self, x: Any) -> str | None:
        """The captured layer whose output ``x`` still is (or is a view of), unchanged since."""
        return self.pairing(x)[0]

    def pairing(self, x: Any) -> tuple[str | None, bool]:
        """:meth:`source`, and whether ``x`` is that layer's output tensor itself (False: a view
        of it, whose values may be other than the layer's: a transpose, a slice)."""
        if not isinstance(x, torch.Tensor):
            return None, False
        entry = self.seen.get(id(x))
        direct = entry is not None and entry.ref() is x and entry.version == x._version
        if not direct:
            base = x._base  # read only when needed: a property, not a field
            if base is None:
                return None, False
            entry = self.seen.get(id(base))
            if entry is None or entry.ref() is not base or entry.version != base._version:
                return None, False
        name = cast(_Seen, entry).names[-1]
        self.consumed.add(name)
        return name, direct

    def before_inplace(self, module: nn.Module, x: Any) -> None:
        """Pair an ``inplace=True`` module with its input before it overwrites it, and (when
        keeping references) clone the stored tensors it is about to overwrite."""
        if module in self.hooked:
            self.pending_source[module] = self.pairing(x)
        # In a plain model every layer is (N, C, H, W): layout_of needs no pending layout.
        fed = self.layout_fed(x) if not self.plain and isinstance(x, torch.Tensor) else None
        if fed is not None:
            # Its output is its input, changed: the same layout, known only before the change.
            self.pending_layout[module] = fed
        else:
            self.pending_layout.pop(module, None)
        if not (self.copy_all or self.grad):
            self.protect(x, module)

    def on_output(
        self, module: nn.Module, module_name: str, args: tuple[Any, ...], output: Any
    ) -> Any:
        calls = self.calls
        call = calls[module_name] = calls.get(module_name, 0) + 1
        base = (module_name or ROOT_NAME) if call == 1 else f"{module_name or ROOT_NAME}:{call}"
        if self.swapping and module in self.swapping:
            output = self.swap_back(module, output)
        # Whether the input is the source's output tensor itself: only then may the layer be
        # computed from the source's maps (Derived), or its extremes from the source's.
        self.direct = False
        if self.pending_source and module in self.pending_source:
            src, self.direct = self.pending_source.pop(module)
        elif not args:
            src = None
        else:
            # source(), with its common case first: the input is a layer's output itself.
            first = args[0]
            entry = self.seen.get(id(first))
            same = entry.ref() if entry is not None else None
            if entry is not None and same is first and entry.version == same._version:
                src = entry.names[-1]
                self.consumed.add(src)
                self.direct = True
            else:
                src = self.source(first)
        if self.plain and type(output) is torch.Tensor:
            kind = self.fast.get(module)
            if kind is not None and self.keep_plain(
                base, output, module, module_name, call, src, kind
            ):
                return output
        only = self.exact.get(module_name)
        if self.default and module_name in self.attention_inner:
            self.skipped.setdefault(module_name, _ATTENTION_REASON)
            return output
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        block = module not in self.leaves
        if isinstance(output, torch.Tensor):
            if not self.plain:
                self.note_output(module, output)
            layout = self.layout_of(module, module_name, x, output, block)
            if layout is not None:
                if only is None or base in only:
                    return self.take(base, output, module, module_name, call, src, layout)
                return output
            self.skipped.setdefault(module_name, _skip_reason(output))
            return output
        found = []
        for n, t in tensors_in(output, base):
            if only is not None and n not in only and base not in only:
                continue
            layout = self.layout_of(module, module_name, x, t, block)
            if layout is not None:
                found.append((n, t, layout))
        if not found:
            self.skipped.setdefault(module_name, _skip_reason(output))
            return output
        swaps = {
            id(t): self.take(n, t, module, module_name, call, src, layout) for n, t, layout in found
        }
        if not self.grad:
            return output
        return rebuild(output, lambda t: swaps.get(id(t), t))

    def on_block(
        self, module: nn.Module, module_name: str, args: tuple[Any, ...], output: Any
    ) -> Any:
        """A container's output: an alias of the captured layer whose output tensor it still is
        (same object, unchanged since), else captured as a layer of its own; the root's output
        is the capture's ``output``, not a layer."""
        calls = self.calls
        call = calls[module_name] = calls.get(module_name, 0) + 1
        base = (module_name or ROOT_NAME) if call == 1 else f"{module_name or ROOT_NAME}:{call}"
        # Also marks the input as consumed by a module (a conv feeding timm's BatchNormAct2d).
        src, self.direct = self.pairing(args[0]) if args else (None, False)
        if type(output) is torch.Tensor:
            entry = self.seen.get(id(output))
            if entry is not None and entry.ref() is output and entry.version == output._version:
                # The common case, in one look-up: the block returned its last layer's output.
                self.aliases[base] = entry.names[0]
                return output
            if (
                self.plain
                and self.fast
                and module_name
                and module_name not in self.attention_inner
                # A new (N, C, H, W) tensor (a residual sum): a layer of its own.
                and self.keep_plain(base, output, module, module_name, call, src, 0)
            ):
                return output
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        swaps = {}
        for name, t in tensors_in(output, base):
            entry = self.seen.get(id(t))
            if entry is not None and entry.ref() is t and entry.version == t._version:
                self.aliases[name] = entry.names[0]
                continue
            left = self.left_out.get(id(t))
            if not module_name or module_name in self.attention_inner:
                continue
            if left is not None and left() is t:
                continue  # its last module's output, left out already
            layout = self.layout_of(module, module_name, x, t, True)
            if layout is not None:
                swaps[id(t)] = self.take(name, t, module, module_name, call, src, layout)
        if not (self.grad and swaps):
            return output
        return rebuild(output, lambda t: swaps.get(id(t), t))

    def note_output(self, module: nn.Module, t: torch.Tensor) -> None:
        """Remember what later outputs are read by: a convolution's grid, a leaf's tokens."""
        if t.dim() == 4 and isinstance(module, nn.modules.conv._ConvNd):
            self.grids[t.shape[1]] = (t.shape[2], t.shape[3])
        elif t.dim() == 5 and t.is_floating_point():
            frames, h, w = t.shape[2:]
            self.clip_grids[frames * h * w] = (frames, h, w)
        elif t.dim() == 3 and next(module.children(), None) is None:
            self.leaf_outputs[id(t)] = weakref.ref(t)

    def layout_of(
        self,
        module: nn.Module,
        module_name: str,
        x: torch.Tensor | None,
        t: torch.Tensor,
        block: bool,
    ) -> Layout | None:
        """How ``t`` reads as (N, C, H, W) maps, or ``None`` when it is no feature map."""
        if not (t.is_floating_point() and t.layout == torch.strided):
            return None
        if self.plain and t.dim() == 4 and not isinstance(module, nn.Linear):
            # What the bookkeeping below finds in a model with no (N, H, W, C) layer (yet).
            self.pending_layout.pop(module, None)
            return NCHW
        if t.dim() in (4, 5):
            own = self.pending_layout.pop(module, None) or self.layout_fed(t)
            if own is not None:
                return own  # the very tensor a captured layer returned (Identity, a block)
            fed = self.layout_fed(x)
            if fed is None and tuple(t.shape[1:]) in self.nhwc_shapes:
                # Fed by code outside modules (timm's Swin reverses its windows there): a shape
                # only channels-last layers of this model had is channels-last again.
                fed = NHWC
            found = map_layout(module, x, fed, t, self.frame)
            if found.kind != "nchw":
                self.plain = False
            return found
        if t.dim() != 3:
            return None
        if self.default:
            # A transformer block's tokens: a new tensor (not its last leaf's), not attention's.
            leaf = self.leaf_outputs.get(id(t))
            if not block or module_name in self.attention or (leaf is not None and leaf() is t):
                return None
        return token_layout(t, self.grids, self.clip_grids, self.frame)

    def layout_fed(self, x: torch.Tensor | None) -> Layout | None:
        """The layout of the captured (or tracked) layer whose output ``x`` is (itself: a view
        may permute)."""
        if x is None:
            return None
        entry = self.seen.get(id(x))
        if entry is not None and entry.ref() is x and entry.version == x._version:
            return self.layouts.get(entry.names[-1], NCHW)
        ref, layout, version = self.tracked.get(id(x), (None, None, 0))
        return layout if ref is not None and ref() is x and version == x._version else None

    def track(
        self, module: nn.Module, module_name: str, args: tuple[Any, ...], output: torch.Tensor
    ) -> None:
        """An unselected module's output: its layout, for the named layers it feeds, read as
        the default capture would (attention internals and other batches aside)."""
        self.note_output(module, output)
        if module_name in self.attention_inner or output.dim() not in (4, 5):
            return
        if self.batch is not None and output.shape[0] != self.batch:
            return
        if self.layout_fed(output) is not None:
            return  # a block returning its last module's output: that module's layout
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        layout = self.layout_of(module, module_name, x, output, False)
        if layout is not None:
            self.note_layout(output, layout)
            self.tracked[id(output)] = (weakref.ref(output), layout, output._version)

    def note_layout(self, t: torch.Tensor, layout: Layout) -> None:
        if t.dim() != 4 or self.plain:
            return
        own = tuple(t.shape[1:])
        if layout == NHWC:
            if own not in self.nchw_shapes:
                self.nhwc_shapes.add(own)
        else:
            self.nchw_shapes.add(own)
            self.nhwc_shapes.discard(own)

    def take(
        self,
        name: str,
        t: torch.Tensor,
        module: nn.Module,
        module_name: str,
        call: int,
        src: str | None,
        layout: Layout,
    ) -> torch.Tensor:
        """Keep ``t``, unless the default capture leaves it out: its first dimension is not the
        batch (boxes, windows, a table)."""
        if self.default and self.batch is not None and t.shape[0] != self.batch:
            self.off_batch.setdefault(name, tuple(as_map(t, layout).shape))
            self.left_out[id(t)] = weakref.ref(t)
            return t
        self.note_layout(t, layout)
        return self.keep(name, t, module, module_name, call, src, layout)

    def keep(
        self,
        name: str,
        t: torch.Tensor,
        module: nn.Module,
        module_name: str,
        call: int,
        src: str | None,
        layout: Layout = NCHW,
    ) -> torch.Tensor:
        """Store ``t`` under ``name``; returns what the model continues with (differs with grad).

        The stored tensor is the module's own output (in-place protection and copies work on
        it); :meth:`finish` returns its (N, C, H, W) view."""
        view = self.describe(name, t, module, module_name, call, src, layout)
        version = t._version
        entry = self.seen.get(id(t))
        if entry is not None and entry.ref() is t and entry.version == version:
            kept_as = self.stored.get(entry.names[-1])
            if kept_as is not None:
                # A container returning its last child's output: the same values, already stored.
                entry.names.append(name)
                self.stored[name] = kept_as
                self.versions[name] = kept_as._version
                if entry.names[-2] in self.views:
                    self.views[name] = self.views[entry.names[-2]]
                return t
            same = self.derived.get(entry.names[-1])
            if same is not None and not self.grad:
                # A leaf returning a derived layer's output as it is (Dropout, StochasticDepth
                # in eval mode): the same values, computed the same way. Not kept, so the
                # forward may go on to change it in place (EfficientNet's `result += input`).
                self.keep_derived(name, view, module, src, same)
                entry.names.append(name)
                return t
        if self.grad:
            return self.keep_differentiable(name, t, layout)
        if self.derivable(module, src, view, layout):
            # Kept as how to compute it (no bytes); an admit= may still let it go.
            self.keep_derived(name, view, module, src, Derived(module, cast(str, src), layout))
            self.seen[id(t)] = _Seen(weakref.ref(t), [name], version)
            return t
        if self.admit is not None and not self.admit(name, view, module, self.admitted(src)):
            # Let go: still known as this layer's output, for pairing ``input_from``.
            self.seen[id(t)] = _Seen(weakref.ref(t), [name], version)
            return t
        if layout.frames:
            # One frame of a clip, copied now: the clip is never kept, and no later in-place op
            # can reach the copy.
            frame = view.clone(memory_format=torch.contiguous_format)
            self.stored[name] = self.views[name] = frame
            self.versions[name] = frame._version
            self.seen[id(t)] = _Seen(weakref.ref(t), [name], version)
            return t
        kept = self.copy_of(name, t) if self.copy_all or name in self.copy_names else t
        self.stored[name] = kept
        self.versions[name] = kept._version
        self.seen[id(t)] = _Seen(weakref.ref(t), [name], version)
        return t

    def keep_derived(
        self, name: str, view: torch.Tensor, module: nn.Module, src: str | None, how: Derived
    ) -> None:
        """Keep layer ``name`` as how to compute it; an ``admit`` with ``take_derived`` takes its
        statistics (no bytes), a plain ``admit`` may still let it go."""
        take = getattr(self.admit, "take_derived", None)
        source = self.admitted(src)
        if take is not None:
            take(name, view, module, source)
        if take is not None or self.admit is None or self.admit(name, view, module, source):
            self.derived[name] = how

    def admitted(self, src: str | None) -> str | None:
        """The ``source`` an ``admit`` is told of: the layer whose output tensor itself was the
        input, else None (a view of one: its values may be other than the layer's)."""
        return src if self.direct else None

    def keep_plain(
        self,
        name: str,
        t: torch.Tensor,
        module: nn.Module,
        module_name: str,
        call: int,
        src: str | None,
        kind: int,
    ) -> bool:
        """:meth:`take` of an (N, C, H, W) output in a plain model, without grad or copies: the
        same result in fewer steps (a hook runs once per module call, between kernels that leave
        the caches cold, so each step counts: :meth:`derivable` and :meth:`keep_derived` are
        inlined for this case). ``kind``: what :class:`_Selection` ``.fast`` says of the module.
        False: not this case, take it the long way (not an (N, C, H, W) floating map, a first
        dimension not the batch, an output seen already, a layer to copy)."""
        if not (t.dim() == 4 and t.is_floating_point() and t.layout is _STRIDED):
            return False
        shape = t.shape
        version = t._version
        seen = self.seen
        entry = seen.get(id(t))
        if (
            (entry is not None and entry.ref() is t and entry.version == version)
            or (self.default and self.batch is not None and shape[0] != self.batch)
            or name in self.copy_names
        ):
            return False
        if self.pending_layout:
            self.pending_layout.pop(module, None)
        described = self.described
        described[name] = (shape, t.dtype, module_name, call, module, src)
        seen[id(t)] = _Seen(weakref.ref(t), [name], version)
        if kind and src is not None and self.direct and src not in self.layouts:  # NCHW
            # derivable(), for an (N, C, H, W) layer: an activation of a stored or derived layer,
            # a norm of a stored one, of the same shape.
            fits = kind == _ACTIVATION if src in self.derived else src in self.stored
            if fits and described[src][0] == shape:
                if self.admit is None:
                    self.derived[name] = Derived(module, src)
                else:
                    self.keep_derived(name, t, module, src, Derived(module, src))
                return True
        if self.admit is not None and not self.admit(name, t, module, self.admitted(src)):
            return True
        self.stored[name] = t
        self.versions[name] = version
        return True

    def derivable(
        self, module: nn.Module, src: str | None, view: torch.Tensor, layout: Layout
    ) -> bool:
        """Whether the layer is an eval-mode BatchNorm2d or an elementwise activation applied to
        stored layer ``src``, with its shape and layout: it is then kept as :class:`Derived`, not
        as a tensor (and its output may be freed, or changed in place, by the model as it goes
        on). Not in training mode, where the capture copies every output."""
        if src is None or self.copy_all or not self.direct:
            return False
        fed = self.layouts.get(src, NCHW)
        if fed is not layout and fed != layout:
            return False
        if src in self.derived:
            # An activation of a derived norm (conv → BN → ReLU6): computed from it in turn, so
            # the forward keeps only the conv's tensor and runs the activation in place on the
            # norm's, as the bare forward does.
            if frozen_norm(module):
                return False
        elif src not in self.stored:
            return False
        elif frozen_norm(module):
            # Computed again on the very (N, C, H, W) tensor the forward normalized.
            return layout == NCHW and self.stored[src].shape == view.shape
        if not elementwise_activation(module):
            return False
        if type(module) not in _EXACT and layout.kind not in ("nchw", "nhwc"):
            # Computed again on the very tensor layout the forward had: an (N, C, H, W) or an
            # (N, H, W, C) tensor, whose maps are it or a permuted view of it.
            return False
        return self.described[src][0] == view.shape

    def describe(
        self,
        name: str,
        t: torch.Tensor,
        module: nn.Module,
        module_name: str,
        call: int,
        src: str | None,
        layout: Layout,
    ) -> torch.Tensor:
        """Record where layer ``name`` comes from, its shape, dtype and layout; its map view."""
        view = t if layout is NCHW else as_map(t, layout)
        self.described[name] = (view.shape, t.dtype, module_name, call, module, src)
        if layout is not NCHW and layout != NCHW:
            self.layouts[name] = layout
        return view

    def keep_differentiable(self, name: str, t: torch.Tensor, layout: Layout) -> torch.Tensor:
        # The model goes on with a clone of the stored tensor: no later in-place op can reach the
        # stored one, and gradients still flow through it (through its map, when it is a view).
        if self.copy_all or name in self.copy_names:
            kept = t.clone() if t.requires_grad else t.detach().clone().requires_grad_()
        else:
            kept = t if t.requires_grad else t.detach().requires_grad_()
        view = as_map(kept, layout)
        onward = from_map(view, kept, layout)
        if layout.kind != "nchw":
            self.views[name] = view
        self.stored[name] = kept
        self.versions[name] = kept._version
        self.seen[id(onward)] = _Seen(weakref.ref(onward), [name], onward._version)
        return onward

    def copy_of(self, name: str, t: torch.Tensor) -> torch.Tensor:
        if self.pool is None:
            return t.clone()
        self.own_buffers.add(name)
        return self.pool._take(name, t).copy_(t)

    def protect(self, x: Any, module: nn.Module | None = None) -> None:
        """Keep the values of the stored tensors an ``inplace=True`` module is about to
        overwrite: by running it out of place (:meth:`swap_back`), else by a copy."""
        if not isinstance(x, torch.Tensor):
            return
        entry = self.seen.get(id(x))
        if entry is None or entry.ref() is not x or entry.version != x._version:
            return
        names, stored = entry.names, self.stored
        if not (stored.get(names[0]) is x or any(stored.get(n) is x for n in names[1:])):
            return  # not kept (a norm kept as how to compute it, a layer let go)
        if module is not None and x.numel() >= _SWAP_FROM and self.may_swap(module, x):
            # The instance's own attribute (a class attribute or a property: copy instead),
            # set past nn.Module.__setattr__, which would look for parameters and modules first.
            module.__dict__["inplace"] = False
            self.swapping[module] = (x, x._version)
            return
        clone = None
        for name in entry.names:
            if self.stored.get(name) is x:
                clone = self.copy_of(name, x) if clone is None else clone
                self.stored[name] = clone
                self.versions[name] = clone._version

    def may_swap(self, module: nn.Module, x: torch.Tensor) -> bool:
        """Whether ``module`` can run out of place on ``x`` with the effect of its in-place run:
        a hooked module (its hook puts the result back into ``x``) and no other tensor sharing
        ``x``'s memory (a view would not see the result)."""
        return (
            module in self.hooked
            and module.__dict__.get("inplace") is True
            and module not in self.swapping
            and x._base is None
            and x.layout == torch.strided
            # x and the temporary storage object: nothing else uses the memory.
            and torch._C._storage_Use_Count(x.untyped_storage()._cdata) == 2
        )

    def swap_back(self, module: nn.Module, output: Any) -> Any:
        """After an ``inplace=True`` module ran out of place on a stored tensor ``x``: ``x``
        takes the result's memory (as if changed in place, and the module returns ``x`` as it
        would have), and the stored layers keep ``x``'s old memory, which nothing else shares.
        No copy, where protecting by a copy would read and write the whole tensor once more."""
        x, version = self.swapping.pop(module)
        module.__dict__["inplace"] = True
        if output is x:
            return output  # it ran in place after all: the stored copy check (mutated) sees it
        if (
            not isinstance(output, torch.Tensor)
            or output.shape != x.shape
            or output.dtype != x.dtype
            or x._version != version
        ):
            return output
        kept = x.new_empty(0).set_(x.untyped_storage(), x.storage_offset(), x.size(), x.stride())
        entry = self.seen.get(id(x))
        for name in entry.names if entry is not None else ():
            if self.stored.get(name) is x:
                self.stored[name] = kept
                self.versions[name] = kept._version
        with torch.no_grad():
            x.set_(
                output.untyped_storage(), output.storage_offset(), output.size(), output.stride()
            )
        return x

    def restore_flags(self) -> None:
        """Put back the ``inplace`` flag of a module whose call did not return (it raised)."""
        for module in self.swapping:
            module.__dict__["inplace"] = True
        self.swapping.clear()

    def release(self) -> None:
        """Drop every tensor this run holds: before another run, or when the capture failed."""
        self.restore_flags()
        self.stored.clear()
        self.derived.clear()
        self.described.clear()
        self.versions.clear()
        self.seen.clear()
        self.pending_source.clear()
        self.pending_layout.clear()
        self.views.clear()
        self.leaf_outputs.clear()
        self.left_out.clear()
        self.tracked.clear()
        self.output = None

    def mutated(self) -> frozenset[str]:
        return frozenset(n for n, t in self.stored.items() if t._version != self.versions[n])

    def finish(
        self, selection: _Selection, notes: list[str], pool: CaptureBuffers | None
    ) -> Capture:
        self.check_exact_names(self.described)
        of = self.aliases_of()
        infos = [self.info(name, of.get(name, ())) for name in self.described]
        for module_name in selection.names.values():
            if module_name not in self.calls:
                self.skipped.setdefault(module_name, "not called in this forward")
        if not infos:
            raise CaptureError(self.nothing_captured_message())
        notes = notes + self.functional_notes(infos, selection) + self.layout_notes(infos)
        report = CaptureReport(infos, list(self.skipped.items()), notes)
        return Capture(self.maps(), report, self.output, pool, Derived.frozen(self.derived))

    def maps(self) -> dict[str, torch.Tensor]:
        """Every stored layer as its (N, C, H, W) view."""
        return {
            name: self.views[name]
            if name in self.views
            else as_map(t, self.layouts.get(name, NCHW))
            for name, t in self.stored.items()
        }

    def layout_notes(self, infos: list[LayerInfo]) -> list[str]:
        notes = []
        if self.off_batch:
            names = list(self.off_batch)
            notes.append(
                f"{len(names)} layers whose first dimension is not the batch of {self.batch} were "
                f"left out ({examples(names)}): boxes, windows, tables or a batch of another "
                "size, not one map per input; name them in layers= to capture them"
            )
        inner = [n for n, r in self.skipped.items() if r == _ATTENTION_REASON]
        if inner:
            notes.append(
                f"{len(inner)} modules inside attention layers were left out "
                f"({examples([display(n) for n in inner])}): q/k/v and attention weights are not "
                "feature maps; name them in layers= to capture them"
            )
        nhwc = [i.name for i in infos if i.layout == "nhwc"]
        if nhwc:
            notes.append(
                f"{len(nhwc)} layers were channels-last (N, H, W, C) ({examples(nhwc)}): a Linear "
                "or LayerNorm on a 4-D tensor, or what followed one; they are returned as "
                "(N, C, H, W) views (permute(0, 3, 1, 2)), LayerInfo.layout 'nhwc'"
            )
        video = [i for i in infos if i.frames]
        if video:
            clip = self.frame.clip
            of = f" of the {clip}-frame clip" if clip else ""
            strided = [i.name for i in video if clip and i.frames < clip]
            fewer = (
                f"; {len(strided)} layers have fewer frames ({examples(strided)}): they show the "
                "frame covering that input frame"
                if strided
                else ""
            )
            listed = examples([i.name for i in video])
            notes.append(
                f"{len(video)} layers are video (N, C, T, H, W) ({listed}"
                f"): returned as the (N, C, H, W) maps of one frame, input frame "
                f"{self.frame.index}{of} (capture(frame=k); LayerInfo.frame of .frames){fewer}"
            )
        tokens = [i for i in infos if i.layout == "tokens"]
        for extra in sorted({i.extra_tokens for i in tokens}):
            group = [i.name for i in tokens if i.extra_tokens == extra]
            h, w = next(i.shape[2:] for i in tokens if i.extra_tokens == extra)
            left = (
                f"; the first {extra} tokens (class, register or distillation tokens) are not "
                "part of the maps (LayerInfo.extra_tokens)"
                if extra
                else ""
            )
            notes.append(
                f"{len(group)} layers are transformer tokens ({examples(group)}): returned as "
                f"(N, D, {h}, {w}) maps of their {h}×{w} patch tokens{left}"
            )
        return notes

    def info(self, name: str, aliases: tuple[str, ...] = ()) -> LayerInfo:
        shape, dtype, module_name, call, module, src = self.described[name]
        layout = self.layouts.get(name, NCHW)
        # Made without the frozen dataclass's __init__, which sets each field through
        # object.__setattr__: its fields in one dict, twice as fast (one per layer; the
        # aliases already a tuple).
        info = object.__new__(LayerInfo)
        object.__setattr__(
            info,
            "__dict__",
            {
                "name": name,
                "module_name": module_name,
                "call": call,
                "type": type(module).__name__,
                "kind": _kind(module),
                "shape": tuple(shape),
                "dtype": _dtype_name(dtype),
                "input_from": src,
                "aliases": aliases,
                "layout": layout.kind,
                "extra_tokens": layout.extra,
                "frames": layout.frames,
                "frame": layout.frame,
            },
        )
        return info

    def aliases_of(self) -> dict[str, tuple[str, ...]]:
        """Layer name -> the blocks whose output it was."""
        of: dict[str, list[str]] = {}
        for alias, name in self.aliases.items():
            of.setdefault(name, []).append(alias)
        return {name: tuple(aliases) for name, aliases in of.items()}

    def with_aliases(self, infos: list[LayerInfo]) -> list[LayerInfo]:
        of = self.aliases_of()
        return [dataclasses.replace(i, aliases=of[i.name]) if i.name in of else i for i in infos]

    def check_exact_names(self, produced: Iterable[str]) -> None:
        produced = set(produced)
        for module_name, wanted in self.exact.items():
            for name in sorted(wanted):
                base = name.split("[", 1)[0]
                if name in produced or any(n.startswith(base + "[") for n in produced):
                    continue
                calls = self.calls.get(module_name, 0)
                shown = display(module_name)
                ran = [shown] + [f"{shown}:{k}" for k in range(2, calls + 1)] if calls else []
                raise ValueError(
                    f"layer {name!r} was not produced: module {shown!r} ran {calls} time(s) in "
                    f"this forward ({', '.join(ran) or 'no calls'}), none with a 4-D output "
                    "under that name"
                )

    def nothing_captured_message(self) -> str:
        outputs = " | ".join(_grouped(self.skipped.items()))
        if self.off_batch:
            shapes = [f"{n} {s}" for n, s in self.off_batch.items()]
            outputs += f" | first dimension not the batch of {self.batch}: {examples(shapes)}"
        return (
            "nothing to capture: no selected module produced a 4-D floating-point (N, C, H, W) "
            "output (or a video one, (N, C, T, H, W)), and fmwidget shows feature maps; select "
            "modules that do with "
            f"layers=. What they gave: {outputs or 'none of them was called'}"
        )

    def functional_notes(self, infos: list[LayerInfo], selection: _Selection) -> list[str]:
        if not selection.all_leaves:
            return []
        kinds = {i.kind for i in infos}
        feeders = [i.name for i in infos if i.kind in ("conv", "norm")]
        # An activation may have run on tokens (a transformer's MLP), not on a feature map.
        ran = any(self.calls.get(n) and _kind(m) == "act" for m, n in self.hooked.items())
        if feeders and "act" not in kinds and not ran:
            return [
                "no activation module (nn.ReLU, …) ran: activations applied with functional "
                "ops (F.relu, torch.sigmoid, …) are invisible to module hooks, so the captured "
                "conv/norm outputs are pre-activation values and no post-activation maps exist"
            ]
        unconsumed = [n for n in feeders if n not in self.consumed]
        if not unconsumed:
            return []
        return [
            f"{len(unconsumed)} conv/norm outputs went only to code outside modules "
            f"({examples(unconsumed)}): functional ops there (F.relu, x + y, torch.cat, …) are "
            "invisible to module hooks, so their results are not captured"
        ]


def _run(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    selection: _Selection,
    grad: bool,
    copy_all: bool,
    copy: frozenset[str],
    pool: CaptureBuffers | None,
    admit: Admit | None = None,
    batch: int | None = None,
    frame: Frame | None = None,
) -> _Run:
    run = _Run(selection, grad, copy_all, copy, pool, admit, batch, frame)
    handles = []
    try:
        handles = _global_hooks(selection, lambda: run)
        with torch.set_grad_enabled(grad), run_eagerly(model, selection.compiled):
            try:
                output = model(*args, **kwargs)
            except CaptureError:
                raise
            except Exception as exc:
                raise _forward_error(model, exc, args, kwargs) from None
    except BaseException:
        run.release()
        raise
    finally:
        for handle in handles:
            handle.remove()
        run.restore_flags()
    run.output = output if grad else rebuild(output, torch.Tensor.detach)
    return run


def _global_hooks(
    selection: _Selection, current: Callable[[], _Run | None]
) -> list[torch.utils.hooks.RemovableHandle]:
    """One forward hook for every module of the process, dispatching the selection's modules
    to the current run and ignoring the others, and a pre-hook on each in-place module.

    One forward handle instead of one per module: a module's hook costs registering and removing,
    and a global hook runs before a module's own, so a capture reads a module's output as it
    returned it, before any hook of the user's replaces it. The pre-hooks are the module's own
    (a global one would run before every module call, a few hundred per forward, for the few
    in-place ones), after the user's: they see the input the module's forward overwrites.
    Only this thread's calls count: a forward of the same model on another thread (a widget's
    job) is not this capture's."""
    names, blocks, trackers = selection.names, selection.blocks, selection.trackers
    owner = threading.get_ident()

    def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        run = current()
        if run is None or threading.get_ident() != owner:
            return None
        name = names.get(module)
        if name is not None:
            kept = run.on_output(module, name, args, output)
            return kept if run.grad or kept is not output else None
        name = blocks.get(module)
        if name is not None:
            kept = run.on_block(module, name, args, output)
            return kept if run.grad else None
        name = trackers.get(module)
        if name is not None and isinstance(output, torch.Tensor):
            run.track(module, name, args, output)
        return None

    def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and threading.get_ident() == owner:
            run = current()
            if run is not None:
                run.before_inplace(module, args[0])

    handles = [nn.modules.module.register_module_forward_hook(post)]
    try:
        for module in dict.fromkeys(selection.inplace):
            handles.append(module.register_forward_pre_hook(pre))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles


def _forward_error(
    model: nn.Module, exc: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> CaptureError:
    """The forward's exception in fmwidget's words, raised without the chain (the user reads our
    message first, not 40 frames of their model's code); the original stays as ``.original``."""
    error = CaptureError(_forward_failure(model, exc, args, kwargs))
    error.original = exc
    return error


def _forward_failure(
    model: nn.Module, exc: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    """Name the innermost module whose code raised, and what it received."""
    names = {id(m): n for n, m in module_names(model).items()}
    failing: nn.Module | None = None
    received: dict[int, Any] = {}
    tb = exc.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        owner = local.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            failing = owner
            if id(owner) not in received and isinstance(local.get("args"), tuple):
                received[id(owner)] = (*local["args"], *local.get("kwargs", {}).values())
        tb = tb.tb_next
    cause = f"{type(exc).__name__}: {exc}"
    if failing is None:
        return f"the forward failed on inputs {_describe((*args, *kwargs.values()))}: {cause}"
    got = received.get(id(failing), (*args, *kwargs.values()) if failing is model else None)
    what = f", which received {_describe(tuple(got))}" if got is not None else ""
    weight = getattr(failing, "weight", None)
    expects = f"; its weight is {_describe(weight)}" if isinstance(weight, torch.Tensor) else ""
    layer = display(names[id(failing)])
    return f"layer {layer!r} ({type(failing).__name__}) failed{what}{expects}: {cause}"


#: Elements from which an in-place module on a kept tensor runs out of place and swaps memory
#: with it (two ``Tensor.set_`` calls, ~40 µs in a forward) rather than the tensor being copied
#: (a squeeze-excitation's (N, C, 1, 1) maps copy in a few µs).
_SWAP_FROM = 16384


class _TapRun(_Run):
    """One forward of :class:`LayerTaps`: each selected output goes to a callback at hook time,
    and nothing is kept."""

    def __init__(
        self,
        selection: _Selection,
        on_tensor: Callable[[str, torch.Tensor], None],
        batch: int | None,
        frame: Frame | None = None,
    ) -> None:
        super().__init__(selection, False, False, frozenset(), None, None, batch, frame)
        self.on_tensor = on_tensor
        self.infos: dict[str, LayerInfo] = {}

    def keep(
        self,
        name: str,
        t: torch.Tensor,
        module: nn.Module,
        module_name: str,
        call: int,
        src: str | None,
        layout: Layout = NCHW,
    ) -> torch.Tensor:
        view = self.describe(name, t, module, module_name, call, src, layout)
        self.infos[name] = self.info(name)
        # Known by identity, for the aliases of the blocks that return it.
        self.seen[id(t)] = _Seen(weakref.ref(t), [name], t._version)
        self.on_tensor(name, view)
        return t


class LayerTaps:
    """Hooks on the layers :func:`capture` takes that hand each output to ``on_tensor(name, t)``
    the moment its module returns, keeping nothing.

    What a streaming reduction (:func:`fmwidget.scan.scan`) needs: the same layer names and
    selectors as :func:`capture`, values read before any later in-place op can change them (so
    no copies), and memory that does not grow with the number of layers. Hooks are removed when
    the ``with`` block ends, even on error; the model's buffers are restored when it runs in
    training mode.

    Example::

        with LayerTaps(model, ["layer1.0.conv1"], lambda name, t: print(name, t.amax())) as taps:
            taps.forward(images)
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSelector | None,
        on_tensor: Callable[[str, torch.Tensor], None],
        frame: int = 0,
    ) -> None:
        self.model = model
        # Video layers hand over this input frame's maps (capture(frame=)).
        self._frame = frame
        self._selection = _Selection.build(model, layers)
        self._on_tensor = on_tensor
        self._handles: list[Any] = []
        self._run: _TapRun | None = None
        # Set when no layer's first dimension was the batch: read each first dimension as it.
        self._any_batch = False
        #: The ``LayerInfo`` of every layer seen so far, in call order of the first forward.
        self.infos: dict[str, LayerInfo] = {}

    def __enter__(self) -> LayerTaps:
        selection = dataclasses.replace(self._selection, inplace=[])
        self._handles = _global_hooks(selection, lambda: self._run)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._run = None

    def forward(self, inputs: Any) -> Any:
        """Run the model once on ``inputs`` (without autograd); returns its output."""
        args, kwargs = split_inputs(inputs)
        batch = None if self._any_batch else _batch_size(args, kwargs)
        video = video_frame(args, kwargs, self._frame)
        model = eager_model(self.model)
        while True:
            run = self._run = _TapRun(self._selection, self._on_tensor, batch, video)
            with torch.no_grad(), state_kept(model), run_eagerly(model, self._selection.compiled):
                try:
                    output = model(*args, **kwargs)
                except Exception as exc:
                    raise _forward_error(model, exc, args, kwargs) from None
            if self.infos or run.infos or not run.off_batch or batch is None:
                break
            # As capture: no layer's first dimension is the inputs', so read it as the batch.
            self._any_batch, batch = True, None
        if not self.infos:
            run.check_exact_names(run.infos)
            if not run.infos:
                raise CaptureError(run.nothing_captured_message())
        infos = run.with_aliases(list(run.infos.values())) if run.aliases else run.infos.values()
        for info in infos:
            self.infos.setdefault(info.name, info)
        return output


class _Produced(BaseException):
    """Raised from a hook to end a forward once the wanted layer exists (not an Exception, so no
    user ``except Exception`` in the model's code catches it)."""


def layer_layout(model: nn.Module, inputs: Any, name: str, frame: int = 0) -> Layout:
    """How :func:`capture` reads layer ``name`` (``LayerInfo.layout``, :mod:`fmwidget.layouts`),
    from a forward that stops as soon as the layer is produced.

    Example::

        layer_layout(convnext, x, "features.1.0.block.3").kind    # 'nhwc'
    """
    found: list[Layout] = []

    def keep(layer: str, _t: torch.Tensor) -> None:
        if layer == name and taps._run is not None:
            found.append(taps._run.layouts.get(layer, NCHW))
            raise _Produced

    with LayerTaps(model, [name], keep, frame) as taps, contextlib.suppress(_Produced):
        taps.forward(inputs)
    if not found:
        raise CaptureError(f"layer {name!r} was not produced by this forward")
    return found[0]


def capture_layer(model: nn.Module, inputs: Any, name: str, frame: int = 0) -> torch.Tensor:
    """One layer's activation, from a forward that stops as soon as the layer is produced.

    What a layer dropped by the widget's memory budget costs to recompute: the modules before it
    and no others. The value is read when its module returns, so no later in-place op can reach
    it (no copy needed); the model's buffers are restored as by :func:`capture`.

    Example::

        capture_layer(model, x, "layer1.0.conv1").shape    # torch.Size([N, 64, 56, 56])
    """
    found: list[torch.Tensor] = []

    def keep(layer: str, t: torch.Tensor) -> None:
        if layer == name:
            # A video layer's frame is a view of the clip: its own copy, as capture keeps it.
            video = taps._run is not None and taps._run.layouts.get(layer, NCHW).frames
            found.append(t.clone() if video else t)
            raise _Produced

    with LayerTaps(model, [name], keep, frame) as taps, contextlib.suppress(_Produced):
        taps.forward(inputs)
    if not found:
        raise CaptureError(f"layer {name!r} was not produced by this forward")
    return found[0]
