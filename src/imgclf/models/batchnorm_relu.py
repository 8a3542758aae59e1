"""BatchNorm → (+ residual) → ReLU in one call, fused for bf16 training on the CPU.

Outside its convolutions, ResNet-20's training step on a 2-core CPU is memory-bound BatchNorms, residual adds and
ReLUs over its 16-channel 32×32 maps. :func:`batchnorm_relu` runs them as two C++ kernels per direction
(batchnorm_relu.cpp, compiled for this CPU on first use with torch.utils.cpp_extension, ~20 s once, then loaded from
~/.cache/imgclf/extensions) that read and write each activation fewer times: ResNet-20's step at 32 px trains 1.12×
faster (benchmarks/results/batchnorm_relu.json; 1.04–1.12× over one afternoon, as the machine's load varied).
VGG-10, whose BatchNorms are a smaller share of its step, gained nothing measurable and keeps PyTorch's layers.
Everywhere else — inference, fp32, GPUs, torch.compile, a synchronised BatchNorm, a machine without a C++ compiler —
it is exactly ``relu(bn(x) + residual)``.
"""

import hashlib
import importlib.util
import logging
import os
import sys
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SOURCE = Path(__file__).with_suffix(".cpp")
CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512"]
_kernels = None  # the compiled extension; False where it cannot be built
_lock = threading.Lock()


def build_name() -> str:
    """The extension's name: a fingerprint of its source, flags, torch and Python versions (its ABI) and this CPU's
    features (-march=native), so a cache outlives no upgrade and a shared one never hands one machine another's."""
    versions = f"{' '.join(CFLAGS)} {torch.__version__} {sys.version} {getattr(sys, 'abiflags', '')}"
    digest = hashlib.sha256(SOURCE.read_bytes() + versions.encode())
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            digest.update(next((line for line in cpuinfo if line.startswith("flags")), "").encode())
    except OSError:
        pass
    return f"imgclf_batchnorm_relu_{digest.hexdigest()[:12]}"


def _building(lock: Path) -> bool:
    """Whether another process is building the extension now: holds torch's advisory lock on ``lock`` (its
    FileLock, which the kernel releases when the holder dies, and which leaves the file behind)."""
    import fcntl  # Linux only, as the kernels are

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # and with it the lock just taken


def _build():
    """Load the kernels from ``~/.cache/imgclf/extensions``, compiling them first (with a one-line note) where they
    are not there."""
    from imgclf.io import cache_dir

    name = build_name()
    folder = cache_dir("extensions") / name
    built = folder / f"{name}.so"
    # built, and no process building it now: loaded without asking torch, whose ninja run costs 2 s (the name
    # fingerprints everything the build depends on); a build that cannot load (cut short) is built again
    if built.exists() and not _building(folder / "lock"):
        try:
            spec = importlib.util.spec_from_file_location(name, built)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        except ImportError:
            pass
    try:  # the ninja that `pip install ninja` brings, where its bin folder is not on PATH
        import ninja

        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
    except ImportError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    print("imgclf: compiling the fused BatchNorm+ReLU kernels for this CPU (once, ~20 s)", file=sys.stderr)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # not its 'No CUDA runtime' notice
    from torch.utils.cpp_extension import load

    return load(name, [str(SOURCE)], extra_cflags=CFLAGS, build_directory=str(folder), verbose=False)


def kernels():
    """The compiled kernels, or None where they cannot be built (not Linux, no C++ compiler: a warning says so
    once) or ``IMGCLF_FUSED_BATCHNORM=0`` turns them off."""
    global _kernels
    with _lock:
        if _kernels is None:
            _kernels = False
            if os.environ.get("IMGCLF_FUSED_BATCHNORM", "1") != "0" and sys.platform.startswith("linux"):
                try:
                    _kernels = _build()
                except Exception as exc:  # no compiler, no Python headers: PyTorch's own layers
                    warnings.warn(f"fused BatchNorm+ReLU unavailable ({exc}); training without it", stacklevel=3)
    return _kernels or None


class _BatchNormReLU(torch.autograd.Function):
    """relu(batch_norm(x) [+ residual]) with batch statistics, on bf16 channels_last CPU tensors."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, bn):
        bn.num_batches_tracked.add_(1)
        y, mean, invstd = kernels().forward(
            x, weight, bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps, residual
        )
        ctx.save_for_backward(x, y if residual is not None else None, weight, bias, mean, invstd)
        ctx.residual = residual is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y, weight, bias, mean, invstd = ctx.saved_tensors
        grad = grad.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        grads = kernels().backward(grad, x, y, weight, bias, mean, invstd)
        return grads[0], grads[1], grads[2], grads[3] if ctx.residual else None, None


def fuses(bn: nn.Module, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
    """True where :func:`batchnorm_relu` runs the fused kernels: a plain ``nn.BatchNorm2d`` training with batch
    statistics on bf16 channels_last CPU activations, outside torch.compile and tracing, with the kernels built."""
    return (
        type(bn) is nn.BatchNorm2d
        and bn.training
        and bn.affine
        and bn.track_running_stats
        and bn.momentum is not None
        and bn.weight.dtype == bn.running_mean.dtype == torch.float32
        and not torch.compiler.is_compiling()
        and not torch.jit.is_scripting()
        and isinstance(x, torch.Tensor)
        and not isinstance(x, torch.fx.Proxy)
        and x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and x.dim() == 4
        and x.numel() > x.shape[1]  # one value per channel: nn.BatchNorm2d's own error
        and x.is_contiguous(memory_format=torch.channels_last)
        and (residual is None or residual.shape == x.shape)
        and kernels() is not None
    )


def batchnorm_relu(bn: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``relu(bn(x) + residual)`` (no residual: ``relu(bn(x))``), fused where :func:`fuses` says so."""
    if fuses(bn, x, residual):
        if residual is not None:
            residual = residual.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        return _BatchNormReLU.apply(x, bn.weight, bn.bias, residual, bn)
    out = bn(x)
    if residual is not None:
        out = out + residual
    return F.relu(out, inplace=True)


class ConvBatchNormReLU(nn.Sequential):
    """Convolution → BatchNorm → ReLU, an ``nn.Sequential`` of the three (same state dict) whose last two run
    through :func:`batchnorm_relu`."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn, relu = self
        if isinstance(bn, nn.Identity):  # BatchNorm folded into the convolution for inference
            return relu(conv(x))
        return batchnorm_relu(bn, conv(x))
