"""torchrun: one process per device, PyTorch's own engine (DistributedDataParallel). Rank 0 alone writes; every
decision is taken on metrics reduced across the ranks, so it is the same on each.

    torchrun --nproc-per-node 2 -m imgclf train --model resnet20 --device cpu     # 2 processes, gloo, on a CPU
    torchrun --nproc-per-node 8 -m imgclf train --config resnet20                  # nccl, one GPU per process

Each rank trains on its shard of every epoch's order (data/loader.py), with the per-rank ``--batch-size``: the
global batch is ``batch_size × world_size``. A single process (no torchrun) sees world size 1 and no change.
"""

import datetime
import os

import torch
import torch.distributed as dist

TIMEOUT_SECONDS = 300  # a rank that waits longer for the others (one crashed) ends with an error, not a hang


def world_size() -> int:
    """Processes in this run: torchrun's WORLD_SIZE, 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on the rank that writes files and prints: rank 0."""
    return rank() == 0


def active() -> bool:
    """True when this process is one of several, joined in a process group."""
    return dist.is_available() and dist.is_initialized()


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (nccl on CUDA, gloo on the CPU) once; this rank's device: CUDA device
    LOCAL_RANK when ``device`` is CUDA. Without torchrun: ``device`` unchanged."""
    if world_size() == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not active():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_SECONDS))
    return device


def barrier() -> None:
    """Wait for every rank (nothing without torchrun)."""
    if active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over every rank, in place (itself without torchrun)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast(value):
    """Rank 0's ``value`` on every rank (any picklable value of our own making; ``value`` without torchrun)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown() -> None:
    """Leave the process group."""
    if active():
        dist.destroy_process_group()
