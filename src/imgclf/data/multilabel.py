"""Labels of multi-label data: each image's classes as a row of a multi-hot (N, C) uint8 tensor.

Small pure functions. Single-label data keeps its (N,) integer labels; a labels tensor of two dimensions is
multi-label (:func:`is_multilabel`), so every layer reads the task off the labels it is given.
"""

from collections import Counter
from collections.abc import Sequence

import torch


def is_multilabel(labels: torch.Tensor) -> bool:
    """True for multi-hot labels (N, C), False for class indices (N,)."""
    return labels.ndim == 2


def multi_hot(rows: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """uint8 (N, C) with a 1 at each class index of each row."""
    out = torch.zeros(len(rows), num_classes, dtype=torch.uint8)
    for i, row in enumerate(rows):
        out[i, list(row)] = 1
    return out


def strata(rows: Sequence[Sequence[int]]) -> list[int]:
    """The class a stratified split files each image under: its rarest class over ``rows``, or — where that would
    leave a stratum of one image, which no stratified split takes — its next rarest class that has company, else one
    shared stratum (-1) of such images. A simple stand-in for iterative stratification (Sechidis et al. 2011)."""
    frequency = Counter(c for row in rows for c in row)
    order = [sorted(row, key=lambda c: (frequency[c], c)) for row in rows]
    chosen = [row[0] for row in order]
    size = Counter(chosen)
    for i, row in enumerate(order):
        if size[chosen[i]] >= 2:
            continue
        size[chosen[i]] -= 1
        chosen[i] = next((c for c in row[1:] if size[c] >= 1), -1)  # joins a stratum that then has two or more
        size[chosen[i]] += 1
    if size[-1] == 1:  # one image alone in the shared stratum: it joins the largest
        lone = chosen.index(-1)
        chosen[lone] = max((c for c in size if c != -1 and size[c]), key=lambda c: size[c])
    return chosen


def label_cardinality(labels: torch.Tensor) -> float:
    """Mean number of classes per image of multi-hot ``labels`` (1.0 for single-label data)."""
    return float(labels.float().sum(1).mean()) if is_multilabel(labels) and len(labels) else 1.0
