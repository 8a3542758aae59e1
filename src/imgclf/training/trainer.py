"""The training loop: model, data and callbacks are built from a :class:`TrainConfig` and run epoch by epoch.

Every epoch's randomness (shuffling, augmentation, dropout) derives from (seed, epoch), and a checkpoint is written
atomically after each epoch (or every ``--checkpoint-every`` seconds and at the end), so ``--resume`` continues an
interrupted run with the history it would have had.
"""

import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from imgclf.config import TrainConfig
from imgclf.data.datasets import ImageSet, Splits
from imgclf.data.features import resize_normalise
from imgclf.data.loader import BatchLoader, epoch_seed, inference_batch_size
from imgclf.device import CpuShare, autocast, describe_device, resolve_precision, select_device
from imgclf.errors import ImgclfError
from imgclf.models import count_parameters, create_model
from imgclf.runs import BEST_WEIGHTS, CHECKPOINTS, CONFIG, SUMMARY, RunDir
from imgclf.training import distributed
from imgclf.training.callbacks import BestCheckpoint, EarlyStopping, ReduceLROnPlateau
from imgclf.training.checkpoint import checkpoint_files, load_state, load_weights, save_checkpoint
from imgclf.training.ema import Lookahead, WeightEMA
from imgclf.training.history import History
from imgclf.training.mixup import mix_batch, mixed_cross_entropy
from imgclf.training.optim import build_optimizer
from imgclf.training.schedule import lr_multiplier


