"""Watch a network learn: the widget at saved checkpoints, and live inside a training loop.

``FeatureMapWidget(model, x, checkpoints=[...])`` shows the model as it was at each checkpoint
(state dicts in memory, or paths to ``torch.save`` files read with ``weights_only=True``, or
``.safetensors`` files): ``w.step`` picks one (synced with the view's step slider), and the grid,
the channel view, Grad-CAM, ablation, the predictions and ``w.capture`` all follow it.

Inside a training loop, ``w.refresh()`` re-captures the model as it is now and pushes the shown
layer to the view while the cell is still running (kernel → browser messages are delivered while a
cell runs; the view's own requests wait for it to finish), at most as often as keeps training within
a few percent of its speed. ``w.record()`` does the same and also keeps a copy of the weights, so
the step slider can replay the run afterwards (within ``record_bytes``).

How the user's model stays untouched: every step is shown through a *shadow*, a copy of the model
made once (``copy.deepcopy``) into which a step's weights are loaded, in eval mode; the user's
model is never written to, is never switched between train and eval, and keeps its gradients.
"Now" (``step = None``) copies the user's current weights into the shadow, so a refresh
mid-training shows eval-mode maps (BatchNorm with its running statistics, no dropout) of the
weights at that moment. Without checkpoints and before the first refresh there is no shadow: the
widget captures the model itself.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)).eval()
    >>> first = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    >>> steps = Steps(model, [first])
    >>> steps.labels
    ['0']
    >>> shadow = steps.shadow_at(0)
    >>> float(shadow[0].weight.abs().sum()), float(model[0].weight.abs().sum()) > 0
    (0.0, True)
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import traitlets
from torch import nn

from fmwidget import wire
from fmwidget.handlers import channel as channel_handler
from fmwidget.handlers import layer as layer_handler
from fmwidget.validation import trait_check

__all__ = ["MAX_RECORDS", "RECORD_BYTES", "StepFeature", "Steps", "Throttle", "load_checkpoint"]

#: Bytes of recorded weight snapshots a widget keeps by default (``w.record()``).
RECORD_BYTES = 256 * 2**20
#: Recorded snapshots kept at most (the step slider stays usable, the ``steps`` trait small).
MAX_RECORDS = 512

# What the common training-loop checkpoint formats call the model's weights.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
# Prefixes a wrapper adds to every key: DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


_NOTHING = object()

State = Mapping[str, torch.Tensor]
CheckpointLike = State | str | os.PathLike[str]


def load_checkpoint(source: CheckpointLike) -> dict[str, torch.Tensor]:
    """A state dict from a mapping or a file, never running code from the file.

    ``.safetensors`` files are read with safetensors; other files with ``torch.load(...,
    weights_only=True, map_location="cpu")``. A training checkpoint that nests the weights under
    ``"state_dict"``, ``"model_state_dict"`` or ``"model"`` is unwrapped.

    Example:
        >>> sd = load_checkpoint({"weight": torch.ones(2)})
        >>> sorted(sd)
        ['weight']
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path))
        else:
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:
                raise ValueError(
                    f"could not read checkpoint {str(path)!r} as weights only ({error}); save the "
                    "model's state_dict() with torch.save, or a .safetensors file"
                ) from None
    else:
        loaded = source
    if isinstance(loaded, Mapping):
        for key in _NESTED_KEYS:
            nested = loaded.get(key)
            if isinstance(nested, Mapping) and nested and _all_tensors(nested):
                loaded = nested
                break
    if not isinstance(loaded, Mapping) or not _all_tensors(loaded):
        got = type(loaded).__name__
        raise TypeError(
            f"a checkpoint must be a state dict (name → tensor) or a file holding one, got {got}; "
            "pass model.state_dict() copies or paths to files saved with torch.save"
        )
    return dict(loaded)


