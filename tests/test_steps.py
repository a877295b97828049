"""Steps: checkpoints, the step slider, live refresh during training and recorded snapshots."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import safetensors.torch
import torch
import traitlets
from fakecomm import FakeComm
from torch import nn

from fmwidget.capture import capture
from fmwidget.gradcam import gradcam_layer
from fmwidget.steps import Steps, Throttle, load_checkpoint
from fmwidget.widget import FeatureMapWidget

Make = Callable[..., FeatureMapWidget]
LAYERS = ["0", "1", "2", "3", "4"]


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).eval()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _with_running_stats(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    bn = model[1]
    bn.running_mean.copy_(torch.randn(4, generator=gen))
    bn.running_var.copy_(torch.rand(4, generator=gen) + 0.5)
    return model


def _browser(widget: FeatureMapWidget) -> FakeComm:
    assert isinstance(widget.comm, FakeComm)
    return widget.comm


def _same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k], state[k]) for k in state)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def checkpoints() -> list[dict[str, torch.Tensor]]:
    return [_state(_with_running_stats(_net(seed), seed)) for seed in (10, 11, 12)]


def test_each_step_shows_the_model_loaded_with_that_checkpoint(make: Make, x, checkpoints):
    model = _net(0)
    own = _state(model)
    params = list(model.parameters())
    w = make(model, x, checkpoints=checkpoints)
    # The last checkpoint is shown first.
    assert w.step == 2 and [s["label"] for s in w.steps] == ["0", "1", "2"]
    for step in (2, 0, 1):
        w.step = step
        reference = _net(99)
        reference.load_state_dict(checkpoints[step])
        expected = capture(reference, x, LAYERS)
        for name in LAYERS:
            assert torch.equal(w.capture[name], expected[name]), (step, name)
        top = reference(x).softmax(1).argmax(1).tolist()
        assert [row[0]["index"] for row in w.predictions] == top
    # The user's model kept its weights, its parameter objects and its mode.
    assert _same_state(model, own) and list(model.parameters()) == params
    assert w.model is model and not model.training


def test_gradcam_and_ablation_follow_the_step(make: Make, x, checkpoints):
    w = make(_net(0), x, checkpoints=checkpoints, step=0)
    reference = _net(99)
    reference.load_state_dict(checkpoints[0])
    reply = _browser(w).request("gradcam", layer="3", sample=1, revision=w.revision)
    assert reply.ok, reply.error
    ours = gradcam_layer(reference, x, "3")
    np.testing.assert_allclose(reply.arrays["heatmap"], ours.heatmap[1].numpy(), rtol=1e-5)
    result = w.ablate("3", [0, 1])
    with torch.no_grad():
        assert torch.allclose(result.output_before, reference(x))


def test_checkpoints_from_files_and_training_formats(make: Make, x, checkpoints, tmp_path):
    torch.save({"epoch": 3, "model_state_dict": checkpoints[0]}, tmp_path / "a.pt")
    # DistributedDataParallel's prefix is taken off when the model's own keys lack it.
    torch.save({f"module.{k}": v for k, v in checkpoints[1].items()}, tmp_path / "b.pth")
    safetensors.torch.save_file(checkpoints[2], str(tmp_path / "c.safetensors"))
    paths = {100: tmp_path / "a.pt", 200: str(tmp_path / "b.pth"), 300: tmp_path / "c.safetensors"}
    w = make(_net(0), x, checkpoints=paths)
    assert [s["label"] for s in w.steps] == ["100", "200", "300"]
    for step in range(3):
        w.step = step
        reference = _net(99)
        reference.load_state_dict(checkpoints[step])
        assert torch.equal(w.capture["3"], capture(reference, x, ["3"])["3"])


def test_a_file_that_is_not_weights_is_refused_without_running_it(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights only"):
        load_checkpoint(tmp_path / "evil.pt")


def test_bad_checkpoints_get_clear_errors(make: Make, x, checkpoints):
    model = _net(0)
    with pytest.raises(ValueError, match=r"model.state_dict\(\) without a copy"):
        make(model, x, checkpoints=[model.state_dict()])
    with pytest.raises(ValueError, match="empty"):
        make(model, x, checkpoints=[])
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt"):
        make(model, x, checkpoints=["nowhere.pt"])
    with pytest.raises(ValueError, match="pass checkpoints too"):
        make(model, x, step=1)
    other = nn.Sequential(nn.Conv2d(1, 5, 3)).state_dict()
    with pytest.raises(ValueError, match=r"does not fit this model: missing 1\.weight"):
        make(model, x, checkpoints=[other])
    w = make(model, x, checkpoints=[checkpoints[0], other], step=0)
    with pytest.raises(traitlets.TraitError, match="checkpoint '1' does not fit"):
        w.step = 1
    with pytest.raises(traitlets.TraitError, match="out of range"):
        w.step = 5
    assert w.step == 0


def test_the_browser_moves_the_step(make: Make, x, checkpoints):
    w = make(_net(0), x, checkpoints=checkpoints)
    revision = w.revision
    _browser(w).update(step=0)
    assert w.step == 0 and w.revision == revision + 1
    reference = _net(99)
    reference.load_state_dict(checkpoints[0])
    assert torch.equal(w.capture["0"], capture(reference, x, ["0"])["0"])
    # null: the model as it is now.
    _browser(w).update(step=None)
    assert w.step is None
    assert torch.equal(w.capture["0"], capture(w.model, x, ["0"])["0"])


def test_refresh_pushes_the_shown_layer_before_its_revision(make: Make, x):
    model = _net(0)
    w = make(model, x, layer="3")
    w.channel = 2
    browser = _browser(w)
    model.train()
    before = len(browser.published)
    with torch.no_grad():
        model[3].weight.mul_(-2.0)
    stats = (model[1].running_mean.clone(), model[1].running_var.clone())
    assert w.refresh(step=40)
    pushed = browser.pushes(before)
    assert [p.kind for p in pushed] == ["layer", "channel"]
    assert all(p.meta["revision"] == w.revision for p in pushed)
    # Eval mode on the weights as they are now, and the model still training, its statistics kept.
    eval_copy = copy.deepcopy(model).eval()
    expected = capture(eval_copy, x, ["3"])["3"]
    np.testing.assert_array_equal(pushed[1].arrays["values"], expected[0, 2].numpy())
    assert torch.equal(w.capture["3"], expected)
    assert model.training
    assert torch.equal(model[1].running_mean, stats[0])
    assert torch.equal(model[1].running_var, stats[1])
    # The data went out before the traits that announce it.
    kinds = [
        "push" if d.get("method") == "custom" else next(iter(d.get("state", {"?": 0})))
        for _, d, _ in browser.published[before:]
    ]
    assert kinds.index("push") < min(i for i, k in enumerate(kinds) if k != "push")
    assert w.now_label == "step 40" and w.step is None


def test_refresh_is_throttled_unless_forced(make: Make, x):
    w = make(_net(0), x)
    assert w.refresh()
    revision = w.revision
    assert not w.refresh()
    assert w.revision == revision
    assert w.refresh(force=True) and w.revision == revision + 1


def test_throttle_keeps_refreshing_to_its_duty():
    throttle = Throttle(duty=0.1, min_interval=0.0)
    throttle.done(started=0.0, now=0.5)  # half a second of refreshing: 4.5 s of training follow
    assert not throttle.ready(now=4.9) and throttle.ready(now=5.0)


def test_recorded_steps_replay_the_training_run(make: Make, x):
    model = _net(0)
    w = make(model, x)
    snapshots = []
    for i in range(4):
        with torch.no_grad():
            model[0].weight.add_(0.5)
        snapshots.append(_state(model))
        w.record(step=i * 10)
    w.refresh(force=True)
    assert [s["label"] for s in w.steps] == ["0", "10", "20", "30"]
    assert {s["kind"] for s in w.steps} == {"recorded"}
    for i in (0, 3, 1):
        w.step = i
        reference = _net(99)
        reference.load_state_dict(snapshots[i])
        assert torch.equal(w.capture["0"], capture(reference, x, ["0"])["0"])
    assert _same_state(model, snapshots[-1])


def test_recording_stays_within_its_budget():
    model = _net(0)
    steps = Steps(model)
    one = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    steps.record_bytes = 4 * one
    for i in range(20):
        steps.record(str(i))
    labels = steps.labels
    assert len(labels) <= 4
    # The first and the newest stay; what is kept is spread over the run.
    assert labels[0] == "0" and labels[-1] == "19"


def test_a_widget_without_steps_refuses_a_step(make: Make, x):
    w = make(_net(0), x)
    with pytest.raises(traitlets.TraitError, match="no steps"):
        w.step = 0


def test_weights_at_gives_each_steps_state_dict(make: Make, x, checkpoints, tmp_path):
    torch.save(checkpoints[1], tmp_path / "one.pt")
    w = make(_net(0), x, checkpoints=[checkpoints[0], tmp_path / "one.pt"])
    for step in range(2):
        got = w.weights_at(step)
        assert got.keys() == checkpoints[step].keys()
        assert all(torch.equal(got[k], checkpoints[step][k]) for k in got)
    with pytest.raises(ValueError, match="out of range"):
        w.weights_at(2)


def test_closing_lets_go_of_the_shadow_copy(make: Make, x, checkpoints):
    import gc
    import weakref

    w = make(_net(0), x, checkpoints=checkpoints)
    assert w._steps is not None
    shadow = weakref.ref(w._steps.shadow_at(0))
    w.close()
    gc.collect()
    assert shadow() is None


def test_the_view_is_told_when_the_model_ran_in_training_mode(make: Make, x):
    model = _net(0).train()
    w = make(model, x)
    assert w.training
    model.eval()
    w.set_inputs(x)
    assert not w.training
    model.train()
    # Steps are shown through the eval-mode copy: never training maps.
    w.refresh(force=True)
    assert not w.training and model.training


def test_a_step_switch_reads_its_checkpoint_file_once(
    make: Make, x, checkpoints, tmp_path, monkeypatch
):
    import fmwidget.steps as steps_module

    for i, state in enumerate(checkpoints):
        torch.save(state, tmp_path / f"{i}.pt")
    w = make(_net(0), x, checkpoints=[tmp_path / f"{i}.pt" for i in range(3)])
    reads: list[str] = []
    real = steps_module.load_checkpoint
    monkeypatch.setattr(
        steps_module, "load_checkpoint", lambda source: reads.append(str(source)) or real(source)
    )
    w.step = 0
    assert reads == [str(tmp_path / "0.pt")]
