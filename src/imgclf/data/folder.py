"""A user's folder of images read into a :class:`Scan` (``data/files.py`` prepares and splits it).

Two layouts are detected:
  DIR/<class>/…                               one folder: a stratified train/validation/test split
  DIR/train/<class>/… [val|valid|validation/] [test/]   used as given (validation, test held out of train if absent)
Split folders are matched in any case and in the usual spellings (Training_Set/, valid/, …). Class names are the
folder names, sorted. Hidden files and folders and non-image files are ignored; files that are not readable images
(empty, truncated, undecodable, decompression bombs, …) are skipped and listed with the reason. A symbolic link
is followed when it stays in its class folder or leads out of the dataset (a farm of links to a central store); one
that leads back up, or into another class's folder, would give images the wrong label and is skipped and counted.
"""

import os
from pathlib import Path

from imgclf.core.errors import ImgclfError
from imgclf.data.scan import SPLIT_NAMES, Scan

# torchvision's IMG_EXTENSIONS (tests/test_folder.py checks they agree), written out: importing torchvision takes
# seconds that predict and serve spare; and GIF
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def is_hidden(name: str) -> bool:
    """Hidden files and folders, and archive debris such as __MACOSX."""
    return name.startswith((".", "__"))


def is_image_file(entry: os.DirEntry) -> bool:
    """True for a regular file (or a link to one) with an image extension; a pipe or socket so named is not."""
    return entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file()


def list_dir(folder: Path) -> list[os.DirEntry]:
    """The visible entries of ``folder``, sorted by name; a one-line error when it cannot be read."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not is_hidden(e.name)), key=lambda e: e.name)
    except OSError as exc:
        raise ImgclfError(f"cannot read folder {folder}: {exc.strerror or exc}") from None


def relabelling_link(entry: os.DirEntry, home: Path, top: Path) -> str:
    """Why the symbolic link ``entry`` of class folder ``home`` (in dataset ``top``, both resolved) must not be
    followed — it leads back up, or into the dataset outside its class folder, and would relabel images — or ''."""
    if not entry.is_symlink():
        return ""
    target = Path(entry.path).resolve()
    if home.is_relative_to(target):
        return f"link leads back up (to {target})"
    inside = target.is_relative_to(top) and not target.is_relative_to(home)
    if inside and not any(is_hidden(part) for part in target.relative_to(top).parts):  # a hidden store is fine
        return f"link leads outside its class folder (to {target.relative_to(top).as_posix()})"
    return ""


def image_files(
    folder: Path, root: Path, links: list[dict] | None = None, home: Path | None = None, seen: frozenset = frozenset()
) -> tuple[list[str], int]:
    """Image files under ``folder`` (recursively, each real folder once: no symlink loops), relative to ``root`` and
    sorted; and the count of ignored files (no image extension, or not a regular file such as a pipe). With
    ``links``, ``folder`` is a class folder: links that would relabel images are skipped and listed there."""
    home = home or folder.resolve()  # the class folder
    seen = seen | {folder.resolve()}
    top = root.resolve() if links is not None else root  # resolved once per folder, not per file
    found, ignored = [], 0
    for entry in list_dir(folder):
        if links is not None and (reason := relabelling_link(entry, home, top)):
            links.append({"file": Path(entry.path).relative_to(root).as_posix(), "reason": reason})
        elif entry.is_dir():
            if Path(entry.path).resolve() in seen:
                continue
            sub, sub_ignored = image_files(Path(entry.path), root, links, home, seen)
            found += sub
            ignored += sub_ignored
        elif is_image_file(entry):
            found.append(Path(entry.path).relative_to(root).as_posix())
        else:
            ignored += 1
    return found, ignored


def scan_classes(
    folder: Path, root: Path, links: list[dict], one_class_is_fine: bool = False
) -> tuple[dict[str, list[str]], int]:
    """Class name → image files of the class folders in ``folder``, and the count of files ignored; links that would
    relabel images are listed in ``links``. One class is an error unless ``one_class_is_fine`` (a validation or test
    folder, whose classes are then checked against train/)."""
    classes, ignored = {}, 0
    for entry in list_dir(folder):
        if not entry.is_dir():
            ignored += 1
            continue
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:
            raise ImgclfError(f"class folder name {entry.name!r} in {folder} is not valid UTF-8: rename it") from None
        files, skipped = image_files(Path(entry.path), root, links)
        ignored += skipped
        if not files:
            raise ImgclfError(f"class folder {Path(entry.path)} has no image files")
        classes[entry.name] = files
    if not classes:
        raise ImgclfError(f"no class folders in {folder} (expected DIR/<class>/images or DIR/train/<class>/images)")
    if len(classes) == 1 and not one_class_is_fine:
        only = next(iter(classes))
        raise ImgclfError(
            f"{folder} holds one class folder, '{only}': a classifier needs two or more (if '{only}' holds the "
            "class folders, point --data at it)"
        )
    return classes, ignored


def split_folder_names(subdirs: list[str], root: Path) -> dict[str, str] | None:
    """Split → folder name when ``root`` holds split folders (train/ and optional val/, test/, any case and common
    spellings), None when its sub-folders are classes; a one-line error for a mix of both."""
    splits = {d: SPLIT_NAMES[d.lower()] for d in subdirs if d.lower() in SPLIT_NAMES}
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


def scan_folder(root: str | Path) -> Scan:
    """Find the layout, the classes and the image files of the dataset folder ``root``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise ImgclfError(f"data folder not found: {root}")
    if not root.is_dir():
        raise ImgclfError(f"data is neither cifar10, cifar100, a folder nor a label file (.csv, .tsv, .jsonl): {root}")
    split_folders = split_folder_names([e.name for e in list_dir(root) if e.is_dir()], root)
    links: list[dict] = []
    if split_folders is None:
        classes, ignored = scan_classes(root, root, links)
        names = sorted(classes)
        files = [f for c in names for f in classes[c]]
        labels = [i for i, c in enumerate(names) for _ in classes[c]]
        return Scan(root, "classes", names, {"all": files}, {"all": labels}, ignored, skipped=links)
    per_split, ignored = {}, 0
    for split, folder in split_folders.items():
        per_split[split], n = scan_classes(root / folder, root, links, one_class_is_fine=split != "train")
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
    return Scan(root, "splits", names, files, labels, ignored, skipped=links)
