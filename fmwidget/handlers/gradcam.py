"""``gradcam``: a CAM method's heatmap (and per-channel weights) for one layer and sample.

A map not computed before runs long (a forward and a backward of the batch; Score-CAM one forward
per channel): the router serves it as a job, with progress and cancel (:mod:`fmwidget.tasks`).
The methods of :data:`fmwidget.gradcam.CHANNEL_COST` (Score-CAM, Ablation-CAM) are computed for
the requested sample only: each costs a forward per channel and sample, the others one
forward and backward of the batch for every sample's map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fmwidget import wire
from fmwidget.gradcam import CHANNEL_COST, gradcam, gradcam_layer
from fmwidget.handlers.fields import BadRequest, View, layer_field, sample_field
from fmwidget.names import display
from fmwidget.session import CamMaps, Session
from fmwidget.validation import CAM_LABELS, check_cam_method, check_target


@dataclass(frozen=True)
class GradcamRequest:
    layer: str
    sample: int
    method: str
    target: int | None


def parse(content: dict[str, Any], view: View) -> GradcamRequest:
    session = view.session
    name, sample = layer_field(content, session), sample_field(content, session)
    if session.model is None:
        raise BadRequest("Grad-CAM needs the model, and this widget shows precomputed activations")
    # The request's method and target win; without them, the `cam_method` and `target` traits.
    try:
        method = check_cam_method(content.get("method", view.cam_method), view.cam_methods)
        target = check_target(content.get("target", view.target), session.classes)
    except ValueError as error:
        raise BadRequest(str(error)) from error
    return GradcamRequest(name, sample, method, target)


def _key(request: GradcamRequest) -> tuple[str, int | None, str, int | None]:
    one = request.sample if request.method in CHANNEL_COST else None
    return (request.layer, request.target, request.method, one)


def runs_long(request: GradcamRequest, view: View) -> bool:
    """Whether the maps must be computed (a cached one is served at once)."""
    return _key(request) not in view.session.cams


def handle(request: GradcamRequest, view: View) -> wire.Payload:
    session = view.session
    name, sample, method = request.layer, request.sample, request.method
    key = _key(request)
    result = session.cam(
        key, lambda: cam_maps(session, name, request.target, method, sample=key[3])
    )
    # Maps of the sample alone have one row; the batch's (also a training-mode model's), N.
    row = sample if result.heatmap.shape[0] == session.num_samples else 0
    used = None if result.target is None else int(result.target[row])
    meta, arrays = wire.gradcam_payload(result.heatmap[row], result.weights[row])
    meta.update(
        layer=name,
        sample=sample,
        target=used,
        label=session.label(used),
        method=method,
        normalized=result.normalized,
    )
    return meta, arrays


def cam_maps(
    session: Session, name: str, target: int | None, method: str, sample: int | None = None
) -> CamMaps:
    """The maps of ``method`` at layer ``name`` for the whole batch, or for ``sample`` only (the
    package's methods; one row)."""
    model = session.model
    assert model is not None  # parse() refuses requests without a model
    if method == "gradcam":
        try:
            frame = session.frame if session.store.info(name).frames else None
            ours = gradcam_layer(model, session.inputs, name, target=target, frame=frame)
        except ValueError as error:
            raise BadRequest(str(error)) from error
        return CamMaps(ours.heatmap, ours.weights, ours.target, normalized=False)
    label = CAM_LABELS.get(method, method)
    info = session.store.info(name)
    if info.call != 1 or name != display(info.module_name):
        what = (
            f"call {info.call} of module {info.module_name!r}"
            if info.call != 1
            else f"a tensor inside the output of module {info.module_name!r}"
        )
        raise BadRequest(
            f"{label} hooks whole modules, so it needs a module's first call with a tensor "
            f"output; layer {name!r} is {what}. Pick another layer, or Grad-CAM (ours), which "
            "handles both"
        )
    if target is None:
        if session.classes is None:
            raise BadRequest(
                f"{label} explains a class score, and the model does not output (N, classes) scores"
            )
        # The predicted class, named explicitly so the reply can say which class it was.
        targets = session.output.argmax(dim=1).tolist()
    else:
        targets = [target] * session.num_samples
    inputs = session.inputs
    # A model in eval mode maps each sample alone (in training mode BatchNorm mixes them: the
    # whole batch then, as the package would run it).
    alone = not any(m.training for m in model.modules())
    if sample is not None and isinstance(inputs, torch.Tensor) and alone:
        inputs, targets = inputs[sample : sample + 1], targets[sample : sample + 1]
    try:
        heatmap = gradcam(model, inputs, name, targets, method=method)
    except (ValueError, TypeError, ImportError) as error:
        raise BadRequest(str(error)) from error
    weights = heatmap.new_zeros((heatmap.shape[0], 0))
    return CamMaps(heatmap.float(), weights, targets, normalized=True)
