"""CIFAR-10 and CIFAR-100 as in-memory uint8 tensors, loaded through torchvision with every file's checksum verified.

This module is the one place that knows CIFAR: its 32-px images, its classes and its mean and std.
"""

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from imgclf.core.errors import ImgclfError
from imgclf.core.io import cache_dir
from imgclf.data.edits import NO_EDITS, Edits, edit_labels, edit_record, unknown_files
from imgclf.data.images import ImageSet, Splits, train_val_indices

DEFAULT_DATA_DIR = cache_dir("data")
CIFAR_SIDE = 32
# source name → (torchvision dataset class, display name, per-channel mean, std of the training images); torchvision
# is imported when CIFAR is read (:func:`torchvision_dataset`): importing it costs seconds that predict and serve spare
CIFAR_SOURCES = {
    "cifar10": ("CIFAR10", "CIFAR-10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", "CIFAR-100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CIFAR10_MEAN, CIFAR10_STD = CIFAR_SOURCES["cifar10"][2:]


def torchvision_dataset(source: str) -> type:
    """torchvision's dataset class of CIFAR ``source`` (cifar10 or cifar100)."""
    import torchvision.datasets

    return getattr(torchvision.datasets, CIFAR_SOURCES[source][0])


def resolve_data_dir(data_dir: str | os.PathLike | None) -> tuple[Path, bool]:
    """The data root to use (option, then IMGCLF_DATA_DIR, then the cache) and whether the user chose it."""
    chosen = data_dir or os.environ.get("IMGCLF_DATA_DIR")
    if not chosen:
        return DEFAULT_DATA_DIR, False
    path = Path(chosen).expanduser()
    if path.name in (torchvision_dataset(s).base_folder for s in CIFAR_SOURCES):  # accept the batches folder itself
        path = path.parent
    return path, True


def verify_cifar(root: Path, source: str = "cifar10") -> None:
    """Raise a one-line error naming the first missing or corrupt file of CIFAR ``source`` under ``root``."""
    from torchvision.datasets.utils import check_integrity

    dataset, name = torchvision_dataset(source), CIFAR_SOURCES[source][1]
    folder = root / dataset.base_folder
    for filename, md5 in [*dataset.train_list, *dataset.test_list, (dataset.meta["filename"], dataset.meta["md5"])]:
        path = folder / filename
        if not path.is_file():
            raise ImgclfError(f"{name} file missing: {path}")
        if not check_integrity(str(path), md5):
            raise ImgclfError(f"{name} file corrupt (md5 mismatch): {path}; delete it and download again")


def load_cifar(
    split: str, data_dir: str | os.PathLike | None = None, download: bool | None = None, source: str = "cifar10"
) -> ImageSet:
    """Load the ``train`` (50,000) or ``test`` (10,000) split, downloading to the default cache if needed."""
    if split not in ("train", "test"):
        raise ImgclfError(f"unknown split '{split}' (use 'train' or 'test')")
    dataset, name = torchvision_dataset(source), CIFAR_SOURCES[source][1]
    root, user_chosen = resolve_data_dir(data_dir)
    if download is None:
        download = not user_chosen
    if user_chosen and not root.is_dir():
        raise ImgclfError(f"data dir not found: {root}")
    if not (root / dataset.base_folder).is_dir():
        if not download:
            raise ImgclfError(f"{name} not found: {root / dataset.base_folder} does not exist (pass --download)")
        root.mkdir(parents=True, exist_ok=True)
        try:
            dataset(str(root), train=True, download=True)
        except Exception as exc:  # network errors come in many types
            raise ImgclfError(f"could not download {name} to {root}: {exc}") from None
    verify_cifar(root, source)
    try:
        ds = dataset(str(root), train=split == "train", download=False)
    except Exception as exc:  # unpickling a damaged file
        raise ImgclfError(f"could not read {name} from {root / dataset.base_folder}: {exc}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.tensor(ds.targets, dtype=torch.long), list(ds.classes))


def load_cifar10(split: str, data_dir: str | os.PathLike | None = None, download: bool | None = None) -> ImageSet:
    """CIFAR-10's ``train`` or ``test`` split."""
    return load_cifar(split, data_dir, download, "cifar10")


def resize_images(images: torch.Tensor, side: int, chunk: int = 2048) -> torch.Tensor:
    """uint8 images resized (antialiased bilinear) to ``side``×``side``, chunk by chunk."""
    out = []
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].float()
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_zeros(0, 3, side, side)


def cifar_names(split: str, count: int) -> list[str]:
    """The names of CIFAR's images in ``split`` as audits and ``--exclude`` files give them: ``train/00000`` … in
    the official order."""
    return [f"{split}/{i:05d}" for i in range(count)]


def edit_cifar(data: ImageSet, split: str, edits: Edits) -> tuple[ImageSet, list[dict], list[dict]]:
    """``data`` (CIFAR's ``split``) without the images ``edits`` exclude and with the labels it gives; then the
    excluded and the relabelled images."""
    names = cifar_names(split, len(data))
    kept, labels, excluded, changed = edit_labels(names, data.labels.tolist(), edits, data.classes, False)
    rows = torch.tensor([int(name.split("/")[1]) for name in kept], dtype=torch.long)
    return ImageSet(data.images[rows], torch.tensor(labels, dtype=torch.long), data.classes), excluded, changed


def cifar_splits(
    source: str,
    data_dir: str | os.PathLike | None,
    download: bool | None,
    val_fraction: float,
    seed: int,
    train_subset: int = 0,
    test_subset: int = 0,
    side: int = 0,
    edits: Edits = NO_EDITS,
) -> Splits:
    """CIFAR's training set split into (train, validation) as a run with these options splits it; its test set
    (optionally its first ``test_subset`` images) is loaded when :meth:`Splits.test` is called. ``edits`` leave
    images out of both and relabel others (names ``train/00042``, ``test/00042``)."""
    _, name, mean, std = CIFAR_SOURCES[source]
    full = load_cifar("train", data_dir, download, source)
    info = {"source": source}
    if edits:
        unknown_files(edits, {*cifar_names("train", 50_000), *cifar_names("test", 10_000)}, name)
        full, excluded, changed = edit_cifar(full, "train", edits)
        info.update(edit_record(edits, excluded, changed, full.classes))
        info["test_edits"] = {k: sum(f.startswith("test/") for f in getattr(edits, k)) for k in ("exclude", "relabel")}
    side = side or CIFAR_SIDE
    if side != CIFAR_SIDE:
        full = ImageSet(resize_images(full.images, side), full.labels, full.classes)
    train_idx, val_idx = train_val_indices(full.labels, val_fraction, seed, train_subset)

    def load_test() -> ImageSet:
        test = load_cifar("test", data_dir, download, source)
        if edits:
            test = edit_cifar(test, "test", edits)[0]
        if test_subset:
            test = test.subset(torch.arange(min(test_subset, len(test))))
        return ImageSet(resize_images(test.images, side), test.labels, test.classes) if side != CIFAR_SIDE else test

    return Splits(
        name=name,
        train=full.subset(train_idx),
        val=full.subset(val_idx),
        classes=full.classes,
        mean=mean,
        std=std,
        side=side,
        fingerprint=source,  # the official files, verified by their checksums
        load_test=load_test,
        info={**info, "train": len(train_idx), "val": len(val_idx)},
    )
