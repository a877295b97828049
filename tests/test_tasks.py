"""Long work from the view: progress in the `task` trait, cancel from the view, the model intact.

A `Gate` module in the model holds the job inside one of its forwards until the test lets it go,
so the test knows where the job is when it sends `cancel` (no timing guesses).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from fakecomm import FakeComm
from torch import nn

from fmwidget import tasks
from fmwidget.gradcam import gradcam
from fmwidget.widget import FeatureMapWidget

pytest.importorskip("pytorch_grad_cam", reason="Score-CAM comes from the grad-cam package")

Make = Callable[..., FeatureMapWidget]
CHANNELS = 96  # Score-CAM scores 16 masked inputs a forward: 6 forwards after the first


class Gate(nn.Module):
    """Passes its input on; its `hold_at`-th forward waits for `release` (or raises `error`)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.hold_at = 0
        self.error: BaseException | None = None
        self.reached = threading.Event()
        self.release = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.hold_at:
            self.reached.set()
            if self.error is not None:
                raise self.error
            assert self.release.wait(20), "the test never released the gate"
        return x


def _model() -> tuple[nn.Module, Gate]:
    torch.manual_seed(0)
    gate = Gate()
    model = nn.Sequential(
        gate,
        nn.Conv2d(3, CHANNELS, 3, padding=1),
        nn.BatchNorm2d(CHANNELS),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(CHANNELS, 5),
    )
    return model.eval(), gate