def _all_tensors(mapping: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


@dataclass
class _Step:
    label: str
    kind: str  # "checkpoint" or "recorded"
    source: CheckpointLike
    nbytes: int = 0


class Steps:
    """The steps a widget can show, and the shadow model it shows them through.

    ``checkpoints``: a sequence (labelled ``0, 1, …``) or a mapping ``label → checkpoint`` (e.g.
    ``{0: sd0, 500: "step500.pt"}``) of state dicts or paths. Files are read when their step is
    shown, not kept; state dicts are kept as given (pass copies: ``model.state_dict()`` itself is
    a live view of the weights and would show the same weights at every step).
    """

    def __init__(
        self,
        model: nn.Module,
        checkpoints: Sequence[CheckpointLike] | Mapping[Any, CheckpointLike] | None = None,
        *,
        record_bytes: int = RECORD_BYTES,
    ) -> None:
        self.model = model
        self.record_bytes = int(record_bytes)
        self._steps: list[_Step] = []
        self._shadow: nn.Module | None = None
        # What the shadow holds now: a step index, None for the user's weights, or _NOTHING yet.
        self._loaded: object = _NOTHING
        # The last step checked and its state dict, until the shadow loads it.
        self._checked: tuple[int, dict[str, torch.Tensor]] | None = None
        if checkpoints is None:
            return
        items: Iterable[tuple[Any, CheckpointLike]]
        if isinstance(checkpoints, Mapping):
            items = checkpoints.items()
        elif isinstance(checkpoints, (str, os.PathLike)) or not isinstance(checkpoints, Sequence):
            raise TypeError(
                "checkpoints= takes a list of state dicts or paths (or a dict label → checkpoint), "
                f"got {type(checkpoints).__name__}"
            )
        else:
            items = enumerate(checkpoints)
        live = {t.data_ptr() for t in model.state_dict().values() if t.numel()}
        for label, source in items:
            if isinstance(source, (str, os.PathLike)):
                if not Path(source).is_file():
                    raise FileNotFoundError(f"checkpoint {label!r}: {str(source)!r} does not exist")
            else:
                state = load_checkpoint(source)
                if any(t.numel() and t.data_ptr() in live for t in state.values()):
                    raise ValueError(
                        f"checkpoint {label!r} holds the model's own tensors (model.state_dict() "
                        "without a copy), so it would always show the current weights; pass "
                        "{k: v.clone() for k, v in model.state_dict().items()}"
                    )
                source = state
            self._steps.append(_Step(str(label), "checkpoint", source))
        if not self._steps:
            raise ValueError("checkpoints= is empty; pass at least one state dict or path")

    # -- what the view lists -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._steps)

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self._steps]

    def trait(self) -> list[dict[str, str]]:
        """The ``steps`` trait: one ``{label, kind}`` per step."""
        return [{"label": s.label, "kind": s.kind} for s in self._steps]

    @property
    def active(self) -> bool:
        """Whether the widget shows the model through the shadow (it has steps or was refreshed)."""
        return self._shadow is not None

    # -- the shadow ----------------------------------------------------------------------------

    def shadow_at(self, step: int | None) -> nn.Module:
        """The shadow holding step ``step``'s weights (``None``: the user's model's weights now)."""
        shadow = self._shadow_model()
        if step is None:
            with torch.no_grad():
                for mine, theirs in zip(_tensors(shadow), _tensors(self.model), strict=True):
                    mine.copy_(theirs)
        elif self._loaded is _NOTHING or step != self._loaded:
            self._load(shadow, step)
        self._loaded = step
        return shadow

    def check(self, step: int) -> dict[str, torch.Tensor]:
        """Step ``step``'s state dict, checked to fit this model (a clear error if not).

        It is kept until the shadow loads it: a step switch reads its file once, in the check.
        """
        if not 0 <= step < len(self._steps):
            raise ValueError(
                f"step {step} is out of range: the widget has {len(self._steps)} steps "
                f"(0–{len(self._steps) - 1}), or None for the model as it is now"
            )
        shadow = self._shadow_model()
        state = _unwrapped(self.state(step), shadow)
        _check_fits(state, shadow, self._steps[step].label)
        self._checked = (step, state)
        return state

    def _shadow_model(self) -> nn.Module:
        if self._shadow is None:
            try:
                shadow = copy.deepcopy(self.model)
            except Exception as error:
                raise TypeError(
                    f"steps and refresh() show the model through a copy, and this model cannot be "
                    f"copied ({type(error).__name__}: {error})"
                ) from None
            for p in shadow.parameters():
                p.grad = None
            self._shadow = shadow.eval()
        return self._shadow

    def state(self, step: int) -> dict[str, torch.Tensor]:
        """Step ``step``'s state dict (a file is read again each time: files are not kept)."""
        return load_checkpoint(self._steps[step].source)

    def _load(self, shadow: nn.Module, step: int) -> None:
        checked, self._checked = self._checked, None
        state = checked[1] if checked is not None and checked[0] == step else self.check(step)
        self._checked = None
        with torch.no_grad():
            shadow.load_state_dict(state, strict=True)

    # -- recording -----------------------------------------------------------------------------

    def record(self, label: str) -> None:
        """Keep a CPU copy of the user's model's weights now, as a step labelled ``label``.

        When the recorded copies would exceed ``record_bytes`` (or :data:`MAX_RECORDS`), every
        other recorded step is dropped (the first and the newest stay): a long run keeps evenly
        spaced snapshots.
        """
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        if nbytes > self.record_bytes:
            raise ValueError(
                f"one snapshot of this model's weights takes {nbytes / 2**20:.0f} MiB, more than "
                f"record_bytes ({self.record_bytes / 2**20:.0f} MiB); raise w.record_bytes"
            )
        self._steps.append(_Step(label, "recorded", state, nbytes))
        while True:
            recorded = [i for i, s in enumerate(self._steps) if s.kind == "recorded"]
            if len(recorded) <= MAX_RECORDS and self._recorded_bytes() <= self.record_bytes:
                break
            drop = set(recorded[1:-1:2]) or {recorded[0]}
            self._steps = [s for i, s in enumerate(self._steps) if i not in drop]
            # Indices moved: the shadow's step number no longer names what it holds.
            self._loaded = _NOTHING
            self._checked = None

    def _recorded_bytes(self) -> int:
        return sum(s.nbytes for s in self._steps if s.kind == "recorded")


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _unwrapped(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` with a wrapper's key prefix removed when the model's own keys lack it."""
    own = model.state_dict()
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and not any(k in own for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _check_fits(state: Mapping[str, torch.Tensor], model: nn.Module, label: str) -> None:
    state = _unwrapped(state, model)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} (the model's is {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if shapes:
        problems.append(f"other shapes: {_few(shapes)}")
    if problems:
        raise ValueError(
            f"checkpoint {label!r} does not fit this model: {'; '.join(problems)}; pass state "
            "dicts saved from this architecture"
        )


def _few(items: list[str]) -> str:
    shown = ", ".join(items[:3])
    return shown if len(items) <= 3 else f"{shown} and {len(items) - 3} more"


class Throttle:
    """When a live refresh may run: at most a ``duty`` fraction of the time goes to refreshing.

    After a refresh that took ``t`` seconds, the next waits at least ``max(min_interval, t / duty
    − t)``: with the default 3 % duty a 10 ms refresh runs at most every 0.33 s, and training
    slows by at most about 3 %.

    Example:
        >>> throttle = Throttle(duty=0.25, min_interval=0.0)
        >>> throttle.ready(now=0.0)
        True
        >>> throttle.done(started=0.0, now=1.0)   # took 1 s: 3 s of training before the next
        >>> throttle.ready(now=3.5), throttle.ready(now=4.0)
        (False, True)
    """

    def __init__(self, duty: float = 0.03, min_interval: float = 0.25) -> None:
        if not 0 < duty <= 1:
            raise ValueError(f"duty must be in (0, 1], got {duty}")
        self.duty = duty
        self.min_interval = min_interval
        self._next = float("-inf")

    def ready(self, now: float | None = None) -> bool:
        return (time.perf_counter() if now is None else now) >= self._next

    def done(self, started: float, now: float | None = None) -> None:
        end = time.perf_counter() if now is None else now
        self._next = end + max(self.min_interval, (end - started) / self.duty - (end - started))


class StepFeature(traitlets.HasTraits):
    """The widget's steps (mixed into ``FeatureMapWidget``): ``checkpoints=``, :attr:`step`,
    :meth:`refresh` and :meth:`record`."""

    step = traitlets.Int(None, allow_none=True).tag(sync=True)
    steps = traitlets.List(traitlets.Dict()).tag(sync=True)
    # What the view calls the model as it is now ("step 1200" after refresh(step=1200)).
    now_label = traitlets.Unicode("").tag(sync=True)

    _steps: Steps | None = None
    # Observers act only once the widget is built (the constructor sets the first step itself).
    _steps_ready = False
    _throttle: Throttle | None = None
    _records = 0
    # A refresh or record was skipped by the throttle: the view is behind until the cell ends.
    _behind = False
    _behind_step: Any = None
    _steps_sent = float("-inf")
    _flush_hooked = False

    def _first_step(self, model: nn.Module, checkpoints: Any, view: dict[str, Any]) -> nn.Module:
        """The model the first capture runs (the shadow at the first step with checkpoints);
        adds the step traits to the constructor's ``view``."""
        if checkpoints is None:
            if view.get("step") is not None:
                raise ValueError("step= picks one of checkpoints=[...]; pass checkpoints too")
            return model
        steps = Steps(model, checkpoints)
        step = view.setdefault("step", len(steps) - 1)
        if step is not None:
            steps.check(step)
        self._steps = steps
        view["steps"] = steps.trait()
        return steps.shadow_at(step)

    @property
    def record_bytes(self) -> int:
        """Bytes of weight snapshots :meth:`record` keeps (default 256 MiB); beyond, every other
        recorded step is dropped."""
        return RECORD_BYTES if self._steps is None else self._steps.record_bytes

    @record_bytes.setter
    def record_bytes(self, value: int) -> None:
        self._ensure_steps().record_bytes = int(value)

    def refresh(self, step: Any = None, *, force: bool = False) -> bool:
        """Re-capture the model as it is now and show it, also while a cell is running.

        Meant for a training loop: the shown layer (and the open channel) are pushed to the view
        at once, the other layers load when the cell has finished. Calls closer together than
        the throttle allows (about 3 % of the time goes to refreshing) return ``False`` and do
        nothing; ``force=True`` always refreshes. ``step`` (e.g. the iteration) labels what the
        view shows. The model itself is not touched: its weights are copied into the widget's
        shadow copy and shown in eval mode. When the cell ends, a skipped refresh is made up.

        Example:
            >>> for i, (x, y) in enumerate(loader):  # doctest: +SKIP
            ...     train_step(x, y)
            ...     w.refresh(step=i)
        """
        throttle = self._throttle = self._throttle or Throttle()
        if not (force or throttle.ready()):
            self._fall_behind(step)
            return False
        started = time.perf_counter()
        self._show_now("now" if step is None else f"step {step}")
        throttle.done(started)
        self._behind = False
        return True

    def record(self, step: Any = None) -> None:
        """Keep a copy of the model's weights now as a step the slider can replay, and
        :meth:`refresh` the view (throttled).

        ``step`` labels it (default: a count). Snapshots are CPU copies of ``state_dict()``,
        bounded by :attr:`record_bytes`; a long run keeps evenly spaced ones.

        Example:
            >>> for i in range(steps):  # doctest: +SKIP
            ...     train_step()
            ...     if i % 10 == 0:
            ...         w.record(step=i)
            >>> w.step = 0  # doctest: +SKIP
        """
        steps = self._ensure_steps()
        self._records += 1
        steps.record(str(self._records - 1 if step is None else step))
        if not self.refresh(step) and time.perf_counter() - self._steps_sent > 1.0:
            # The list reaches the view with each refresh; between them, about once a second.
            self.steps = steps.trait()
            self._steps_sent = time.perf_counter()

    def weights_at(self, step: int) -> dict[str, torch.Tensor]:
        """The model's weights at step ``step`` (a state dict, as saved or recorded).

        Example:
            >>> w.weights_at(0)["features.conv1.weight"].shape  # doctest: +SKIP
            torch.Size([8, 1, 3, 3])
        """
        if self._steps is None or not len(self._steps):
            raise ValueError("this widget has no steps: pass checkpoints=[...] or call w.record()")
        return self._steps.check(step)

    @traitlets.validate("step")
    def _valid_step(self, proposal: dict[str, Any]) -> int | None:
        value = proposal["value"]
        if value is None:
            return None
        if self._steps is None or not len(self._steps):
            raise traitlets.TraitError(
                "this widget has no steps: pass checkpoints=[...], or call w.record() in a "
                "training loop"
            )
        trait_check(self._steps.check, value)
        return int(value)

    @traitlets.observe("step")
    def _on_step(self, change: dict[str, Any]) -> None:
        if self._steps_ready and change["old"] != change["new"]:
            self._rerun_same()

    # -- running ---------------------------------------------------------------------------

    def _ensure_steps(self) -> Steps:
        widget: Any = self
        source = widget._require_model("showing the model at another step re-runs it")
        if self._steps is None:
            self._steps = Steps(source.model)
        return self._steps

    def _model_for_run(self) -> None:
        """Point the source at the shadow holding the shown step, when steps are in use."""
        widget: Any = self
        if self._steps is not None and self._steps.active:
            widget._source.model = self._steps.shadow_at(self.step)

    def _rerun_same(self, **traits: Any) -> None:
        """Capture the current inputs again (at the shown step) and update the view."""
        widget: Any = self
        session = widget.session.require()
        widget._rerun(
            session.inputs,
            image=session.images,
            groups=session.groups or None,
            push=self._push_shown,
            traits=traits,
        )

    def _show_now(self, label: str) -> None:
        steps = self._ensure_steps()
        steps.shadow_at(None)
        if self.step is not None:
            # Not through the observer: the re-run below shows "now" already.
            self._steps_ready = False
            try:
                self.step = None
            finally:
                self._steps_ready = True
        self._rerun_same(now_label=label, steps=steps.trait())
        self._steps_sent = time.perf_counter()

    def _push_shown(self, revision: int) -> None:
        """Send the shown layer (and the open channel) of the new capture before its traits: the
        view finds them in its cache when the new revision arrives, even while a cell runs."""
        widget: Any = self
        session = widget.session
        name = widget.layer if widget.layer in session.store else session.store.names[0]
        sample = min(widget.sample, session.num_samples - 1)
        _push(widget, "layer", layer_handler, {"layer": name, "sample": sample}, revision)
        channel = widget.channel
        if channel is not None and channel < session.store.shape(name)[1]:
            content = {"layer": name, "sample": sample, "channel": channel}
            _push(widget, "channel", channel_handler, content, revision)

    def _fall_behind(self, step: Any) -> None:
        """Make up a skipped refresh when the running cell ends (IPython's post_run_cell)."""
        self._behind = True
        self._behind_step = step
        if self._flush_hooked:
            return
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
        if shell is None:
            return

        def flush(*_args: Any) -> None:
            shell.events.unregister("post_run_cell", flush)
            self._flush_hooked = False
            widget: Any = self
            if self._behind and not widget.session.closed:
                self.refresh(self._behind_step, force=True)

        shell.events.register("post_run_cell", flush)
        self._flush_hooked = True


def _push(widget: Any, kind: str, handler: Any, args: dict[str, Any], revision: int) -> None:
    request = handler.parse({"type": "request", "kind": kind, **args}, widget)
    meta, arrays = handler.handle(request, widget)
    meta["revision"] = revision
    content, buffers = wire.encode_reply(None, kind, meta, arrays)
    content["type"] = "push"
    widget.send(content, buffers)
