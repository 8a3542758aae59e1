"""Device and numeric-precision selection: bf16 autocast where the hardware runs it natively."""

import contextlib
import ctypes
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

from imgclf.core.errors import ImgclfError

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


def cpu_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name with its family and model numbers, e.g. 'AMD EPYC (family 25, model 17)': a virtual
    machine's name often leaves out the generation, and hosts of one name have trained ResNet-20 at ~800 and ~1,700
    img/s (benchmarks/results/peer_keras.json and its git history)."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine() or "cpu"
    fields = {}
    for key, _, value in (line.partition(":") for line in lines):
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    name = fields.get("model name") or platform.machine() or "cpu"
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def describe_device(device: torch.device) -> str:
    """Human-readable device name, e.g. 'NVIDIA H100' or 'cpu: AMD EPYC (family 25, model 17), 2 threads'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_name()}, {torch.get_num_threads()} threads"


def reuse_freed_memory() -> bool:
    """Have glibc's malloc serve large blocks from its heap and keep freed memory for reuse (Linux; returns whether
    it applied; ``IMGCLF_REUSE_MEMORY=0`` turns it off).

    By default every tensor over 32 MB is a fresh ``mmap``, so each training step page-faults and zeroes its large
    activations anew: casting a 72 MB bf16 activation to fp32 took 20 ms into a new tensor and 1.5 ms into a reused
    one. With the heap reused, EfficientNet-Lite2's phase-2 step at 224 px trained 140 img/s against 118 (1.19×) and
    ResNet-20's 1,569 against 1,495 (1.05×; 2-core CPU, benchmarks/results/reuse_memory.json). The process keeps its
    peak memory until it exits.
    """
    if not sys.platform.startswith("linux") or os.environ.get("IMGCLF_REUSE_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameters
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, …): the allocator's defaults stay
        return False


def usable_cores() -> set[int]:
    """The CPUs this process may run on (its affinity: taskset, a container's cpuset), else every core."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def busy_seconds(cores: set[int]) -> tuple[float, float] | None:
    """(CPU seconds every process has run on ``cores``, CPU seconds this process has run), from /proc/stat's
    per-CPU lines and the process's own times; None where /proc/stat does not exist."""
    busy = 0
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                name, *values = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                    fields = [int(v) for v in values[:8]]
                    busy += sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        return None
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def omp_threads() -> int:
    """The thread count OMP_NUM_THREADS sets (torchrun sets 1 per rank), 0 when it is not set."""
    try:
        return int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0] or 0)
    except ValueError:
        return 0


class CpuShare:
    """Keeps torch's CPU threads at the cores that other processes leave free, re-measured every ``interval`` seconds.

    Two processes that each run a thread per core on the same cores wait on each other at every parallel region:
    beside one identical run, ResNet-20's training fell from 1,505 to 359 img/s (4.2×, and 80 img/s in one of three
    rounds); with this policy on both, 768 img/s (1.9×; benchmarks/results/contention.json). So while other
    processes keep cores busy, imgclf takes only the rest (at least one thread), and takes every core back when they
    stop. ``threads`` (or OMP_NUM_THREADS) fixes the count instead.
    """

    def __init__(self, threads: int = 0, interval: float = 1.0, first: float = 0.5) -> None:
        self.core_set = usable_cores()
        self.cores = len(self.core_set)
        start = busy_seconds(self.core_set)
        self.fixed = threads or omp_threads() or (0 if start else torch.get_num_threads())
        self.interval = interval
        if self.fixed:
            torch.set_num_threads(self.fixed)
        self.last = (time.monotonic() - interval + first, start)  # the first look comes soon
        self.used = {torch.get_num_threads()}
        self.earlier: set[int] = set()  # the counts of the periods :meth:`threads_used` closed

    def update(self) -> None:
        """Re-measure the other processes' load when ``interval`` has passed, and set the thread count to fit."""
        if self.fixed or time.monotonic() - self.last[0] < self.interval:
            return
        now, busy = time.monotonic(), busy_seconds(self.core_set)
        (then, before), self.last = self.last, (now, busy)
        if busy is None or before is None:
            return
        others = max(0.0, (busy[0] - before[0]) - (busy[1] - before[1])) / (now - then)  # cores in use by others
        # a core counts as free when others leave at least 3/4 of it: one thread too many costs far more than one
        # too few (the first waits on descheduled threads at every parallel region)
        threads = max(1, min(self.cores, math.floor(self.cores - others + 0.25)))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            self.used.add(threads)

    def record(self) -> dict:
        """The thread policy and every count used so far: bf16 sums follow the count, so runs say which they had."""
        policy = f"fixed at {self.fixed}" if self.fixed else "the cores other processes leave free"
        return {"policy": policy, "counts": sorted(self.earlier | self.used)}

    def threads_used(self) -> list[int]:
        """The thread counts torch ran with since the last call (an epoch's, say), fewest first: each count sums bf16
        values in its own order, so a run that changed counts may end a little apart from one that did not."""
        self.earlier |= self.used
        used, self.used = sorted(self.used), {torch.get_num_threads()}
        return used
