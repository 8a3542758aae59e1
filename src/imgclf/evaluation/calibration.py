"""Calibration: expected/maximum calibration error, NLL, Brier score, reliability bins, temperature scaling.

Temperature scaling (Guo et al. 2017) divides logits by one scalar T fitted by minimising NLL on the validation split.
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special

# T is kept within these: models that learned something fitted 0.14 (label smoothing leaves a network underconfident)
# to 1.9 in benchmarks/results; networks at chance fitted 12 and 138 there, and one trained for a single epoch
# 1,501,544, which flattens every prediction to 1/C; bounded, their probabilities keep some of their spread.
TEMPERATURE_BOUNDS = (0.05, 10.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a (N, C) array, computed stably in float64 (SciPy's, as inference computes it)."""
    return special.softmax(logits.astype(np.float64), axis=1)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: sample count, mean confidence and accuracy of the top-1 predictions."""
    return binned(probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64), n_bins)


def binned(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width bin of ``confidence`` (values in [0, 1]): the count, the mean confidence and the mean of
    ``correct`` (1.0 for a right prediction, or a true label) — the reliability diagram's bars."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    safe = np.maximum(count, 1)
    return {
        "edges": edges,
        "count": count,
        "confidence": np.bincount(index, weights=confidence, minlength=n_bins) / safe,
        "accuracy": np.bincount(index, weights=correct, minlength=n_bins) / safe,
    }


def calibration_metrics(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """ECE and MCE over ``n_bins`` confidence bins, negative log-likelihood and multi-class Brier score."""
    probs = softmax(logits)
    n = len(labels)
    onehot = np.eye(probs.shape[1])[labels]
    return {
        **bin_errors(reliability_bins(probs, labels, n_bins)),
        "nll": float(-np.log(np.clip(probs[np.arange(n), labels], 1e-12, None)).mean()),
        "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()),
    }


def bin_errors(bins: dict[str, np.ndarray]) -> dict[str, float]:
    """Expected (count-weighted mean) and maximum calibration error of reliability ``bins``."""
    gaps = np.abs(bins["accuracy"] - bins["confidence"])
    filled = bins["count"] > 0
    return {
        "ece": float((bins["count"] * gaps).sum() / max(bins["count"].sum(), 1)),
        "mce": float(gaps[filled].max()) if filled.any() else 0.0,
    }


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T in :data:`TEMPERATURE_BOUNDS` minimising the NLL of ``logits / T`` (fit on validation logits
    only): softmax cross-entropy against class indices (N,), binary cross-entropy against multi-hot labels (N, C);
    1 (the raw probabilities) when no temperature lowers the NLL."""
    from scipy.optimize import minimize_scalar

    x = torch.as_tensor(logits, dtype=torch.float64)
    multilabel = np.ndim(labels) == 2
    y = torch.as_tensor(labels, dtype=torch.float64 if multilabel else torch.long)
    nll = F.binary_cross_entropy_with_logits if multilabel else F.cross_entropy

    def loss(log_t: float) -> float:
        return float(nll(x / np.exp(log_t), y))

    found = minimize_scalar(loss, bounds=np.log(TEMPERATURE_BOUNDS), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(found.x)) if found.fun < loss(0.0) else 1.0
