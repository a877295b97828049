"""Channel health, ranking, group effect sizes, ablation and layer pairing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from fmwidget.analysis import (
    AblationChange,
    AblationResult,
    ablate,
    channel_health,
    compare_layers,
    group_differences,
    rank_channels,
)
from fmwidget.capture import capture


def _health_acts() -> torch.Tensor:
    acts = torch.randn(4, 6, 3, 3, generator=torch.Generator().manual_seed(0))
    acts[:, 0] = 0.0  # dead
    acts[:, 1] = 2.0  # constant
    acts[1, 3, 0, 0] = torch.nan  # non-finite among normal values
    acts[:, 4] = 0.0
    acts[2, 4, 1, 1] = torch.inf  # zero but for one Inf: non-finite, not dead
    acts[:, 5] = 1e-7 * torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(1))
    return acts


def test_channel_health_flags() -> None:
    health = channel_health(_health_acts())
    assert health.dead.tolist() == [True, False, False, False, False, False]
    assert health.constant.tolist() == [False, True, False, False, False, False]
    assert health.nonfinite.tolist() == [False, False, False, True, True, False]
    assert health.flags.tolist() == [1, 2, 0, 4, 4, 0]
    assert health.summary == "1 of 6 channels dead, 1 constant, 2 with NaN/Inf"


def test_channel_health_eps_and_other_ranks() -> None:
    health = channel_health(_health_acts(), eps=1e-6)
    assert health.dead.tolist() == [True, False, False, False, False, True]
    assert not health.constant[5]
    flat = channel_health(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
    assert flat.summary == "1 of 2 channels dead"
    with pytest.raises(ValueError, match=r"\(N, C, \.\.\.\).*got \(3,\)"):
        channel_health(torch.zeros(3))


def _rank_acts() -> torch.Tensor:
    acts = torch.zeros(2, 4, 2, 2)
    acts[:, 0] = 1.0  # mean 1, max 1
    acts[0, 1, 0, 0] = 10.0  # mean 10/8 over the batch, max 10; sample 1 all zero
    acts[:, 2] = -1.0
    acts[1, 2, 0, 0] = 5.0  # mean 0.25, max 5
    acts[:, 3] = 0.5
    acts[0, 3, 0, 0] = torch.inf  # non-finite values are left out of mean and max
    return acts


def test_rank_channels_by_each_key() -> None:
    acts = _rank_acts()
    assert rank_channels(acts, by="mean").tolist() == [1, 0, 3, 2]
    assert rank_channels(acts, by="max").tolist() == [1, 2, 0, 3]
    # Sample 1 alone: means 1, 0, 0.5, 0.5.
    assert rank_channels(acts, by="mean", sample=1).tolist() == [0, 2, 3, 1]
    assert rank_channels(acts, by="mean", sample=-1).tolist() == [0, 2, 3, 1]
    # Zero fractions: 0, 7/8, 0, 0 -> ties keep index order.
    assert rank_channels(acts, by="zeros").tolist() == [1, 0, 2, 3]
    assert rank_channels(acts, by="max", top_k=2).tolist() == [1, 2]


def test_rank_channels_by_gradcam_weights() -> None:
    acts = _rank_acts()
    weights = torch.tensor([[0.1, -0.2, 0.3, 0.0], [0.5, 0.4, -0.3, 0.2]])
    assert rank_channels(acts, by="gradcam", weights=weights, sample=0).tolist() == [2, 0, 3, 1]
    # Batch mean of the weights: 0.3, 0.1, 0.0, 0.1.
    assert rank_channels(acts, by="gradcam", weights=weights).tolist() == [0, 1, 3, 2]
    assert rank_channels(acts, by="gradcam", weights=weights[1]).tolist() == [0, 1, 3, 2]
    with pytest.raises(ValueError, match="needs the Grad-CAM weights"):
        rank_channels(acts, by="gradcam")
    with pytest.raises(ValueError, match=r"weights has shape \(3,\); expected \(4,\)"):
        rank_channels(acts, by="gradcam", weights=torch.ones(3))
    with pytest.raises(ValueError, match="by='median'"):
        rank_channels(acts, by="median")  # type: ignore[arg-type]


def test_all_nonfinite_channel_ranks_last() -> None:
    acts = torch.ones(1, 3, 2, 2)
    acts[:, 0] = torch.nan
    assert rank_channels(acts, by="mean").tolist() == [1, 2, 0]


def _cohens_d(x: np.ndarray, in_a: np.ndarray, in_b: np.ndarray) -> np.ndarray:
    xa, xb = x[in_a], x[in_b]
    na, nb = len(xa), len(xb)
    pooled = np.sqrt(
        ((na - 1) * xa.var(axis=0, ddof=1) + (nb - 1) * xb.var(axis=0, ddof=1)) / (na + nb - 2)
    )
    return (xa.mean(axis=0) - xb.mean(axis=0)) / pooled


def test_group_differences_against_numpy() -> None:
    gen = torch.Generator().manual_seed(4)
    acts = torch.randn(9, 7, 4, 4, generator=gen)
    groups = np.array(["b", "a", "a", "b", "b", "a", "b", "a", "b"])
    acts[groups == "a", 2] += 1.5  # one channel clearly higher for group a
    result = group_differences(acts, groups, top_k=3)
    x = acts.double().mean(dim=(2, 3)).numpy()
    d = _cohens_d(x, groups == "b", groups == "a")
    assert result.labels == ["b", "a"]
    assert result.pair == ("b", "a")
    assert result.counts.tolist() == [5, 4]
    np.testing.assert_allclose(result.effect.numpy(), d, rtol=1e-6)
    np.testing.assert_allclose(result.means[1].numpy(), x[groups == "a"].mean(axis=0), rtol=1e-5)
    assert result.channels.tolist() == np.argsort(-np.abs(d), kind="stable")[:3].tolist()
    assert result.channels[0] == 2
    for (ea, eb), c in zip(result.examples.tolist(), result.channels.tolist(), strict=True):
        assert groups[ea] == "b" and groups[eb] == "a"
        members = np.flatnonzero(groups == "a")
        assert eb == members[np.argmin(np.abs(x[members, c] - x[members, c].mean()))]


def test_group_differences_zero_variance_and_pair_choice() -> None:
    acts = torch.zeros(6, 3, 2, 2)
    groups = [0, 0, 1, 1, 2, 2]
    acts[[0, 1], 0] = 3.0  # constant within groups, means differ: perfect separation
    acts[:, 1] = 1.0  # constant everywhere: no difference
    acts[[0, 2], 2] = torch.tensor([1.0, 2.0])[:, None, None]
    result = group_differences(acts, torch.tensor(groups), top_k=2, pair=(0, 1))
    assert result.effect[0] == torch.inf
    assert result.effect[1] == 0
    assert result.channels.tolist() == [0, 2]
    assert result.means.shape == (3, 3)
    assert group_differences(acts, groups, pair=(1, 0)).effect[0] == -torch.inf


def test_group_differences_errors() -> None:
    acts = torch.zeros(3, 2, 2, 2)
    with pytest.raises(ValueError, match="2 labels for a batch of 3"):
        group_differences(acts, ["a", "b"])
    with pytest.raises(ValueError, match="at least two distinct labels"):
        group_differences(acts, ["a", "a", "a"])
    with pytest.raises(ValueError, match="'c' is not among the groups"):
        group_differences(acts, ["a", "b", "b"], pair=("a", "c"))
    with pytest.raises(ValueError, match="have 1 and 1 inputs"):
        group_differences(acts, ["a", "b", "c"])


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize(
    ("layer", "params"), [("layer1.0.conv1", ["weight"]), ("bn1", ["weight", "bias"])]
)
def test_ablation_matches_zeroed_weights(layer: str, params: list[str]) -> None:
    model = _resnet18()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    channels = [1, 5, 7]
    manual = copy.deepcopy(model)
    with torch.no_grad():
        for name in params:
            getattr(dict(manual.named_modules())[layer], name)[channels] = 0
        expected_after = manual(x)
        expected_before = model(x)
    result = ablate(model, x, layer, channels)
    torch.testing.assert_close(result.output_before, expected_before)
    torch.testing.assert_close(result.output_after, expected_after)
    assert not torch.allclose(result.output_after, expected_before)
    assert _hook_count(model) == 0
    p_before = torch.softmax(expected_before, dim=1)
    p_after = torch.softmax(expected_after, dim=1)
    for n, change in enumerate(result.changes or []):
        top = int(p_before[n].argmax())
        assert change.top_before == top
        assert change.top_after == int(p_after[n].argmax())
        assert change.prob_change == pytest.approx(float(p_after[n, top] - p_before[n, top]))
    assert result.changes is not None and len(result.changes) == 2
    assert (result.layer, result.channels) == (layer, (1, 5, 7))
    kept = sum(c.top_after == c.top_before for c in result.changes)
    mean = sum(c.prob_change for c in result.changes) / 2
    assert repr(result) == (
        f"AblationResult(2 inputs, channels [1, 5, 7] of {layer!r}: top class kept on {kept} of 2; "
        f"mean change of the top class {'−' if mean < 0 else '+'}{abs(mean):.2f})"
    )


def test_ablation_result_repr_is_one_short_line() -> None:
    change = AblationChange(3, 0.9, 5, 0.5, -0.4)
    big = AblationResult(
        torch.zeros(2, 1000), torch.zeros(2, 1000), [change, change._replace(top_after=3)], "fc"
    )
    assert repr(big) == (
        "AblationResult(2 inputs, channels [] of 'fc': top class kept on 1 of 2; "
        "mean change of the top class −0.40)"
    )
    many = AblationResult(
        torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), None, "layer4", tuple(range(512))
    )
    assert repr(many) == (
        "AblationResult(1 input, channels [0, 1, 2, 3, 4, 5, 6, 7, … (512 channels)] of 'layer4': "
        "outputs are not (N, classes) scores)"
    )


def test_ablating_every_channel_of_layer4_leaves_the_fc_bias() -> None:
    model = _resnet18()
    x = torch.randn(2, 3, 64, 64)
    result = ablate(model, x, model.layer4, range(512))
    torch.testing.assert_close(result.output_after, model.fc.bias.detach().expand(2, -1))


def test_ablation_of_a_non_classifier_and_errors() -> None:
    features = torchvision.models.mobilenet_v2(weights=None).features[:4].eval()
    x = torch.randn(1, 3, 32, 32)
    result = ablate(features, x, "1", [0])
    assert result.changes is None
    assert result.output_after.shape == result.output_before.shape
    whole = ablate(features, x, "(model)", [0, 2])
    assert (whole.output_after[:, [0, 2]] == 0).all()
    torch.testing.assert_close(whole.output_after[:, 1], result.output_before[:, 1])
    with pytest.raises(IndexError, match="channel 99 is out of range: layer '1' has 16"):
        ablate(features, x, "1", [99])
    assert _hook_count(features) == 0


def test_compare_layers_on_two_torchvision_models() -> None:
    x = torch.randn(1, 3, 64, 64)
    resnet18 = capture(torchvision.models.resnet18(weights=None).eval(), x)
    resnet34 = capture(torchvision.models.resnet34(weights=None).eval(), x)
    mobilenet = capture(torchvision.models.mobilenet_v2(weights=None).eval(), x)
    by_name = compare_layers(resnet18, resnet34, match="name")
    assert by_name[0] == ("conv1", "conv1", True)
    assert len(by_name) == len(resnet18.report.captured)  # resnet34 has every resnet18 name
    assert all(p.same_shape for p in by_name)
    by_order = compare_layers(resnet18, mobilenet, match="order")
    assert len(by_order) == 20  # resnet18's conv count; mobilenet_v2 has 52
    assert by_order[0] == ("conv1", "features.0.0", False)  # 64 vs 32 channels
    assert by_order[1].name_b == "features.1.conv.0.0"
    with pytest.raises(TypeError, match="match='order' needs captures"):
        compare_layers({"a": torch.zeros(1)}, {"a": torch.zeros(1)}, match="order")
    assert compare_layers({"a": torch.zeros(1, 2)}, {"a": torch.zeros(3, 2)}) == [("a", "a", True)]
