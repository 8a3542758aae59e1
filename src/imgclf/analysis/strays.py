"""Strays and confusable classes: images far from every other image, and pairs of classes the out-of-sample model
mixes up."""

import numpy as np

STRAY_NEIGHBOURS = 10  # the stray score averages the distances to this many nearest neighbours
FAR_OUT = 3.0  # a stray lies this many interquartile ranges above the upper quartile (Tukey's "far out")


def stray_scores(distances: np.ndarray, k: int = STRAY_NEIGHBOURS) -> np.ndarray:
    """Mean distance of each image to its ``k`` nearest neighbours (``distances``: (N, ≥k), nearest first): high
    for an image unlike any other of the dataset."""
    return distances[:, :k].mean(1)


def stray_flags(scores: np.ndarray, far_out: float = FAR_OUT) -> np.ndarray:
    """True for scores beyond the upper quartile by ``far_out`` interquartile ranges."""
    q1, q3 = np.quantile(scores, [0.25, 0.75])
    return scores > q3 + far_out * (q3 - q1)


def confusable_classes(labels: np.ndarray, probs: np.ndarray, classes: list[str], top: int = 5) -> list[dict]:
    """The ``top`` pairs of classes the out-of-sample predictions ``probs`` confuse most, by the share of either
    class's images predicted as the other (single-label ``labels`` (N,))."""
    from sklearn.metrics import confusion_matrix

    n = len(classes)
    counts = confusion_matrix(labels, probs.argmax(1), labels=np.arange(n)).astype(float)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    pairs = [
        {"a": classes[a], "b": classes[b], "a_as_b": float(rates[a, b]), "b_as_a": float(rates[b, a])}
        for a in range(n)
        for b in range(a + 1, n)
    ]
    return sorted(pairs, key=lambda p: -(p["a_as_b"] + p["b_as_a"]))[:top]
