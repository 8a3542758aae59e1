"""Where a run's images come from: CIFAR by name, a folder of images or a label file, each loaded into the same
:class:`Splits`."""

from imgclf.core.errors import ImgclfError
from imgclf.data.cifar import CIFAR_SOURCES, cifar_splits
from imgclf.data.edits import NO_EDITS, Edits
from imgclf.data.files import file_splits
from imgclf.data.images import Splits
from imgclf.data.labelfile import DEFAULT_FORMAT, LabelFormat


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
    fmt: LabelFormat = DEFAULT_FORMAT,
    edits: Edits = NO_EDITS,
) -> Splits:
    """The splits of ``source`` (``cifar10``, ``cifar100``, a folder or a label file), split as a run with these
    options splits it; ``lists`` (a run's saved file lists) fixes the split exactly; ``fmt``: how a label file is read
    (its columns, separator, task); ``edits``: files to leave out and to relabel (``data/edits.py``)."""
    if is_builtin(source):
        if fmt.task == "multilabel":
            raise ImgclfError(f"{source} is single-label: --task multilabel needs a label file")
        return cifar_splits(source, data_dir, download, val_fraction, seed, train_subset, test_subset, side, edits)
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
        fmt=fmt,
        edits=edits,
    )
