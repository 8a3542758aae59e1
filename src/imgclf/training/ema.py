"""Exponential moving average of a model's weights and buffers, evaluated instead of the model (``--ema-decay``).

The same update as ``torch.optim.swa_utils.get_ema_multi_avg_fn`` (one ``_foreach_lerp_`` per step), but its step
count is a Python int: ``AveragedModel`` keeps it in a device tensor and reads it back every step, which stalls a GPU.
"""

import copy

import torch
from torch import nn


class WeightEMA:
    """``module``: a copy of the model whose floating-point weights and buffers trail the model's by ``decay``."""

    evaluated = True  # validation and the best weights are the average's, not the model's

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0  # steps averaged so far; the first one copies the model

    def tensors(self, module: nn.Module) -> list[torch.Tensor]:
        return [t.detach() for t in (*module.parameters(), *module.buffers())]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> None:
        """Move the average one step towards ``model`` (after optimizer step ``step``: not needed here)."""
        ema, current = self.tensors(self.module), self.tensors(model)
        floats = [i for i, t in enumerate(ema) if t.is_floating_point()]
        if self.updates == 0:
            torch._foreach_copy_(ema, current)
        else:
            torch._foreach_lerp_([ema[i] for i in floats], [current[i] for i in floats], 1 - self.decay)
            for i in set(range(len(ema))) - set(floats):  # integer buffers (BatchNorm's batch count): the model's
                ema[i].copy_(current[i])
        self.updates += 1


LOOKAHEAD_EVERY = 5  # steps between pulls towards the slow weights
LOOKAHEAD_PEAK = 0.95**5  # the slow weights' share at the last pull


class Lookahead(WeightEMA):
    """Lookahead (Zhang et al. 2019) on airbench94's schedule: every 5 steps the slow weights (``module``) move
    towards the model's, keeping a share ``0.95⁵·(step/total)³`` of themselves, and the model restarts from them;
    after the last step the model takes the slow weights. The model itself is evaluated."""

    evaluated = False  # validation and checkpoints' best weights are the model's (it ends as the slow weights)

    def __init__(self, model: nn.Module, total_steps: int) -> None:
        super().__init__(model, decay=0.0)
        self.updates = 1  # the copy is the first average
        self.total_steps = total_steps

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> None:
        """Pull after optimizer step number ``step`` (counted from 1), every 5th and the last."""
        last = step >= self.total_steps
        if step % LOOKAHEAD_EVERY and not last:
            return
        keep = 1.0 if last else LOOKAHEAD_PEAK * (step / self.total_steps) ** 3
        slow, current = self.tensors(self.module), self.tensors(model)
        floats = [i for i, t in enumerate(slow) if t.is_floating_point()]
        slow, current = [slow[i] for i in floats], [current[i] for i in floats]
        torch._foreach_lerp_(slow, current, 1 - keep)
        torch._foreach_copy_(current, slow)
        self.updates += 1
