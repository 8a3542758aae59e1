"""A label file — CSV, TSV or JSON Lines — naming each image and its class, read into a :class:`Scan`.

The way annotation tools and Kaggle export a dataset: a header naming the file column (``file``, ``path``, ``image``
…; or ``--file-column``) and the label column (``label``, ``labels``, ``class`` …; or ``--label-column``), and an
optional ``split`` column (train/val/test, spelled as split folders are). A multi-label dataset gives an image several
labels in its label field, separated by ``;`` (``--label-separator``), or as a JSON list in a .jsonl file; with
``--task auto`` one such row makes the whole file multi-label, and a row of one label is then an image of one class.
Paths are relative to the label file's
folder; absolute paths and paths leading out of that folder (``../``) are read as written and counted, with one
warning line (``outside_label_folder`` in the run's data.json). The file is read as a stream (a million rows in a few
hundred MB); a byte-order mark, quoted fields and CRLF line ends are read as they are meant. A row without a label is
skipped and listed; a file listed twice with different labels or splits is an error naming both lines.
"""

import csv
import dataclasses
import json
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf.core.errors import ImgclfError, shown
from imgclf.data.scan import SPLIT_NAMES, Scan, warn

LABEL_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl")
FILE_COLUMNS = ("file", "path", "image", "filename", "file_name", "image_path", "filepath")
LABEL_COLUMNS = ("label", "labels", "class", "category")
SPLIT_COLUMN = "split"
FIELD_LIMIT = 1 << 20  # longest field read (csv's default, 128 KiB, is an error for a long path list)


@dataclass(frozen=True)
class LabelFormat:
    """How a label file is read: its file and label columns (None: found by name), the separator between an image's
    labels, and the task (auto, single or multilabel)."""

    file_column: str | None = None
    label_column: str | None = None
    label_separator: str = ";"
    task: str = "auto"

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> "LabelFormat":
        """The format named by the options in ``values`` (a config's or a command line's; absent ones default)."""
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


DEFAULT_FORMAT = LabelFormat()  # columns found by name, ';' between labels, the task read off the file


def is_label_file(source: str | Path) -> bool:
    """True when ``source`` names a label file by its suffix (.csv, .tsv, .jsonl)."""
    return Path(str(source)).suffix.lower() in LABEL_FILE_SUFFIXES


