"""Checkpoints: weights as safetensors, optimizer and loop state loaded with ``weights_only``.

An epoch's checkpoint is one unit: its files go into a new folder ``checkpoints/epoch-NNNN/`` and are flushed to disk,
then ``last.json`` is pointed at it (the commit), then folders older than the previous one are removed. A run killed
anywhere in between resumes from the previous complete checkpoint.
"""

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from imgclf.errors import ImgclfError
from imgclf.io import atomic_write, read_json, write_json

POINTER = "last.json"
LEGACY_FILES = {"weights": "last.safetensors", "ema": "last_ema.safetensors", "state": "last_state.pt"}


def save_weights(path: Path, model: nn.Module, metadata: dict | None = None) -> None:
    """Write ``model``'s state dict to a safetensors file (metadata values stored as JSON)."""
    save_tensors(path, model.state_dict(), metadata)


def save_tensors(path: Path, state: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Write a state dict to a safetensors file (metadata values stored as JSON)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_metadata(path: Path) -> dict:
    """The metadata of a safetensors file (its header only; no tensor is read), with a one-line error when it is
    missing or damaged."""
    if not path.is_file():
        raise ImgclfError(f"weights file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ImgclfError(f"cannot read weights file {path}: {exc}") from None


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a safetensors file, with a one-line error when it is missing or damaged."""
    meta = read_metadata(path)
    try:
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as exc:
        raise ImgclfError(f"cannot read weights file {path}: {exc}") from None


def load_weights(path: Path, model: nn.Module) -> dict:
    """Load a safetensors file into ``model`` (strict) and return its metadata."""
    tensors, meta = read_weights(path)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ImgclfError(f"incompatible checkpoint {path} for this model: {detail[:300]}") from None
    return meta


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


def add_metadata(path: Path, metadata: dict) -> None:
    """Rewrite the safetensors file at ``path`` with ``metadata`` added to its own."""
    tensors, meta = read_weights(path)
    meta.update(metadata)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()}))


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
