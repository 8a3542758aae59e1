"""File helpers every layer may use: atomic writes, and JSON read back with one-line errors."""

import json
import os
from collections.abc import Callable
from pathlib import Path

from imgclf.errors import ImgclfError


def cache_dir(name: str) -> Path:
    """The folder of one of imgclf's caches in the user's cache, ``~/.cache/imgclf/NAME``."""
    return Path.home() / ".cache" / "imgclf" / name


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` and move the result over ``path`` in one step, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: torchrun ranks may write the same cache
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, value) -> None:
    """Write ``value`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def read_json(path: Path, what: str = "file"):
    """The JSON value stored in ``path``, or a one-line error naming the file (missing, unreadable, not JSON)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImgclfError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImgclfError(f"cannot read {what} {path}: {exc}".splitlines()[0]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImgclfError(f"{what} {path} is not valid JSON: {exc}") from None
