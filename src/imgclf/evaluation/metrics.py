"""Classification metrics of a set of predictions (scikit-learn computes the per-class scores)."""

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support


def classification_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy (mean recall over the classes present), per-class and macro/weighted precision,
    recall and F1, confusion matrix, per-class accuracy."""
    predictions = logits.argmax(axis=1)
    k = len(classes)
    matrix = confusion_matrix(labels, predictions, labels=list(range(k)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=list(range(k)), zero_division=0
    )
    result = {
        "accuracy": float((predictions == labels).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "accuracy": float(matrix[i, i] / max(matrix[i].sum(), 1)),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": matrix.tolist(),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            labels, predictions, labels=list(range(k)), average=average, zero_division=0
        )
        result[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    return result


def most_confused_pairs(matrix: np.ndarray, classes: list[str], top: int = 5) -> list[dict]:
    """The (true, predicted) class pairs with the most mistakes, largest first."""
    off = np.array(matrix, dtype=np.int64)
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:top]
    pairs = []
    for flat in order:
        i, j = divmod(int(flat), off.shape[1])
        if off[i, j] == 0:
            break
        pairs.append({"true": classes[i], "predicted": classes[j], "count": int(off[i, j])})
    return pairs
