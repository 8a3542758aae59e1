"""The validation pass during training: a model's loss and accuracy over a loader, reduced across torchrun ranks
(multi-label: loss, exact-match ratio and mean average precision, the predictions gathered from every rank)."""

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.core.device import autocast
from imgclf.data.loader import BatchLoader
from imgclf.data.multilabel import is_multilabel
from imgclf.training import distributed
from imgclf.training.losses import hits, multilabel_loss


@torch.inference_mode()
def predict(
    model: nn.Module, loader: BatchLoader, device: torch.device, precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and labels of every batch of ``loader`` (validation during training; a finished model predicts
    through inference/predictor.py)."""
    model.eval()
    outputs, labels = [], []
    for images, batch_labels in loader:
        with autocast(device, precision):
            logits = model(images).float()
        outputs.append(logits)
        labels.append(batch_labels)
    if not outputs:  # a torchrun rank whose validation shard is empty (fewer images than ranks)
        return torch.empty(0, 0, device=device), torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(outputs), torch.cat(labels)


def evaluate_loader(
    model: nn.Module, loader: BatchLoader, device: torch.device, precision: str, num_classes: int = 0
) -> dict:
    """Mean cross-entropy loss, accuracy and balanced accuracy (mean recall over the classes present) of ``model``
    over ``loader`` (under torchrun: each rank's shard of it, the sums reduced across the ranks, so every rank gets
    the whole split's figures; ``num_classes``: the model's output count, needed where a shard may be empty);
    multi-hot labels get :func:`multilabel_validation`'s figures instead."""
    logits, labels = predict(model, loader, device, precision)
    if is_multilabel(loader.labels):
        return multilabel_validation(logits, labels, num_classes)
    k = num_classes if num_classes else (logits.shape[1] if logits.numel() else 0)
    # loss, correct, count, then correct and count per class: zero for an empty shard
    sums = torch.zeros(3 + 2 * k, dtype=torch.float64, device=device)
    if len(labels):
        loss = F.cross_entropy(logits, labels, reduction="sum")
        right = logits.argmax(1) == labels
        sums[:3] = torch.stack([loss.double(), right.sum().double(), sums.new_tensor(len(labels))])
        sums[3 : 3 + k] = torch.bincount(labels[right], minlength=k).double()
        sums[3 + k :] = torch.bincount(labels, minlength=k).double()
    sums = distributed.all_reduce_sum(sums)
    loss, correct, n = sums[:3].tolist()
    found, counts = sums[3 : 3 + k], sums[3 + k :]
    present = counts > 0
    balanced = (found[present] / counts[present]).mean().item() if present.any() else 0.0
    return {"loss": loss / max(n, 1), "acc": correct / max(n, 1), "balanced_acc": balanced}


def multilabel_validation(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Mean binary cross-entropy (summed over classes), exact-match ratio at probability ½ and mean average
    precision (scikit-learn's, over the classes with a positive image; NaN for non-finite outputs, which no epoch
    is then kept for) of the whole validation split, each rank's shard gathered."""
    from sklearn.metrics import average_precision_score

    k = num_classes or logits.shape[1]
    rows = torch.cat([logits.reshape(-1, k).float(), labels.reshape(-1, k).float()], 1)
    rows = distributed.all_gather_rows(rows).cpu()
    logits, labels = rows[:, :k], rows[:, k:]
    n = max(len(rows), 1)
    present = labels.sum(0) > 0
    finite = bool(torch.isfinite(logits).all())
    ap = average_precision_score(labels[:, present], logits[:, present], average="macro") if finite else float("nan")
    loss = float(multilabel_loss(logits, labels)) if len(rows) else 0.0
    return {"loss": loss, "acc": float(hits(logits, labels)) / n, "balanced_acc": 0.0, "map": float(ap)}
