"""The one grammar of layer names, and the hints an unknown name gets.

A layer is named after its module in ``model.named_modules()`` (the root module is ``(model)``),
then optionally the call (``name:2`` is the module's second call in one forward; the first call
has no suffix) and a path into a tuple/list/dict/dataclass output (``name[0]``, ``name['out']``)::

    >>> parse_layer_name("layer1.0.relu:2")
    LayerName(module='layer1.0.relu', call=2, path=())
    >>> parse_layer_name("head['out'][0]")
    LayerName(module='head', call=1, path=('out', 0))
    >>> str(parse_layer_name("head['out'][0]"))
    "head['out'][0]"

Capture, Grad-CAM, ablation, the store and the widget all read names with this module, and every
"unknown name" error ends with :func:`hint`. Two kinds of names are accepted besides a captured
layer's own (:func:`resolve_name`): a block whose output is the same tensor as a captured layer's
is an alias of that layer (``layer4`` of a ResNet is ``layer4.1.relu:2``), and torch.compile's
``_orig_mod.`` parts may be left in (``_orig_mod.layer4`` is ``layer4``)::

    >>> resolve_name("_orig_mod.layer4", ["layer4.1.relu:2"], {"layer4": "layer4.1.relu:2"})
    'layer4.1.relu:2'
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

__all__ = [
    "COMPILED_PART",
    "ROOT_NAME",
    "LayerName",
    "UnknownLayerError",
    "close_names",
    "display",
    "examples",
    "hint",
    "parse_layer_name",
    "resolve_name",
]

#: The name of the root module (``named_modules()`` calls it ``""``).
ROOT_NAME = "(model)"
#: The attribute through which ``torch.compile``'s wrapper holds the original module: a part of
#: the wrapper's module names (``_orig_mod.conv1``) that layer names leave out.
COMPILED_PART = "_orig_mod"

_EXAMPLES = 5
_GRAMMAR = re.compile(
    r"^(?P<module>.*?)(?::(?P<call>[0-9]+))?(?P<index>(?:\[(?:-?[0-9]+|'[^']*'|\"[^\"]*\")\])*)$"
)
_INDEX = re.compile(r"\[(-?[0-9]+|'[^']*'|\"[^\"]*\")\]")


class LayerName(NamedTuple):
    """A parsed layer name: the module's qualified name, the 1-based call, the output path."""

    module: str
    call: int
    path: tuple[int | str, ...]

    def __str__(self) -> str:
        call = f":{self.call}" if self.call != 1 else ""
        path = "".join(f"[{k!r}]" if isinstance(k, str) else f"[{k}]" for k in self.path)
        return f"{display(self.module)}{call}{path}"


def parse_layer_name(name: str) -> LayerName:
    """Split ``name`` into module, call and output path; raises ``ValueError`` where it can't.

    The module part is returned as ``named_modules()`` spells it (``""`` for ``(model)``), without
    the ``_orig_mod`` parts a compiled model's names have; whether that module exists is the
    caller's question. ``name:1`` is refused: a first call has no suffix.
    """
    match = _GRAMMAR.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a layer name (module, then ':k' and '[i]' parts)")
    call = match["call"]
    if call is not None and int(call) < 2:
        plain = f"{match['module']}{match['index']}"
        raise ValueError(f"the first call of a module is named without ':1': {plain!r}")
    index = tuple(
        int(tok) if tok[0] not in "'\"" else tok[1:-1] for tok in _INDEX.findall(match["index"])
    )
    module = ".".join(p for p in match["module"].split(".") if p != COMPILED_PART)
    return LayerName("" if module == ROOT_NAME else module, int(call or 1), index)


def display(module_name: str) -> str:
    """A module's qualified name as layer names spell it (the root is ``(model)``)."""
    return module_name or ROOT_NAME


def close_names(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates that look most like ``name`` (a typo, a missing index), best first."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)


def hint(name: str, candidates: Iterable[str], what: str = "names") -> str:
    """``close names: 'a', 'b'`` where some look like ``name``, else a few examples of ``what``."""
    candidates = list(candidates)
    close = close_names(name, candidates)
    if close:
        return "close names: " + ", ".join(repr(c) for c in close)
    return f"{what} look like: {examples(candidates)}"


def examples(names: list[str]) -> str:
    """The first few of ``names``, quoted, and how many more there are."""
    shown = ", ".join(repr(n) for n in names[:_EXAMPLES])
    more = len(names) - _EXAMPLES
    return f"{shown} and {more} more" if more > 0 else shown


def resolve_name(name: str, known: Iterable[str], aliases: Mapping[str, str] | None = None) -> str:
    """The layer among ``known`` that ``name`` refers to: ``name`` itself, the layer a block name
    is an alias of (``aliases`` maps alias to layer), or either without ``_orig_mod.`` parts;
    else :class:`UnknownLayerError` with close names among the layers and aliases."""
    if not isinstance(known, (set, frozenset, Mapping)):
        known = dict.fromkeys(known)  # membership in O(1), order kept for the hint
    aliases = aliases or {}
    candidates = [name]
    if COMPILED_PART in name:
        with contextlib.suppress(ValueError):
            candidates.append(str(parse_layer_name(name)))
    for candidate in candidates:
        if candidate in known:
            return candidate
        if candidate in aliases:
            return aliases[candidate]
    raise UnknownLayerError(name, [*known, *aliases])


class UnknownLayerError(KeyError):
    """A layer name that is not among the captured layers; the message lists close names."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.message = f"unknown layer {name!r}; {hint(name, known, 'captured layers')}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message
