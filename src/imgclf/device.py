"""Device and numeric-precision selection: bf16 autocast where the hardware runs it natively."""

import contextlib
import re
from pathlib import Path

import torch

from imgclf.errors import ImgclfError

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"


def mps_available() -> bool:
    """True when PyTorch can use Apple's Metal GPU here."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def check_device_name(name: str) -> None:
    """A one-line error unless ``name`` spells a device: auto, cpu, cuda, cuda:N (or mps where it exists)."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda|cuda:[0-9]{1,4}|mps", name):
        raise ImgclfError(f"unknown device {name!r} (use {DEVICE_NAMES})")
    if name == "mps" and not mps_available():
        raise ImgclfError(f"device 'mps' requested but Apple's MPS is not available here (use {DEVICE_NAMES})")


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; a one-line error for a device that is not here."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ImgclfError(f"device '{name}' requested but CUDA is not available")
        index, count = int(name.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise ImgclfError(f"device '{name}' requested but only {count} CUDA device(s) are available")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 dot products natively (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn ``auto`` into ``bf16`` or ``fp32`` for ``device``."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ImgclfError(f"unknown precision '{precision}' (use auto, bf16 or fp32)")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe_device(device: torch.device) -> str:
    """Human-readable device name, e.g. 'NVIDIA H100' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
