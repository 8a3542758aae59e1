"""Calibration: expected/maximum calibration error, NLL, Brier score, reliability bins, temperature scaling.

Temperature scaling (Guo et al. 2017) divides logits by one scalar T fitted by minimising NLL on the validation split.
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a (N, C) array, computed stably in float64 (SciPy's, as inference computes it)."""
    return special.softmax(logits.astype(np.float64), axis=1)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: sample count, mean confidence and accuracy of the top-1 predictions."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
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
    bins = reliability_bins(probs, labels, n_bins)
    gaps = np.abs(bins["accuracy"] - bins["confidence"])
    filled = bins["count"] > 0
    n = len(labels)
    onehot = np.eye(probs.shape[1])[labels]
    return {
        "ece": float((bins["count"] * gaps).sum() / n),
        "mce": float(gaps[filled].max()) if filled.any() else 0.0,
        "nll": float(-np.log(np.clip(probs[np.arange(n), labels], 1e-12, None)).mean()),
        "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()),
    }


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of ``logits / T`` (fit on validation logits only)."""
    x = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())
