"""The training loop: one :class:`Phase` of a model on its loaders, epoch by epoch, with callbacks in a list.

The loop never asks what kind of run it is in: the model and loaders come built (``run.py`` for a network from
scratch, ``transfer.py`` for each phase of transfer learning), the phase says how long, how fast and at what image
side to train, and the config the optimizer, schedule, regularisation and callbacks.

Every epoch's randomness (shuffling, augmentation, dropout) derives from (seed, epoch), and a checkpoint is written
atomically after each epoch (or every ``--checkpoint-every`` seconds and at the end), so ``--resume`` continues an
interrupted run with the history it would have had.
"""

import math
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from imgclf.artifacts.files import BEST_WEIGHTS, CHECKPOINTS, SUMMARY
from imgclf.artifacts.runs import RunDir
from imgclf.artifacts.weights import load_weights
from imgclf.config.options import TrainConfig
from imgclf.core.device import CpuShare, autocast, describe_device, resolve_precision, select_device
from imgclf.core.errors import ImgclfError
from imgclf.data.loader import epoch_seed
from imgclf.models import count_parameters
from imgclf.training import distributed
from imgclf.training.callbacks import BestCheckpoint, Callback, EarlyStopping, EpochState, ReduceLROnPlateau
from imgclf.training.checkpoint import checkpoint_files, load_state, save_checkpoint
from imgclf.training.ema import Lookahead, WeightEMA
from imgclf.training.history import History
from imgclf.training.losses import hits
from imgclf.training.mixup import mix_batch
from imgclf.training.optim import build_optimizer
from imgclf.training.phases import Phase
from imgclf.training.schedule import lr_multiplier
from imgclf.training.validation import evaluate_loader


def compiles_training(cfg: TrainConfig, device: torch.device) -> bool:
    """True when the network being trained runs through torch.compile: ``--compile`` on a GPU (training shapes are
    few — a fixed batch, ``drop_last``, progressive sides in steps of 4 — so it compiles once per side)."""
    return cfg.compile and device.type == "cuda"


def set_train_mode(model: nn.Module, freeze_batchnorm: bool = False) -> None:
    """``model.train()``; with ``freeze_batchnorm``, BatchNorm layers stay in inference mode (statistics untouched)."""
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


