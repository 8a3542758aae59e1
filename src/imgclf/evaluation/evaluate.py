"""Test-split evaluation of a finished run: the test images are read here and nowhere else."""

import json
import time
from pathlib import Path

import torch
import yaml

from imgclf.config import TrainConfig
from imgclf.data.cifar import CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from imgclf.data.loader import BatchLoader
from imgclf.device import describe_device, resolve_precision, select_device
from imgclf.errors import ImgclfError
from imgclf.models import count_parameters, create_model
from imgclf.training.checkpoint import atomic_write, load_weights
from imgclf.training.trainer import BEST_WEIGHTS, evaluate_loader


def load_run_config(run_dir: Path) -> TrainConfig:
    """The configuration a run was trained with."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ImgclfError(f"not a run directory (no config.yaml): {run_dir}")
    return TrainConfig(**yaml.safe_load(path.read_text()))


def load_run_model(run_dir: Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """The run's selected (best-validation) model, in eval mode on ``device``."""
    cfg = load_run_config(run_dir)
    model = create_model(cfg.model)
    load_weights(Path(run_dir) / BEST_WEIGHTS, model)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), cfg


def evaluate_run(run_dir: str | Path, data_dir: str | None = None, device: str = "auto") -> dict:
    """Test accuracy and loss of the run's best checkpoint; writes ``metrics.json`` into the run."""
    run_dir = Path(run_dir)
    dev = select_device(device)
    model, cfg = load_run_model(run_dir, dev)
    precision = resolve_precision(cfg.precision, dev)
    test = load_cifar10("test", data_dir or cfg.data_dir, download=cfg.download or None)
    loader = BatchLoader(test, 1000, CIFAR10_MEAN, CIFAR10_STD, device=dev, channels_last=cfg.channels_last)
    start = time.perf_counter()
    result = evaluate_loader(model, loader, dev, precision)
    metrics = {
        "model": cfg.model,
        "test_accuracy": result["acc"],
        "test_loss": result["loss"],
        "test_images": len(test),
        "parameters": count_parameters(model),
        "trainable_parameters": count_parameters(model, trainable_only=True),
        "eval_seconds": time.perf_counter() - start,
        "device": describe_device(dev),
        "precision": precision,
    }
    atomic_write(run_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
    return metrics
