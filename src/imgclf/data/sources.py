"""Where a run's images come from: CIFAR by name, a folder of images or a label file, each loaded into the same
:class:`Splits`."""

from imgclf.data.cifar import CIFAR_SOURCES, cifar_splits
from imgclf.data.files import file_splits
from imgclf.data.images import Splits


def is_builtin(source: str) -> bool:
    """True for the datasets imgclf loads by name (CIFAR) rather than from a folder."""
    return source in CIFAR_SOURCES


def load_splits(
    source: str,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float = 0.1,
    train_subset: int = 0,
    test_subset: int = 0,
    side: int = 0,
    resize: str = "crop",
    data_dir: str | None = None,
    download: bool | None = None,
    prepare_dir: str | None = None,
    workers: int = 0,
    progress: bool = True,
    lists: dict[str, list[str]] | None = None,
    columns: tuple[str | None, str | None] = (None, None),
) -> Splits:
    """The splits of ``source`` (``cifar10``, ``cifar100``, a folder or a label file), split as a run with these
    options splits it; ``lists`` (a run's saved file lists) fixes the split exactly; ``columns``: a label file's file
    and label columns (None: found by name)."""
    if is_builtin(source):
        return cifar_splits(source, data_dir, download, val_fraction, seed, train_subset, test_subset, side)
    return file_splits(
        source,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        train_subset=train_subset,
        test_subset=test_subset,
        side=side or 32,
        resize=resize,
        prepare_dir=prepare_dir,
        workers=workers,
        progress=progress,
        lists=lists,
        columns=columns,
    )
