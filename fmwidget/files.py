"""fmwidget's files: saved captures and scans, one safetensors file each.

safetensors holds tensors and a JSON header, nothing that runs when loaded; fmwidget refuses
pickles (``torch.save`` files) outright. Each file records what kind it is (``capture``, ``scan``),
a format version, and the model it was made with (:func:`model_record`), so that loading it
against another model is refused with a message that says what differs.

    >>> import torch, tempfile, os
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).eval()
    >>> from fmwidget.capture import capture
    >>> path = os.path.join(tempfile.mkdtemp(), "cap.safetensors")
    >>> capture(model, torch.randn(1, 3, 8, 8)).save(path)
    >>> load(path, model=model)
    Capture(1 layers: '0' (1, 4, 6, 6); 0 skipped)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fmwidget.capture import Capture, CaptureReport, LayerInfo

__all__ = ["ModelMismatchError", "load", "model_record", "read", "save_capture", "write"]

FORMAT_VERSION = 1
_KEY = "fmwidget"
# Magic bytes of what torch.save writes: a zip archive (torch ≥ 1.6) or a raw pickle.
_PICKLE_STARTS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class ModelMismatchError(ValueError):
    """A saved file was loaded against a model other than the one it was made with."""


def model_record(model: nn.Module) -> dict[str, Any]:
    """What a file records of its model: ``parameters`` (the names and shapes of its parameters
    and buffers) and ``fingerprint``, a hash of those with their dtypes and values."""
    h = hashlib.blake2b(digest_size=20)
    parameters = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        parameters.append([name, list(t.shape)])
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        data = t.detach()
        if data.dtype == torch.bfloat16:
            data = data.float()
        h.update(data.cpu().contiguous().numpy().tobytes())
    return {"fingerprint": h.hexdigest(), "parameters": parameters}


def check_model(record: dict[str, Any] | None, model: nn.Module, what: str) -> None:
    """Raise :class:`ModelMismatchError` unless ``model`` is the one ``record`` describes."""
    if record is None:
        raise ModelMismatchError(
            f"this {what} records no model, so it cannot be checked against one; load it "
            "without model="
        )
    mine = model_record(model)
    if mine["fingerprint"] == record["fingerprint"]:
        return
    theirs = {name: shape for name, shape in record["parameters"]}
    ours = {name: shape for name, shape in mine["parameters"]}
    if theirs == ours:
        why = "its parameter names and shapes match, their values differ (other weights)"
    else:
        missing = sorted(set(theirs) - set(ours))
        extra = sorted(set(ours) - set(theirs))
        changed = sorted(n for n in set(theirs) & set(ours) if theirs[n] != ours[n])
        parts = [f"{len(missing)} of its parameters are missing"] if missing else []
        parts += [f"{len(extra)} are new"] if extra else []
        if changed:
            parts.append(f"{changed[0]!r} is {ours[changed[0]]}, was {theirs[changed[0]]}")
        why = "another architecture: " + ", ".join(parts)
    raise ModelMismatchError(
        f"this {what} was made with another model ({why}); make it again with this model, or "
        f"load the {what} with the model it was made with"
    )


def write(
    path: str | os.PathLike[str], kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """One safetensors file of ``kind`` with ``tensors`` and ``meta`` (JSON) in its header."""
    from safetensors.torch import save_file

    header = {"kind": kind, "format": FORMAT_VERSION, **meta}
    ready: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for key, value in tensors.items():
        t = value.detach().cpu().contiguous()
        # safetensors refuses tensors sharing memory (a block's output is its last layer's).
        where = t.untyped_storage().data_ptr()
        if where in storages:
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        ready[key] = t
    save_file(ready, str(path), metadata={_KEY: json.dumps(header)})


def read(path: str | os.PathLike[str], kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of a file :func:`write` wrote as ``kind``; anything else (a
    pickle, another kind, a newer format) is refused with a message that says what it is."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    with open(path, "rb") as file:
        start = file.read(4)
    if start.startswith(_PICKLE_STARTS):
        raise ValueError(
            f"{path} is a pickle (torch.save), which can run code when loaded: fmwidget only "
            f"reads safetensors files; save the {kind} with its .save() method"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_KEY)
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    if raw is None:
        raise ValueError(f"{path} is a safetensors file, but not one of fmwidget's")
    meta = json.loads(raw)
    if meta.get("kind") != kind:
        raise ValueError(f"{path} holds an fmwidget {meta.get('kind')}, not a {kind}")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has {kind} format {meta.get('format')}; this fmwidget reads {FORMAT_VERSION}"
        )
    return tensors, meta


def save_capture(
    capture: Capture,
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    images: Any = None,
    labels: list[str] | None = None,
) -> None:
    """Write ``capture`` (its layers, report and output) to one safetensors file; see
    :meth:`fmwidget.capture.Capture.save`."""
    tensors = {f"layer.{i}": capture[name] for i, name in enumerate(capture)}
    output = capture.output
    if isinstance(output, torch.Tensor):
        tensors["output"] = output
    if images is not None:
        from fmwidget.images import pictures_per_sample

        n = next(iter(tensors.values())).shape[0]
        tensors["images"] = torch.from_numpy(np.stack(pictures_per_sample(images, n)))
    report = capture.report
    meta = {
        "layers": [dataclasses.asdict(info) for info in report.captured],
        "skipped": [list(s) for s in report.skipped],
        "notes": list(report.notes),
        "labels": None if labels is None else [str(label) for label in labels],
        "model": None if model is None else model_record(model),
    }
    write(path, "capture", tensors, meta)


def load(path: str | os.PathLike[str], model: nn.Module | None = None) -> Capture:
    """A capture saved with :meth:`~fmwidget.capture.Capture.save`: a ``Capture`` with its
    report and output, plus ``images`` (the saved pictures, or None) and ``labels``.

    With ``model``, a file made with another model is refused. Show it with
    ``FeatureMapWidget.from_activations(fmwidget.load(path))``.
    """
    tensors, meta = read(path, "capture")
    if model is not None:
        check_model(meta.get("model"), model, "capture")
    infos = []
    for entry in meta["layers"]:
        entry = {**entry, "shape": tuple(entry["shape"])}
        infos.append(LayerInfo(**entry))
    report = CaptureReport(infos, [tuple(s) for s in meta["skipped"]], list(meta["notes"]))
    layers = {info.name: tensors[f"layer.{i}"] for i, info in enumerate(infos)}
    loaded = Capture(layers, report, tensors.get("output"))
    images = tensors.get("images")
    loaded.images = None if images is None else list(images.numpy())
    loaded.labels = meta.get("labels")
    return loaded
