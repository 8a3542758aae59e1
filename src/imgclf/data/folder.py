"""A user's folder of images as :class:`Splits`: scan, prepare (``data/prepare.py``), split.

Two layouts are detected:
  DIR/<class>/…                               one folder: a stratified train/validation/test split
  DIR/train/<class>/… [val|valid|validation/] [test/]   used as given (validation, test held out of train if absent)
Split folders are matched in any case and in the usual spellings (Training_Set/, valid/, …). Class names are the
folder names, sorted. Hidden files and folders and non-image files are ignored; files that are not readable images
(empty, truncated, undecodable, decompression bombs, …) are skipped and listed with the reason.
"""

import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm.auto import tqdm

from imgclf.core.errors import ImgclfError
from imgclf.data.images import ImageSet, MappedImages, Splits, channel_stats, stratified_split, val_subset_size
from imgclf.data.prepare import preparation_key, prepare

IMAGE_EXTENSIONS = (*IMG_EXTENSIONS, ".gif")
# split folder names (compared in lower case) → split
SPLIT_FOLDERS = {
    **dict.fromkeys(("train", "training", "train_set", "training_set"), "train"),
    **dict.fromkeys(("val", "valid", "validation", "val_set", "validation_set"), "val"),
    **dict.fromkeys(("test", "testing", "test_set", "testing_set"), "test"),
}
TEST_SPLIT_SEED = 0
STATS_SAMPLE = 10_000  # training images the normalisation's mean and std are measured on


@dataclass
class FolderScan:
    """The image files of a folder: class names, and per split ('all' for one folder) paths and labels."""

    root: Path
    layout: str  # "classes" (DIR/<class>/…) or "splits" (DIR/train/<class>/…)
    classes: list[str]
    files: dict[str, list[str]]  # split → paths relative to root
    labels: dict[str, list[int]]
    ignored: int  # hidden files and files without an image extension

    @property
    def all_files(self) -> list[str]:
        """Every image file, split by split: the rows of the prepared array."""
        return [f for split in self.files for f in self.files[split]]

    @property
    def all_labels(self) -> list[int]:
        """The label of each of :attr:`all_files`."""
        return [label for split in self.labels for label in self.labels[split]]


def is_hidden(name: str) -> bool:
    """Hidden files and folders, and archive debris such as __MACOSX."""
    return name.startswith((".", "__"))