def pick_column(columns: list[str], given: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str:
    """The column named ``given`` (an error if absent), else the first of ``candidates`` present (any case)."""
    if given is not None:
        if given not in columns:
            raise ImgclfError(f"{path} has no column {shown(given)} (its columns: {', '.join(columns)})")
        return given
    lower = {c.strip().lower(): c for c in reversed(columns)}
    for name in candidates:
        if name in lower:
            return lower[name]
    flag = "--file-column" if what == "file" else "--label-column"
    raise ImgclfError(
        f"{path} has no {what} column (looked for {', '.join(candidates[:3])}; its columns: {', '.join(columns)}): "
        f"name it with {flag}"
    )


def csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV or TSV file with a header; a one-line error for a malformed line."""
    csv.field_size_limit(FIELD_LIMIT)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
            if not header:
                raise ImgclfError(f"{path} is empty: expected a header line naming its columns")
            header = [h.strip() for h in header]
            for fields in reader:
                if not fields or fields == [""]:
                    continue
                if len(fields) != len(header):
                    raise ImgclfError(
                        f"{path} line {reader.line_num} has {len(fields)} fields, its header {len(header)}"
                    )
                yield reader.line_num, dict(zip(header, fields, strict=True))
        except csv.Error as exc:
            raise ImgclfError(f"{path} line {reader.line_num}: {exc}") from None


def jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of a JSON Lines file; a one-line error for a line that is not a JSON object."""
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ImgclfError(f"{path} line {number} is not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ImgclfError(f"{path} line {number} is not a JSON object")
            yield number, row


def label_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of the label file ``path`` by its suffix; one-line errors for unreadable files."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            yield from jsonl_rows(path)
        else:
            yield from csv_rows(path, "\t" if suffix == ".tsv" else ",")
    except UnicodeDecodeError:
        raise ImgclfError(f"{path} is not UTF-8 text: save it as UTF-8") from None
    except OSError as exc:
        raise ImgclfError(f"cannot read {path}: {exc.strerror or exc}") from None


def text(value, path: Path, number: int, what: str) -> str:
    """A field as text (JSON numbers too); a one-line error for lists, objects and other values."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if value is None:
        return ""
    raise ImgclfError(f"{path} line {number}: the {what} must be text or a number, got {shown(value)}")


def label_names(value, path: Path, number: int, fmt: LabelFormat) -> tuple[str, ...]:
    """The labels of one row's label field, in its order without repeats: a JSON list, or text split at the
    separator (unless the task is single-label); a one-line error for several labels where the task is single."""
    if isinstance(value, list):
        names = [text(v, path, number, "label") for v in value]
    else:
        field = text(value, path, number, "label")
        names = field.split(fmt.label_separator) if fmt.task != "single" and fmt.label_separator else [field]
    names = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    if fmt.task == "single" and len(names) > 1:
        raise ImgclfError(f"{path} line {number} gives several labels ({', '.join(names)}) but --task is single")
    return names


def normal_path(name: str) -> str:
    """A listed path in one spelling: forward slashes kept, ``./`` and ``a/../`` collapsed."""
    return posixpath.normpath(name) if name else name


def is_outside(name: str) -> bool:
    """True for an absolute path or one that leads out of the label file's folder."""
    return posixpath.isabs(name) or name == ".." or name.startswith("../")


def class_order(names: set[str]) -> list[str]:
    """Class names sorted: as numbers when every name is an integer (2 before 10), else as text."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


Labels = tuple[str, ...]  # the label names of one image (one for single-label data)


def read_label_file(path: Path, fmt: LabelFormat) -> tuple[dict[str, list[tuple[str, Labels]]], list[dict]]:
    """Split → [(file, labels)] in file order ('all' without a split column), and the rows skipped (no label)."""
    rows = label_rows(path)
    entries: dict[str, list[tuple[str, Labels]]] = {}
    seen: dict[str, tuple[int, Labels, str]] = {}  # file → (line, labels, split)
    skipped, columns = [], None
    for number, row in rows:
        if columns is None:
            keys = list(row)
            columns = (
                pick_column(keys, fmt.file_column, FILE_COLUMNS, "file", path),
                pick_column(keys, fmt.label_column, LABEL_COLUMNS, "label", path),
                next((k for k in keys if k.strip().lower() == SPLIT_COLUMN), None),
            )
        name = normal_path(text(row.get(columns[0]), path, number, "file"))
        labels = label_names(row.get(columns[1]), path, number, fmt)
        split = "all" if columns[2] is None else split_of(row.get(columns[2]), path, number)
        if not name:
            raise ImgclfError(f"{path} line {number} names no file")
        if not labels:
            skipped.append({"file": name, "reason": f"no label (line {number})"})
            continue
        if name in seen:
            check_repeat(path, name, seen[name], (number, labels, split))
            continue
        seen[name] = (number, labels, split)
        entries.setdefault(split, []).append((name, labels))
    if columns is None:
        raise ImgclfError(f"{path} lists no images")
    return entries, skipped


def split_of(value, path: Path, number: int) -> str:
    """The split a row's split field names; a one-line error for any other value."""
    name = text(value, path, number, "split").lower()
    if name not in SPLIT_NAMES:
        raise ImgclfError(f"{path} line {number}: split {shown(name)} is not train, val or test")
    return SPLIT_NAMES[name]


def check_repeat(path: Path, name: str, first: tuple[int, Labels, str], again: tuple[int, Labels, str]) -> None:
    """A one-line error when a file listed again differs in labels or split (a repeat of the same row is fine)."""
    if set(first[1]) != set(again[1]):
        raise ImgclfError(
            f"{path} lists {name} twice with different labels: {shown(';'.join(first[1]))} on line {first[0]}, "
            f"{shown(';'.join(again[1]))} on line {again[0]}"
        )
    if first[2] != again[2]:
        raise ImgclfError(
            f"{path} lists {name} in two splits: {first[2]} on line {first[0]}, {again[2]} on line {again[0]}"
        )


def scan_label_file(source: str | Path, fmt: LabelFormat = DEFAULT_FORMAT) -> Scan:
    """The classes, splits and files a label file lists (see the module's docstring)."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise ImgclfError(f"label file not found: {path}")
    entries, skipped = read_label_file(path, fmt)
    if not entries:
        raise ImgclfError(f"{path} lists no labelled images ({len(skipped)} rows without a label)")
    if entries.keys() - {"all"} and "train" not in entries:
        raise ImgclfError(f"{path} has a split column but no row of the train split")
    names = class_order({label for rows in entries.values() for _, labels in rows for label in labels})
    if len(names) < 2:
        raise ImgclfError(f"{path} lists one class, {shown(names[0])}: a classifier needs two or more")
    per_split = {s: {label for _, labels in rows for label in labels} for s, rows in entries.items()}
    for split, present in per_split.items():
        if missing := [n for n in names if n not in present]:
            raise ImgclfError(f"class {shown(missing[0])} has no image in the {split} split of {path}")
    several = any(len(labels) > 1 for rows in entries.values() for _, labels in rows)
    task = "multilabel" if fmt.task == "multilabel" or (fmt.task == "auto" and several) else "single"
    index = {n: i for i, n in enumerate(names)}
    files = {s: [f for f, _ in rows] for s, rows in entries.items()}
    if task == "multilabel":
        labels = {s: [tuple(sorted(index[n] for n in ls)) for _, ls in rows] for s, rows in entries.items()}
    else:
        labels = {s: [index[ls[0]] for _, ls in rows] for s, rows in entries.items()}
    outside = [f for fs in files.values() for f in fs if is_outside(f)]
    layout = "label file"
    notes = {"label_file": str(path), "outside_label_folder": len(outside), "task": task}
    scan = Scan(path.parent, layout, names, files, labels, 0, source=path, skipped=skipped, notes=notes, task=task)
    if outside:
        warn(f"{len(outside)} paths in {path} lead outside its folder (e.g. {outside[0]}): read as written")
    return scan