@torch.inference_mode()
def predict(
    model: nn.Module, loader: BatchLoader, device: torch.device, precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and labels of every batch of ``loader`` (validation during training; a finished model predicts
    through inference/predictor.py)."""
    model.eval()
    outputs, labels = [], []
    for images, batch_labels in loader:
        with autocast(device, precision):
            logits = model(images).float()
        outputs.append(logits)
        labels.append(batch_labels)
    if not outputs:  # a torchrun rank whose validation shard is empty (fewer images than ranks)
        return torch.empty(0, 0, device=device), torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(outputs), torch.cat(labels)


def evaluate_loader(model: nn.Module, loader: BatchLoader, device: torch.device, precision: str) -> dict:
    """Mean cross-entropy loss and accuracy of ``model`` over ``loader`` (under torchrun: each rank's shard of it,
    the sums reduced across the ranks, so every rank gets the whole split's figures)."""
    logits, labels = predict(model, loader, device, precision)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count: zero for an empty shard
    if len(labels):
        loss = F.cross_entropy(logits, labels, reduction="sum")
        sums = torch.stack([loss.double(), (logits.argmax(1) == labels).sum().double(), sums.new_tensor(len(labels))])
    loss, correct, n = distributed.all_reduce_sum(sums).tolist()
    return {"loss": loss / max(n, 1), "acc": correct / max(n, 1)}


def progressive_image_size(epoch: int, epochs: int, start: int, fraction: float, full: int) -> int:
    """Training image side of ``epoch``: a linear ramp from ``start`` to ``full`` (multiples of 4) over the first
    ``fraction`` of the epochs, then ``full``; 0 (native size) when progressive resizing is off."""
    ramp = round(fraction * epochs)
    if not start or start >= full or epoch >= ramp:
        return 0
    return int(start + (full - start) * epoch / ramp) // 4 * 4


def compiles_training(cfg: TrainConfig, device: torch.device) -> bool:
    """True when the network being trained runs through torch.compile: ``--compile`` on a GPU (training shapes are
    few — a fixed batch, ``drop_last``, progressive sides in steps of 4 — so it compiles once per side)."""
    return cfg.compile and device.type == "cuda"


def check_input_size(model: nn.Module, name: str, size: int, device: torch.device) -> None:
    """Raise a one-line error when ``model`` cannot take ``size``×``size`` inputs (e.g. a Flatten head)."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, 3, size, size, device=device))
    except RuntimeError:
        raise ImgclfError(f"model '{name}' cannot take {size}×{size} inputs (progressive resizing)") from None


def set_train_mode(model: nn.Module, freeze_batchnorm: bool = False) -> None:
    """``model.train()``; with ``freeze_batchnorm``, BatchNorm layers stay in inference mode (statistics untouched)."""
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def image_loaders(
    cfg: TrainConfig,
    train: ImageSet,
    val: ImageSet,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    image_size: int = 0,
) -> tuple[BatchLoader, BatchLoader | None]:
    """Shuffled, augmented training batches and plain validation batches (resized to ``image_size`` if set)."""
    common = dict(mean=mean, std=std, device=device, channels_last=cfg.channels_last, image_size=image_size)
    train_loader = BatchLoader(
        train,
        cfg.batch_size,
        augment=cfg.augment,
        cutout=cfg.cutout,
        shuffle=True,
        drop_last=len(train) >= 2 * cfg.batch_size,
        seed=cfg.seed,
        **common,
    )
    side = image_size or val.images.shape[-1]
    return train_loader, BatchLoader(val, inference_batch_size(side, device), **common) if len(val) else None


def first_images(data: ImageSet, mean: tuple[float, ...], std: tuple[float, ...], count: int) -> torch.Tensor:
    """The first ``count`` images of ``data``, normalised as training normalises them (float32, unaugmented)."""
    return resize_normalise(data.images[torch.arange(min(count, len(data)))], 0, mean, std)


def new_run_dir(cfg: TrainConfig) -> Path:
    """The path of a new run under ``cfg.output`` (created later, once set-up succeeded); never an existing run."""
    name = cfg.name or f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.output) / name
    if (run_dir / CONFIG).exists():
        raise ImgclfError(f"run directory already exists: {run_dir} (use --resume {run_dir} or another --name)")
    return run_dir


class Trainer:
    """Trains ``cfg.model`` on the ``splits`` it is handed (or on given loaders) into ``run_dir``."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        splits: Splits | None = None,
        model: nn.Module | None = None,
        loaders: tuple | None = None,
        lr_scales: dict[int, float] | None = None,
        freeze_batchnorm: bool = False,
        label: str | None = None,
    ) -> None:
        """Build loaders from ``splits`` and the model from ``cfg``, or train the given ``model`` on the given
        (train, val) ``loaders``."""
        self.cfg, self.run_dir, self.label = cfg, Path(run_dir), label or cfg.model
        self.device = distributed.setup(select_device(cfg.device))
        self.main = distributed.is_main()  # the rank that writes and prints
        self.precision = resolve_precision(cfg.precision, self.device)
        self.cpu_share = CpuShare(cfg.threads) if self.device.type == "cpu" else None
        self.freeze_batchnorm = freeze_batchnorm
        torch.manual_seed(cfg.seed)
        self.input_size = 0  # side of the network's input (for progressive resizing); 0: as the loaders give it
        if splits is not None:
            self.input_size, self.mean, self.std = splits.side, splits.mean, splits.std
            loaders = image_loaders(cfg, splits.train, splits.val, splits.mean, splits.std, self.device)
        self.train_loader, self.val_loader = loaders
        if distributed.world_size() > 1:
            self.train_loader.set_shard(distributed.rank(), distributed.world_size())
            if self.val_loader is not None:  # each rank validates its share of the split
                self.val_loader.set_shard(distributed.rank(), distributed.world_size(), even=False)
        self.num_train = len(self.train_loader.labels)
        self.num_val = len(self.val_loader.labels) if self.val_loader is not None else 0

        if model is None:
            model = create_model(cfg.model, num_classes=len(splits.classes)).to(self.device)
            if cfg.channels_last:
                model = model.to(memory_format=torch.channels_last)
            if cfg.progressive_size:
                check_input_size(model, cfg.model, cfg.progressive_size, self.device)
            if hasattr(model, "init_from_data"):  # e.g. whitening filters from the training images' patches
                images = first_images(splits.train, splits.mean, splits.std, model.init_images)
                model.init_from_data(images.to(self.device))
        if cfg.sync_bn and distributed.active() and not freeze_batchnorm:
            model = distributed.sync_batchnorm(model, self.device)
        self.model = model
        self.forward_model = model  # what training calls: under torchrun, the model wrapped in DDP
        if distributed.active():
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        self.eager_forward = self.forward_model
        if compiles_training(cfg, self.device):  # fused kernels: a GPU is launch-bound on these small networks
            self.forward_model = torch.compile(self.forward_model, mode=cfg.compile_mode)
        # a network may set its own parameters' learning-rate and weight-decay scales, and train some for a few
        # epochs only (SpeedNet)
        lr_scales = {**(lr_scales or {}), **(model.lr_scales() if hasattr(model, "lr_scales") else {})}
        decay_scales = model.decay_scales() if hasattr(model, "decay_scales") else None
        self.trainable_epochs = model.trainable_epochs() if hasattr(model, "trainable_epochs") else {}
        self.optimizer = build_optimizer(
            self.model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, lr_scales, decay_scales
        )
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.ema: WeightEMA | None = None  # averaged weights: an EMA, or Lookahead's slow weights
        if cfg.ema_decay:
            self.ema = WeightEMA(self.model, cfg.ema_decay)
        elif cfg.lookahead:
            self.ema = Lookahead(self.model, self.total_steps)
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        monitor = dict(monitor=cfg.monitor, mode="max" if cfg.monitor == "val_acc" else "min")
        self.early_stopping = EarlyStopping(patience=cfg.early_stopping, **monitor)
        self.plateau = ReduceLROnPlateau(patience=cfg.reduce_lr_patience, factor=cfg.reduce_lr_factor, **monitor)
        # without a validation split the last epoch is the selected model
        self.best = BestCheckpoint(run_dir / BEST_WEIGHTS, **(monitor if self.val_loader else {"monitor": "epoch"}))
        self.epoch, self.step, self.train_seconds = 0, 0, 0.0

    @property
    def eval_model(self) -> nn.Module:
        """The model that validation measures and checkpoints keep: the EMA when enabled."""
        return self.ema.module if self.ema is not None and self.ema.evaluated else self.model

    def train_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The training model's logits; if torch.compile fails (no compiler here), eager mode from then on — in a
        single process: under torchrun one rank alone falling back would leave the ranks' collectives out of step."""
        try:
            return self.forward_model(images)
        except torch._dynamo.exc.TorchDynamoException as exc:
            if self.forward_model is self.eager_forward or distributed.active():
                raise
            if self.main:
                warnings.warn(f"torch.compile failed ({type(exc).__name__}); training in eager mode", stacklevel=2)
            self.forward_model = self.eager_forward
            return self.forward_model(images)

    def set_lr(self) -> float:
        """Set the optimizer's learning rate for the current step and return it."""
        cfg = self.cfg
        multiplier = lr_multiplier(
            cfg.schedule, self.step, self.total_steps, self.warmup_steps, cfg.lr_start, cfg.lr_end
        )
        lr = cfg.lr * multiplier * self.plateau.scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def train_epoch(self, bar: tqdm) -> dict:
        """One pass over the training split; returns mean loss and accuracy on the augmented batches."""
        set_train_mode(self.model, self.freeze_batchnorm)  # transfer learning freezes BatchNorm
        torch.manual_seed(epoch_seed(self.cfg.seed, self.epoch))  # dropout randomness of this epoch
        self.train_loader.set_epoch(self.epoch)
        if self.cfg.progressive_size:
            self.train_loader.image_size = progressive_image_size(
                self.epoch, self.cfg.epochs, self.cfg.progressive_size, self.cfg.progressive_fraction, self.input_size
            )
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        n = 0
        frozen = [p for p in self.model.parameters() if self.trainable_epochs.get(id(p), self.epoch + 1) <= self.epoch]
        for images, labels in self.train_loader:
            if self.cpu_share is not None:
                self.cpu_share.update()  # fewer threads while other processes keep cores busy
            lr = self.set_lr()
            mixing = self.cfg.mixup or self.cfg.cutmix
            if mixing:
                images, partners, lam = mix_batch(images, labels, self.cfg.mixup, self.cfg.cutmix)
            with autocast(self.device, self.precision):
                logits = self.train_forward(images)
            if mixing:
                loss = mixed_cross_entropy(logits.float(), labels, partners, lam, self.cfg.label_smoothing)
            else:
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for p in frozen:  # done training: no gradient, so the optimizer leaves it (and its momentum) alone
                p.grad = None
            self.optimizer.step()
            self.step += 1
            if self.ema is not None:
                self.ema.update(self.model, self.step)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            n += len(labels)
            bar.update(len(labels))
            if self.step % 10 == 0 and self.device.type == "cpu":  # reading a GPU value would stall its queue
                bar.set_postfix(loss=f"{loss_sum.item() / n:.3f}", lr=f"{lr:.3g}", refresh=False)
        totals = distributed.all_reduce_sum(
            torch.stack([loss_sum.double(), correct.double(), loss_sum.new_tensor(n).double()])
        )
        loss_sum, correct, n = totals[0].item(), totals[1].item(), totals[2].item()
        loss_value = loss_sum / max(n, 1)
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.3g}", refresh=False)
        if not math.isfinite(loss_value):
            raise ImgclfError(f"training diverged at epoch {self.epoch + 1} (loss {loss_value}); lower --lr")
        return {"train_loss": loss_value, "train_acc": correct / max(n, 1), "lr": lr}

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,  # differs when a run resumes with another world size
            "train_seconds": self.train_seconds,
            "optimizer": self.optimizer.state_dict(),
            "ema_n_averaged": self.ema.updates if self.ema is not None else None,
            "early_stopping": self.early_stopping.state_dict(),
            "plateau": self.plateau.state_dict(),
            "best": self.best.state_dict(),
        }

    def save_checkpoint(self) -> None:
        """Write weights, EMA and loop state of the epoch just finished as one unit (rank 0 alone)."""
        if not self.main:
            return
        modules = {"weights": self.model, **({"ema": self.ema.module} if self.ema is not None else {})}
        save_checkpoint(self.run_dir / CHECKPOINTS, self.epoch, modules, self.state_dict())

    def resume(self, files: dict[str, Path]) -> None:
        """Restore the state of the last completed epoch from its checkpoint ``files``."""
        state = load_state(files["state"])
        meta = load_weights(files["weights"], self.model)
        try:
            if meta.get("epoch") != state["epoch"]:
                raise ImgclfError(f"checkpoint files in {files['state'].parent} disagree on the epoch")
            if self.ema is not None:
                if "ema" not in files:
                    raise ImgclfError(f"checkpoint in {files['state'].parent} has no EMA weights")
                load_weights(files["ema"], self.ema.module)
                self.ema.updates = int(state["ema_n_averaged"])
            kernels = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in self.optimizer.param_groups]
            self.optimizer.load_state_dict(state["optimizer"])
            for group, chosen in zip(self.optimizer.param_groups, kernels, strict=True):
                group.update(chosen)  # this device's optimizer kernels, not those of the one that saved the state
            self.early_stopping.load_state_dict(state["early_stopping"])
            self.plateau.load_state_dict(state["plateau"])
            self.best.load_state_dict(state["best"])
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            # checkpoints end epochs: the step is the epoch's, counted in this world's steps per epoch (another
            # world size gives another count; the schedule goes on from the same fraction of training)
            self.step = self.epoch * self.steps_per_epoch
            self.train_seconds = float(state["train_seconds"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ImgclfError(f"checkpoint state {files['state']} does not fit this run ({detail[:200]})") from None

    def fit(self, resume: bool = False) -> dict:
        """Train until the last epoch or early stopping; returns the run summary."""
        cfg = self.cfg
        history = History(self.run_dir, tensorboard=cfg.tensorboard) if self.main else None
        files = checkpoint_files(self.run_dir / CHECKPOINTS) if resume else None
        if resume and files is None and (self.run_dir / SUMMARY).is_file():  # training again would overwrite it
            raise ImgclfError(
                f"nothing to resume in {self.run_dir}: the run has finished ({SUMMARY}) and no checkpoint is left in "
                f"{CHECKPOINTS}/; train a new run instead"
            )
        if files is not None:
            self.resume(files)
        if resume and history is not None:
            history.truncate(self.epoch)
        params, trainable = count_parameters(self.model), count_parameters(self.model, trainable_only=True)
        distributed.say(
            f"{self.label}: {params:,} parameters ({trainable:,} trainable) | "
            f"{self.num_train:,} train / {self.num_val:,} val images | "
            f"{describe_device(self.device)}, {self.precision} | run dir {self.run_dir}"
        )
        bar = tqdm(
            total=cfg.epochs * self.steps_per_epoch * cfg.batch_size,
            initial=self.step * cfg.batch_size,
            unit="img",
            unit_scale=True,
            disable=not cfg.progress or not self.main,
            dynamic_ncols=True,
            smoothing=0.05,
        )
        next_checkpoint = self.train_seconds + cfg.checkpoint_every
        try:
            while self.epoch < cfg.epochs and not self.early_stopping.stop:
                bar.set_description(f"epoch {self.epoch + 1}/{cfg.epochs}")
                start = time.perf_counter()
                metrics = self.train_epoch(bar)
                self.epoch += 1
                metrics = {"epoch": self.epoch, **metrics}
                if self.cpu_share is not None:
                    metrics["cpu_threads"] = self.cpu_share.threads_used()
                if self.val_loader is not None:  # reduced across the ranks: every decision the same everywhere
                    val = evaluate_loader(self.eval_model, self.val_loader, self.device, self.precision)
                    metrics.update(val_loss=val["loss"], val_acc=val["acc"])
                seconds = time.perf_counter() - start
                self.train_seconds += seconds
                metrics["epoch_seconds"] = seconds
                if self.val_loader is not None:
                    self.early_stopping.on_epoch_end(metrics)
                    self.plateau.on_epoch_end(metrics)
                # a checkpoint every --checkpoint-every seconds and at the end; the best weights are written with it
                due = self.epoch >= cfg.epochs or self.early_stopping.stop or self.train_seconds >= next_checkpoint
                self.best.on_epoch_end(metrics, self.eval_model, write=self.main, hold=not due)
                if history is not None:
                    history.log(metrics)
                if due:
                    self.best.flush()
                    self.save_checkpoint()
                    next_checkpoint = self.train_seconds + cfg.checkpoint_every
                distributed.say(
                    f"epoch {self.epoch:3d}/{cfg.epochs}  train loss {metrics['train_loss']:.4f} "
                    f"acc {metrics['train_acc']:.4f}"
                    + (
                        f"  val loss {metrics['val_loss']:.4f} acc {metrics['val_acc']:.4f}"
                        if "val_acc" in metrics
                        else ""
                    )
                    + f"  lr {metrics['lr']:.4g}  {seconds:.1f}s"
                )
        finally:
            bar.close()
            if history is not None:
                history.close()
        summary = {
            "model": self.label,
            "parameters": params,
            "trainable_parameters": count_parameters(self.model, trainable_only=True),
            "epochs_run": self.epoch,
            "stopped_early": self.early_stopping.stop,
            "best_epoch": self.best.best_epoch,
            f"best_{cfg.monitor}": self.best.best if self.val_loader is not None else None,
            "num_train": self.num_train,
            "num_val": self.num_val,
            "train_seconds": self.train_seconds,
            "device": describe_device(self.device),
            "precision": self.precision,
            "torch": torch.__version__,
        }
        if self.main:
            RunDir(self.run_dir).write_summary(summary)
        distributed.barrier()  # the others wait until rank 0 has written the run
        return summary