def _snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a job could leave changed: values, hooks, flags, gradients."""
    hook_dicts = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_pre_hooks_with_kwargs",
    )
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "hooks": [tuple(len(getattr(m, d)) for d in hook_dicts) for m in model.modules()],
        "training": [m.training for m in model.modules()],
        "grads": [p.grad for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "children": [type(m).__name__ for m in model.modules()],
    }


def _assert_same(before: dict[str, Any], model: nn.Module) -> None:
    after = _snapshot(model)
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), f"{key} changed"
    for key in ("hooks", "training", "requires_grad", "children"):
        assert before[key] == after[key], key
    assert all(g is None for g in after["grads"])


def _browser(widget: FeatureMapWidget) -> FakeComm:
    assert isinstance(widget.comm, FakeComm)
    return widget.comm


def _tasks_sent(browser: FakeComm) -> list[Any]:
    return [s["task"] for s in browser.state_updates() if "task" in s]


def _no_worker_threads() -> bool:
    return not any(t.name == "fmwidget-task" for t in threading.enumerate())


@pytest.fixture(autouse=True)
def every_update(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every advance is sent, so the test can tell which forward the job was in.
    monkeypatch.setattr(tasks, "UPDATES_PER_SECOND", 10**9)


def _scorecam(browser: FakeComm, w: FeatureMapWidget, **args: Any) -> int:
    return browser.send_request(
        "gradcam", layer="1", sample=0, revision=w.revision, method="scorecam", **args
    )


def test_scorecam_from_the_view_sends_progress_and_stops_early_on_cancel(make: Make) -> None:
    model, gate = _model()
    w = make(model, torch.randn(1, 3, 8, 8))
    browser = _browser(w)
    before = _snapshot(model)
    gate.calls, gate.hold_at = 0, 4  # the activations' forward, two scored batches, then hold
    job = _scorecam(browser, w)
    assert gate.reached.wait(20)
    # The handler returned at once: the main thread serves the cancel while the job holds.
    cancel = browser.request("cancel", task=job, revision=w.revision)
    assert cancel.ok and cancel.meta == {"task": job, "cancelled": True, "revision": w.revision}
    gate.release.set()
    reply = browser.reply_to(job)
    assert not reply.ok and reply.error == "cancelled"
    content = [
        d["content"] for _, d, _ in browser.published if d.get("content", {}).get("id") == job
    ]
    assert content[-1]["cancelled"] is True
    assert gate.calls == 4  # of 7: stopped inside the forward it was in
    sent = _tasks_sent(browser)
    running = [t for t in sent if t is not None]
    assert running[0] == {
        "id": job,
        "label": "Score-CAM on 1",
        "done": 0,
        "total": 0,
        "unit": "channels",
        "elapsed": running[0]["elapsed"],
    }
    assert [t["done"] for t in running if t["total"]] == [0, 16, 32]
    assert {t["total"] for t in running if t["total"]} == {CHANNELS}
    assert sent[-1] is None and w.task is None
    _assert_same(before, model)
    # Nothing cached from the cancelled job; the next request computes the map in full.
    gate.calls, gate.hold_at = 0, 0
    again = browser.reply_to(_scorecam(browser, w))
    assert again.ok and again.meta["method"] == "scorecam" and gate.calls == 7
    assert [t["done"] for t in _tasks_sent(browser)[len(sent) :] if t is not None][-1] == CHANNELS
    _assert_same(before, model)


def test_requests_behind_a_job_wait_their_turn_and_a_queued_job_can_be_cancelled(
    make: Make,
) -> None:
    model, gate = _model()
    w = make(model, torch.randn(2, 3, 8, 8))
    browser = _browser(w)
    gate.calls, gate.hold_at = 0, 2
    job = _scorecam(browser, w)
    assert gate.reached.wait(20)
    ablate = browser.send_request("ablate", layer="1", channels=[3, 4], revision=w.revision)
    layer = browser.send_request("layer", layer="1", sample=1, revision=w.revision)
    assert [r.id for r in browser.replies()] == []  # all queued behind the job, in order
    assert browser.request("cancel", task=ablate, revision=w.revision).meta["cancelled"]
    assert not browser.request("cancel", task=12345, revision=w.revision).meta["cancelled"]
    gate.release.set()
    assert browser.reply_to(job).ok
    assert browser.reply_to(ablate).error == "cancelled" and w.ablation is None
    assert browser.reply_to(layer).ok
    order = [r.id for r in browser.replies() if r.id in (job, ablate, layer)]
    assert order == [job, ablate, layer]
    # Idle again: short requests are answered at once, on this thread.
    assert browser.request("layer", layer="1", sample=0, revision=w.revision).ok


def test_cancelling_an_ablation_from_the_view_leaves_a_training_model_as_it_was(
    make: Make,
) -> None:
    model, gate = _model()
    w = make(model, torch.randn(2, 3, 8, 8))
    model.train()  # BatchNorm updates its running statistics in the first forward
    browser = _browser(w)
    before = _snapshot(model)
    gate.calls, gate.hold_at = 0, 2  # inside the ablated forward
    job = browser.send_request("ablate", layer="1", channels=[0, 5], revision=w.revision)
    assert gate.reached.wait(20)
    label = next(t for t in _tasks_sent(browser) if t is not None)["label"]
    assert label == "Ablation of 2 channels of 1"
    assert browser.request("cancel", task=None, revision=w.revision).meta["cancelled"]
    gate.release.set()
    assert browser.reply_to(job).error == "cancelled"
    assert w.ablation is None and w.task is None
    _assert_same(before, model)
    gate.hold_at = 0
    assert browser.request("ablate", layer="1", channels=[0], revision=w.revision).ok
    assert w.ablation is not None and w.ablation["channels"] == [0]


def test_closing_the_widget_during_a_job_cancels_it_and_joins_the_thread(make: Make) -> None:
    model, gate = _model()
    w = make(model, torch.randn(1, 3, 8, 8))
    browser = _browser(w)
    before = _snapshot(model)
    gate.calls, gate.hold_at = 0, 3
    job = _scorecam(browser, w)
    assert gate.reached.wait(20)
    threading.Timer(0.2, gate.release.set).start()
    w.close()  # waits for the job to stop, before the activations are freed
    assert _no_worker_threads()
    assert gate.calls == 3
    assert "_worker" not in w.__dict__
    assert job not in [r.id for r in browser.replies()]  # nobody is listening any more
    _assert_same(before, model)


def test_python_scorecam_shows_one_bar_and_ctrl_c_leaves_the_model_intact(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model, gate = _model()
    x = torch.randn(1, 3, 8, 8)
    before = _snapshot(model)
    monkeypatch.setattr(tasks, "BAR_DELAY_S", 0.0)
    full = gradcam(model, x, "1", method="scorecam")
    err = capsys.readouterr().err
    assert "Score-CAM on 1: 100%" in err and f"{CHANNELS}/{CHANNELS}" in err
    # The package's own bar (6 scored batches) is hidden: ours says more.
    assert not re.search(r"\b6/6\b", err)
    gate.calls, gate.hold_at, gate.error = 0, 3, KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        gradcam(model, x, "1", method="scorecam")
    _assert_same(before, model)
    gate.hold_at = 0
    assert torch.equal(gradcam(model, x, "1", method="scorecam"), full)


def test_python_ablate_ctrl_c_leaves_model_and_ablation_as_they_were(make: Make) -> None:
    model, gate = _model()
    w = make(model, torch.randn(2, 3, 8, 8))
    model.train()
    before = _snapshot(model)
    gate.calls, gate.hold_at, gate.error = 0, 2, KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        w.ablate("1", [1, 2])
    assert w.ablation is None
    _assert_same(before, model)
    gate.hold_at = 0
    assert w.ablate("1", [1, 2]).changes is not None


def test_progress_updates_are_throttled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "UPDATES_PER_SECOND", 4)
    shown: list[int] = []
    p = tasks.Progress("work", 10_000, "steps", lambda q, _final: shown.append(q.done), None)
    for _ in range(10_000):
        p.advance()
    # The first, the last, and at most a few a second in between (the loop takes milliseconds).
    assert shown[0] == 1 and shown[-1] == 10_000 and len(shown) <= 4


def test_watched_counts_forwards_and_cancels_inside_one() -> None:
    model, _gate = _model()
    cancel = threading.Event()
    seen: list[int] = []
    p = tasks.Progress("work", 3, "forwards", lambda q, _f: seen.append(q.done), cancel)
    x = torch.randn(1, 3, 8, 8)
    before = _snapshot(model)
    with tasks.watched(model, p):
        model(x)
        model(x)
        cancel.set()
        with pytest.raises(tasks.Cancelled):
            model(x)
    assert p.done == 2
    _assert_same(before, model)


def test_a_bad_cancel_gets_an_error_reply(make: Make) -> None:
    model, _gate = _model()
    w = make(model, torch.randn(1, 3, 8, 8))
    reply = _browser(w).request("cancel", task="all", revision=w.revision)
    assert not reply.ok and "cancel needs 'task' (a request id, or null)" in str(reply.error)


def test_new_inputs_from_a_cell_cancel_the_views_job_first(make: Make) -> None:
    model, gate = _model()
    w = make(model, torch.randn(1, 3, 8, 8))
    browser = _browser(w)
    before = _snapshot(model)
    gate.calls, gate.hold_at = 0, 3
    job = _scorecam(browser, w)
    assert gate.reached.wait(20)
    # The job is inside a forward; it notices the cancel at the next one.
    threading.Timer(0.2, gate.release.set).start()
    gate_calls = gate.calls
    w.set_inputs(torch.randn(2, 3, 8, 8))
    assert browser.reply_to(job).error == "cancelled"
    assert w.num_samples == 2 and gate.calls == gate_calls + 1  # only the new capture ran
    assert _no_worker_threads()
    _assert_same(before, model)


def test_a_dropped_layer_is_recomputed_as_a_job_the_view_can_follow_and_cancel(
    make: Make,
) -> None:
    model, gate = _model()
    # One byte of budget: every layer is dropped at capture time and recomputed when shown.
    w = make(model, torch.randn(2, 3, 8, 8), budget_bytes=1)
    browser = _browser(w)
    before = _snapshot(model)
    reply = browser.request("layer", layer="2", sample=1, revision=w.revision)
    assert reply.ok
    labels = [t["label"] for t in _tasks_sent(browser) if t is not None]
    assert labels == ["Computing 2 (dropped to stay within budget_bytes)"]
    # Served from memory now: no job.
    sent = len(_tasks_sent(browser))
    assert browser.request("layer", layer="2", sample=1, revision=w.revision).ok
    assert len(_tasks_sent(browser)) == sent
    # Cancelled inside the recompute's forward: the reply says so, and the model is intact.
    gate.calls, gate.hold_at = 0, 1
    job = browser.send_request("layer", layer="3", sample=0, revision=w.revision)
    assert gate.reached.wait(20)
    assert browser.request("cancel", task=job, revision=w.revision).meta["cancelled"]
    gate.release.set()
    assert browser.reply_to(job).error == "cancelled"
    _assert_same(before, model)
    gate.hold_at = 0
    assert browser.request("layer", layer="3", sample=0, revision=w.revision).ok


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_the_view_computes_a_slow_method_for_the_shown_sample_only(make: Make, method: str) -> None:
    from fmwidget.gradcam import gradcam

    model, _gate = _model()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    w = make(model, x)
    browser = _browser(w)
    before = _snapshot(model)
    request = {"layer": "1", "revision": w.revision, "method": method, "target": 2}
    reply = browser.reply_to(browser.send_request("gradcam", sample=1, **request))
    assert reply.ok, reply.error
    # One sample's channels, not the batch's: C forwards' worth of masked inputs.
    totals = {t["total"] for t in _tasks_sent(browser) if t is not None and t["total"]}
    assert totals == {CHANNELS}
    expected = gradcam(model, x[1:2], "1", target=2, method=method, progress=False)[0]
    np.testing.assert_allclose(reply.arrays["heatmap"], expected.numpy(), rtol=1e-5, atol=1e-6)
    # Kept for that sample; another sample is computed on its own.
    sent = len(_tasks_sent(browser))
    assert browser.reply_to(browser.send_request("gradcam", sample=1, **request)).ok
    assert len(_tasks_sent(browser)) == sent
    other = browser.reply_to(browser.send_request("gradcam", sample=0, **request))
    expected = gradcam(model, x[0:1], "1", target=2, method=method, progress=False)[0]
    np.testing.assert_allclose(other.arrays["heatmap"], expected.numpy(), rtol=1e-5, atol=1e-6)
    _assert_same(before, model)