def list_dir(folder: Path) -> list[os.DirEntry]:
    """The visible entries of ``folder``, sorted by name; a one-line error when it cannot be read."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not is_hidden(e.name)), key=lambda e: e.name)
    except OSError as exc:
        raise ImgclfError(f"cannot read folder {folder}: {exc.strerror or exc}") from None


def image_files(folder: Path, root: Path, seen: frozenset = frozenset()) -> tuple[list[str], int]:
    """Image files under ``folder`` (recursively, each real folder once: no symlink loops), relative to ``root`` and
    sorted; and the count of ignored files (no image extension, or not a regular file such as a pipe)."""
    seen = seen | {folder.resolve()}
    found, ignored = [], 0
    for entry in list_dir(folder):
        if entry.is_dir():
            if Path(entry.path).resolve() in seen:
                continue
            sub, sub_ignored = image_files(Path(entry.path), root, seen)
            found += sub
            ignored += sub_ignored
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
            found.append(Path(entry.path).relative_to(root).as_posix())
        else:
            ignored += 1
    return found, ignored


def scan_classes(folder: Path, root: Path) -> tuple[dict[str, list[str]], int]:
    """Class name → image files of the class folders in ``folder``."""
    classes, ignored = {}, 0
    for entry in list_dir(folder):
        if not entry.is_dir():
            ignored += 1
            continue
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:
            raise ImgclfError(f"class folder name {entry.name!r} in {folder} is not valid UTF-8: rename it") from None
        files, skipped = image_files(Path(entry.path), root)
        ignored += skipped
        if not files:
            raise ImgclfError(f"class folder {Path(entry.path)} has no image files")
        classes[entry.name] = files
    if not classes:
        raise ImgclfError(f"no class folders in {folder} (expected DIR/<class>/images or DIR/train/<class>/images)")
    if len(classes) == 1:
        only = next(iter(classes))
        raise ImgclfError(
            f"{folder} holds one class folder, '{only}': a classifier needs two or more (if '{only}' holds the "
            "class folders, point --data at it)"
        )
    return classes, ignored


def split_folder_names(subdirs: list[str], root: Path) -> dict[str, str] | None:
    """Split → folder name when ``root`` holds split folders (train/ and optional val/, test/, any case and common
    spellings), None when its sub-folders are classes; a one-line error for a mix of both."""
    splits = {d: SPLIT_FOLDERS[d.lower()] for d in subdirs if d.lower() in SPLIT_FOLDERS}
    if "train" not in splits.values():
        return None
    if others := [d for d in subdirs if d not in splits]:
        raise ImgclfError(
            f"{root} holds a training folder and '{others[0]}', which is no split folder "
            f"(expected train/ with optional val/ and test/ beside it)"
        )
    found: dict[str, str] = {}
    for folder, split in sorted(splits.items()):
        if split in found:
            raise ImgclfError(f"{root} has {found[split]}/ and {folder}/: keep one {split} folder")
        found[split] = folder
    return found


def scan_folder(root: str | Path) -> FolderScan:
    """Find the layout, the classes and the image files of the dataset folder ``root``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise ImgclfError(f"data folder not found: {root}")
    if not root.is_dir():
        raise ImgclfError(f"data is neither cifar10, cifar100 nor a folder: {root}")
    split_folders = split_folder_names([e.name for e in list_dir(root) if e.is_dir()], root)
    if split_folders is None:
        classes, ignored = scan_classes(root, root)
        names = sorted(classes)
        files = [f for c in names for f in classes[c]]
        labels = [i for i, c in enumerate(names) for _ in classes[c]]
        return FolderScan(root, "classes", names, {"all": files}, {"all": labels}, ignored)
    per_split, ignored = {}, 0
    for split, folder in split_folders.items():
        per_split[split], n = scan_classes(root / folder, root)
        ignored += n
    names = sorted(per_split["train"])
    for split, classes in per_split.items():
        folder, train = split_folders[split], split_folders["train"]
        if missing := sorted(set(names) - set(classes)):
            raise ImgclfError(f"class '{missing[0]}' of {train}/ is missing from {folder}/ in {root}")
        if extra := sorted(set(classes) - set(names)):
            raise ImgclfError(f"class '{extra[0]}' of {folder}/ is missing from {train}/ in {root}")
    files = {s: [f for c in names for f in per_split[s][c]] for s in per_split}
    labels = {s: [i for i, c in enumerate(names) for _ in per_split[s][c]] for s in per_split}
    return FolderScan(root, "splits", names, files, labels, ignored)


_warned: set[str] = set()


def warn(message: str) -> None:
    """One warning line on stderr (once per process: evaluation reloads the data a run trained on)."""
    if message not in _warned:
        _warned.add(message)
        tqdm.write(f"imgclf: warning: {message}", file=sys.stderr)


def cross_split_duplicates(digests: dict[str, list[str]], files: dict[str, list[str]]) -> list[dict]:
    """Identical files (by content hash) found in two or more splits: a leak that inflates test accuracy."""
    where: dict[str, dict[str, list[str]]] = {}
    for split, hashes in digests.items():
        for digest, name in zip(hashes, files[split], strict=True):
            where.setdefault(digest, {}).setdefault(split, []).append(name)
    return [{"sha1": d, "files": s} for d, s in where.items() if len(s) > 1]


def check_readable(
    scan: FolderScan, readable: dict[str, list[str]], label_of: dict[str, int], skipped: list[dict]
) -> None:
    """One warning line summing up the files skipped; a one-line error when no image is readable, or a class has too
    few readable images in a split (2 where validation is held out of it, else 1)."""
    if not any(readable.values()):
        raise ImgclfError(f"no readable image in {scan.root} ({len(skipped)} files could not be decoded)")
    if skipped:
        reasons = Counter(s["reason"].split(" (")[0] for s in skipped)
        summary = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
        total = len(scan.all_files)
        warn(f"skipped {len(skipped)} of {total} files in {scan.root} ({summary}); listed in skipped.json")
    for split, names in readable.items():
        counts = Counter(label_of[f] for f in names)
        needed = 2 if split in ("all", "train") else 1
        for label, name in enumerate(scan.classes):
            if counts[label] < needed:
                where = scan.root / (split if split != "all" else "") / name
                raise ImgclfError(
                    f"class '{name}' has {counts[label]} readable images in {where} (at least {needed} needed)"
                )


def warn_of_duplicates(digests: dict[str, list[str]], lists: dict[str, list[str]]) -> list[dict]:
    """The identical files in more than one split (by content), with one warning line when there are any."""
    duplicates = cross_split_duplicates(digests, lists)
    if duplicates:
        first = duplicates[0]["files"]
        example = " and ".join(f"{names[0]} ({split})" for split, names in list(first.items())[:2])
        warn(
            f"{len(duplicates)} identical files appear in more than one split (e.g. {example}): they inflate "
            "test accuracy; the run lists them in data.json"
        )
    return duplicates


