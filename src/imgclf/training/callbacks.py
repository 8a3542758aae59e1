"""The Keras callbacks users know: early stopping, reduce-LR-on-plateau, keep-best checkpoint.

Each one watches a validation metric at the end of every epoch and keeps its state in a plain dict
so that a resumed run continues exactly where the interrupted one stopped.
"""

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from imgclf.training.checkpoint import save_tensors, save_weights


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in direction ``mode`` ('max' or 'min')."""
    if best is None or math.isnan(best):
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


class Stateful:
    """State as a plain dict of the dataclass fields, for checkpoints."""

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


@dataclass
class PatienceCallback(Stateful):
    """Counts epochs without improvement of the monitored metric; ``patience`` 0 disables the callback."""

    monitor: str = "val_acc"
    mode: str = "max"
    patience: int = 0
    min_delta: float = 0.0
    best: float | None = None
    wait: int = 0

    def out_of_patience(self, metrics: dict) -> bool:
        """Record this epoch's metric; True once ``patience`` epochs in a row brought no improvement."""
        if not self.patience:
            return False
        if improved(metrics[self.monitor], self.best, self.mode, self.min_delta):
            self.best, self.wait = metrics[self.monitor], 0
        else:
            self.wait += 1
        return self.wait >= self.patience


@dataclass
class EarlyStopping(PatienceCallback):
    """Stop when the monitored metric has not improved for ``patience`` epochs."""

    stop: bool = False

    def on_epoch_end(self, metrics: dict) -> None:
        self.stop = self.stop or self.out_of_patience(metrics)


@dataclass
class ReduceLROnPlateau(PatienceCallback):
    """Multiply the learning rate by ``factor`` after ``patience`` epochs without improvement."""

    factor: float = 0.5
    min_scale: float = 1e-3
    scale: float = 1.0

    def on_epoch_end(self, metrics: dict) -> None:
        if self.out_of_patience(metrics):
            self.scale, self.wait = max(self.min_scale, self.scale * self.factor), 0


@dataclass
class BestCheckpoint:
    """Save the evaluated model's weights to ``path`` whenever the monitored metric improves."""

    path: Path
    monitor: str = "val_acc"
    mode: str = "max"
    best: float | None = None
    best_epoch: int = 0
    held: tuple[dict, dict] | None = field(default=None, repr=False)  # best weights not yet written, and metadata

    def on_epoch_end(self, metrics: dict, model: nn.Module, write: bool = True, hold: bool = False) -> None:
        """Track the best epoch; save its weights when ``write`` (under torchrun, rank 0 alone writes) — or with
        ``hold`` keep a copy for :meth:`flush`, so the file never runs ahead of the last checkpoint."""
        if improved(metrics[self.monitor], self.best, self.mode):
            self.best, self.best_epoch = metrics[self.monitor], metrics["epoch"]
            meta = {"epoch": metrics["epoch"], self.monitor: metrics[self.monitor]}
            if write and hold:
                self.held = ({k: v.detach().clone() for k, v in model.state_dict().items()}, meta)
            elif write:
                save_weights(self.path, model, meta)
                self.held = None

    def flush(self) -> None:
        """Write the best weights held since the last checkpoint, if any."""
        if self.held is not None:
            save_tensors(self.path, *self.held)
            self.held = None

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
