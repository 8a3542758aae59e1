"""Optimizers with weight decay on weights only (norm scales and biases are not decayed)."""

import torch
from torch import nn

from imgclf.core.errors import ImgclfError

OPTIMIZERS = ("sgd", "adamw")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr_scales: dict[int, float] | None = None,
    decay_scales: dict[int, float] | None = None,
) -> list[dict]:
    """Group trainable parameters by learning-rate scale and weight decay; ``lr_scales`` and ``decay_scales`` map
    ``id(parameter)`` to its scales (default: learning rate 1; decay 1 for matrices and kernels, 0 for norms and
    biases)."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            scale = (lr_scales or {}).get(id(p), 1.0)
            decay = (decay_scales or {}).get(id(p), 1.0 if p.ndim > 1 else 0.0)
            groups.setdefault((scale, decay), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay * decay, "lr_scale": scale}
        for (scale, decay), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], -kv[0][1]))
    ]


def layer_lr_scales(layers: list[nn.Module], decay: float) -> dict[int, float]:
    """Discriminative learning rates: the last layer's parameters get scale 1, each earlier layer ``decay`` times
    its successor's."""
    return {id(p): decay ** (len(layers) - 1 - i) for i, layer in enumerate(layers) for p in layer.parameters()}


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    lr_scales: dict[int, float] | None = None,
    decay_scales: dict[int, float] | None = None,
) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or AdamW; each group's ``lr_scale`` multiplies the scheduled rate."""
    groups = param_groups(model, weight_decay, lr_scales, decay_scales)
    if name == "sgd":  # on a GPU one fused kernel per step, not a few per parameter group
        fused = all(p.is_cuda for group in groups for p in group["params"]) or None
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ImgclfError(f"unknown optimizer '{name}' (available: {', '.join(OPTIMIZERS)})")
