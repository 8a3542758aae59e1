"""Acting on an audit: files to leave out (``--exclude``) and files to give another label (``--relabel``).

Both read a CSV, TSV or JSON Lines file with a header, as label files are read (byte-order mark, quotes, CRLF): a
file column (``file``, ``path``, ``image`` …) naming images as the dataset does — paths relative to the folder or label
file, or ``train/00042`` for CIFAR — and for ``--exclude`` an optional ``issue`` or ``reason`` column, for
``--relabel`` the new label in ``new_label``, ``suggested`` (audit.csv's column), ``label`` or ``class``. audit.csv
and the CSV its page downloads work as they are. A listed file the dataset does not have is counted and warned of;
a new label that is not a class of the dataset is an error naming the line.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.core.errors import ImgclfError, os_reason, shown
from imgclf.data.labelfile import FILE_COLUMNS, LabelFormat, label_names, label_rows, normal_path, pick_column, text
from imgclf.data.scan import Scan, warn

REASON_COLUMNS = ("issue", "reason")
NEW_LABEL_COLUMNS = ("new_label", "suggested", "label", "class")


@dataclass(frozen=True)
class Edits:
    """Files to leave out, each with why, and files to relabel, each with its new label names."""

    exclude: dict[str, str] = field(default_factory=dict)  # file → reason
    relabel: dict[str, tuple[str, ...]] = field(default_factory=dict)  # file → new label names
    sources: dict[str, str] = field(default_factory=dict)  # "exclude" / "relabel" → the file it was read from

    def __bool__(self) -> bool:
        return bool(self.exclude or self.relabel)


NO_EDITS = Edits()


def edit_file(path: str | Path, what: str) -> Path:
    """``path`` as an existing file, or a one-line error naming the option."""
    p = Path(path).expanduser()
    try:
        found = p.is_file()
    except OSError as exc:  # a name too long for the file system, say (Python 3.11 raises it from is_file)
        raise ImgclfError(f"--{what} file {shown(str(p))}: {os_reason(exc)}") from None
    if not found:
        raise ImgclfError(f"--{what} file not found: {p}")
    return p


def read_exclude(path: Path) -> dict[str, str]:
    """File → reason of the files ``path`` lists (reason: its issue or reason column, else 'listed')."""
    out: dict[str, str] = {}
    columns = None
    for number, row in label_rows(path):
        if columns is None:
            keys = list(row)
            reason = next((k for k in keys if k.strip().lower() in REASON_COLUMNS), None)
            columns = (pick_column(keys, None, FILE_COLUMNS, "file", path), reason)
        name = normal_path(text(row.get(columns[0]), path, number, "file"))
        if not name:
            raise ImgclfError(f"{path} line {number} names no file")
        why = text(row.get(columns[1]), path, number, "reason") if columns[1] else ""
        out.setdefault(name, why or "listed")
    return out


def read_relabel(path: Path, separator: str = ";") -> dict[str, tuple[str, ...]]:
    """File → new label names of the files ``path`` lists; a one-line error for a row without a new label, or a
    file given two different new labels."""
    out: dict[str, tuple[str, ...]] = {}
    columns = None
    fmt = LabelFormat(label_separator=separator)  # a field is read as a label file's: a JSON list, or separated
    for number, row in label_rows(path):
        if columns is None:
            keys = list(row)
            lower = {k.strip().lower(): k for k in keys}
            label = next((lower[c] for c in NEW_LABEL_COLUMNS if c in lower), None)
            if label is None:
                raise ImgclfError(f"{path} has no new-label column (looked for {', '.join(NEW_LABEL_COLUMNS)})")
            columns = (pick_column(keys, None, FILE_COLUMNS, "file", path), label)
        name = normal_path(text(row.get(columns[0]), path, number, "file"))
        labels = label_names(row.get(columns[1]), path, number, fmt)
        if not name or not labels:
            raise ImgclfError(f"{path} line {number} needs a file and a new label")
        if out.get(name, labels) != labels:
            raise ImgclfError(f"{path} gives {name} two new labels: {';'.join(out[name])} and {';'.join(labels)}")
        out[name] = labels
    return out


def read_edits(exclude: str | None, relabel: str | None, separator: str = ";") -> Edits:
    """The edits named by ``--exclude`` and ``--relabel`` (either may be None)."""
    sources = {k: str(v) for k, v in (("exclude", exclude), ("relabel", relabel)) if v}
    return Edits(
        read_exclude(edit_file(exclude, "exclude")) if exclude else {},
        read_relabel(edit_file(relabel, "relabel"), separator) if relabel else {},
        sources,
    )


def class_indices(labels: tuple[str, ...], classes: list[str], source: str, name: str) -> tuple[int, ...]:
    """The indices of class names ``labels``; a one-line error for a name that is not a class of the dataset."""
    index = {c: i for i, c in enumerate(classes)}
    for label in labels:
        if label not in index:
            raise ImgclfError(
                f"{source}: the new label {shown(label)} of {name} is not a class of the dataset "
                f"(its classes: {', '.join(classes[:10])}{', …' if len(classes) > 10 else ''})"
            )
    return tuple(sorted(index[label] for label in labels))


def unknown_files(edits: Edits, present: set[str], where: str) -> None:
    """One warning line when the edit files name files that ``where`` does not have (e.g. another version of it)."""
    missing = [f for f in (*edits.exclude, *edits.relabel) if f not in present]
    if missing:
        names = " and ".join(f"--{k} {v}" for k, v in edits.sources.items())
        warn(f"{len(missing)} files named by {names} are not in {where} (e.g. {missing[0]}): ignored")


def new_label(edits: Edits, name: str, classes: list[str], multilabel: bool) -> int | tuple[int, ...]:
    """The label ``--relabel`` gives file ``name``: a class index, or (multi-label) a sorted tuple of them."""
    indices = class_indices(edits.relabel[name], classes, edits.sources.get("relabel", "--relabel"), name)
    if multilabel:
        return indices
    if len(indices) > 1:
        raise ImgclfError(f"{edits.sources.get('relabel')}: {name} is given several labels in a single-label dataset")
    return indices[0]


def edit_labels(
    files: list[str], labels: list, edits: Edits, classes: list[str], multilabel: bool
) -> tuple[list[str], list, list[dict], list[dict]]:
    """(files, labels) without the excluded files and with the new labels, then the excluded files with their
    reasons and the relabelled ones with their old and new labels."""
    kept, kept_labels, excluded, changed = [], [], [], []
    for name, label in zip(files, labels, strict=True):
        if name in edits.exclude:
            excluded.append({"file": name, "reason": f"excluded ({edits.exclude[name]})"})
            continue
        if name in edits.relabel:
            new = new_label(edits, name, classes, multilabel)
            if new != label:
                changed.append({"file": name, "from": label, "to": new})
            label = new
        kept.append(name)
        kept_labels.append(label)
    return kept, kept_labels, excluded, changed


def edit_record(edits: Edits, excluded: list[dict], changed: list[dict], classes: list[str]) -> dict:
    """What the run's data.json records of the edits: where they came from, how many, and each relabelling."""

    def names(label) -> str:
        return ";".join(classes[c] for c in (label if isinstance(label, tuple) else (label,)))

    relabelled = [{"file": c["file"], "from": names(c["from"]), "to": names(c["to"])} for c in changed]
    return {"edits": dict(edits.sources), "excluded": len(excluded), "relabelled": relabelled}


def edit_scan(scan: Scan, edits: Edits) -> Scan:
    """``scan`` without the excluded files (listed as skipped, with their reasons) and with the new labels; its notes
    record the edits."""
    if not edits:
        return scan
    unknown_files(edits, set(scan.all_files), str(scan.origin))
    files, labels, excluded, changed = {}, {}, [], []
    for split in scan.files:
        out = edit_labels(scan.files[split], scan.labels[split], edits, scan.classes, scan.task == "multilabel")
        files[split], labels[split] = out[0], out[1]
        excluded += out[2]
        changed += out[3]
    notes = {**scan.notes, **edit_record(edits, excluded, changed, scan.classes)}
    return dataclasses.replace(scan, files=files, labels=labels, skipped=scan.skipped + excluded, notes=notes)
