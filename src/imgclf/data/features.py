"""Activations of a frozen backbone prefix, computed once and cached on disk: the CPU fast path of transfer learning.

A frozen prefix gives the same output for the same image every epoch, so it runs once per image (and once per
mirrored image, for flip augmentation); training then touches only the small trainable tail. Cache files are keyed by
everything that changes the activations — the prefix's weights and structure, input side, normalisation, precision and
the images themselves — so a changed backbone, weights file, resolution or data set rebuilds them.
"""

import copy
import hashlib
import json
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from imgclf.core.device import CpuShare, autocast
from imgclf.core.errors import ImgclfError
from imgclf.core.io import atomic_write, cache_dir
from imgclf.core.onnx import export_network, onnx_session
from imgclf.data.images import ImageSet

DEFAULT_CACHE_DIR = cache_dir("activations")
# On a CPU the prefix runs in onnxruntime (fp32) when there are enough images to repay its export (~5 s): Lite2's
# first 12 layers at 224 px cached 283 img/s there against 151 compiled with bf16 autocast and 110 eager (2-core CPU,
# 2,048 CIFAR-10 images, median of 3; benchmarks/results/activation_cache.json). torch.compile is the fallback.
FAST_MIN_IMAGES = 2000


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
    """uint8 (N, 3, h, w) images as backbone input: (x - mean) / std, antialiased resize to ``size``.

    Normalising first gives the same result (the resize's weights sum to 1) on the smaller side: at 32 → 224 px
    it costs a 49th of normalising after."""
    x = images.float() / 255
    x = (x - x.new_tensor(mean).view(1, -1, 1, 1)) / x.new_tensor(std).view(1, -1, 1, 1)
    if size and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
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
        self.fast_min_images = FAST_MIN_IMAGES  # fewer images than this are computed eagerly (0: never)
        self.threads = threads  # CPU threads: 0 follows the cores other processes leave free (device.CpuShare)
        self._prefix_key = module_digest(prefix)
        self._runners: dict[str, object] = {}  # engine → callable on a normalised float batch
        self.onnx_failed = False
        self.hits = self.misses = 0
        self.computed_with: set[str] = set()  # the engines that computed activations (not read from the cache)
        self.fallbacks: list[str] = []  # why an engine was given up, in order

    def record(self) -> dict:
        """How the cache's activations were computed: engines, files read and written, and every fallback."""
        return {
            "engines": sorted(self.computed_with),
            "read": self.hits,
            "computed": self.misses,
            "fallbacks": self.fallbacks,
        }

    def engine(self, n_images: int) -> str:
        """What computes the activations of ``n_images`` images: onnxruntime, torch.compile or eager PyTorch."""
        if not self.compile or n_images < self.fast_min_images or self.device.type != "cpu":
            return "eager"
        return "compiled" if self.onnx_failed else "onnxruntime"

    def key(self, data: ImageSet, flip: bool) -> str:
        """The cache key of ``data``'s activations (mirrored when ``flip``)."""
        engine = self.engine(len(data))
        parts = {
            "prefix": self._prefix_key,
            "image_size": self.image_size,
            "mean": self.mean,
            "std": self.std,
            "precision": "fp32" if engine == "onnxruntime" else self.precision,
            "flip": flip,
            "data": data.fingerprint(),
        }
        return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]

    def get(self, data: ImageSet, flip: bool = False, desc: str = "") -> torch.Tensor:
        """Activations of every image of ``data`` as a bf16 CPU tensor, from the cache when present."""
        path = self.path(data, flip)
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
        path = self.path(data, flip)  # the engine may have changed (an export that failed)
        try:
            atomic_write(path, lambda tmp: save_file({"activations": activations}, str(tmp)))
        except OSError as exc:
            warnings.warn(f"could not write the activation cache {path}: {exc}", stacklevel=2)
        return activations

    def path(self, data: ImageSet, flip: bool) -> Path:
        """The cache file of ``data``'s activations (mirrored when ``flip``)."""
        return self.root / f"{self.key(data, flip)}.safetensors"

    def _onnx_runner(self):
        """The prefix exported to ONNX and run by onnxruntime on as many threads as the free cores allow now."""
        threads = torch.get_num_threads()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "prefix.onnx"
            export_network(copy.deepcopy(self.prefix), self.image_size, path, output_name="activations")
            session = onnx_session(path, threads)
        name = session.get_inputs()[0].name

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: x.float().contiguous().numpy()})[0])

        return run

    def _runner(self, engine: str):
        """The callable that computes activations with ``engine`` (built once per cache)."""
        if engine == "eager":
            return self.prefix
        if engine not in self._runners:
            if engine == "onnxruntime":
                try:
                    self._runners[engine] = self._onnx_runner()
                except Exception as exc:  # an exporter that fails on some layer: torch.compile instead
                    warnings.warn(
                        f"ONNX export of the backbone failed ({exc}); caching with torch.compile", stacklevel=3
                    )
                    self.fallbacks.append(f"onnxruntime → compiled: the ONNX export failed ({type(exc).__name__})")
                    self.onnx_failed = True
                    return self._runner("compiled")
            else:
                self._runners[engine] = torch.compile(self.prefix, dynamic=False)
        return self._runners[engine]

    @torch.inference_mode()
    def compute(self, data: ImageSet, flip: bool, desc: str = "") -> torch.Tensor:
        """Run the prefix over ``data`` (in fixed-size batches, the last one padded) with a progress bar."""
        share = CpuShare(self.threads) if self.device.type == "cpu" else None  # the threads a runner is built with
        runner, bs = self._runner(self.engine(len(data))), self.batch_size
        channels_last = isinstance(runner, nn.Module)  # onnxruntime takes contiguous NCHW arrays
        if runner is not self.prefix:  # threads follow the free cores in eager mode only: onnxruntime and compiled
            share = None  # kernels fix their thread count when built
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
                x = resize_normalise(images, self.image_size, self.mean, self.std, channels_last)
                with autocast(self.device, self.precision):
                    try:
                        out = runner(x)
                    except Exception as exc:  # compilation needs a C++ toolchain; eager mode always works
                        if runner is self.prefix:
                            raise
                        failed = self.engine(len(data))
                        warnings.warn(f"{failed} failed ({type(exc).__name__}); caching in eager mode", stacklevel=2)
                        self.fallbacks.append(f"{failed} → eager: it failed ({type(exc).__name__})")
                        self.compile = False  # every later batch and set: eager (and keyed so)
                        runner = self.prefix
                        out = runner(x)
                chunks.append(out[:n].to(torch.bfloat16).cpu().contiguous())
                bar.update(n)
        if not chunks:
            raise ImgclfError("no images to compute activations for")
        self.computed_with.add("eager" if runner is self.prefix else self.engine(len(data)))
        return torch.cat(chunks)
