"""Capture the activations of every layer of a PyTorch CNN with forward hooks.

One call runs the model once (on its own device, under ``torch.no_grad()`` unless ``grad=True``)
and returns a read-only mapping from layer name to activation tensor, in call order::

    cap = capture(model, images)       # every leaf module with an (N, C, H, W) output
    cap["layer1.0.bn1"].shape          # torch.Size([8, 64, 56, 56])
    print(cap.report)                  # what was captured, what was skipped and why

Names are qualified module names from ``model.named_modules()``. A module called k times in one
forward (torchvision's ResNet blocks call their ``relu`` twice) gives k entries: ``name``,
``name:2``, … The root module, when captured, is named ``(model)``. Tensors inside
tuple/list/dict/dataclass outputs are named ``name[0]`` / ``name['key']``.

In-place safety: a stored activation never shows a later in-place change (``ReLU(inplace=True)``,
``out += identity``). Outputs are kept by reference and their ``_version`` recorded; a module with
``inplace=True`` about to overwrite a stored tensor gets it copied first (forward pre-hook). Every
version is checked after the forward; if other code changed a stored tensor (``out += identity``
inside a block's ``forward``), the forward runs once more, copying exactly those layers at hook
time. Those names are remembered per model, so later captures of the same model copy them at once
and run once. A :class:`CaptureBuffers` pool makes those copies land in memory reused across
captures, or (``copy_all=True``) copies every output at hook time.

Flags are never switched and state is left as it was: the model runs exactly as it is. A model in
training mode runs once, copying everything, instead of ever running twice (a second run would draw
new dropout masks), and its buffers (BatchNorm running statistics) are restored afterwards.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fmwidget.calling import rebuild, split_inputs, state_kept, tensors_in
from fmwidget.names import (
    ROOT_NAME,
    UnknownLayerError,
    display,
    examples,
    hint,
    parse_layer_name,
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
]

_NOTE_EXAMPLES = 5

LayerSelector = (
    str | type[nn.Module] | Callable[[str, nn.Module], bool] | Iterable[str | type[nn.Module]]
)


class CaptureError(RuntimeError, ValueError):
    """The model could not be captured: a forward failed, or nothing had an (N, C, H, W) output.

    The message names the layer that failed and what it received; the original exception is chained.
    """


@dataclass(frozen=True)
class LayerInfo:
    """What one captured activation is: where it came from, its shape and what fed it.

    ``input_from`` names the captured layer whose output tensor was this module's first input
    (matched by tensor identity, or by being a view of it), else ``None``: it pairs a conv/norm
    with the activation that follows it.
    """

    name: str
    module_name: str
    call: int
    type: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    input_from: str | None


@dataclass
class CaptureReport:
    """What a capture took, what it left out (with the reason) and what it could not see."""

    captured: list[LayerInfo]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        header = ("name", "type", "kind", "shape", "dtype", "input from")
        rows = [
            (i.name, i.type, i.kind, "×".join(map(str, i.shape)), i.dtype, i.input_from or "")
            for i in self.captured
        ]
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
        lines = [f"captured {len(self.captured)} layers"]
        lines += [
            "  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} modules")
            lines += [f"  {name or ROOT_NAME}: {reason}" for name, reason in self.skipped]
        if self.notes:
            lines.append("notes")
            lines += [f"  - {note}" for note in self.notes]
        return "\n".join(lines)


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


class Capture(Mapping[str, torch.Tensor]):
    """Activations of one forward pass, by layer name, in call order (a read-only mapping).

    ``report`` says what was captured and skipped, ``output`` is the model's output (detached
    unless the capture ran with ``grad=True``), ``info(name)`` describes one layer.

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
    ) -> None:
        self._tensors = tensors
        self._infos = {i.name: i for i in report.captured}
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
        try:
            return self._tensors[name]
        except KeyError:
            raise UnknownLayerError(name, self._tensors) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def info(self, name: str) -> LayerInfo:
        """Describe one captured layer (module, call index, kind, shape, dtype, what fed it)."""
        try:
            return self._infos[name]
        except KeyError:
            raise UnknownLayerError(name, self._infos) from None

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
) -> Capture:
    """Run ``model`` once on ``inputs`` and capture the (N, C, H, W) activations of its layers.

    Args:
        model: any ``nn.Module``; it is left as it was: no hook stays, no flag is switched, and
            in training mode its buffers (BatchNorm running statistics) are restored after the
            forward.
        inputs: a tensor, a tuple/list of positional arguments, or a dict of keyword arguments.
        layers: ``None`` for every leaf module with a 4-D floating output; or layer names (a
            plain name selects every call of a module, ``name:k`` only the k-th, ``name[0]`` one
            element of a tuple output; containers such as ``layer1`` may be named), module types
            (``nn.Conv2d``), a mix of both, or a predicate ``(name, module) -> bool``.
        grad: run with autograd on and return activations that are part of the graph (each one
            differentiable even when the parameters are frozen), for gradients via tensor hooks.
        buffers: a :class:`CaptureBuffers` pool to copy into, reused across captures (not with
            ``grad``).

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
    args, kwargs = split_inputs(inputs)
    selection = _Selection.build(model, layers)
    training = any(m.training for m in model.modules())
    if buffers is not None:
        buffers._start()
    known = _KNOWN_MUTATED.get(model, frozenset())
    notes: list[str] = []
    copy_all = training or (buffers is not None and buffers.copy_all)
    run: _Run | None = None
    try:
        with state_kept(model):
            run = _run(model, args, kwargs, selection, grad, copy_all, known, buffers)
            mutated = frozenset() if copy_all else run.mutated()
            if mutated:
                _KNOWN_MUTATED[model] = known | mutated
                # Otherwise the first run's outputs stay alive through the second one.
                run.release()
                run = _run(model, args, kwargs, selection, grad, False, known | mutated, buffers)
                notes.append(
                    f"the forward ran twice: {examples(sorted(mutated))} changed in place after "
                    "their module returned (e.g. `out += identity`), so the second run copied "
                    "them at hook time; later captures of this model copy them at once"
                )
                if run.mutated():
                    # Control flow changed between runs: copying everything cannot be wrong.
                    run.release()
                    run = _run(model, args, kwargs, selection, grad, True, frozenset(), buffers)
        if buffers is not None:
            buffers._keep_only(run.own_buffers)
        captured = run.finish(selection, notes, buffers)
        captured._model = weakref.ref(model)
        return captured
    except BaseException:
        # The traceback keeps this frame (IPython keeps the last one): let go of the tensors.
        if run is not None:
            run.release()
        raise


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
        (
            nn.ReLU,
            nn.ReLU6,
            nn.LeakyReLU,
            nn.PReLU,
            nn.RReLU,
            nn.ELU,
            nn.SELU,
            nn.CELU,
            nn.GELU,
            nn.SiLU,
            nn.Mish,
            nn.Hardswish,
            nn.Hardsigmoid,
            nn.Hardtanh,
            nn.Sigmoid,
            nn.Tanh,
            nn.Softplus,
            nn.Softsign,
            nn.Tanhshrink,
            nn.Threshold,
            nn.LogSigmoid,
            nn.GLU,
            nn.Softmax,
            nn.Softmax2d,
            nn.LogSoftmax,
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


def _kind(module: nn.Module) -> str:
    cls = type(module)
    kind = _KIND_BY_TYPE.get(cls)
    if kind is None:
        kind = next((k for k, bases in _KIND_BASES if issubclass(cls, bases)), None)
        if kind is None:
            kind = "block" if next(module.children(), None) is not None else "other"
        _KIND_BY_TYPE[cls] = kind
    return kind


@dataclass
class _Selection:
    """Which modules get hooks, and which of their outputs are kept."""

    names: dict[nn.Module, str]  # hooked module -> qualified name
    exact: dict[str, set[str]]  # module name -> only these capture names (absent: every output)
    inplace: list[nn.Module]  # modules that overwrite their input
    all_leaves: bool  # every leaf is hooked, so "consumed by no module" is knowable

    @classmethod
    def build(cls, model: nn.Module, layers: LayerSelector | None) -> _Selection:
        named = dict(model.named_modules())
        by_module = {m: n for n, m in named.items()}
        leaves = [m for m in by_module if next(m.children(), None) is None]
        inplace = [m for m in by_module if getattr(m, "inplace", False) is True]
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
        return cls(names, exact, inplace, all(m in names for m in leaves))

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
    return str(dtype).removeprefix("torch.")


def _skip_reason(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.dim() != 4:
            return f"output is {value.dim()}-D {tuple(value.shape)}, not (N, C, H, W)"
        if value.layout != torch.strided:
            return f"output is a {value.layout} tensor, not a dense one"
        return f"output is {_dtype_name(value.dtype)}, not floating point"
    return f"output {_describe(value)} holds no 4-D floating tensor"


def _capturable(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_floating_point() and t.layout == torch.strided


@dataclass
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
    ) -> None:
        self.exact = selection.exact
        self.hooked = selection.names
        self.grad = grad
        self.copy_all = copy_all
        self.copy_names = copy_names
        self.pool = pool
        self.stored: dict[str, torch.Tensor] = {}
        self.versions: dict[str, int] = {}
        self.origin: dict[str, tuple[str, int, nn.Module, str | None]] = {}
        self.seen: dict[int, _Seen] = {}
        self.calls: dict[str, int] = {}
        self.consumed: set[str] = set()
        self.pending_source: dict[nn.Module, str | None] = {}
        self.skipped: dict[str, str] = {}
        self.own_buffers: set[str] = set()
        self.output: Any = None

    def source(self, x: Any) -> str | None:
        """The captured layer whose output ``x`` still is (or is a view of), unchanged since."""
        if not isinstance(x, torch.Tensor):
            return None
        for t in (x, x._base):
            if t is None:
                continue
            entry = self.seen.get(id(t))
            if entry is not None and entry.ref() is t and entry.version == t._version:
                self.consumed.add(entry.names[-1])
                return entry.names[-1]
        return None

    def before_inplace(self, module: nn.Module, x: Any) -> None:
        """Pair an ``inplace=True`` module with its input before it overwrites it, and (when
        keeping references) clone the stored tensors it is about to overwrite."""
        if module in self.hooked:
            self.pending_source[module] = self.source(x)
        if not (self.copy_all or self.grad):
            self.protect(x)

    def on_output(
        self, module: nn.Module, module_name: str, args: tuple[Any, ...], output: Any
    ) -> Any:
        call = self.calls[module_name] = self.calls.get(module_name, 0) + 1
        base = display(module_name) if call == 1 else f"{display(module_name)}:{call}"
        if module in self.pending_source:
            src = self.pending_source.pop(module)
        else:
            src = self.source(args[0]) if args else None
        only = self.exact.get(module_name)
        if isinstance(output, torch.Tensor):
            if _capturable(output):
                if only is None or base in only:
                    return self.keep(base, output, module, module_name, call, src)
                return output
            self.skipped.setdefault(module_name, _skip_reason(output))
            return output
        found = [
            (n, t)
            for n, t in tensors_in(output, base)
            if _capturable(t) and (only is None or n in only or base in only)
        ]
        if not found:
            self.skipped.setdefault(module_name, _skip_reason(output))
            return output
        swaps = {id(t): self.keep(n, t, module, module_name, call, src) for n, t in found}
        if not self.grad:
            return output
        return rebuild(output, lambda t: swaps.get(id(t), t))

    def keep(
        self,
        name: str,
        t: torch.Tensor,
        module: nn.Module,
        module_name: str,
        call: int,
        src: str | None,
    ) -> torch.Tensor:
        """Store ``t`` under ``name``; returns what the model continues with (differs with grad)."""
        self.origin[name] = (module_name, call, module, src)
        version = t._version
        entry = self.seen.get(id(t))
        if entry is not None and entry.ref() is t and entry.version == version:
            # A container returning its last child's output: the same values, already stored.
            kept = self.stored[entry.names[-1]]
            entry.names.append(name)
            self.stored[name] = kept
            self.versions[name] = kept._version
            return t
        if self.grad:
            return self.keep_differentiable(name, t)
        kept = self.copy_of(name, t) if self.copy_all or name in self.copy_names else t
        self.stored[name] = kept
        self.versions[name] = kept._version
        self.seen[id(t)] = _Seen(weakref.ref(t), [name], version)
        return t

    def keep_differentiable(self, name: str, t: torch.Tensor) -> torch.Tensor:
        # The model goes on with a clone of the stored tensor: no later in-place op can reach the
        # stored one, and gradients still flow through it.
        if self.copy_all or name in self.copy_names:
            kept = t.clone() if t.requires_grad else t.detach().clone().requires_grad_()
        else:
            kept = t if t.requires_grad else t.detach().requires_grad_()
        onward = kept.clone()
        self.stored[name] = kept
        self.versions[name] = kept._version
        self.seen[id(onward)] = _Seen(weakref.ref(onward), [name], onward._version)
        return onward

    def copy_of(self, name: str, t: torch.Tensor) -> torch.Tensor:
        if self.pool is None:
            return t.clone()
        self.own_buffers.add(name)
        return self.pool._take(name, t).copy_(t)

    def protect(self, x: Any) -> None:
        """Clone the stored tensors an ``inplace=True`` module is about to overwrite."""
        if not isinstance(x, torch.Tensor):
            return
        entry = self.seen.get(id(x))
        if entry is None or entry.ref() is not x or entry.version != x._version:
            return
        clone = None
        for name in entry.names:
            if self.stored[name] is x:
                clone = self.copy_of(name, x) if clone is None else clone
                self.stored[name] = clone
                self.versions[name] = clone._version

    def release(self) -> None:
        """Drop every tensor this run holds: before another run, or when the capture failed."""
        self.stored.clear()
        self.versions.clear()
        self.seen.clear()
        self.pending_source.clear()
        self.output = None

    def mutated(self) -> frozenset[str]:
        return frozenset(n for n, t in self.stored.items() if t._version != self.versions[n])

    def finish(
        self, selection: _Selection, notes: list[str], pool: CaptureBuffers | None
    ) -> Capture:
        self.check_exact_names(self.stored)
        infos = [self.info(name, t) for name, t in self.stored.items()]
        for module_name in selection.names.values():
            if module_name not in self.calls:
                self.skipped.setdefault(module_name, "not called in this forward")
        if not infos:
            raise CaptureError(self.nothing_captured_message())
        notes = notes + self.functional_notes(infos, selection)
        report = CaptureReport(infos, list(self.skipped.items()), notes)
        return Capture(dict(self.stored), report, self.output, pool)

    def info(self, name: str, t: torch.Tensor) -> LayerInfo:
        module_name, call, module, src = self.origin[name]
        return LayerInfo(
            name=name,
            module_name=module_name,
            call=call,
            type=type(module).__name__,
            kind=_kind(module),
            shape=tuple(t.shape),
            dtype=_dtype_name(t.dtype),
            input_from=src,
        )

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
        outputs = "; ".join(f"{display(n)}: {r}" for n, r in self.skipped.items())
        return (
            "nothing to capture: no selected module produced a 4-D floating (N, C, H, W) output. "
            f"What they gave — {outputs or 'none of them was called'}"
        )

    def functional_notes(self, infos: list[LayerInfo], selection: _Selection) -> list[str]:
        if not selection.all_leaves:
            return []
        kinds = {i.kind for i in infos}
        feeders = [i.name for i in infos if i.kind in ("conv", "norm")]
        if feeders and "act" not in kinds:
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
) -> _Run:
    run = _Run(selection, grad, copy_all, copy, pool)
    handles = []
    try:
        for module, module_name in selection.names.items():
            handles.append(module.register_forward_hook(_output_hook(run, module_name)))
        for module in selection.inplace:
            handles.append(module.register_forward_pre_hook(_inplace_hook(run)))
        with torch.set_grad_enabled(grad):
            try:
                output = model(*args, **kwargs)
            except CaptureError:
                raise
            except Exception as exc:
                raise CaptureError(_forward_failure(model, exc, args, kwargs)) from exc
    except BaseException:
        run.release()
        raise
    finally:
        for handle in handles:
            handle.remove()
    run.output = output if grad else rebuild(output, torch.Tensor.detach)
    return run


def _output_hook(run: _Run, module_name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        kept = run.on_output(module, module_name, args, output)
        return kept if run.grad else None

    return hook


def _inplace_hook(run: _Run) -> Callable[[nn.Module, tuple[Any, ...]], None]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args:
            run.before_inplace(module, args[0])

    return hook


def _forward_failure(
    model: nn.Module, exc: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    """Name the innermost module whose code raised, and what it received."""
    names = {id(m): n for n, m in model.named_modules()}
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


class _TapRun(_Run):
    """One forward of :class:`LayerTaps`: each selected output goes to a callback at hook time,
    and nothing is kept."""

    def __init__(
        self, selection: _Selection, on_tensor: Callable[[str, torch.Tensor], None]
    ) -> None:
        super().__init__(selection, False, False, frozenset(), None)
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
    ) -> torch.Tensor:
        self.origin[name] = (module_name, call, module, src)
        self.infos[name] = self.info(name, t)
        self.on_tensor(name, t)
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
    ) -> None:
        self.model = model
        self._selection = _Selection.build(model, layers)
        self._on_tensor = on_tensor
        self._handles: list[Any] = []
        self._run: _TapRun | None = None
        #: The ``LayerInfo`` of every layer seen so far, in call order of the first forward.
        self.infos: dict[str, LayerInfo] = {}

    def __enter__(self) -> LayerTaps:
        for module, module_name in self._selection.names.items():
            self._handles.append(module.register_forward_hook(self._hook(module_name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._run = None

    def forward(self, inputs: Any) -> Any:
        """Run the model once on ``inputs`` (without autograd); returns its output."""
        args, kwargs = split_inputs(inputs)
        run = self._run = _TapRun(self._selection, self._on_tensor)
        with torch.no_grad(), state_kept(self.model):
            try:
                output = self.model(*args, **kwargs)
            except Exception as exc:
                raise CaptureError(_forward_failure(self.model, exc, args, kwargs)) from exc
        if not self.infos:
            run.check_exact_names(run.infos)
            if not run.infos:
                raise CaptureError(run.nothing_captured_message())
        for name, info in run.infos.items():
            self.infos.setdefault(name, info)
        return output

    def _hook(self, module_name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self._run is not None:
                self._run.on_output(module, module_name, args, output)

        return hook


class _Produced(BaseException):
    """Raised from a hook to end a forward once the wanted layer exists (not an Exception, so no
    user ``except Exception`` in the model's code catches it)."""


def capture_layer(model: nn.Module, inputs: Any, name: str) -> torch.Tensor:
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
            found.append(t)
            raise _Produced

    with LayerTaps(model, [name], keep) as taps, contextlib.suppress(_Produced):
        taps.forward(inputs)
    if not found:
        raise CaptureError(f"layer {name!r} was not produced by this forward")
    return found[0]
