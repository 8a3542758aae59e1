"""Exponential moving average of a model's weights and buffers, evaluated instead of the model (``--ema-decay``).

The same update as ``torch.optim.swa_utils.get_ema_multi_avg_fn`` (one ``_foreach_lerp_`` per step), but its step
count is a Python int: ``AveragedModel`` keeps it in a device tensor and reads it back every step, which stalls a GPU.
"""

import copy

import torch
from torch import nn


class WeightEMA:
    """``module``: a copy of the model whose floating-point weights and buffers trail the model's by ``decay``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0  # steps averaged so far; the first one copies the model

    def tensors(self, module: nn.Module) -> list[torch.Tensor]:
        return [t.detach() for t in (*module.parameters(), *module.buffers())]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``."""
        ema, current = self.tensors(self.module), self.tensors(model)
        floats = [i for i, t in enumerate(ema) if t.is_floating_point()]
        if self.updates == 0:
            torch._foreach_copy_(ema, current)
        else:
            torch._foreach_lerp_([ema[i] for i in floats], [current[i] for i in floats], 1 - self.decay)
            for i in set(range(len(ema))) - set(floats):  # integer buffers (BatchNorm's batch count): the model's
                ema[i].copy_(current[i])
        self.updates += 1
