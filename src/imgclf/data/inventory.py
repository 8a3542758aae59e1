"""Every image of a dataset with its name and split, as an audit sees it: one :class:`ImageSet` over all splits.

Names identify images the way ``--exclude`` and ``--relabel`` files name them: a folder's or label file's paths as
written (relative to the folder or label file), and ``train/00042`` / ``test/00042`` for CIFAR (the position in
the official file order). A folder without a test split has its test files drawn as every run draws them (fixed
seed); validation is carved from training by each run's own seed, so it counts as training here.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from imgclf.data.images import ImageSet
from imgclf.data.labelfile import DEFAULT_FORMAT, LabelFormat
from imgclf.data.sources import is_builtin


@dataclass
class Inventory:
    """All images of a source: ``images`` row ``i`` is the file ``names[i]`` of split ``splits[i]``."""

    name: str  # the dataset's display name
    images: ImageSet
    names: list[str]
    splits: np.ndarray  # (N,) str: train, val (given by the dataset) or test
    task: str = "single"
    info: dict = field(default_factory=dict)  # facts worth reporting: layout, skipped files

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.splits) == len(self.images):
            raise ValueError("an inventory needs one name and one split per image")


def cifar_inventory(source: str, data_dir: str | None, download: bool | None) -> Inventory:
    """CIFAR's 50,000 training and 10,000 test images."""
    from imgclf.data.cifar import CIFAR_SOURCES, cifar_names, load_cifar

    parts = {split: load_cifar(split, data_dir, download, source) for split in ("train", "test")}
    names = [n for split, part in parts.items() for n in cifar_names(split, len(part))]
    splits = np.concatenate([np.full(len(part), split) for split, part in parts.items()])
    images = ImageSet(
        torch.cat([p.images for p in parts.values()]),
        torch.cat([p.labels for p in parts.values()]),
        parts["train"].classes,
    )
    return Inventory(CIFAR_SOURCES[source][1], images, names, splits, info={"source": source})


def inventory(
    source: str,
    *,
    side: int,
    resize: str = "crop",
    test_fraction: float = 0.1,
    data_dir: str | None = None,
    download: bool | None = None,
    prepare_dir: str | None = None,
    workers: int = 0,
    progress: bool = True,
    fmt: LabelFormat = DEFAULT_FORMAT,
) -> Inventory:
    """Every readable image of ``source`` (CIFAR by name, a folder or a label file) prepared at ``side`` px (CIFAR:
    its own 32 px)."""
    if is_builtin(source):
        return cifar_inventory(source, data_dir, download)
    from imgclf.data.files import read_files, test_split

    files = read_files(source, fmt, side, resize, prepare_dir, workers, progress)
    pool, test = test_split(files.readable, files.label_of, test_fraction)
    parts = {"train": pool, "val": files.readable.get("val", []), "test": test}
    names = [f for part in parts.values() for f in part]
    splits = np.concatenate([np.full(len(part), split, dtype="<U5") for split, part in parts.items()])
    scan = files.scan
    info = {"source": str(scan.origin), "layout": scan.layout, "skipped_files": len(files.skipped)}
    return Inventory(scan.name, files.image_set(names), names, splits, task=scan.task, info=info)
