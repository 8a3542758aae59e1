"""A dataset of image files — a folder or a label file — as :class:`Splits`: scan, prepare (``data/prepare.py``),
split; the same steps and checks whichever the scan came from."""

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgclf.core.errors import ImgclfError
from imgclf.data.edits import NO_EDITS, Edits, edit_scan
from imgclf.data.folder import scan_folder
from imgclf.data.images import ImageSet, MappedImages, Splits, channel_stats, stratified_split, val_subset_size
from imgclf.data.labelfile import DEFAULT_FORMAT, LabelFormat, is_label_file, scan_label_file
from imgclf.data.multilabel import multi_hot, strata
from imgclf.data.prepare import Prepared, preparation_key, prepare
from imgclf.data.scan import Scan, warn

TEST_SPLIT_SEED = 0
STATS_SAMPLE = 10_000  # training images the normalisation's mean and std are measured on


def cross_split_duplicates(digests: dict[str, list[str]], files: dict[str, list[str]]) -> list[dict]:
    """Identical files (by content hash) found in two or more splits: a leak that inflates test accuracy."""
    where: dict[str, dict[str, list[str]]] = {}
    for split, hashes in digests.items():
        for digest, name in zip(hashes, files[split], strict=True):
            where.setdefault(digest, {}).setdefault(split, []).append(name)
    return [{"sha1": d, "files": s} for d, s in where.items() if len(s) > 1]


def class_of(labels: list) -> list[int]:
    """Each image's class as stratified splits see it: its own, or a multi-label image's rarest."""
    return strata(labels) if labels and isinstance(labels[0], tuple) else labels


def class_tally(labels: list) -> Counter:
    """Images per class index of single labels (ints) or multi-labels (tuples)."""
    return Counter(c for label in labels for c in (label if isinstance(label, tuple) else (label,)))


