"""What a phase's loss answers — the task and the training split's class sizes — and what is watched.

- ``logit-adjust``: cross-entropy on ``logits + log(prior)`` (Menon et al. 2021; Balanced Softmax, Ren et al. 2020):
  the network's own logits then score every class as if the classes were equally frequent, with no change at
  prediction time (``losses.py``: its label smoothing follows the prior).
- ``weights``: cross-entropy weighted ``N / (C · n_c)`` per class.
- ``sampler``: images drawn with replacement, each class equally often (same epoch length).
- ``none``: plain cross-entropy on the split as it is.

When the split is imbalanced (``data/balance.py``: ratio ≥ 3) the callbacks watch balanced accuracy on validation,
not accuracy: the model kept and the epoch stopped at are the ones that do best on every class alike. Multi-label
data trains with binary cross-entropy (``none`` is its one balance mode) and watches mean average precision.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imgclf.config.checks import check_task_options
from imgclf.config.options import TrainConfig
from imgclf.data.balance import IMBALANCED, chosen_balance, class_counts, class_weights, imbalance_ratio, log_prior
from imgclf.data.balance import sample_weights as draw_weights
from imgclf.data.multilabel import is_multilabel
from imgclf.training.losses import adjusted_cross_entropy, multilabel_loss


@dataclass(frozen=True)
class ClassBalance:
    """How a phase answers its training split's class sizes."""

    mode: str = "none"
    counts: tuple[int, ...] = ()
    ratio: float = 1.0
    monitor: str = "val_acc"  # the validation metric the callbacks watch (``--monitor auto``)
    multilabel: bool = False  # several classes per image: binary cross-entropy over multi-hot labels

    @property
    def imbalanced(self) -> bool:
        return self.ratio >= IMBALANCED

    def loss_function(self, device: torch.device | str) -> Callable[..., torch.Tensor]:
        """The training loss on ``device``, its class weights or log-prior built here once, not at every step:
        ``loss(logits, labels, smoothing, partners=None, lam=1.0)`` of float32 ``logits``; with ``partners``, of a
        mixed batch (``lam`` its own labels)."""
        counts = torch.tensor(self.counts)
        weight = class_weights(counts).to(device) if self.mode == "weights" else None
        prior = log_prior(counts).to(device) if self.mode == "logit-adjust" else None

        def one(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
            if self.multilabel:
                return multilabel_loss(logits, labels, smoothing)
            if prior is not None:
                return adjusted_cross_entropy(logits, labels, prior, smoothing)
            return F.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing)

        def loss(
            logits: torch.Tensor,
            labels: torch.Tensor,
            smoothing: float,
            partners: torch.Tensor | None = None,
            lam: float = 1.0,
        ) -> torch.Tensor:
            own = one(logits, labels, smoothing)
            return own if partners is None else lam * own + (1 - lam) * one(logits, partners, smoothing)

        return loss

    def sample_weights(self, labels: torch.Tensor) -> torch.Tensor | None:
        """The drawing weights of the training images under ``sampler``, else None (a shuffle)."""
        return draw_weights(labels, torch.tensor(self.counts)) if self.mode == "sampler" else None

    def record(self) -> dict:
        """What the summary keeps: the mode, and the ratio and class sizes it was chosen from."""
        record = {"mode": self.mode, "imbalance_ratio": round(self.ratio, 2), "counts": list(self.counts)}
        return {**record, "task": "multilabel" if self.multilabel else "single"}

    def note(self) -> str | None:
        """The one line said when the split is imbalanced (None when it is not)."""
        if not self.imbalanced:
            return None
        largest, smallest = max(self.counts), min(c for c in self.counts if c)
        remedy = {
            "logit-adjust": "training with logit-adjusted cross-entropy",
            "weights": "weighting the loss by inverse class size",
            "sampler": "drawing every class equally often",
            "none": "training on the imbalance as it is (--balance none)",
        }[self.mode]
        kept = "the final epoch" if self.monitor == "last" else f"the epoch of best {self.monitor.replace('_', ' ')}"
        return (
            f"the training split is imbalanced: {largest:,} images in its largest class, {smallest:,} in its smallest "
            f"({self.ratio:.0f}:1); {remedy}, and keeping {kept}"
        )


PLAIN = ClassBalance()  # plain cross-entropy, accuracy watched: a phase told nothing of its classes' sizes


def class_balance(cfg: TrainConfig, labels: torch.Tensor, num_classes: int) -> ClassBalance:
    """The balance of a run with ``cfg`` whose training split has ``labels`` over ``num_classes`` classes."""
    counts = class_counts(labels, num_classes)
    ratio = imbalance_ratio(counts)
    multilabel = is_multilabel(labels)
    check_task_options("multilabel" if multilabel else "single", cfg.balance, cfg.monitor)  # the data's own task
    monitor = cfg.monitor
    if monitor == "auto":
        monitor = "val_map" if multilabel else "val_balanced_acc" if ratio >= IMBALANCED else "val_acc"
    mode = "none" if multilabel else chosen_balance(cfg.balance, ratio)
    return ClassBalance(mode, tuple(int(c) for c in counts), ratio, monitor, multilabel)
