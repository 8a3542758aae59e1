"""Mixup (Zhang et al. 2018): train on convex combinations of pairs of inputs and of their labels.

It works on images and equally on cached backbone activations (manifold mixup, Verma et al. 2019), where flips are
the only other augmentation left; randomness comes from the global generator, which the trainer seeds per epoch.
"""

import torch
import torch.nn.functional as F


def mix_batch(inputs: torch.Tensor, labels: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``lam * inputs + (1 - lam) * inputs[perm]`` with ``lam ~ Beta(alpha, alpha)``; returns the mixed inputs,
    the partner labels ``labels[perm]`` and ``lam``."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(labels), device=labels.device)
    return inputs.lerp(inputs[perm], 1 - lam), labels[perm], lam


def mixed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, partners: torch.Tensor, lam: float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """The cross-entropy of a mixed batch: ``lam`` parts its own labels, ``1 - lam`` its partners'."""
    own = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    return lam * own + (1 - lam) * F.cross_entropy(logits, partners, label_smoothing=label_smoothing)
