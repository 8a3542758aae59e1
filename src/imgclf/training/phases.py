"""What a run trains, as values: one :class:`Phase` per stretch of training. A network from scratch trains in one
phase; transfer learning in two — a new head on the frozen backbone, then fine-tuning — built by
:func:`transfer_phases`. The loop (``trainer.py``) takes a phase and never asks which kind of run it is in.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from imgclf.config.options import TrainConfig
from imgclf.models.backbones import backbone_units
from imgclf.models.transfer import TransferModel
from imgclf.training.balance import PLAIN, ClassBalance
from imgclf.training.optim import layer_lr_scales


@dataclass(frozen=True)
class Phase:
    """One stretch of training: its epochs and peak learning rate, the side its images ramp to, and what trains."""

    label: str  # what the log and the summary call it, e.g. "resnet20" or "tf_efficientnet_lite2 phase 1 (head)"
    folder: Path  # where it writes checkpoints, history, summary and best weights
    epochs: int
    lr: float
    image_size: int  # side of the network's input, where a progressive ramp ends
    progressive_size: int = 0  # first side of the ramp (0: no ramp)
    progressive_fraction: float = 0.5  # of the epochs, over which the side ramps up
    freeze_batchnorm: bool = False  # BatchNorm layers stay in inference mode
    trainable: tuple[nn.Module, ...] = ()  # the modules that train (empty: the whole model)
    lr_scales: Mapping[int, float] = field(default_factory=dict)  # parameter id → scale of its learning rate
    balance: ClassBalance = PLAIN  # the loss (or draw) for the training split's class sizes, metric watched

    def image_side(self, epoch: int) -> int:
        """Training image side of ``epoch`` (0-based): a linear ramp from ``progressive_size`` to ``image_size``
        (multiples of 4) over the first ``progressive_fraction`` of the epochs, then ``image_size``."""
        return progressive_image_size(
            epoch, self.epochs, self.progressive_size, self.progressive_fraction, self.image_size
        )


def progressive_image_size(epoch: int, epochs: int, start: int, fraction: float, full: int) -> int:
    """The side of ``epoch`` on a linear ramp from ``start`` to ``full`` (multiples of 4) over the first
    ``fraction`` of ``epochs``, then ``full``; ``full`` throughout when ``start`` is 0 (no ramp)."""
    ramp = round(fraction * epochs)
    if not start or start >= full or epoch >= ramp:
        return full
    return int(start + (full - start) * epoch / ramp) // 4 * 4


def scratch_phase(cfg: TrainConfig, run_dir: Path, image_size: int, balance: ClassBalance = PLAIN) -> Phase:
    """The one phase of a network trained from scratch on ``image_size``-px images."""
    return Phase(
        label=cfg.model,
        folder=Path(run_dir),
        epochs=cfg.epochs,
        lr=cfg.lr,
        image_size=image_size,
        progressive_size=cfg.progressive_size,
        progressive_fraction=cfg.progressive_fraction,
        balance=balance,
    )


def transfer_phases(
    cfg: TrainConfig, run_dir: Path, tm: TransferModel, cached: bool, balance: ClassBalance = PLAIN
) -> tuple[Phase, Phase]:
    """Phase 1 trains the new head (``head_epochs`` at ``head_lr``) on the frozen backbone; phase 2 fine-tunes the
    unfrozen layers and the head (``epochs`` at ``lr``, earlier layers scaled by ``layer_decay``). BatchNorm stays in
    inference mode in both; ``cached`` phases train on stored activations, so their images never resize."""
    head = tm.network.get_classifier()
    tail = [tm.network] if tm.tail is None else [tm.tail]
    scales = {}
    if cfg.layer_decay != 1.0:
        layers = [*tm.tail.units] if tm.tail is not None else backbone_units(tm.network)
        scales = layer_lr_scales([*layers, head], cfg.layer_decay)
    common = dict(image_size=tm.image_size, freeze_batchnorm=True, progressive_fraction=cfg.progressive_fraction)
    common["balance"] = balance
    common["progressive_size"] = 0 if cached else cfg.progressive_size
    run_dir = Path(run_dir)
    head_phase = Phase(
        f"{cfg.model} phase 1 (head)", run_dir / "phase1", cfg.head_epochs, cfg.head_lr, trainable=(head,), **common
    )
    label = f"{cfg.model} phase 2 (unfreeze {cfg.unfreeze})"
    tune = Phase(label, run_dir / "phase2", cfg.epochs, cfg.lr, trainable=tuple(tail), lr_scales=scales, **common)
    return head_phase, tune
