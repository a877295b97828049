"""Debugging on captured activations: channel health, ranking, group differences, ablation, pairing.

Everything here takes tensors as captured, (N, C, H, W) with the channel on dim 1, and computes on
their device; only small per-channel results come back.

Example::

    from fmwidget.analysis import channel_health, rank_channels
    health = channel_health(acts)          # health.summary == "12 of 64 channels dead"
    order = rank_channels(acts, by="max", top_k=16)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from fmwidget.calling import call_model, resolve_layer, state_kept, tapped
from fmwidget.wire import FLAG_CONSTANT, FLAG_DEAD, FLAG_NONFINITE

__all__ = [
    "AblationChange",
    "AblationResult",
    "ChannelHealth",
    "GroupDifferences",
    "LayerPair",
    "ablate",
    "channel_health",
    "compare_layers",
    "group_differences",
    "health_masks",
    "rank_channels",
]


def _channel_dims(acts: torch.Tensor) -> tuple[int, ...]:
    """All dims but the channel dim (1): what per-channel statistics reduce over."""
    if not isinstance(acts, torch.Tensor) or acts.ndim < 2:
        got = tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
        raise ValueError(
            f"expected activations shaped (N, C, ...) with channels on dim 1; got {got}"
        )
    return (0, *range(2, acts.ndim))


@dataclass(frozen=True)
class ChannelHealth:
    """Per-channel health over a whole batch; bool tensors of shape (C,) on the activations' device.

    Attributes:
        dead: every value is zero (|v| <= eps) for every input.
        constant: one value everywhere (max - min <= eps) that is not zero.
        nonfinite: some value is NaN or ±Inf (such a channel is neither dead nor constant).
        summary: e.g. "12 of 64 channels dead, 2 constant, 1 with NaN/Inf".
    """

    dead: torch.Tensor
    constant: torch.Tensor
    nonfinite: torch.Tensor
    summary: str

    @property
    def flags(self) -> torch.Tensor:
        """The protocol's uint8 flag bits per channel: 1 dead, 2 constant, 4 has NaN/Inf."""
        return (
            self.dead.to(torch.uint8) * FLAG_DEAD
            + self.constant.to(torch.uint8) * FLAG_CONSTANT
            + self.nonfinite.to(torch.uint8) * FLAG_NONFINITE
        )


def channel_health(acts: torch.Tensor, eps: float = 0.0) -> ChannelHealth:
    """Flag dead, constant and non-finite channels of `acts` (N, C, ...) over the whole batch.

    Example::

        h = channel_health(capture["layer1.0.relu"])
        h.summary            # "3 of 64 channels dead"
        h.dead.nonzero()     # which ones
    """
    dims = _channel_dims(acts)
    channels = acts.shape[1]
    nonfinite = ~torch.isfinite(acts).all(dim=dims)
    # amax/amin propagate NaN, and such channels are excluded anyway.
    dead, constant = health_masks(acts.amin(dim=dims), acts.amax(dim=dims), nonfinite, eps)
    n_dead, n_const, n_bad = (int(t.sum()) for t in (dead, constant, nonfinite))
    parts = [f"{n_dead} of {channels} channels dead"]
    if n_const:
        parts.append(f"{n_const} constant")
    if n_bad:
        parts.append(f"{n_bad} with NaN/Inf")
    return ChannelHealth(dead, constant, nonfinite, ", ".join(parts))


