"""The validation pass during training: a model's loss and accuracy over a loader, reduced across torchrun ranks."""

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.core.device import autocast
from imgclf.data.loader import BatchLoader
from imgclf.training import distributed


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


def evaluate_loader(model: nn.Module, loader: BatchLoader, device: torch.device, precision: str) -> dict:
    """Mean cross-entropy loss and accuracy of ``model`` over ``loader`` (under torchrun: each rank's shard of it,
    the sums reduced across the ranks, so every rank gets the whole split's figures)."""
    logits, labels = predict(model, loader, device, precision)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count: zero for an empty shard
    if len(labels):
        loss = F.cross_entropy(logits, labels, reduction="sum")
        sums = torch.stack([loss.double(), (logits.argmax(1) == labels).sum().double(), sums.new_tensor(len(labels))])
    loss, correct, n = distributed.all_reduce_sum(sums).tolist()
    return {"loss": loss / max(n, 1), "acc": correct / max(n, 1)}
