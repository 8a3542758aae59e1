"""Activations of a frozen backbone prefix, computed once and cached on disk: the CPU fast path of transfer learning.

A frozen prefix gives the same output for the same image every epoch, so it runs once per image (and once per
mirrored image, for flip augmentation); training then touches only the small trainable tail. Cache files are keyed by
everything that changes the activations — the prefix's weights and structure, input side, normalisation, precision and
the images themselves — so a changed backbone, weights file, resolution or data set rebuilds them.
"""

import hashlib
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from imgclf.data.datasets import ImageSet
from imgclf.device import CpuShare, autocast
from imgclf.errors import ImgclfError
from imgclf.io import atomic_write, cache_dir

DEFAULT_CACHE_DIR = cache_dir("activations")
COMPILE_MIN_IMAGES = 2000  # compiling the prefix costs ~30 s and speeds caching up ~1.6× (Lite2 at 224, 2-core CPU)


def tensor_digest(tensors: list[torch.Tensor]) -> str:
    """SHA-1 of the bytes of ``tensors``."""
    digest = hashlib.sha1()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def module_digest(module: nn.Module) -> str:
    """SHA-1 of a module's structure and of every parameter and buffer: any change to the weights changes it."""
    state = module.state_dict()
    return hashlib.sha1((repr(module) + tensor_digest(list(state.values()))).encode()).hexdigest()


def resize_normalise(
    images: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool = True
) -> torch.Tensor:
    """uint8 (N, 3, h, w) images as backbone input: antialiased resize to ``size``, then (x - mean) / std."""
    x = images.float() / 255
    if size and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = (x - x.new_tensor(mean).view(1, -1, 1, 1)) / x.new_tensor(std).view(1, -1, 1, 1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class ActivationCache:
    """Computes ``prefix(resize_normalise(images))`` in batches, stores it as bf16 safetensors under ``root``."""

    def __init__(
        self,
        root: str | Path | None,
        prefix: nn.Module,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        precision: str,
        batch_size: int = 64,
        compile: bool = True,
        progress: bool = True,
        threads: int = 0,
    ) -> None:
        self.root = Path(root) if root else DEFAULT_CACHE_DIR
        self.prefix = prefix.eval()
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.device, self.precision = device, precision
        self.batch_size, self.compile, self.progress = batch_size, compile, progress
        self.threads = threads  # CPU threads: 0 follows the cores other processes leave free (device.CpuShare)
        self._prefix_key = module_digest(prefix)
        self._compiled: nn.Module | None = None
        self.hits = self.misses = 0

    def key(self, data: ImageSet, flip: bool) -> str:
        """The cache key of ``data``'s activations (mirrored when ``flip``)."""
        parts = {
            "prefix": self._prefix_key,
            "image_size": self.image_size,
            "mean": self.mean,
            "std": self.std,
            "precision": self.precision,
            "flip": flip,
            "data": data.fingerprint(),
        }
        return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]

    def get(self, data: ImageSet, flip: bool = False, desc: str = "") -> torch.Tensor:
        """Activations of every image of ``data`` as a bf16 CPU tensor, from the cache when present."""
        path = self.root / f"{self.key(data, flip)}.safetensors"
        if path.is_file():
            try:
                activations = load_file(str(path))["activations"]
                if len(activations) == len(data):
                    self.hits += 1
                    return activations
            except Exception:  # a damaged cache file is rebuilt below
                pass
        self.misses += 1
        activations = self.compute(data, flip, desc)
        try:
            atomic_write(path, lambda tmp: save_file({"activations": activations}, str(tmp)))
        except OSError as exc:
            warnings.warn(f"could not write the activation cache {path}: {exc}", stacklevel=2)
        return activations

    def _runner(self, n_images: int) -> nn.Module:
        """The prefix, compiled (fixed batch shape) when there are enough images to repay compilation."""
        if not self.compile or n_images < COMPILE_MIN_IMAGES or self.device.type != "cpu":
            return self.prefix
        if self._compiled is None:
            self._compiled = torch.compile(self.prefix, dynamic=False)
        return self._compiled

    @torch.inference_mode()
    def compute(self, data: ImageSet, flip: bool, desc: str = "") -> torch.Tensor:
        """Run the prefix over ``data`` (in fixed-size batches, the last one padded) with a progress bar."""
        runner, bs = self._runner(len(data)), self.batch_size
        # threads follow the free cores in eager mode (compiled kernels fix their thread count when compiled)
        share = CpuShare(self.threads) if self.device.type == "cpu" and runner is self.prefix else None
        label = desc or "activations"
        chunks = []
        with tqdm(
            total=len(data),
            desc=f"caching {label}{' (mirrored)' if flip else ''}",
            unit="img",
            disable=not self.progress,
        ) as bar:
            for start in range(0, len(data), bs):
                if share is not None:
                    share.update()
                images = data.images[start : start + bs].to(self.device)
                n = len(images)
                if n < bs:
                    images = torch.cat([images, images.new_zeros(bs - n, *images.shape[1:])])
                if flip:
                    images = images.flip(3)
                x = resize_normalise(images, self.image_size, self.mean, self.std)
                with autocast(self.device, self.precision):
                    try:
                        out = runner(x)
                    except Exception as exc:  # compilation needs a C++ toolchain; eager mode always works
                        if runner is self.prefix:
                            raise
                        warnings.warn(
                            f"torch.compile failed ({type(exc).__name__}); caching in eager mode", stacklevel=2
                        )
                        runner = self._compiled = self.prefix
                        out = runner(x)
                chunks.append(out[:n].to(torch.bfloat16).cpu().contiguous())
                bar.update(n)
        if not chunks:
            raise ImgclfError("no images to compute activations for")
        return torch.cat(chunks)
