"""A user's folder of images as :class:`Splits`: scan, decode once into a memory-mapped array, split.

Two layouts are detected:
  DIR/<class>/…                               one folder: a seeded, stratified train/validation/test split
  DIR/train/<class>/… [val|valid|validation/] [test/]   used as given (validation, test held out of train if absent)
Class names are the folder names, sorted. Hidden files and folders and non-image files are ignored; files that are
not readable images (empty, truncated, undecodable, decompression bombs, …) are skipped and listed with the reason.

Preparation decodes every image once — in worker processes, with a progress bar — to a ``side``×``side`` uint8 array
in a ``.npy`` file under ``~/.cache/imgclf/prepared/KEY/``. KEY hashes the files (paths, sizes, modification
times), the side and the resize policy: later runs, the study and evaluation reuse it; a changed file rebuilds it.
"""

import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm.auto import tqdm

from imgclf.data.datasets import ImageSet, MappedImages, Splits, channel_stats, stratified_split, val_subset_size
from imgclf.data.decode import RESIZE_POLICIES, decode_rows
from imgclf.errors import ImgclfError
from imgclf.io import read_json, write_json

DEFAULT_PREPARE_DIR = Path.home() / ".cache" / "imgclf" / "prepared"
IMAGE_EXTENSIONS = (*IMG_EXTENSIONS, ".gif")
# split folder names (compared in lower case) → split
SPLIT_FOLDERS = {
    **dict.fromkeys(("train", "training", "train_set", "training_set"), "train"),
    **dict.fromkeys(("val", "valid", "validation", "val_set", "validation_set"), "val"),
    **dict.fromkeys(("test", "testing", "test_set", "testing_set"), "test"),
}
PREPARE_VERSION = 1  # bump when decoding changes what a prepared array holds
CHUNK = 256  # files per worker task
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


@dataclass
class Prepared:
    """A folder's images decoded into a memory-mapped uint8 (N, 3, S, S) array, with each file's outcome."""

    key: str
    array: np.ndarray
    reasons: list[str]  # '' for a decoded image, else why the file was skipped
    digests: list[str]  # SHA-1 of each file's bytes


