"""Weights files: a model's state dict as safetensors, its metadata stored as JSON values in the file's header.

Never pickle: a weights file from anywhere loads without running code. A write that the disk refuses (full, read-only)
is an ``OSError`` naming the file, as the CLI reports every I/O failure, and leaves the previous file whole.
"""

import errno
import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from imgclf.core.errors import ImgclfError
from imgclf.core.io import atomic_write


def save_weights(path: Path, model: nn.Module, metadata: dict | None = None) -> None:
    """Write ``model``'s state dict to a safetensors file (metadata values stored as JSON)."""
    save_tensors(path, model.state_dict(), metadata)


def save_tensors(path: Path, state: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Write a state dict to a safetensors file (metadata values stored as JSON)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    write_file(path, tensors, {k: json.dumps(v) for k, v in (metadata or {}).items()})


def write_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically; safetensors' own I/O error (not an ``OSError``) becomes one, with the
    system's error number where its message carries it (e.g. 28: no space left on device)."""

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:
            found = re.search(r"os error (\d+)", str(exc))
            number = int(found.group(1)) if found else errno.EIO
            raise OSError(number, os.strerror(number), str(path)) from None

    atomic_write(path, write)


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


def add_metadata(path: Path, metadata: dict) -> None:
    """Rewrite the safetensors file at ``path`` with ``metadata`` added to its own."""
    tensors, meta = read_weights(path)
    meta.update(metadata)
    write_file(path, tensors, {k: json.dumps(v) for k, v in meta.items()})
