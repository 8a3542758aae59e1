"""Transfer learning in two phases, as in the reference study, on a timm backbone.

Phase 1 trains a new head (dropout + linear) on the frozen backbone; phase 2 fine-tunes the last ``--unfreeze``
layers and the head at a lower learning rate, BatchNorm kept in inference mode. Each phase is an ordinary
:class:`Trainer` run in ``RUN_DIR/phase1`` and ``RUN_DIR/phase2`` (so each resumes on its own); the run directory
itself receives the whole network's best weights, the joined history and a summary, like a from-scratch run.

CPU fast path (``--cache``, default): everything before the first unfrozen layer is frozen, so its output for an
image never changes. It is computed once — for the training images and their mirror images (flip augmentation),
and the validation images — and cached on disk; phase 1 then trains on pooled features and phase 2 on the cached
activations, touching only the few layers it trains. Without the cache (or with ``--unfreeze all``) every step runs
the whole network on augmented, resized images: the path for GPUs.
"""

import dataclasses
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from imgclf.config import TrainConfig
from imgclf.data.datasets import Splits
from imgclf.data.features import ActivationCache
from imgclf.data.loader import ActivationLoader, BatchLoader
from imgclf.device import autocast, resolve_precision, select_device
from imgclf.models import count_parameters
from imgclf.models.backbones import FeatureTail, backbone_units, create_backbone, preprocessing, split_backbone
from imgclf.models.layers import use_fast_depthwise
from imgclf.runs import BEST_WEIGHTS, HISTORY, SUMMARY, RunDir
from imgclf.training import distributed
from imgclf.training.checkpoint import load_weights, save_weights
from imgclf.training.history import History, read_history
from imgclf.training.optim import layer_lr_scales
from imgclf.training.trainer import Trainer, image_loaders


@dataclasses.dataclass
class TransferModel:
    """A timm network and its split into a frozen prefix and a trainable tail (sharing the network's modules)."""

    network: nn.Module
    prefix: nn.Sequential
    tail: FeatureTail
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def build_transfer_model(cfg: TrainConfig, num_classes: int, pretrained: bool = True) -> TransferModel:
    """The backbone of ``cfg`` with a new head, split where ``cfg.unfreeze`` says."""
    network = create_backbone(
        cfg.model,
        num_classes,
        pretrained=pretrained and cfg.pretrained,
        weights=cfg.weights if pretrained else None,
        dropout=cfg.dropout,
        drop_path=cfg.drop_path,
    )
    prep = preprocessing(network)
    if cfg.unfreeze == "all":
        prefix, tail = nn.Sequential(), None
    else:
        prefix, tail = split_backbone(network, cfg.unfreeze)
        for block in prefix.modules():  # the frozen prefix computes fixed features: no stochastic depth there,
            if isinstance(getattr(block, "drop_path", None), nn.Module):  # so its cached activations stay valid
                block.drop_path = nn.Identity()
    return TransferModel(network, prefix, tail, cfg.img_size or prep.native_size, prep.mean, prep.std)


def uses_cache(cfg: TrainConfig, tm: TransferModel) -> bool:
    """True when a run trains and predicts through cached prefix activations (there is a frozen prefix to cache)."""
    return cfg.cache and tm.tail is not None and len(tm.prefix) > 0


def activation_cache(cfg: TrainConfig, tm: TransferModel, device: torch.device, precision: str) -> ActivationCache:
    """The on-disk cache of ``tm.prefix`` activations for ``cfg``."""
    return ActivationCache(
        cfg.cache_dir,
        tm.prefix,
        tm.image_size,
        tm.mean,
        tm.std,
        device,
        precision,
        compile=cfg.compile,
        progress=cfg.progress,
        threads=cfg.threads,
    )


def set_trainable(model: nn.Module, trainable: list[nn.Module]) -> None:
    """Freeze every parameter of ``model`` except those of the ``trainable`` modules."""
    model.requires_grad_(False)
    for module in trainable:
        module.requires_grad_(True)


