"""The Keras callbacks users know: early stopping, reduce-LR-on-plateau, keep-best checkpoint.

Each one watches a validation metric at the end of every epoch and keeps its state in a plain dict
so that a resumed run continues exactly where the interrupted one stopped.
"""

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from imgclf.training.checkpoint import save_weights


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in direction ``mode`` ('max' or 'min')."""
    if best is None or math.isnan(best):
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


@dataclass
class EarlyStopping:
    """Stop when the monitored metric has not improved for ``patience`` epochs (0 disables)."""

    monitor: str = "val_acc"
    mode: str = "max"
    patience: int = 0
    min_delta: float = 0.0
    best: float | None = None
    wait: int = 0
    stop: bool = False

    def on_epoch_end(self, metrics: dict) -> None:
        if not self.patience:
            return
        if improved(metrics[self.monitor], self.best, self.mode, self.min_delta):
            self.best, self.wait = metrics[self.monitor], 0
        else:
            self.wait += 1
            self.stop = self.wait >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


@dataclass
class ReduceLROnPlateau:
    """Multiply the learning rate by ``factor`` after ``patience`` epochs without improvement (0 disables)."""

    monitor: str = "val_acc"
    mode: str = "max"
    patience: int = 0
    factor: float = 0.5
    min_scale: float = 1e-3
    scale: float = 1.0
    best: float | None = None
    wait: int = 0

    def on_epoch_end(self, metrics: dict) -> None:
        if not self.patience:
            return
        if improved(metrics[self.monitor], self.best, self.mode):
            self.best, self.wait = metrics[self.monitor], 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.scale, self.wait = max(self.min_scale, self.scale * self.factor), 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


@dataclass
class BestCheckpoint:
    """Save the evaluated model's weights to ``path`` whenever the monitored metric improves."""

    path: Path
    monitor: str = "val_acc"
    mode: str = "max"
    best: float | None = None
    best_epoch: int = 0

    def on_epoch_end(self, metrics: dict, model: nn.Module) -> None:
        if improved(metrics[self.monitor], self.best, self.mode):
            self.best, self.best_epoch = metrics[self.monitor], metrics["epoch"]
            save_weights(self.path, model, {"epoch": metrics["epoch"], self.monitor: metrics[self.monitor]})

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
