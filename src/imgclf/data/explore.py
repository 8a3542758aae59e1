"""A first look at a dataset: sample images per class, class distribution, per-channel mean and std."""

import json
from pathlib import Path

import numpy as np
import torch

from imgclf.data.cifar import load_cifar10
from imgclf.training.checkpoint import atomic_write


def channel_stats(images: torch.Tensor) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of uint8 (N, C, H, W) images, on the [0, 1] scale."""
    x = images.to(torch.float64).div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    return {"mean": x.mean(dim=1).tolist(), "std": x.std(dim=1).tolist()}


def explore(output: str | Path, data_dir: str | None = None, per_class: int = 8, seed: int = 0) -> dict:
    """Write samples.png, class_distribution.png and stats.json for the training split into ``output``."""
    from imgclf.evaluation import plots

    output = Path(output)
    train = load_cifar10("train", data_dir)
    counts = torch.bincount(train.labels, minlength=len(train.classes)).tolist()
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(train.labels.numpy() == c), per_class, replace=False) for c in range(10)]
    order = np.concatenate(picks)
    captions = [train.classes[train.labels[i]] for i in order]
    plots.plot_gallery(train.images[order].numpy(), captions, output / "samples.png", columns=per_class)
    plots.plot_bars(train.classes, counts, output / "class_distribution.png", title="training images per class")
    stats = {"images": len(train), "classes": train.classes, "per_class": dict(zip(train.classes, counts, strict=True))}
    stats.update(channel_stats(train.images))
    atomic_write(output / "stats.json", lambda tmp: tmp.write_text(json.dumps(stats, indent=2)))
    return stats