def check_readable(scan: Scan, readable: dict[str, list[str]], label_of: dict, skipped: list[dict]) -> None:
    """One warning line summing up the files skipped; a one-line error when no image is readable, or a class has too
    few readable images in a split (2 where validation is held out of it, else 1)."""
    if not any(readable.values()):
        raise ImgclfError(f"no readable image in {scan.origin} ({len(skipped)} files could not be read)")
    if skipped:
        reasons = Counter(s["reason"].split(" (")[0] for s in skipped)
        summary = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
        total = len(scan.all_files) + len(scan.skipped)
        warn(f"skipped {len(skipped)} of {total} files in {scan.origin} ({summary}); listed in skipped.json")
    for split, names in readable.items():
        counts = class_tally([label_of[f] for f in names])
        needed = 2 if split in ("all", "train") else 1
        for label, name in enumerate(scan.classes):
            if counts[label] < needed:
                raise ImgclfError(
                    f"class '{name}' has {counts[label]} readable images in {scan.where(split, name)} "
                    f"(at least {needed} needed)"
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


def scan_source(source: str, fmt: LabelFormat = DEFAULT_FORMAT) -> Scan:
    """The scan of ``source``: a label file (.csv, .tsv, .jsonl, read as ``fmt`` says) or a folder of images."""
    if is_label_file(source):
        return scan_label_file(source, fmt)
    if fmt.task == "multilabel":
        raise ImgclfError(f"--task multilabel needs a label file giving each image its labels, not the folder {source}")
    return scan_folder(source)


def typical_side(source: str, fmt: LabelFormat = DEFAULT_FORMAT, n: int = 200) -> int:
    """The median shorter side, in pixels, of ``n`` of the dataset's image files drawn at random (headers only)."""
    from imgclf.data.decode import image_header

    scan = scan_source(source, fmt)
    headers = filter(None, (image_header(scan.root / f) for f in sample(scan.all_files, n, seed=0)))
    sides = [min(size) for size, _, _ in headers]
    if not sides:
        raise ImgclfError(f"no readable image among {n} files drawn from {scan.origin}")
    return int(np.median(sides))


def skipped_files(scan: Scan, reasons: list[str]) -> list[dict]:
    """Every entry of ``scan`` left out, with its reason: those its reader dropped, then the files preparation could
    not decode (``reasons``: one per file of :attr:`Scan.all_files`, '' for a decoded image)."""
    return scan.skipped + [{"file": f, "reason": r} for f, r in zip(scan.all_files, reasons, strict=True) if r]


def check_lists(lists: dict[str, list[str]], row_of: dict[str, int], reasons: list[str], scan: Scan) -> None:
    """A one-line error when a run's saved file lists name a file the dataset no longer has readable."""
    for split, names in lists.items():
        for name in names:
            if name not in row_of or reasons[row_of[name]]:
                raise ImgclfError(f"file {name} of the run's {split} split is missing or unreadable in {scan.origin}")


@dataclass
class ReadFiles:
    """A scanned and prepared dataset of files: each file's row and label, and the readable files of each split."""

    scan: Scan
    prepared: Prepared
    row_of: dict[str, int]  # file → its row of the prepared array
    label_of: dict  # file → its label (class index, or a tuple of them)
    readable: dict[str, list[str]]  # split as scanned → its decodable files
    skipped: list[dict]  # files left out, with their reasons

    def image_set(self, names: list[str]) -> ImageSet:
        """The prepared images and labels of the files ``names``."""
        rows = np.array([self.row_of[f] for f in names], dtype=np.int64)
        labels = [self.label_of[f] for f in names]
        if self.scan.task == "multilabel":
            tensor = multi_hot(labels, len(self.scan.classes))
        else:
            tensor = torch.tensor(labels, dtype=torch.long)
        return ImageSet(MappedImages(self.prepared.array, rows, self.prepared.key), tensor, self.scan.classes)


def read_files(
    source: str,
    fmt: LabelFormat,
    side: int,
    resize: str,
    prepare_dir: str | None,
    workers: int,
    progress: bool,
    edits: Edits = NO_EDITS,
) -> ReadFiles:
    """Scan ``source``, prepare its images at ``side`` and check that enough of them are readable; ``edits`` then
    leave files out (listed as skipped, with their reasons) and relabel others (preparation sees every file, so its
    cache serves runs with and without edits)."""
    whole = scan_source(source, fmt)
    order = whole.all_files
    prepared = prepare(whole.root, order, side, resize, prepare_dir, workers, progress)
    scan = edit_scan(whole, edits)
    label_of = dict(zip(scan.all_files, scan.all_labels, strict=True))
    row_of = {f: i for i, f in enumerate(order)}
    unreadable = [{"file": f, "reason": r} for f, r in zip(order, prepared.reasons, strict=True) if r and f in label_of]
    skipped = scan.skipped + unreadable
    readable = {s: [f for f in scan.files[s] if not prepared.reasons[row_of[f]]] for s in scan.files}
    check_readable(scan, readable, label_of, skipped)
    return ReadFiles(scan, prepared, row_of, label_of, readable, skipped)


def file_splits(
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
    fmt: LabelFormat = DEFAULT_FORMAT,
    edits: Edits = NO_EDITS,
) -> Splits:
    """The splits of the image folder or label file ``source`` (``lists``: a run's saved file lists, used exactly but
    for the files ``edits`` exclude; ``fmt``: how a label file is read)."""
    files = read_files(source, fmt, side, resize, prepare_dir, workers, progress, edits)
    if lists is not None and edits.exclude:
        lists = {split: [f for f in names if f not in edits.exclude] for split, names in lists.items()}
    scan, prepared, skipped = files.scan, files.prepared, files.skipped
    if lists is None:
        lists = split_lists(
            files.readable, files.label_of, seed, val_fraction, test_fraction, train_subset, test_subset
        )
    check_lists(lists, files.row_of, prepared.reasons, scan)

    def image_set(split: str) -> ImageSet:
        return files.image_set(lists[split])

    train = image_set("train")
    mean, std = channel_stats(train.images.take(sample_rows(len(train), STATS_SAMPLE)))
    digests = {s: [prepared.digests[files.row_of[f]] for f in lists[s]] for s in lists}
    duplicates = warn_of_duplicates(digests, lists)
    info = {
        "source": str(scan.origin),
        "layout": scan.layout,
        "files": len(scan.all_files) + len(scan.skipped),
        "ignored_files": scan.ignored,
        "skipped_files": len(skipped),
        **scan.notes,
        **{split: len(names) for split, names in lists.items()},
        "prepared": prepared.key,
        "duplicates_across_splits": duplicates,
        "skipped": skipped,
    }
    return Splits(
        name=scan.name,
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


def files_fingerprint(source: str | Path, side: int, policy: str, fmt: LabelFormat = DEFAULT_FORMAT) -> str:
    """The fingerprint (preparation key) the folder or label file ``source`` has now at ``side`` and ``policy``,
    without decoding."""
    scan = scan_source(str(source), fmt)
    return preparation_key(scan.root, scan.all_files, side, policy)


def sample_rows(count: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` of the indices ``0…count-1`` drawn at random (seeded), sorted; all of them when ``n`` is 0 or more."""
    if not n or n >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).permutation(count)[:n])


def sample(names: list[str], n: int, seed: int) -> list[str]:
    """``n`` of ``names`` drawn at random (seeded), in their original order; all of them when ``n`` is 0."""
    return [names[i] for i in sample_rows(len(names), n, seed)]


def test_split(readable: dict[str, list[str]], label_of: dict, test_fraction: float) -> tuple[list[str], list[str]]:
    """(the training pool, the test files) of ``readable``: its test folder or split as given, else a stratified
    ``test_fraction`` of each class drawn with a fixed seed (the same whatever a run's seed)."""
    pool = readable.get("all") or readable["train"]
    if "test" in readable:
        return pool, readable["test"]
    keep, held = stratified_split(class_of([label_of[f] for f in pool]), test_fraction, TEST_SPLIT_SEED)
    return [pool[i] for i in keep], [pool[i] for i in held]


def split_lists(
    readable: dict[str, list[str]],
    label_of: dict,
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
    pool, test = test_split(readable, label_of, test_fraction)
    if "val" in readable:
        train, val = pool, readable["val"]
    else:
        keep, held = stratified_split(class_of([label_of[f] for f in pool]), val_fraction, seed)
        train, val = [pool[i] for i in keep], [pool[i] for i in held]
    if train_subset:
        train, val = sample(train, train_subset, seed), sample(val, val_subset_size(train_subset), seed)
    return {"train": train, "val": val, "test": sample(test, test_subset, seed)}
