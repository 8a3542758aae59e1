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

import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from imgclf.artifacts.files import BEST_WEIGHTS, HISTORY, SUMMARY
from imgclf.artifacts.runs import RunDir
from imgclf.artifacts.weights import load_weights, save_weights
from imgclf.config.options import TrainConfig
from imgclf.core.device import autocast, resolve_precision, select_device
from imgclf.data.images import Splits
from imgclf.data.loader import ActivationLoader, BatchLoader
from imgclf.models import count_parameters
from imgclf.models.backbones import FeatureTail
from imgclf.models.layers import use_fast_depthwise
from imgclf.models.transfer import activation_cache, architecture, build_network, uses_cache
from imgclf.training import distributed
from imgclf.training.balance import class_balance
from imgclf.training.build import image_loaders
from imgclf.training.history import History, read_history
from imgclf.training.phases import transfer_phases
from imgclf.training.trainer import Trainer


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
        self.tm = build_network(architecture(cfg), len(self.classes), pretrained=cfg.pretrained, weights=cfg.weights)
        self.tm.network.to(self.device)
        if cfg.channels_last:
            self.tm.network.to(memory_format=torch.channels_last)
        self.use_cache = uses_cache(cfg, self.tm)
        self.balance = class_balance(cfg, self.train.labels, len(self.classes))
        self.phases = transfer_phases(cfg, self.run_dir, self.tm, cached=self.use_cache, balance=self.balance)
        self.cache_record: dict | None = None  # how the activation cache computed (None: read or built elsewhere)
        self.fast_depthwise = 0  # depthwise convolutions of phase 2 whose backward runs in fp32

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
        self.cache_record = cache.record()
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

    def phase(self, number: int, model: nn.Module, loaders: tuple, resume: bool) -> dict:
        """Train ``model`` as phase ``number`` (only its trainable modules); load its best weights into it."""
        phase = self.phases[number - 1]
        set_trainable(self.tm.network, list(phase.trainable))
        if number == 2:  # what phase 2 trains: fast bf16 CPU backward for its depthwise convolutions
            self.fast_depthwise = sum(use_fast_depthwise(module) for module in phase.trainable)
        summary = Trainer(self.cfg, phase, model, loaders).fit(resume=resume and phase.folder.exists())
        load_weights(phase.folder / BEST_WEIGHTS, model)
        summary["total_parameters"] = count_parameters(self.tm.network)
        summary["trainable_parameters"] = sum(p.numel() for m in phase.trainable for p in m.parameters())
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
            summaries["phase1"] = self.phase(1, model, loaders, resume)
        if cfg.epochs and (tm.tail is None or len(tm.tail.units)):
            if self.use_cache:
                model, loaders = tm.tail, self.activation_loaders(acts, cfg.batch_size)
            else:
                model, loaders = self.uncached()
            summaries["phase2"] = self.phase(2, model, loaders, resume)
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
            "engine": self.engine(summaries),
        }
        if distributed.is_main():  # rank 0 alone writes the run
            save_weights(self.run_dir / BEST_WEIGHTS, tm.network, {"model": cfg.model})
            self.join_history([n for n in (1, 2) if f"phase{n}" in summaries])
            RunDir(self.run_dir).write_summary(summary)
        return summary

    def engine(self, summaries: dict[str, dict]) -> dict:
        """How the run was computed: the last phase's engine with every phase's thread counts, the activation
        cache's engines and fallbacks, and the layers whose depthwise backward ran in fp32."""
        engines = [s["engine"] for s in summaries.values() if "engine" in s]  # a phase of an earlier version: none
        engine = dict(engines[-1]) if engines else {}
        counts = sorted({n for e in engines for n in e.get("threads", {}).get("counts", [])})
        if counts:
            engine["threads"] = {**engine["threads"], "counts": counts}
        cached = (
            self.cache_record
            if self.use_cache
            else "off: " + ("--no-cache" if not self.cfg.cache else "no frozen prefix")
        )
        engine["activation_cache"] = cached
        engine["fp32_depthwise_backward_layers"] = self.fast_depthwise
        return engine

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
