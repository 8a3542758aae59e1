"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019): train on pairs of inputs combined, and their labels.

Mixup blends whole inputs — images, and equally cached backbone activations (manifold mixup, Verma et al. 2019);
CutMix pastes a box of the partner image. With both on, each batch takes one of them at random (as timm does).
Randomness comes from the global generator on the CPU, which the trainer seeds per epoch: no GPU value is read.
"""

import math

import torch


def mix_batch(
    inputs: torch.Tensor, labels: torch.Tensor, mixup: float, cutmix: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Each input combined with a partner ``inputs[perm]``: blended (mixup, ``lam ~ Beta(mixup, mixup)``) or with a
    box of the partner pasted in (CutMix, on images; ``lam`` the area kept); returns the mixed inputs, the partner
    labels ``labels[perm]`` and ``lam``, the weight of the inputs' own labels."""
    use_cutmix = cutmix > 0 and inputs.ndim == 4 and (not mixup or bool(torch.rand(()) < 0.5))
    alpha = cutmix if use_cutmix else mixup
    if not alpha:
        return inputs, labels, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(labels), device=labels.device)
    if not use_cutmix:
        return inputs.lerp(inputs[perm], 1 - lam), labels[perm], lam
    h, w = inputs.shape[-2:]
    box_h, box_w = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
    cy, cx = (int(torch.randint(0, side, ())) for side in (h, w))
    y0, y1 = max(cy - box_h // 2, 0), min(cy + box_h - box_h // 2, h)
    x0, x1 = max(cx - box_w // 2, 0), min(cx + box_w - box_w // 2, w)
    mixed = inputs.clone()
    mixed[..., y0:y1, x0:x1] = inputs[perm][..., y0:y1, x0:x1]
    return mixed, labels[perm], 1 - (y1 - y0) * (x1 - x0) / (h * w)
