"""Atomic checkpoint files: weights as safetensors, optimizer and loop state loaded with ``weights_only``."""

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from imgclf.errors import ImgclfError


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and move the result over ``path`` in one step, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_weights(path: Path, model: nn.Module, metadata: dict | None = None) -> None:
    """Write ``model``'s state dict to a safetensors file (metadata values stored as JSON)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a safetensors file, with a one-line error when it is missing or damaged."""
    if not path.is_file():
        raise ImgclfError(f"weights file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
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
    except Exception as exc:
        raise ImgclfError(f"cannot read checkpoint state {path}: {exc}".splitlines()[0]) from None
