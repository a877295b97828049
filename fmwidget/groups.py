"""Group labels of a batch (``groups=``) and the pair of groups the view compares.

>>> labels = group_labels(["cat", "cat", "dog"], 3)
>>> check_group_pair(["cat", "dog"], labels)
['cat', 'dog']
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from fmwidget.analysis import group_differences

__all__ = ["check_group_pair", "default_pair", "group_effect", "group_labels"]


def group_labels(groups: Sequence[Hashable], num_samples: int) -> list[str]:
    """``groups=`` as one text label per sample; at least two different labels."""
    raw = groups.tolist() if hasattr(groups, "tolist") else groups
    labels = [str(g) for g in raw]
    if len(labels) != num_samples:
        raise ValueError(f"groups= has {len(labels)} labels for a batch of {num_samples} inputs")
    if len(set(labels)) < 2:
        raise ValueError(f"groups= needs at least two different labels, got {sorted(set(labels))}")
    return labels


def default_pair(labels: Sequence[str]) -> list[str]:
    """The pair compared until the user picks one: the first two labels, in order of appearance."""
    return list(dict.fromkeys(labels))[:2]


def check_group_pair(pair: Sequence[str], labels: Sequence[str]) -> list[str]:
    """``pair`` if it names two different groups of ``labels`` with 3 inputs between them."""
    pair = list(pair)
    if not pair:
        return pair
    present = list(dict.fromkeys(labels))
    if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(present):
        raise ValueError(
            f"group_pair must be two different labels among the groups {present}, got {pair}"
        )
    counts = [list(labels).count(label) for label in pair]
    if sum(counts) < 3:
        raise ValueError(
            f"groups {pair[0]!r} and {pair[1]!r} have {counts[0]} and {counts[1]} inputs; "
            "comparing them needs at least 3 inputs between them"
        )
    return pair


def group_effect(
    maps: torch.Tensor, labels: Sequence[str], pair: Sequence[str]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Cohen's d per channel between the two groups of ``pair``, and the ``meta.groups`` of a
    ``layer`` reply (the pair, the count and the sample indices of each group)."""
    diff = group_differences(maps, list(labels), top_k=1, pair=(pair[0], pair[1]))
    present = list(dict.fromkeys(labels))
    info = {
        "pair": list(pair),
        "counts": {label: list(labels).count(label) for label in present},
        "examples": {label: [i for i, g in enumerate(labels) if g == label] for label in present},
    }
    return diff.effect.float().cpu().numpy(), info
