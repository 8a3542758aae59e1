"""Preparation: a folder's image files decoded once into a memory-mapped uint8 array, cached on disk.

Every image is decoded — in worker processes (one per core), with a progress bar — to a ``side``×``side`` uint8 array
in ``.npy`` file under ``~/.cache/imgclf/prepared/KEY/`` with a ``meta.json`` of each file's outcome (the reason it
was skipped, its content hash). KEY hashes the files (paths, sizes, modification and status-change times), the side
and the resize policy: later runs, the study and evaluation reuse an entry, a changed file makes a new one. An entry
is written in a temporary folder and renamed when complete; its disk space is claimed before decoding starts.
"""

import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from imgclf.core.errors import ImgclfError
from imgclf.core.io import cache_dir, read_json, write_json
from imgclf.data.decode import decode_rows
from imgclf.data.policies import RESIZE_POLICIES

DEFAULT_PREPARE_DIR = cache_dir("prepared")
PREPARE_VERSION = 1  # bump when decoding changes what a prepared array holds
CHUNK = 256  # files per worker task


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
