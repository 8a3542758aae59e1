"""Multi-label scores: sigmoid probabilities, per-class decision thresholds fitted on validation, and the metrics of
a held-out split (scikit-learn computes them).

Small pure functions over arrays: ``logits`` (N, C) float, ``labels`` (N, C) multi-hot. Probabilities are
``sigmoid(logits / T)`` with the temperature ``T`` fitted on validation (``calibration.fit_temperature``); the
thresholds apply to those probabilities. Each class's average precision (AP) ranks the split's images by that
class's probability; mAP is their mean over the classes with a positive image.
"""

import numpy as np
from scipy import special
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    precision_recall_curve,
    precision_recall_fscore_support,
)

from imgclf.evaluation.calibration import bin_errors, binned

DEFAULT_THRESHOLD = 0.5  # a class with no positive validation image keeps it


def sigmoid(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Element-wise probabilities of ``logits / temperature`` (float64, stable for large logits)."""
    return special.expit(np.asarray(logits, dtype=np.float64) / temperature)


def fit_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class, the probability threshold of best F1 on these (validation) images — the midpoint between the
    chosen cut and the next lower probability, so that it generalises; ½ for a class with no positive image."""
    thresholds = np.full(probs.shape[1], DEFAULT_THRESHOLD)
    for c in range(probs.shape[1]):
        if not labels[:, c].any():
            continue
        precision, recall, cuts = precision_recall_curve(labels[:, c], probs[:, c])
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        best = int(np.argmax(f1[:-1]))  # the last point (recall 0) has no threshold
        below = probs[:, c][probs[:, c] < cuts[best]]
        thresholds[c] = (cuts[best] + below.max()) / 2 if len(below) else cuts[best]
    return thresholds


def per_class_ap(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Average precision of each class (NaN for a class with no positive image)."""
    return np.array(
        [
            average_precision_score(labels[:, c], probs[:, c]) if labels[:, c].any() else np.nan
            for c in range(probs.shape[1])
        ]
    )


def multilabel_scores(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, classes: list[str]) -> dict:
    """mAP, per-class AP, micro and macro F1 at ``thresholds``, exact-match ratio, Hamming loss, label cardinality
    of predictions and truth, and per-class precision, recall (its ``accuracy``: the share of the class's images
    found), F1, support and threshold."""
    predicted = probs >= thresholds
    truth = labels.astype(bool)
    ap = per_class_ap(probs, truth)
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, zero_division=0)
    per_class = {
        name: {
            "ap": None if np.isnan(ap[i]) else float(ap[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "accuracy": float(recall[i]),
            "threshold": float(thresholds[i]),
        }
        for i, name in enumerate(classes)
    }
    return {
        "map": float(np.nanmean(ap)),
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "exact_match": float(accuracy_score(truth, predicted)),
        "hamming_loss": float(hamming_loss(truth, predicted)),
        "cardinality": {"predicted": float(predicted.sum(1).mean()), "true": float(truth.sum(1).mean())},
        "per_class": per_class,
    }


def binary_reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Reliability over every class-probability: per equal-width probability bin, the count, mean probability
    ('confidence') and the share of them that are true labels ('accuracy')."""
    return binned(probs.reshape(-1), labels.reshape(-1).astype(np.float64), n_bins)


def binary_calibration(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """ECE and MCE over every class-probability, mean binary NLL per class-probability and Brier score."""
    p, y = np.clip(probs, 1e-12, 1 - 1e-12), labels.astype(np.float64)
    return {
        **bin_errors(binary_reliability(probs, labels, n_bins)),
        "nll": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()),
        "brier": float(((probs - y) ** 2).sum(axis=1).mean()),
    }


def pr_curve(probs: np.ndarray, labels: np.ndarray, points: int = 200) -> dict[str, list[float]]:
    """Precision and recall of one class's ``probs`` against its 0/1 ``labels``, thinned to about ``points``."""
    precision, recall, _ = precision_recall_curve(labels, probs)
    keep = np.unique(np.linspace(0, len(precision) - 1, min(points, len(precision))).astype(int))
    return {"precision": precision[keep].tolist(), "recall": recall[keep].tolist()}
