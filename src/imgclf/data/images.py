"""Images as every layer sees them: an :class:`ImageSet` of uint8 images and labels, and the :class:`Splits` that every
data source yields (train, validation and, read once later, test), with the split helpers the sources share.

``cifar10`` and ``cifar100`` load into memory (``data/cifar.py``); a folder of images is decoded once into a
memory-mapped array (``data/folder.py``), so a dataset larger than RAM trains with bounded memory. The trainer,
evaluation and report receive a ``Splits`` and never ask where the images came from (``data/sources.py`` asks).
"""

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from imgclf.core.errors import ImgclfError


class MappedImages:
    """Rows of a memory-mapped uint8 (N, 3, S, S) ``.npy`` array, read from the file when indexed.

    Batches are read with ``os.preadv`` straight into a new array rather than through the mapping: the pages a
    mapping touches count in the process's resident memory until the kernel drops them, a read's pages stay in the
    page cache only, so training on a dataset larger than memory keeps the process's memory bounded.
    """

    def __init__(self, array: np.ndarray, rows: np.ndarray, key: str) -> None:
        self.array, self.rows, self.key = array, np.asarray(rows, dtype=np.int64), key
        self.row_bytes = int(np.prod(array.shape[1:]))
        self._fd: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.array.shape[1:])

    def __getitem__(self, index: slice | torch.Tensor | np.ndarray) -> torch.Tensor:
        """The images at ``index`` (a slice or integer indices) as a uint8 tensor in memory."""
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        rows = np.atleast_1d(self.rows[index])
        out = np.empty((len(rows), *self.array.shape[1:]), dtype=np.uint8)
        if not isinstance(self.array, np.memmap) or not len(rows):  # an array in memory (tests, small sets)
            out[:] = self.array[rows]
            return torch.from_numpy(out)
        flat = out.reshape(len(rows), -1)
        if len(rows) and (np.diff(rows) == 1).all():  # consecutive rows: one read
            self.read_into(flat.reshape(-1), int(rows[0]))
        else:
            for i, row in enumerate(rows):
                self.read_into(flat[i], int(row))
        return torch.from_numpy(out)

    def read_into(self, buffer: np.ndarray, row: int) -> None:
        """Fill ``buffer`` (one or more whole rows) from the file, starting at ``row``."""
        if self._fd is None:
            self._fd = os.open(self.array.filename, os.O_RDONLY)
        view, offset = memoryview(buffer).cast("B"), self.array.offset + row * self.row_bytes
        while view:
            n = os.preadv(self._fd, [view], offset)
            if n <= 0:
                raise ImgclfError(f"prepared data file {self.array.filename} is shorter than its header says")
            view, offset = view[n:], offset + n

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def take(self, indices: np.ndarray) -> "MappedImages":
        """The images at ``indices``, still on disk."""
        return MappedImages(self.array, self.rows[indices], self.key)


@dataclass
class ImageSet:
    """Images — a uint8 tensor (N, 3, H, W) in memory, or :class:`MappedImages` on disk — with integer labels (N,)
    (multi-label data: multi-hot uint8 labels (N, C), ``data/multilabel.py``) and the class names."""

    images: torch.Tensor | MappedImages
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor | np.ndarray) -> "ImageSet":
        """The images at ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        images = self.images.take(idx) if isinstance(self.images, MappedImages) else self.images[torch.from_numpy(idx)]
        return ImageSet(images, self.labels[torch.from_numpy(idx)], self.classes)

    def fingerprint(self) -> str:
        """SHA-1 identifying these images and labels (the activation cache's data key)."""
        digest = hashlib.sha1()
        if isinstance(self.images, MappedImages):
            digest.update(self.images.key.encode())
            digest.update(self.images.rows.tobytes())
        else:
            digest.update(self.images.contiguous().reshape(-1).numpy().tobytes())
        digest.update(self.labels.contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


@dataclass
class Splits:
    """What a run trains and is evaluated on: a source's train and validation images, its class names,
    normalisation and image side; the test images come from :meth:`test`, called once, by the evaluation."""

    name: str  # display name: "CIFAR-10", or the folder's name
    train: ImageSet
    val: ImageSet
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    side: int
    fingerprint: str  # identity of the source's files (and preparation)
    load_test: Callable[[], ImageSet] = field(repr=False)
    info: dict = field(default_factory=dict)  # facts the run records: layout, counts, skipped files, leaks
    lists: dict[str, list[str]] | None = None  # folder datasets: the file list of each split (saved in the run)

    def test(self) -> ImageSet:
        """The test images (read here, once per evaluation)."""
        return self.load_test()


STATS_CHUNK_VALUES = 1 << 23  # pixel values per chunk of channel_stats: 64 MB in float64, whatever the side


def channel_stats(images: torch.Tensor | MappedImages) -> tuple[tuple, tuple]:
    """Per-channel mean and standard deviation, on the [0, 1] scale, of uint8 (N, C, H, W) images, in chunks of
    :data:`STATS_CHUNK_VALUES` values (a fixed count of images was 4,096 × 150,528 float64 values at 224 px: 4.9 GB
    a chunk, which with its square took a 9,000-image training split's process out of memory)."""
    total = squares = 0.0
    count = 0
    chunk = max(1, STATS_CHUNK_VALUES // max(1, int(np.prod(images.shape[1:]))))
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255)
        total = total + x.sum(dim=(0, 2, 3))
        squares = squares + x.square().sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if not count:
        raise ImgclfError("no images to compute the mean and standard deviation of")
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0) * count / max(count - 1, 1)
    return tuple(mean.tolist()), tuple(std.sqrt().tolist())


def stratified_split(
    labels: torch.Tensor | np.ndarray | list[int], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded index split into (rest, held out) with the same class proportions in both parts."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    if fraction <= 0:
        return indices, indices[:0]
    y = np.asarray(labels)
    classes = len(np.unique(y))
    held = int(np.ceil(fraction * len(y)))
    if held < classes or len(y) - held < classes:
        raise ImgclfError(
            f"a held-out fraction of {fraction:g} of {len(y):,} images leaves {held:,} held out and "
            f"{len(y) - held:,} kept for {classes} classes (each part needs one image per class)"
        )
    try:
        rest, out = train_test_split(indices, test_size=fraction, stratify=y, random_state=seed, shuffle=True)
    except ValueError as exc:  # e.g. a class with a single image
        raise ImgclfError(f"cannot split {len(y):,} images by class with fraction {fraction:g}: {exc}") from None
    return np.sort(rest), np.sort(out)


def train_val_indices(
    labels: torch.Tensor, val_fraction: float, seed: int, train_subset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The seeded, stratified (train, validation) split of a training set, shortened when ``train_subset`` is set."""
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    if train_subset:
        train_idx = train_idx[:train_subset]
        val_idx = val_idx[: val_subset_size(train_subset)] if len(val_idx) else val_idx
    return train_idx, val_idx


def val_subset_size(train_subset: int) -> int:
    """Validation images kept when training on only ``train_subset`` images (a quarter, at least one)."""
    return max(train_subset // 4, 1)
