"""The Keras callbacks users know: early stopping, reduce-LR-on-plateau, keep-best checkpoint.

Each one has one signature: ``on_epoch_end(state) -> Decision``. It watches the epoch's metrics, may act (write the
best weights), and says what the loop should do (stop, scale the learning rate); the loop calls them in a list, in
order, and folds each decision into the state before the next one sees it. Each keeps its state in a plain dict so
that a resumed run continues exactly where the interrupted one stopped.
"""

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from torch import nn

from imgclf.artifacts.weights import save_tensors, save_weights


@dataclass(frozen=True)
class Decision:
    """What a callback asks of the loop after an epoch."""

    stop: bool = False  # no further epoch
    lr_scale: float = 1.0  # multiplies the scheduled learning rate from the next step on


@dataclass
class EpochState:
    """The loop at the end of an epoch, as every callback sees it."""

    metrics: dict  # this epoch's record: epoch, train and validation loss and accuracy, lr
    model: nn.Module  # the evaluated model (the weight average, where one is kept)
    last_epoch: bool  # the phase's last epoch
    checkpoint_time: bool  # --checkpoint-every seconds have passed since the last checkpoint
    writes: bool = True  # this process writes the run's files (under torchrun, rank 0 alone)
    stop: bool = False  # a callback before asked to stop
    lr_scale: float = 1.0  # the callbacks' learning-rate scale, so far

    @property
    def checkpoint_due(self) -> bool:
        """A checkpoint closes this epoch: the phase ends (last epoch, or stopped) or its time has come."""
        return self.last_epoch or self.stop or self.checkpoint_time

    def apply(self, decision: "Decision") -> None:
        """Fold one callback's ``decision`` into the state."""
        self.stop = self.stop or decision.stop
        self.lr_scale *= decision.lr_scale


class Callback(Protocol):
    """Anything the loop calls at the end of every epoch, with state it can save and restore."""

    def on_epoch_end(self, state: EpochState) -> Decision: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


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

    def on_epoch_end(self, state: EpochState) -> Decision:
        self.stop = self.stop or self.out_of_patience(state.metrics)
        return Decision(stop=self.stop)


@dataclass
class ReduceLROnPlateau(PatienceCallback):
    """Multiply the learning rate by ``factor`` after ``patience`` epochs without improvement."""

    factor: float = 0.5
    min_scale: float = 1e-3
    scale: float = 1.0

    def on_epoch_end(self, state: EpochState) -> Decision:
        if self.out_of_patience(state.metrics):
            self.scale, self.wait = max(self.min_scale, self.scale * self.factor), 0
        return Decision(lr_scale=self.scale)


@dataclass
class BestCheckpoint:
    """Save the evaluated model's weights to ``path`` whenever the monitored metric improves."""

    path: Path
    monitor: str = "val_acc"
    mode: str = "max"
    best: float | None = None
    best_epoch: int = 0
    held: tuple[dict, dict] | None = field(default=None, repr=False)  # best weights not yet written, and metadata

    def on_epoch_end(self, state: EpochState) -> Decision:
        """Track the best epoch; write its weights when a checkpoint closes the epoch (and the process writes), else
        keep a copy until one does: the file never runs ahead of the last checkpoint."""
        metrics, model = state.metrics, state.model
        if improved(metrics[self.monitor], self.best, self.mode):
            self.best, self.best_epoch = metrics[self.monitor], metrics["epoch"]
            meta = {"epoch": metrics["epoch"], self.monitor: metrics[self.monitor]}
            if state.writes and not state.checkpoint_due:
                self.held = ({k: v.detach().clone() for k, v in model.state_dict().items()}, meta)
            elif state.writes:
                save_weights(self.path, model, meta)
                self.held = None
        if state.checkpoint_due:
            self.flush()
        return Decision()

    def flush(self) -> None:
        """Write the best weights held since the last checkpoint, if any."""
        if self.held is not None:
            save_tensors(self.path, *self.held)
            self.held = None

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
