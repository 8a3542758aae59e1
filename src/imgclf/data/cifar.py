"""CIFAR-10 as in-memory uint8 tensors, loaded through torchvision with every file's checksum verified."""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity

from imgclf.errors import ImgclfError

DEFAULT_DATA_DIR = Path.home() / ".cache" / "imgclf" / "data"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class ImageSet:
    """Images as a uint8 tensor of shape (N, 3, H, W), integer labels (N,), and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor | np.ndarray) -> "ImageSet":
        """The images at ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], self.classes)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> tuple[Path, bool]:
    """The data root to use (option, then IMGCLF_DATA_DIR, then the cache) and whether the user chose it."""
    chosen = data_dir or os.environ.get("IMGCLF_DATA_DIR")
    if not chosen:
        return DEFAULT_DATA_DIR, False
    path = Path(chosen).expanduser()
    if path.name == CIFAR10.base_folder:  # accept the cifar-10-batches-py folder itself
        path = path.parent
    return path, True


def verify_cifar10(root: Path) -> None:
    """Raise a one-line error naming the first missing or corrupt CIFAR-10 file under ``root``."""
    folder = root / CIFAR10.base_folder
    for name, md5 in [
        *CIFAR10.train_list,
        *CIFAR10.test_list,
        (CIFAR10.meta["filename"], CIFAR10.meta["md5"]),
    ]:
        path = folder / name
        if not path.is_file():
            raise ImgclfError(f"CIFAR-10 file missing: {path}")
        if not check_integrity(str(path), md5):
            raise ImgclfError(f"CIFAR-10 file corrupt (md5 mismatch): {path}; delete it and download again")


def load_cifar10(split: str, data_dir: str | os.PathLike | None = None, download: bool | None = None) -> ImageSet:
    """Load the ``train`` (50,000) or ``test`` (10,000) split, downloading to the default cache if needed."""
    if split not in ("train", "test"):
        raise ImgclfError(f"unknown split '{split}' (use 'train' or 'test')")
    root, user_chosen = resolve_data_dir(data_dir)
    if download is None:
        download = not user_chosen
    if user_chosen and not root.is_dir():
        raise ImgclfError(f"data dir not found: {root}")
    if not (root / CIFAR10.base_folder).is_dir():
        if not download:
            raise ImgclfError(f"CIFAR-10 not found: {root / CIFAR10.base_folder} does not exist (pass --download)")
        root.mkdir(parents=True, exist_ok=True)
        try:
            CIFAR10(str(root), train=True, download=True)
        except Exception as exc:  # network errors come in many types
            raise ImgclfError(f"could not download CIFAR-10 to {root}: {exc}") from None
    verify_cifar10(root)
    try:
        ds = CIFAR10(str(root), train=split == "train", download=False)
    except Exception as exc:  # unpickling a damaged file
        raise ImgclfError(f"could not read CIFAR-10 from {root / CIFAR10.base_folder}: {exc}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.tensor(ds.targets, dtype=torch.long), list(ds.classes))


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation index split with the same class proportions in both parts."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    if val_fraction <= 0:
        return indices, indices[:0]
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, stratify=labels.numpy(), random_state=seed, shuffle=True
    )
    return np.sort(train_idx), np.sort(val_idx)


def load_train_val(
    data_dir: str | os.PathLike | None, download: bool | None, val_fraction: float, seed: int, train_subset: int = 0
) -> tuple[ImageSet, ImageSet]:
    """The training split divided into (train, validation) parts exactly as a run with these options divides it."""
    full = load_cifar10("train", data_dir, download=download)
    train_idx, val_idx = stratified_split(full.labels, val_fraction, seed)
    if train_subset:
        train_idx = train_idx[:train_subset]
        val_idx = val_idx[: max(train_subset // 4, 1)] if len(val_idx) else val_idx
    return full.subset(train_idx), full.subset(val_idx)
