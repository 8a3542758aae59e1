"""Where the last audit of each dataset is: a small index in the user's cache, written by `imgclf audit` and read by
the study's report ("dataset audit: N suspected label errors, M cross-split near-copies")."""

import contextlib
import datetime
import hashlib
import json
from pathlib import Path

from imgclf.core.io import cache_dir, write_json

INDEX = cache_dir("audits")


def dataset_identity(source: str) -> str:
    """What names a dataset across commands: CIFAR's name, or the resolved path of its folder or label file."""
    from imgclf.data.sources import is_builtin

    return source if is_builtin(source) else str(Path(source).expanduser().resolve())


def index_path(source: str, index: Path | None = None) -> Path:
    """The index entry of ``source``'s last audit (``index``: the index folder, default :data:`INDEX`)."""
    return (index or INDEX) / f"{hashlib.sha1(dataset_identity(source).encode()).hexdigest()[:20]}.json"


def record_audit(source: str, output: Path, summary: dict, index: Path | None = None) -> None:
    """Note that ``source`` was audited into ``output`` with these counts (a failure to write is no error)."""
    keys = ("images", "label_issues", "leaks", "near_duplicates", "strays")
    entry = {
        "dataset": dataset_identity(source),
        "output": str(Path(output).resolve()),
        **{k: summary[k] for k in keys},
    }
    entry["date"] = datetime.datetime.now().isoformat(timespec="seconds")
    with contextlib.suppress(OSError):  # a read-only cache costs only the study report's line
        write_json(index_path(source, index), entry)


def find_audit(source: str, index: Path | None = None) -> dict | None:
    """The last audit of ``source`` whose report still exists, or None."""
    try:
        entry = json.loads(index_path(source, index).read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and (Path(entry.get("output", "")) / "audit.json").is_file() else None


def audit_line(entry: dict) -> str:
    """The study report's line about a dataset's audit."""
    return (
        f"dataset audit ({entry['date'][:10]}, {entry['output']}/audit.html): {entry['label_issues']:,} suspected "
        f"label errors, {entry['leaks']:,} cross-split near-copies, {entry['strays']:,} strays"
    )