class ImageModel(nn.Module):
    """Frozen prefix then tail, on images: the uncached path (GPU, full fine-tuning)."""

    def __init__(self, prefix: nn.Module, tail: nn.Module) -> None:
        super().__init__()
        self.prefix, self.tail = prefix, tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.prefix(x))


@torch.inference_mode()
def pooled_features(
    tail: FeatureTail, activations: torch.Tensor, device, precision, batch_size: int = 512, progress: bool = True
) -> torch.Tensor:
    """Pooled features of the frozen tail over cached ``activations`` (phase 1 trains only the classifier on them)."""
    tail.eval()
    out = []
    steps = range(0, len(activations), batch_size)
    for start in tqdm(steps, desc="pooled features", unit="batch", disable=not progress or len(tail.units) == 0):
        x = (
            activations[start : start + batch_size]
            .to(device, torch.float32)
            .contiguous(memory_format=torch.channels_last)
        )
        with autocast(device, precision):
            out.append(tail.features(x).float().cpu())
    return torch.cat(out)


class TransferTrainer:
    """Runs phase 1 and phase 2 of ``cfg`` on the ``splits`` it is handed into ``run_dir``."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, splits: Splits) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device = distributed.setup(select_device(cfg.device))
        self.precision = resolve_precision(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.train, self.val = splits.train, splits.val
        self.classes = splits.classes
        self.tm = build_transfer_model(cfg, len(self.classes))
        self.input_size, self.mean, self.std = self.tm.image_size, self.tm.mean, self.tm.std
        self.tm.network.to(self.device)
        if cfg.channels_last:
            self.tm.network.to(memory_format=torch.channels_last)
        self.use_cache = uses_cache(cfg, self.tm)

    def uncached(self) -> tuple[nn.Module, tuple[BatchLoader, BatchLoader | None]]:
        """The whole network and augmented, resized image batches (uncached path)."""
        tm = self.tm
        model = tm.network if tm.tail is None else ImageModel(tm.prefix, tm.tail)
        return model, image_loaders(self.cfg, self.train, self.val, tm.mean, tm.std, self.device, tm.image_size)

    def cached_activations(self) -> dict[str, torch.Tensor | None]:
        """Prefix activations of the training images, their mirror images and the validation images."""
        cache = activation_cache(self.cfg, self.tm, self.device, self.precision)
        acts = {"train": cache.get(self.train, desc="train activations")}
        acts["mirrored"] = (
            cache.get(self.train, flip=True, desc="train activations") if self.cfg.augment != "none" else None
        )
        acts["val"] = cache.get(self.val, desc="val activations") if len(self.val) else None
        return acts

    def activation_loaders(self, acts: dict, batch_size: int) -> tuple[ActivationLoader, ActivationLoader | None]:
        """Batches of cached activations (or features), mirrored (and, with ``feature_shift``, shifted) at random for
        training."""
        cfg = self.cfg
        common = dict(device=self.device, channels_last=cfg.channels_last)
        train = ActivationLoader(
            acts["train"],
            self.train.labels,
            batch_size,
            mirrored=acts["mirrored"],
            shift=cfg.feature_shift if acts["train"].ndim == 4 else 0,
            shuffle=True,
            drop_last=len(self.train) >= 2 * batch_size,
            seed=cfg.seed,
            **common,
        )
        val = ActivationLoader(acts["val"], self.val.labels, 1024, **common) if acts["val"] is not None else None
        return train, val

    def phase(self, number: int, model: nn.Module, loaders: tuple, trainable: list[nn.Module], resume: bool) -> dict:
        """Train ``model`` (only ``trainable`` modules) as phase ``number``; load its best weights into it."""
        cfg = self.cfg
        phase_cfg = dataclasses.replace(cfg, epochs=cfg.head_epochs, lr=cfg.head_lr) if number == 1 else cfg
        set_trainable(self.tm.network, trainable)
        if number == 2:  # what phase 2 trains: fast bf16 CPU backward for its depthwise convolutions
            for module in trainable:
                use_fast_depthwise(module)
        scales = None
        if number == 2 and cfg.layer_decay != 1.0:
            layers = [*self.tm.tail.units] if self.tm.tail is not None else backbone_units(self.tm.network)
            scales = layer_lr_scales([*layers, self.tm.network.get_classifier()], cfg.layer_decay)
        phase_dir = self.run_dir / f"phase{number}"
        label = f"{cfg.model} phase {number} ({'head' if number == 1 else f'unfreeze {cfg.unfreeze}'})"
        trainer = Trainer(phase_cfg, phase_dir, None, model, loaders, scales, freeze_batchnorm=True, label=label)
        summary = trainer.fit(resume=resume and phase_dir.exists())
        load_weights(phase_dir / BEST_WEIGHTS, model)
        summary["total_parameters"] = count_parameters(self.tm.network)
        summary["trainable_parameters"] = sum(p.numel() for m in trainable for p in m.parameters())
        return summary

    def finished_phase(self, number: int, model: nn.Module) -> dict | None:
        """Summary of phase ``number`` if it already ran to its end, its best weights loaded into ``model``."""
        phase = RunDir(self.run_dir).phase(number)
        if not phase.file(SUMMARY).is_file():
            return None
        load_weights(phase.file(BEST_WEIGHTS), model)
        summary = phase.read_summary()
        return {**summary, "total_parameters": count_parameters(self.tm.network)}

    def fit(self, resume: bool = False) -> dict:
        """Phase 1, phase 2, then the whole network's best weights and the joined history into the run directory."""
        cfg, tm = self.cfg, self.tm
        summaries = {}
        head = tm.network.get_classifier()
        start = time.perf_counter()
        with distributed.main_first():  # under torchrun rank 0 builds the cache, the other ranks then read it
            acts = self.cached_activations() if self.use_cache else None
        cache_seconds = time.perf_counter() - start
        finished = self.finished_phase(1, nn.Sequential(tm.tail.dropout, head)) if resume and self.use_cache else None
        if finished is not None:  # a resumed run whose phase 1 is done: no pooled features needed
            summaries["phase1"] = finished
        elif cfg.head_epochs:
            if self.use_cache:
                feats = {
                    k: pooled_features(tm.tail, v, self.device, self.precision, progress=cfg.progress)
                    if v is not None
                    else None
                    for k, v in acts.items()
                }
                cache_seconds = time.perf_counter() - start  # caching and pooled features: training cost too
                model = nn.Sequential(tm.tail.dropout, head)
                loaders = self.activation_loaders(feats, cfg.batch_size)
            else:
                model, loaders = self.uncached()
            summaries["phase1"] = self.phase(1, model, loaders, [head], resume)
        if cfg.epochs and (tm.tail is None or len(tm.tail.units)):
            if self.use_cache:
                model, loaders = tm.tail, self.activation_loaders(acts, cfg.batch_size)
            else:
                model, loaders = self.uncached()
            trainable = [tm.network] if tm.tail is None else [tm.tail]
            summaries["phase2"] = self.phase(2, model, loaders, trainable, resume)
        tm.network.requires_grad_(True)
        last = summaries.get("phase2") or summaries["phase1"]
        summary = {
            **last,
            "model": cfg.model,
            "parameters": count_parameters(tm.network),
            "epochs_run": sum(s["epochs_run"] for s in summaries.values()),
            "cache_seconds": cache_seconds,
            "train_seconds": cache_seconds + sum(s["train_seconds"] for s in summaries.values()),
            "image_size": tm.image_size,
            "phases": summaries,
        }
        if distributed.is_main():  # rank 0 alone writes the run
            save_weights(self.run_dir / BEST_WEIGHTS, tm.network, {"model": cfg.model})
            self.join_history([n for n in (1, 2) if f"phase{n}" in summaries])
            RunDir(self.run_dir).write_summary(summary)
        return summary

    def join_history(self, phases: list[int]) -> None:
        """One history for the run: phase 1's epochs, then phase 2's, numbered on, each marked with its phase."""
        history = History(self.run_dir, tensorboard=False)
        history.truncate(0)
        epoch = 0
        for number in phases:
            for row in read_history(self.run_dir / f"phase{number}" / HISTORY):
                epoch += 1
                history.log({**row, "epoch": epoch, "phase": number})
        history.close()
