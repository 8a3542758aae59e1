"""What ``imgclf predict`` reads: the image files named by files, folders (searched recursively) and globs, as a
stream — any number of files in bounded memory, in an order that is the same on every run (so an interrupted output
can be resumed by counting its rows).

Each folder is walked depth-first, every directory's entries sorted by name; a symlink leading back to a directory
it is inside (a loop) is not followed. Each file is named once: a folder inside another folder given, and a file or
glob match inside a folder given, are left to that folder's walk; repeats of a file or glob match are dropped.
"""

import glob
import os
from collections.abc import Iterator
from pathlib import Path

from imgclf.data.folder import is_image_file, list_dir

GLOB_CHARACTERS = "*?["
# streams a shell opened for this process (``<(command)``, ``/dev/stdin``): read though they are pipes, a writer exists
OPEN_STREAMS = ("/dev/fd/", "/dev/stdin", "/proc/self/fd/")


def walk_images(folder: Path, ancestors: frozenset[Path] = frozenset()) -> Iterator[str]:
    """The image files under ``folder``, depth-first, each directory's entries sorted by name; a directory that is one
    of its own ancestors (a symlink loop) is skipped."""
    real = folder.resolve()
    if real in ancestors:
        return
    for entry in list_dir(folder):
        if entry.is_dir():
            yield from walk_images(Path(entry.path), ancestors | {real})
        elif is_image_file(entry):
            yield entry.path


def covered(path: Path, folders: list[Path]) -> bool:
    """True when ``path`` lies strictly inside one of ``folders`` (resolved): that folder's walk names it."""
    real = path.resolve()
    return any(real != folder and real.is_relative_to(folder) for folder in folders)


def input_files(items: list[str]) -> Iterator[tuple[str, str]]:
    """``(path, "")`` for each image file ``items`` name, in the order given, each once; ``(item, reason)`` for an
    item that names nothing usable (no such file, an empty folder, a pipe, a pattern matching nothing)."""
    folders = [Path(i).expanduser().resolve() for i in items if Path(i).expanduser().is_dir()]
    walked, named = set(), set()  # folders walked; files named one by one (bounded by what the user typed)
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            real = path.resolve()
            if real in walked or covered(path, folders):
                continue
            walked.add(real)
            empty = True
            for found in walk_images(path):
                empty = False
                yield found, ""
            if empty:
                yield item, "no image files in this folder"
        elif path.is_file() or (path.exists() and item.startswith(OPEN_STREAMS)):
            if str(path) not in named and not covered(path, folders):
                named.add(str(path))
                yield str(path), ""
        elif path.exists():  # reading a named pipe would wait for a writer forever
            yield item, "not a regular file (a pipe, device or socket)"
        elif any(c in item for c in GLOB_CHARACTERS):
            matches = sorted(m for m in glob.iglob(os.path.expanduser(item), recursive=True) if Path(m).is_file())
            if not matches:
                yield item, "no file matches this pattern"
            for match in matches:
                if match not in named and not covered(Path(match), folders):
                    named.add(match)
                    yield match, ""
        else:
            yield item, "no such file or folder"