def preparation_key(root: Path, files: list[str], side: int, policy: str) -> str:
    """Hash of the files (paths, sizes, modification and status-change times), the side and the resize policy."""
    digest = hashlib.sha1(json.dumps([PREPARE_VERSION, str(root.resolve()), side, policy]).encode())
    for name in files:
        try:
            st = (root / name).stat()
            digest.update(os.fsencode(name) + f"\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode())
        except OSError:  # gone, or unreadable: decoding says so
            digest.update(os.fsencode(name) + b"\0missing\n")
    return digest.hexdigest()[:24]


def load_prepared(folder: Path, key: str, files: list[str], side: int) -> Prepared | None:
    """The prepared entry in ``folder`` if it is complete and matches ``files`` and ``side``, else None."""
    try:
        meta = read_json(folder / "meta.json", "prepared data")
        array = np.load(folder / "images.npy", mmap_mode="r")
        reasons, digests = meta["reasons"], meta["digests"]
        if (
            array.dtype == np.uint8
            and array.shape == (len(files), 3, side, side)
            and meta["files"] == files
            and len(reasons) == len(digests) == len(files)
        ):
            return Prepared(key, array, reasons, digests)
    except (ImgclfError, OSError, ValueError, KeyError, TypeError):
        pass
    return None


def available_cpus() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def remove_stale(base: Path) -> None:
    """Delete the unfinished preparations of processes that no longer run (``.KEY.PID.tmp``)."""
    for tmp in base.glob(".*.tmp"):
        try:
            os.kill(int(tmp.name.split(".")[-2]), 0)
        except (ValueError, IndexError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def prepare(
    root: Path,
    files: list[str],
    side: int,
    policy: str,
    prepare_dir: str | Path | None = None,
    workers: int = 0,
    progress: bool = True,
) -> Prepared:
    """The prepared array of ``files`` under ``root``: from the cache when its key matches, else decoded now."""
    if policy not in RESIZE_POLICIES:
        raise ImgclfError(f"unknown resize policy '{policy}' (choose from: {', '.join(RESIZE_POLICIES)})")
    key = preparation_key(root, files, side, policy)
    base = Path(prepare_dir).expanduser() if prepare_dir else DEFAULT_PREPARE_DIR
    folder = base / key
    if folder.exists():
        if (found := load_prepared(folder, key, files, side)) is not None:
            return found
        shutil.rmtree(folder, ignore_errors=True)  # incomplete or damaged: rebuilt
    shape = (len(files), 3, side, side)
    try:
        base.mkdir(parents=True, exist_ok=True)
        remove_stale(base)
        tmp = base / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        array_path = tmp / "images.npy"
        np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=shape).flush()
        with open(array_path, "r+b") as f:  # claim the disk space now: a full disk is an error here, not a crash
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    except OSError as exc:
        shutil.rmtree(base / f".{key}.{os.getpid()}.tmp", ignore_errors=True)
        size = f"{np.prod(shape) / 1e9:.2f} GB"
        raise ImgclfError(f"cannot write prepared data ({size}) to {base}: {exc.strerror or exc}") from None
    try:
        results = decode_all(array_path, [str(root / f) for f in files], side, policy, workers, progress, root.name)
        meta = {"root": str(root), "side": side, "resize": policy, "files": files}
        meta.update(reasons=[r for _, r in results], digests=[d for d, _ in results])
        write_json(tmp / "meta.json", meta)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process prepared the same key meanwhile: use theirs if complete
            if (found := load_prepared(folder, key, files, side)) is not None:
                return found
            raise
    except OSError as exc:
        raise ImgclfError(f"cannot write prepared data to {base}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Prepared(key, np.load(folder / "images.npy", mmap_mode="r"), meta["reasons"], meta["digests"])


def decode_all(
    array_path: Path, paths: list[str], side: int, policy: str, workers: int, progress: bool, name: str
) -> list[tuple[str, str]]:
    """Decode ``paths`` into the rows of the array at ``array_path`` (worker processes for large folders)."""
    workers = workers or available_cpus()
    chunks = [(start, paths[start : start + CHUNK]) for start in range(0, len(paths), CHUNK)]
    results: list[list[tuple[str, str]]] = [[] for _ in chunks]
    with tqdm(total=len(paths), desc=f"preparing {name} ({side} px)", unit="img", disable=not progress) as bar:
        if workers == 1 or len(paths) < 2 * CHUNK:
            for i, (start, chunk) in enumerate(chunks):
                results[i] = decode_rows(str(array_path), start, chunk, side, policy)
                bar.update(len(chunk))
            return [r for chunk in results for r in chunk]
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
        try:
            futures = {
                pool.submit(decode_rows, str(array_path), start, chunk, side, policy): i
                for i, (start, chunk) in enumerate(chunks)
            }
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(len(chunks[futures[future]][1]))
        except BrokenProcessPool:
            raise ImgclfError(
                "a process decoding images died (out of memory?); try --workers 1 or a smaller --data-size"
            ) from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return [r for chunk in results for r in chunk]


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
    label_of = {f: label for s in scan.files for f, label in zip(scan.files[s], scan.labels[s], strict=True)}
    prepared = prepare(scan.root, order, side, resize, prepare_dir, workers, progress)
    row_of = {f: i for i, f in enumerate(order)}
    skipped = [{"file": f, "reason": r} for f, r in zip(order, prepared.reasons, strict=True) if r]
    readable = {s: [f for f in scan.files[s] if not prepared.reasons[row_of[f]]] for s in scan.files}
    if not any(readable.values()):
        raise ImgclfError(f"no readable image in {scan.root} ({len(skipped)} files could not be decoded)")
    if skipped:
        reasons = Counter(s["reason"].split(" (")[0] for s in skipped)
        summary = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
        warn(f"skipped {len(skipped)} of {len(order)} files in {scan.root} ({summary}); listed in skipped.json")
    for split, names in readable.items():
        counts = Counter(label_of[f] for f in names)
        for label, name in enumerate(scan.classes):
            if counts[label] < (2 if split in ("all", "train") else 1):
                where = scan.root / (split if split != "all" else "") / name
                raise ImgclfError(f"class '{name}' has {counts[label]} readable images in {where} (at least 2 needed)")

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
    digests = {s: [prepared.digests[row_of[f]] for f in lists[s]] for s in lists}
    duplicates = cross_split_duplicates(digests, lists)
    if duplicates:
        first = duplicates[0]["files"]
        example = " and ".join(f"{names[0]} ({split})" for split, names in list(first.items())[:2])
        warn(
            f"{len(duplicates)} identical files appear in more than one split (e.g. {example}): they inflate "
            "test accuracy; the run lists them in data.json"
        )
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