def folder_splits(
    source: str,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    train_subset: int,
    test_subset: int,
    side: int,
    resize: str,
    prepare_dir: str | None,
    workers: int,
    progress: bool,
    lists: dict[str, list[str]] | None,
) -> Splits:
    """The splits of the image folder ``source`` (``lists``: a run's saved file lists, used exactly)."""
    scan = scan_folder(source)
    order = scan.all_files
    label_of = dict(zip(order, scan.all_labels, strict=True))
    prepared = prepare(scan.root, order, side, resize, prepare_dir, workers, progress)
    row_of = {f: i for i, f in enumerate(order)}
    skipped = [{"file": f, "reason": r} for f, r in zip(order, prepared.reasons, strict=True) if r]
    readable = {s: [f for f in scan.files[s] if not prepared.reasons[row_of[f]]] for s in scan.files}
    check_readable(scan, readable, label_of, skipped)
    if lists is None:
        lists = split_lists(readable, label_of, seed, val_fraction, test_fraction, train_subset, test_subset)
    for split, names in lists.items():
        for name in names:
            if name not in row_of or prepared.reasons[row_of[name]]:
                raise ImgclfError(f"file {name} of the run's {split} split is missing or unreadable in {scan.root}")
    array = prepared.array

    def image_set(split: str) -> ImageSet:
        names = lists[split]
        rows = np.array([row_of[f] for f in names], dtype=np.int64)
        labels = torch.tensor([label_of[f] for f in names], dtype=torch.long)
        return ImageSet(MappedImages(array, rows, prepared.key), labels, scan.classes)

    train = image_set("train")
    mean, std = channel_stats(train.images.take(sample_rows(len(train), STATS_SAMPLE)))
    duplicates = warn_of_duplicates({s: [prepared.digests[row_of[f]] for f in lists[s]] for s in lists}, lists)
    info = {
        "source": str(scan.root),
        "layout": scan.layout,
        "files": len(order),
        "ignored_files": scan.ignored,
        "skipped_files": len(skipped),
        **{split: len(names) for split, names in lists.items()},
        "prepared": prepared.key,
        "duplicates_across_splits": duplicates,
        "skipped": skipped,
    }
    return Splits(
        name=scan.root.name,
        train=train,
        val=image_set("val"),
        classes=scan.classes,
        mean=mean,
        std=std,
        side=side,
        fingerprint=prepared.key,
        load_test=lambda: image_set("test"),
        info=info,
        lists=lists,
    )


def folder_fingerprint(source: str | Path, side: int, policy: str) -> str:
    """The fingerprint (preparation key) the folder ``source`` has now at ``side`` and ``policy``, without decoding."""
    scan = scan_folder(source)
    return preparation_key(scan.root, scan.all_files, side, policy)


def sample_rows(count: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` of the indices ``0…count-1`` drawn at random (seeded), sorted; all of them when ``n`` is 0 or more."""
    if not n or n >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).permutation(count)[:n])


def sample(names: list[str], n: int, seed: int) -> list[str]:
    """``n`` of ``names`` drawn at random (seeded), in their original order; all of them when ``n`` is 0."""
    return [names[i] for i in sample_rows(len(names), n, seed)]


def split_lists(
    readable: dict[str, list[str]],
    label_of: dict[str, int],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    train_subset: int,
    test_subset: int,
) -> dict[str, list[str]]:
    """File lists of train, validation and test: folders given are used as they are, the rest is split by class —
    the test files first, with a fixed seed (like CIFAR's, the test set is the same whatever ``seed`` a run has, so
    runs of several seeds are compared on the same images), then the validation files, seeded by ``seed``.
    ``*_subset`` draws that many files at random (seeded)."""
    pool = readable.get("all") or readable["train"]
    if "test" in readable:
        test = readable["test"]
    else:
        keep, held = stratified_split([label_of[f] for f in pool], test_fraction, TEST_SPLIT_SEED)
        test, pool = [pool[i] for i in held], [pool[i] for i in keep]
    if "val" in readable:
        train, val = pool, readable["val"]
    else:
        keep, held = stratified_split([label_of[f] for f in pool], val_fraction, seed)
        train, val = [pool[i] for i in keep], [pool[i] for i in held]
    if train_subset:
        train, val = sample(train, train_subset, seed), sample(val, val_subset_size(train_subset), seed)
    return {"train": train, "val": val, "test": sample(test, test_subset, seed)}
