"""What a dataset of image files holds before any image is decoded: its classes and, per split, files and labels.

A folder (``data/folder.py``) and a label file (``data/labelfile.py``) are each read into one :class:`Scan`;
``data/files.py`` prepares and splits a scan the same way whichever it came from.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

# split names as folders and label files spell them (compared in lower case) → split
SPLIT_NAMES = {
    **dict.fromkeys(("train", "training", "train_set", "training_set"), "train"),
    **dict.fromkeys(("val", "valid", "validation", "val_set", "validation_set"), "val"),
    **dict.fromkeys(("test", "testing", "test_set", "testing_set"), "test"),
}


@dataclass
class Scan:
    """The image files of a dataset: class names, and per split ('all' when none is given) paths and labels."""

    root: Path  # the folder the paths are relative to (a label file's own folder)
    layout: str  # "classes" (DIR/<class>/…), "splits" (DIR/train/<class>/…) or "label file"
    classes: list[str]
    files: dict[str, list[str]]  # split → paths relative to root, as written
    labels: dict[str, list]  # split → the class index of each file (multilabel: a sorted tuple of indices)
    ignored: int  # hidden files and files without an image extension, links that would relabel images
    source: Path | None = None  # the label file (None: the folder ``root`` itself)
    skipped: list[dict] = field(default_factory=list)  # entries dropped before decoding, each with its reason
    notes: dict = field(default_factory=dict)  # facts of the scan kept in the run's data.json
    task: str = "single"  # or "multilabel": any number of classes per image (label files only)

    @property
    def origin(self) -> Path:
        """What the user pointed at: the label file, or the folder."""
        return self.source or self.root

    @property
    def name(self) -> str:
        """The dataset's display name: the folder's name, or the label file's folder's name."""
        return self.root.name

    @property
    def all_files(self) -> list[str]:
        """Every image file, split by split: the rows of the prepared array."""
        return [f for split in self.files for f in self.files[split]]

    @property
    def all_labels(self) -> list:
        """The label of each of :attr:`all_files`."""
        return [label for split in self.labels for label in self.labels[split]]

    def where(self, split: str, label: str) -> str:
        """Where the images of class ``label`` in ``split`` are listed, for messages."""
        if self.source is not None:
            return f"{self.origin}" + ("" if split == "all" else f" (split {split})")
        return str(self.root / ("" if split == "all" else split) / label)


_warned: set[str] = set()


def warn(message: str) -> None:
    """One warning line on stderr (once per process: evaluation reloads the data a run trained on)."""
    if message not in _warned:
        _warned.add(message)
        tqdm.write(f"imgclf: warning: {message}", file=sys.stderr)