def health_masks(
    low: torch.Tensor, high: torch.Tensor, nonfinite: torch.Tensor, eps: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dead and constant channels from each channel's extremes over the batch, ``(C,)`` each.

    The one definition of channel health (:func:`channel_health` and the widget's store both use
    it): dead = every value within ``eps`` of zero; constant = one value (within ``eps``) that is
    not zero; a channel with NaN/Inf (``nonfinite``) is neither.
    """
    dead = ~nonfinite & (high <= eps) & (low >= -eps)
    constant = ~nonfinite & ~dead & (high - low <= eps)
    return dead, constant


RankBy = Literal["mean", "max", "zeros", "gradcam"]


def rank_channels(
    acts: torch.Tensor,
    by: RankBy = "mean",
    weights: torch.Tensor | None = None,
    sample: int | None = None,
    top_k: int | None = None,
) -> torch.Tensor:
    """Channel indices of `acts` (N, C, ...) by a key, largest first (ties keep index order).

    by:
        "mean": mean activation; "max": largest activation (both over finite values);
        "zeros": fraction of exact zeros (sparsest, i.e. nearly dead, first);
        "gradcam": the Grad-CAM `weights`, (N, C) or (C,) — e.g. `gradcam_layer(...).weights`.
    sample: rank on that input only (its row of `weights` for "gradcam"); None = over the batch
        (the mean of the weights' rows).
    top_k: return only the first k.
    Channels whose key is NaN (all values non-finite) come last.

    Example::

        rank_channels(acts, by="gradcam", weights=res.weights, sample=0, top_k=8)
    """
    _channel_dims(acts)
    if sample is not None:
        if not -acts.shape[0] <= sample < acts.shape[0]:
            raise IndexError(f"sample {sample} is out of range for a batch of {acts.shape[0]}")
        acts = acts[sample].unsqueeze(0)
    dims = _channel_dims(acts)
    finite = torch.isfinite(acts)
    if by == "mean":
        key = torch.where(finite, acts, torch.nan).nanmean(dim=dims)
    elif by == "max":
        key = torch.where(finite, acts, -torch.inf).amax(dim=dims)
    elif by == "zeros":
        key = (acts == 0).float().mean(dim=dims)
    elif by == "gradcam":
        if weights is None:
            raise ValueError('by="gradcam" needs the Grad-CAM weights: weights=res.weights')
        if weights.ndim == 2:
            weights = weights.mean(dim=0) if sample is None else weights[sample]
        if weights.shape != (acts.shape[1],):
            raise ValueError(
                f"weights has shape {tuple(weights.shape)}; expected ({acts.shape[1]},) or "
                f"(N, {acts.shape[1]}) for these activations"
            )
        key = weights
    else:
        raise ValueError(f"by={by!r}; choose 'mean', 'max', 'zeros' or 'gradcam'")
    key = torch.nan_to_num(key.float(), nan=-torch.inf)
    order = torch.sort(key, descending=True, stable=True).indices
    # -inf from NaN and from all-non-finite "max" channels tie at the bottom, in index order.
    return order if top_k is None else order[:top_k]


@dataclass(frozen=True)
class GroupDifferences:
    """Channel differences between groups of inputs (an activation bias audit).

    Attributes:
        labels: the group labels, in order of first appearance.
        counts: number of inputs per group, (G,).
        means: per-group channel means, (G, C): each input's channel is averaged over its
            spatial positions, then over the group's inputs.
        pair: the two labels compared (a, b).
        effect: Cohen's d of every channel for a vs b, (C,) (see :func:`group_differences`).
        channels: the `top_k` channels with the largest |d|, (k,).
        examples: for each of `channels`, one input index from a and one from b, (k, 2): the input
            whose value of that channel is closest to its group's mean (a typical member).
    """

    labels: list[Hashable]
    counts: torch.Tensor
    means: torch.Tensor
    pair: tuple[Hashable, Hashable]
    effect: torch.Tensor
    channels: torch.Tensor
    examples: torch.Tensor


def group_differences(
    acts: torch.Tensor,
    groups: Sequence[Hashable] | torch.Tensor | Any,
    top_k: int = 10,
    pair: tuple[Hashable, Hashable] | None = None,
) -> GroupDifferences:
    """Which channels respond differently to two groups of inputs.

    `groups` gives a label per input (length N, at least two distinct labels). Each input's channel
    value is its spatial mean x. For groups a and b (`pair`, default the first two labels seen):

        d = (mean_a - mean_b) / s,   s = sqrt(((n_a - 1) var_a + (n_b - 1) var_b) / (n_a + n_b - 2))

    with unbiased variances (Cohen's d with pooled standard deviation). Where s == 0: d = 0 if the
    means are equal, ±inf if they differ (perfect separation). Channels are ordered by |d|, ties by
    |mean_a - mean_b|; channels with non-finite values get d = NaN and come last.

    Example::

        diff = group_differences(acts, ["cat", "cat", "dog", "dog", "dog"], top_k=5)
        diff.channels, diff.effect[diff.channels], diff.examples
    """
    dims = _channel_dims(acts)
    # Tensors and numpy arrays hold numbers; tolist() gives hashable Python labels.
    labels_per_input = list(groups.tolist() if hasattr(groups, "tolist") else groups)
    n = acts.shape[0]
    if len(labels_per_input) != n:
        raise ValueError(f"groups has {len(labels_per_input)} labels for a batch of {n} inputs")
    labels = list(dict.fromkeys(labels_per_input))
    if len(labels) < 2:
        raise ValueError(f"groups needs at least two distinct labels; got {labels}")
    a_label, b_label = pair if pair is not None else (labels[0], labels[1])
    for label in (a_label, b_label):
        if label not in labels:
            raise ValueError(f"pair label {label!r} is not among the groups {labels}")
    code = torch.tensor([labels.index(g) for g in labels_per_input])
    # The reduction to (N, C) runs on the device; the small statistics in float64 on the host.
    x = acts.mean(dim=tuple(d for d in dims if d != 0), dtype=torch.float32).cpu().double()
    onehot = torch.nn.functional.one_hot(code, len(labels)).to(x.dtype)  # (N, G)
    counts = onehot.sum(dim=0)
    means = (onehot.T @ x) / counts[:, None]
    ia, ib = labels.index(a_label), labels.index(b_label)
    na, nb = int(counts[ia]), int(counts[ib])
    if na + nb < 3:
        raise ValueError(
            f"groups {a_label!r} and {b_label!r} have {na} and {nb} inputs; the pooled standard "
            "deviation needs at least 3 inputs between them"
        )
    in_a, in_b = code == ia, code == ib
    xa, xb = x[in_a], x[in_b]
    ss = ((xa - means[ia]) ** 2).sum(dim=0) + ((xb - means[ib]) ** 2).sum(dim=0)
    pooled = torch.sqrt(ss / (na + nb - 2))
    diff = means[ia] - means[ib]
    effect = torch.where(
        pooled > 0, diff / pooled, torch.where(diff == 0, 0.0, torch.sign(diff) * torch.inf)
    )
    by_diff = torch.sort(torch.nan_to_num(diff.abs(), nan=-1.0), descending=True, stable=True)
    key = torch.nan_to_num(effect.abs()[by_diff.indices], nan=-1.0)
    channels = by_diff.indices[torch.sort(key, descending=True, stable=True).indices][:top_k]
    idx_a, idx_b = in_a.nonzero().squeeze(1), in_b.nonzero().squeeze(1)
    typical_a = idx_a[(xa[:, channels] - means[ia, channels]).abs().argmin(dim=0)]
    typical_b = idx_b[(xb[:, channels] - means[ib, channels]).abs().argmin(dim=0)]
    return GroupDifferences(
        labels=labels,
        counts=counts.long(),
        means=means.float(),
        pair=(a_label, b_label),
        effect=effect,
        channels=channels,
        examples=torch.stack([typical_a, typical_b], dim=1),
    )


class AblationChange(NamedTuple):
    """How one sample's prediction moved when channels were zeroed."""

    top_before: int
    prob_before: float
    top_after: int
    prob_after: float
    prob_change: float  # probability of `top_before` after minus before


@dataclass(frozen=True, repr=False)
class AblationResult:
    """Model outputs with and without the ablation.

    `changes` has one `AblationChange` per sample when the model returns (N, classes) logits,
    else it is None. `layer` and `channels` say what was zeroed.

    Example::

        >>> ablate(model, x, "layer4.1.conv2", [3, 7])  # doctest: +SKIP
        AblationResult(2 inputs, channels [3, 7] of 'layer4.1.conv2': top class kept on 1 of 2;
        mean change of the top class −0.21)
    """

    output_before: Any
    output_after: Any
    changes: list[AblationChange] | None
    layer: str = ""
    channels: tuple[int, ...] = ()

    def __repr__(self) -> str:
        # The outputs are whole logits tensors: the repr says what they add up to instead.
        shown = ", ".join(map(str, self.channels[:8]))
        more = f", … ({len(self.channels)} channels)" if len(self.channels) > 8 else ""
        what = f"channels [{shown}{more}] of {self.layer!r}"
        if self.changes is None:
            out = self.output_before
            count = (
                _inputs(out.shape[0]) + ", "
                if isinstance(out, torch.Tensor) and out.ndim > 0
                else ""
            )
            return f"AblationResult({count}{what}: outputs are not (N, classes) scores)"
        n = len(self.changes)
        kept = sum(c.top_after == c.top_before for c in self.changes)
        mean = sum(c.prob_change for c in self.changes) / max(n, 1)
        sign = "−" if mean < 0 else "+"
        return (
            f"AblationResult({_inputs(n)}, {what}: top class kept on {kept} "
            f"of {n}; mean change of the top class {sign}{abs(mean):.2f})"
        )


def _inputs(n: int) -> str:
    return f"{n} input" if n == 1 else f"{n} inputs"


def ablate(
    model: nn.Module, inputs: Any, layer: str | nn.Module, channels: Sequence[int] | torch.Tensor
) -> AblationResult:
    """Re-run the model with `channels` of `layer`'s output set to zero, and compare predictions.

    `layer` is named as for Grad-CAM (`name`, `name:k`, `name[0]`, or the module); `inputs` is
    passed as for :func:`fmwidget.gradcam.gradcam_layer`. Both runs use `torch.no_grad()` and the
    model's current mode (in training mode, dropout differs between them); hooks and buffers are
    left as they were.

    Example::

        res = ablate(model, x, "layer4.1.conv2", [12, 40])
        res.changes[0]   # AblationChange(top_before=281, prob_before=0.71, ..., prob_change=-0.3)
    """
    ref = resolve_layer(model, layer)
    wanted = torch.as_tensor(channels, dtype=torch.long).reshape(-1)

    def zero(out: torch.Tensor) -> torch.Tensor:
        if out.ndim < 2:
            raise ValueError(
                f"layer {ref.name!r} output has shape {tuple(out.shape)}; "
                "ablation needs channels on dim 1"
            )
        bad = wanted[(wanted < 0) | (wanted >= out.shape[1])]
        if bad.numel():
            raise IndexError(
                f"channel {int(bad[0])} is out of range: layer {ref.name!r} has {out.shape[1]}"
            )
        ablated = out.clone()
        ablated[:, wanted.to(out.device)] = 0
        return ablated

    with torch.no_grad(), state_kept(model):
        before = call_model(model, inputs)
        with tapped(ref, zero) as tap:
            after = call_model(model, inputs)
            tap.check_called()
    changes = None
    if isinstance(before, torch.Tensor) and before.ndim == 2:
        p_before = torch.softmax(before.float(), dim=1)
        p_after = torch.softmax(after.float(), dim=1)
        top_b = p_before.argmax(dim=1)
        top_a = p_after.argmax(dim=1)
        rows = torch.arange(before.shape[0], device=before.device)
        pb, pa = p_before[rows, top_b], p_after[rows, top_b]
        changes = [
            AblationChange(tb, b, ta, a_top, a - b)
            for tb, b, ta, a_top, a in zip(
                top_b.tolist(),
                pb.tolist(),
                top_a.tolist(),
                p_after[rows, top_a].tolist(),
                pa.tolist(),
                strict=True,
            )
        ]
    return AblationResult(before, after, changes, ref.name, tuple(wanted.tolist()))


class LayerPair(NamedTuple):
    """Two layers matched across models; `same_shape` compares (C, H, W), ignoring the batch."""

    name_a: str
    name_b: str
    same_shape: bool


def _layer_list(
    capture: Mapping[str, Any], kinds: tuple[str, ...] | None
) -> list[tuple[str, tuple]]:
    """(name, shape) per captured layer in call order, optionally only those of the given kinds."""
    report = getattr(capture, "report", None)
    if report is not None:
        infos = report.captured
        return [
            (info.name, tuple(info.shape)) for info in infos if kinds is None or info.kind in kinds
        ]
    if kinds is not None:
        raise TypeError(
            "match='order' needs captures from fmwidget.capture.capture (they know each "
            f"layer's kind); got a {type(capture).__name__}"
        )
    return [(name, tuple(t.shape)) for name, t in capture.items()]


def compare_layers(
    capture_a: Mapping[str, Any],
    capture_b: Mapping[str, Any],
    match: Literal["name", "order"] = "name",
) -> list[LayerPair]:
    """Pair up the layers of two captures for a side-by-side view.

    match="name": layers with the same name, in `capture_a`'s order (two variants of one
    architecture). match="order": the i-th conv layer of a with the i-th of b (two different
    architectures), up to the shorter list.

    Example::

        pairs = compare_layers(capture(m1, x), capture(m2, x), match="order")
        [p for p in pairs if p.same_shape]
    """
    if match == "name":
        shapes_b = dict(_layer_list(capture_b, None))
        return [
            LayerPair(name, name, shape[1:] == shapes_b[name][1:])
            for name, shape in _layer_list(capture_a, None)
            if name in shapes_b
        ]
    if match == "order":
        a, b = _layer_list(capture_a, ("conv",)), _layer_list(capture_b, ("conv",))
        return [
            LayerPair(na, nb, sa[1:] == sb[1:]) for (na, sa), (nb, sb) in zip(a, b, strict=False)
        ]
    raise ValueError(f"match={match!r}; choose 'name' or 'order'")
