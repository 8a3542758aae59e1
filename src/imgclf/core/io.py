"""File helpers every layer may use: atomic writes, JSON and YAML read back with one-line errors, writable folders."""

import json
import os
from collections.abc import Callable
from pathlib import Path

import yaml

from imgclf.core.errors import ImgclfError, one_line, os_reason, shown


def cache_dir(name: str) -> Path:
    """The folder of one of imgclf's caches in the user's cache, ``~/.cache/imgclf/NAME``."""
    return Path.home() / ".cache" / "imgclf" / name


def written_in_place(path: Path) -> bool:
    """True when ``path`` is a device or pipe (``/dev/null``, ``/dev/stdout``): written into, never replaced; False for
    a regular file or none. A folder is a one-line error."""
    if path.is_dir():
        raise ImgclfError(f"{path} is a folder: name a file to write")
    return path.exists() and not path.is_file()


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` and move the result over ``path`` in one step, so readers never see half a file.
    Only a regular file (or none) is replaced: a device or pipe (``/dev/null``, ``/dev/stdout``) is written in place,
    a folder refused."""
    path = Path(path)
    if written_in_place(path):
        write(path)
        return
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


MAX_YAML_BYTES = 1 << 20  # config files and presets are a few lines; a larger file is the wrong file


def check_writable_folder(path: str | os.PathLike, what: str) -> None:
    """A one-line error unless ``path`` is a folder, or can be created as one, that this process may write into."""
    text = os.fspath(path)
    if not text:
        raise ImgclfError(f"{what} must not be empty")
    if "\0" in text:
        raise ImgclfError(f"{what} must not contain a NUL character, got {shown(text)}")
    target = Path(text)
    folder = next((p for p in (target, *target.parents) if os.path.lexists(p)), Path("."))
    if not folder.is_dir():
        where = "" if folder == target else f": {folder} exists and is not a folder"
        raise ImgclfError(f"{what} {target} is not a folder{where}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ImgclfError(f"{what} {target} is not writable ({folder}: permission denied or read-only file system)")


def parse_yaml(text: str, what: str):
    """The value of YAML ``text`` (safe loader: no Python objects), or a one-line error naming ``what``."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = one_line(exc.problem or exc.context or str(exc))
        if "tag:yaml.org,2002:python/" in problem:
            tag = problem.split("tag:yaml.org,2002:", 1)[1].rstrip("'")
            raise ImgclfError(f"{what} uses the tag !!{tag}{where}: only plain YAML values are read") from None
        raise ImgclfError(f"{what} is not valid YAML: {problem}{where}") from None
    except yaml.YAMLError as exc:
        raise ImgclfError(f"{what} is not valid YAML: {one_line(str(exc))}") from None
    except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:  # e.g. a date 2001-13-45, !!int x
        raise ImgclfError(f"{what} is not valid YAML: {one_line(str(exc)) or type(exc).__name__}") from None


def read_yaml_file(path: Path, what: str):
    """The YAML value stored in file ``path``, or a one-line error naming ``what`` and the path."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ImgclfError(f"cannot read {what} {path}: {os_reason(exc)}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ImgclfError(f"{what} {path} is larger than {MAX_YAML_BYTES // 1024} KiB: not a YAML file of options")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImgclfError(
            f"{what} {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    return parse_yaml(text, f"{what} {path}")


def bundled_names(folder: Path) -> list[str]:
    """The names of the YAML files bundled in ``folder`` ."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def bundled_or_file(name_or_path: str | Path, folder: Path, kind: str) -> Path:
    """An existing YAML file, or the name of one bundled in ``folder``; a one-line error naming ``kind`` otherwise."""
    text = os.fspath(name_or_path)
    bundled = bundled_names(folder)
    if not text or "\0" in text:
        raise ImgclfError(f"{kind} not found: {shown(text)} (bundled: {', '.join(bundled)})")
    path = Path(text)
    try:
        if path.is_file():
            return path
        if text in bundled:  # a bare name: the bundled file
            return folder / f"{text}.yaml"
        if path.is_dir():
            raise ImgclfError(f"{kind} {path} is a folder, not a YAML file")
        if os.path.lexists(path):
            raise ImgclfError(f"{kind} {path} is not a regular file")
    except OSError as exc:  # e.g. a name too long, a permission denied on a parent folder
        raise ImgclfError(f"cannot read {kind} {path}: {os_reason(exc)}") from None
    raise ImgclfError(f"{kind} not found: {text} (bundled: {', '.join(bundled)})")
