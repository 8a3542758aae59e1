"""Checkpoints: weights as safetensors (artifacts/weights.py), optimizer and loop state loaded with ``weights_only``.

An epoch's checkpoint is one unit: its files go into a new folder ``checkpoints/epoch-NNNN/`` and are flushed to disk,
then ``last.json`` is pointed at it (the commit), then folders older than the previous one are removed. A run killed
anywhere in between resumes from the previous complete checkpoint.
"""

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from imgclf.artifacts.weights import save_weights
from imgclf.core.errors import ImgclfError
from imgclf.core.io import atomic_write, read_json, write_json

POINTER = "last.json"
LEGACY_FILES = {"weights": "last.safetensors", "ema": "last_ema.safetensors", "state": "last_state.pt"}


def save_state(path: Path, state: dict) -> None:
    """Write optimizer and loop state (tensors, numbers, strings, dicts) atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict:
    """Read state written by :func:`save_state` without executing code (``weights_only=True``)."""
    if not path.is_file():
        raise ImgclfError(f"checkpoint state not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's text advises weights_only=False, which would run the file as code: not shown
        raise ImgclfError(
            f"cannot read checkpoint state {path}: damaged, or holds more than tensors and plain values "
            f"({type(exc).__name__}; it is never loaded as code)"
        ) from None


def sync(path: Path) -> None:
    """Flush a file or folder to disk (so a power cut cannot leave a pointer to files that never reached it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(folder: Path, epoch: int, modules: dict[str, nn.Module], state: dict) -> None:
    """Write epoch ``epoch``'s checkpoint into ``folder`` as one unit: ``modules`` as NAME.safetensors and ``state``
    as state.pt in a new sub-folder, flushed to disk, then the pointer moved to it; the previous epoch's folder is
    kept until the next commit."""
    target = folder / f"epoch-{epoch:04d}"
    shutil.rmtree(target, ignore_errors=True)  # what a write killed half-way left behind
    for name, module in modules.items():
        save_weights(target / f"{name}.safetensors", module, {"epoch": epoch})
    save_state(target / "state.pt", state)
    for path in [*target.iterdir(), target]:
        sync(path)
    previous = checkpoint_files(folder)
    write_json(folder / POINTER, {"epoch": epoch, "folder": target.name})
    sync(folder)
    keep = {target.name, previous["state"].parent.name if previous else ""}
    for old in folder.glob("epoch-*"):
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    for legacy in LEGACY_FILES.values():
        (folder / legacy).unlink(missing_ok=True)


def checkpoint_files(folder: Path) -> dict[str, Path] | None:
    """The files of the last complete checkpoint in ``folder`` (name → path, 'state' included); None if none."""
    pointer = folder / POINTER
    if pointer.is_file():
        data = read_json(pointer, "checkpoint pointer")
        name = data.get("folder") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name.startswith("epoch-") or "/" in name or not (folder / name).is_dir():
            raise ImgclfError(f"damaged checkpoint pointer {pointer}")
        target = folder / name
        files = {p.stem: p for p in target.glob("*.safetensors")}
        files["state"] = target / "state.pt"
    elif (folder / LEGACY_FILES["state"]).is_file():  # the layout of earlier imgclf versions
        files = {k: folder / v for k, v in LEGACY_FILES.items() if (folder / v).is_file()}
    else:
        return None
    if not files.get("weights") or not files["state"].is_file():
        raise ImgclfError(f"incomplete checkpoint in {files['state'].parent}: weights or state file missing")
    return files
