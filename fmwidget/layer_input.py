"""What a layer received: its input as it was called, from a forward that stops right there.

How a value was computed needs the layer's input, not its output, and only the modules before the
layer have to run for it. The input is cloned when the call starts (a pre-hook), so an in-place
op (``ReLU(inplace=True)``, ``out += identity``) cannot change it afterwards, and the forward ends
at that moment. Where samples of a batch are independent (an eval-mode model, no normalisation
from batch statistics) just the asked sample runs; otherwise the whole batch does, so that its
statistics are the captured ones.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(inplace=True)).eval()
    >>> from fmwidget.calling import resolve_layer
    >>> ref = resolve_layer(net, "1")
    >>> got = layer_inputs(net, torch.randn(4, 1, 5, 5), [ref], sample=2)
    >>> got.tensors[0].shape, got.sample        # only sample 2 ran: row 0 of the batch
    (torch.Size([1, 2, 3, 3]), 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fmwidget.calling import LayerRef, call_model, rebuild, state_kept, tensors_in

__all__ = ["LayerInputs", "batch_coupled", "layer_inputs"]


@dataclass(frozen=True)
class LayerInputs:
    """The first positional input of each layer asked for (``None`` where it was not a tensor),
    and which batch row of them is the sample asked for."""

    tensors: list[torch.Tensor | None]
    sample: int


class _Reached(BaseException):
    """Ends the forward once every input is taken (a BaseException, so no ``except Exception``
    in the model's code swallows it)."""


def batch_coupled(model: nn.Module) -> bool:
    """Whether one sample's values can depend on the others: a module in training mode, or a
    BatchNorm without running statistics (it normalises with the batch's)."""
    return any(
        m.training or (isinstance(m, _BatchNorm) and m.running_mean is None)
        for m in model.modules()
    )


def layer_inputs(
    model: nn.Module, inputs: Any, refs: Sequence[LayerRef], sample: int
) -> LayerInputs:
    """The inputs of ``refs`` (each the ``call``-th call of its module) on ``sample`` of
    ``inputs``, from one forward without autograd that stops once the last of them is taken.

    The model is left as it was: hooks removed even on error, buffers restored when it runs in
    training mode. Raises ``ValueError`` for a sample out of range or a call that never happens.
    """
    batch = [t for _, t in tensors_in(inputs, "") if t.dim() > 0]
    if not batch:
        raise ValueError("the inputs hold no tensor with a batch dimension")
    n = batch[0].shape[0]
    if not 0 <= sample < n:
        raise ValueError(f"sample {sample} is out of range: the batch has {n} inputs")
    # Run one sample only where that gives the same values, and where every tensor is batched
    # (a tensor of another first size, e.g. a shared mask, is passed as it is by the model).
    alone = not batch_coupled(model) and all(t.shape[0] == n for t in batch)
    if alone:
        inputs = rebuild(inputs, lambda t: t[sample : sample + 1] if t.dim() > 0 else t)
    taken: dict[int, torch.Tensor | None] = {}
    calls: dict[int, int] = {}
    wanted = {(id(ref.module), ref.call): i for i, ref in enumerate(refs)}

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        i = wanted.get((id(module), calls[id(module)]))
        if i is None:
            return
        first = args[0] if args else None
        taken[i] = first.detach().clone() if isinstance(first, torch.Tensor) else None
        if len(taken) == len(refs):
            raise _Reached

    handles = [
        ref.module.register_forward_pre_hook(pre_hook)
        for ref in {id(r.module): r for r in refs}.values()
    ]
    try:
        with torch.no_grad(), state_kept(model):
            call_model(model, inputs)
    except _Reached:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [ref for i, ref in enumerate(refs) if i not in taken]
    if missing:
        ref = missing[0]
        raise ValueError(
            f"layer {ref.name!r}: its module was called {calls.get(id(ref.module), 0)} time(s) "
            f"in this forward, so call {ref.call} never happened"
        )
    return LayerInputs([taken[i] for i in range(len(refs))], 0 if alone else sample)