class Trainer:
    """Trains ``model`` on the (train, val) ``loaders`` for one ``phase`` of ``cfg`` into ``phase.folder``."""

    def __init__(self, cfg: TrainConfig, phase: Phase, model: nn.Module, loaders: tuple) -> None:
        self.cfg, self.phase, self.run_dir = cfg, phase, Path(phase.folder)
        self.device = distributed.setup(select_device(cfg.device))
        self.main = distributed.is_main()  # the rank that writes and prints
        self.precision = resolve_precision(cfg.precision, self.device)
        self.cpu_share = CpuShare(cfg.threads) if self.device.type == "cpu" else None
        torch.manual_seed(cfg.seed)
        self.train_loader, self.val_loader = loaders
        self.balance = phase.balance
        self.loss = phase.balance.loss_function(self.device)  # its class weights or prior moved to the device once
        self.train_loader.sample_weights = phase.balance.sample_weights(self.train_loader.labels)  # sampler: a draw
        self.monitor = self.balance.monitor if cfg.monitor == "auto" else cfg.monitor
        # what the callbacks watch: the epoch (so the last one is kept) for --monitor last or without validation
        self.watch = "epoch" if self.monitor == "last" or self.val_loader is None else self.monitor
        if distributed.world_size() > 1:
            self.train_loader.set_shard(distributed.rank(), distributed.world_size())
            if self.val_loader is not None:  # each rank validates its share of the split
                self.val_loader.set_shard(distributed.rank(), distributed.world_size(), even=False)
        self.num_train = len(self.train_loader.labels)
        self.num_val = len(self.val_loader.labels) if self.val_loader is not None else 0
        model = self.model = self.wrap(model)  # the model trained: BatchNorm synchronised under --sync-bn
        # a network may set its own parameters' learning-rate and weight-decay scales, and train some for a few
        # epochs only (SpeedNet)
        lr_scales = {**phase.lr_scales, **(model.lr_scales() if hasattr(model, "lr_scales") else {})}
        decay_scales = model.decay_scales() if hasattr(model, "decay_scales") else None
        self.trainable_epochs = model.trainable_epochs() if hasattr(model, "trainable_epochs") else {}
        self.optimizer = build_optimizer(
            self.model, cfg.optimizer, phase.lr, cfg.weight_decay, cfg.momentum, lr_scales, decay_scales
        )
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = phase.epochs * self.steps_per_epoch
        self.ema: WeightEMA | None = None  # averaged weights: an EMA, or Lookahead's slow weights
        if cfg.ema_decay:
            self.ema = WeightEMA(self.model, cfg.ema_decay)
        elif cfg.lookahead:
            self.ema = Lookahead(self.model, self.total_steps)
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.callbacks = self.build_callbacks()
        self.epoch, self.step, self.train_seconds = 0, 0, 0.0
        self.stop, self.lr_scale = False, 1.0  # the callbacks' decisions so far

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` as this process trains it: BatchNorm synchronised and DDP under torchrun, compiled on a GPU with
        ``--compile``; returns the model itself (what is evaluated and saved), its wrapper in ``forward_model``."""
        cfg = self.cfg
        if cfg.sync_bn and distributed.active() and not self.phase.freeze_batchnorm:
            model = distributed.sync_batchnorm(model, self.device)
        self.forward_model = model  # what training calls: under torchrun, the model wrapped in DDP
        if distributed.active():
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        self.eager_forward = self.forward_model
        if compiles_training(cfg, self.device):  # fused kernels: a GPU is launch-bound on these small networks
            self.forward_model = torch.compile(self.forward_model, mode=cfg.compile_mode)
            self.compiled = f"torch.compile ({cfg.compile_mode})"
        else:
            self.compiled = "off: " + ("--no-compile" if not cfg.compile else "eager on a CPU (compiles on a GPU)")
        return model

    def build_callbacks(self) -> dict[str, Callback]:
        """The callbacks, by the name their state has in a checkpoint, in the order they are called."""
        cfg = self.cfg
        monitor = dict(monitor=self.watch, mode="min" if self.watch == "val_loss" else "max")
        callbacks: dict[str, Callback] = {}
        if self.val_loader is not None:
            callbacks["early_stopping"] = EarlyStopping(patience=cfg.early_stopping, **monitor)
            callbacks["plateau"] = ReduceLROnPlateau(
                patience=cfg.reduce_lr_patience, factor=cfg.reduce_lr_factor, **monitor
            )
        callbacks["best"] = BestCheckpoint(self.run_dir / BEST_WEIGHTS, **monitor)
        return callbacks

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
            self.compiled = f"off: torch.compile failed ({type(exc).__name__}) in epoch {self.epoch + 1}"
            self.forward_model = self.eager_forward
            return self.forward_model(images)

    def set_lr(self) -> float:
        """Set the optimizer's learning rate for the current step and return it."""
        cfg = self.cfg
        multiplier = lr_multiplier(
            cfg.schedule, self.step, self.total_steps, self.warmup_steps, cfg.lr_start, cfg.lr_end
        )
        lr = self.phase.lr * multiplier * self.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, frozen: list) -> tuple[torch.Tensor, ...]:
        """One optimizer step on a batch; (loss, logits, learning rate) of it."""
        cfg = self.cfg
        lr = self.set_lr()
        mixing = cfg.mixup or cfg.cutmix
        if mixing:
            images, partners, lam = mix_batch(images, labels, cfg.mixup, cfg.cutmix)
        with autocast(self.device, self.precision):
            logits = self.train_forward(images)
        if mixing:
            loss = self.loss(logits.float(), labels, cfg.label_smoothing, partners, lam)
        else:
            loss = self.loss(logits.float(), labels, cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p in frozen:  # done training: no gradient, so the optimizer leaves it (and its momentum) alone
            p.grad = None
        self.optimizer.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        return loss, logits, lr

    def train_epoch(self, bar: tqdm) -> dict:
        """One pass over the training split; returns mean loss and accuracy on the augmented batches."""
        set_train_mode(self.model, self.phase.freeze_batchnorm)  # transfer learning freezes BatchNorm
        torch.manual_seed(epoch_seed(self.cfg.seed, self.epoch))  # dropout randomness of this epoch
        self.train_loader.set_epoch(self.epoch)
        if self.phase.progressive_size:
            self.train_loader.image_size = self.phase.image_side(self.epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        n = 0
        frozen = [p for p in self.model.parameters() if self.trainable_epochs.get(id(p), self.epoch + 1) <= self.epoch]
        for images, labels in self.train_loader:
            if self.cpu_share is not None:
                self.cpu_share.update()  # fewer threads while other processes keep cores busy
            loss, logits, lr = self.train_step(images, labels, frozen)
            loss_sum += loss.detach() * len(labels)
            correct += hits(logits.detach(), labels)
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
            **{name: callback.state_dict() for name, callback in self.callbacks.items()},
            "decision": {"stop": self.stop, "lr_scale": self.lr_scale},
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
            for name, callback in self.callbacks.items():
                callback.load_state_dict(state[name])
            # the callbacks' standing decision (a checkpoint of an earlier version: read off their own state)
            decision = state.get("decision") or {
                "stop": state["early_stopping"]["stop"],
                "lr_scale": state["plateau"]["scale"] if self.val_loader is not None else 1.0,
            }
            self.stop, self.lr_scale = bool(decision["stop"]), float(decision["lr_scale"])
            # checkpoints end epochs: the step is the epoch's, counted in this world's steps per epoch (another
            # world size gives another count; the schedule goes on from the same fraction of training)
            self.epoch = int(state["epoch"])
            self.step = self.epoch * self.steps_per_epoch
            self.train_seconds = float(state["train_seconds"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ImgclfError(f"checkpoint state {files['state']} does not fit this run ({detail[:200]})") from None

    def start(self, resume: bool) -> History | None:
        """Resume from the last checkpoint when asked (a finished run is refused); the history, opened."""
        history = History(self.run_dir, tensorboard=self.cfg.tensorboard) if self.main else None
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
        return history

    def end_epoch(self, metrics: dict, next_checkpoint: float) -> bool:
        """Let the callbacks see the epoch just trained and fold in their decisions; True when a checkpoint is due."""
        state = EpochState(
            metrics,
            self.eval_model,
            last_epoch=self.epoch >= self.phase.epochs,
            checkpoint_time=self.train_seconds >= next_checkpoint,
            writes=self.main,
        )
        for callback in self.callbacks.values():
            state.apply(callback.on_epoch_end(state))
        self.stop, self.lr_scale = state.stop, state.lr_scale
        return state.checkpoint_due

    def run_epoch(self, bar: tqdm) -> dict:
        """Train one epoch and validate it: the epoch's record."""
        start = time.perf_counter()
        metrics = self.train_epoch(bar)
        self.epoch += 1
        metrics = {"epoch": self.epoch, **metrics}
        if self.cpu_share is not None:
            metrics["cpu_threads"] = self.cpu_share.threads_used()
        if self.val_loader is not None:  # reduced across the ranks: every decision the same everywhere
            classes = len(self.balance.counts)
            val = evaluate_loader(self.eval_model, self.val_loader, self.device, self.precision, classes)
            metrics.update(val_loss=val["loss"], val_acc=val["acc"])
            metrics.update({"val_map": val["map"]} if "map" in val else {"val_balanced_acc": val["balanced_acc"]})
        metrics["epoch_seconds"] = time.perf_counter() - start
        self.train_seconds += metrics["epoch_seconds"]
        return metrics

    def fit(self, resume: bool = False) -> dict:
        """Train until the phase's last epoch or until a callback stops it; returns the phase's summary."""
        cfg, phase = self.cfg, self.phase
        history = self.start(resume)
        params = count_parameters(self.model)
        distributed.say(
            f"{phase.label}: {params:,} parameters ({count_parameters(self.model, trainable_only=True):,} trainable) "
            f"| {self.num_train:,} train / {self.num_val:,} val images | "
            f"{describe_device(self.device)}, {self.precision} | run dir {self.run_dir}"
        )
        bar = tqdm(
            total=phase.epochs * self.steps_per_epoch * cfg.batch_size,
            initial=self.step * cfg.batch_size,
            unit="img",
            unit_scale=True,
            disable=not cfg.progress or not self.main,
            dynamic_ncols=True,
            smoothing=0.05,
        )
        next_checkpoint = self.train_seconds + cfg.checkpoint_every
        try:
            while self.epoch < phase.epochs and not self.stop:
                bar.set_description(f"epoch {self.epoch + 1}/{phase.epochs}")
                metrics = self.run_epoch(bar)
                due = self.end_epoch(metrics, next_checkpoint)
                if history is not None:
                    history.log(metrics)
                if due:
                    self.save_checkpoint()
                    next_checkpoint = self.train_seconds + cfg.checkpoint_every
                distributed.say(epoch_line(metrics, phase.epochs, self.balance.monitor == "val_balanced_acc"))
        finally:
            bar.close()
            if history is not None:
                history.close()
        return self.finish(params)

    def engine(self) -> dict:
        """How the phase was computed, beyond its options: what can change its numbers on another machine."""
        record = {"device": describe_device(self.device), "precision": self.precision}
        record.update(channels_last=self.cfg.channels_last, compile=self.compiled, torch=torch.__version__)
        if self.cpu_share is not None:
            record["threads"] = self.cpu_share.record()
        return record

    def finish(self, params: int) -> dict:
        """The phase's summary, written into its folder (rank 0 alone); the other ranks wait for it."""
        best = self.callbacks["best"]
        summary = {
            "model": self.phase.label,
            "parameters": params,
            "trainable_parameters": count_parameters(self.model, trainable_only=True),
            "epochs_run": self.epoch,
            "stopped_early": self.stop,
            "best_epoch": best.best_epoch,
            **({} if self.monitor == "last" else {f"best_{self.monitor}": best.best if self.val_loader else None}),
            "balance": {**self.balance.record(), "monitor": self.monitor},
            "num_train": self.num_train,
            "num_val": self.num_val,
            "train_seconds": self.train_seconds,
            "device": describe_device(self.device),
            "precision": self.precision,
            "torch": torch.__version__,
            "engine": self.engine(),
        }
        if self.main:
            RunDir(self.run_dir).write_summary(summary)
        distributed.barrier()  # the others wait until rank 0 has written the run
        return summary


def epoch_line(metrics: dict, epochs: int, balanced: bool = False) -> str:
    """The log line of one epoch (``balanced``: with validation's balanced accuracy; multi-label: its mAP)."""
    val = f"  val loss {metrics['val_loss']:.4f} acc {metrics['val_acc']:.4f}" if "val_acc" in metrics else ""
    if val and balanced:
        val += f" balanced {metrics['val_balanced_acc']:.4f}"
    if val and "val_map" in metrics:
        val += f" mAP {metrics['val_map']:.4f}"
    return (
        f"epoch {metrics['epoch']:3d}/{epochs}  train loss {metrics['train_loss']:.4f} "
        f"acc {metrics['train_acc']:.4f}{val}  lr {metrics['lr']:.4g}  {metrics['epoch_seconds']:.1f}s"
    )
