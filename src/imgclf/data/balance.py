"""How unevenly a training split's images fall into its classes, and what each remedy needs from the counts.

Small pure functions over label tensors. Each assumes labels in ``0 … num_classes - 1`` (class counts also take
multi-hot labels (N, C)); the training split holds every class at least once (the data layer checks it), so no
count is zero where a function divides by it.
"""

import torch

from imgclf.data.policies import IMBALANCED


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Images per class (int64, length ``num_classes``) of class indices (N,) or multi-hot labels (N, C)."""
    if labels.ndim == 2:
        return labels.cpu().long().sum(0)
    return torch.bincount(labels.cpu().long(), minlength=num_classes)


def imbalance_ratio(counts: torch.Tensor) -> float:
    """The largest class's count over the smallest's (1.0 for a balanced split)."""
    present = counts[counts > 0].double()
    return float(present.max() / present.min())


def chosen_balance(requested: str, ratio: float) -> str:
    """The balance mode a run uses: ``requested``, or for ``auto`` logit adjustment when the split is imbalanced
    (``ratio`` ≥ :data:`IMBALANCED`) and none otherwise."""
    if requested != "auto":
        return requested
    return "logit-adjust" if ratio >= IMBALANCED else "none"


def class_weights(counts: torch.Tensor) -> torch.Tensor:
    """Loss weights ``N / (C · n_c)``: every class weighs the same in total, the mean weight of an image stays 1."""
    counts = counts.double().clamp(min=1)
    return (counts.sum() / (len(counts) * counts)).float()


def sample_weights(labels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Drawing weight ``1 / n_y`` of each image: a draw picks every class equally often."""
    return (1.0 / counts.double().clamp(min=1))[labels.cpu().long()].float()


def log_prior(counts: torch.Tensor) -> torch.Tensor:
    """``log(n_c / N)``: what logit adjustment adds to the logits in the training loss (Menon et al. 2021)."""
    counts = counts.double().clamp(min=1)
    return (counts / counts.sum()).log().float()
