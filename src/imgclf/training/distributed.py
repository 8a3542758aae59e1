"""torchrun: one process per device, PyTorch's own engine (DistributedDataParallel). Rank 0 alone writes; every
decision is taken on metrics reduced across the ranks, so it is the same on each.

    torchrun --nproc-per-node 2 -m imgclf train --model resnet20 --device cpu     # 2 processes, gloo, on a CPU
    torchrun --nproc-per-node 8 -m imgclf train --config resnet20                  # nccl, one GPU per process
    torchrun --nproc-per-node 4 -m imgclf study --quick                            # every run of a study

Each rank trains on its shard of every epoch's order (data/loader.py), with the per-rank ``--batch-size``: the
global batch is ``batch_size × world_size``. A single process (no torchrun) sees world size 1 and no change.
A rank that crashes or is killed closes its connections: the others fail at their next collective and end with one
line (:func:`lost_rank_errors`), and torchrun stops them; a rank that hangs is given up after ``TIMEOUT_SECONDS``.
"""

import contextlib
import datetime
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from imgclf.core.errors import ImgclfError

# how long a rank waits for the others at a collective: long enough for rank 0 alone to prepare a folder, build the
# activation cache or evaluate a run on a CPU while the others wait (gloo's own default is 30 minutes)
TIMEOUT_SECONDS = 1800
# what the collective libraries' errors say when a peer is gone (gloo raises plain RuntimeErrors)
LOST_PEER_MARKERS = ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe", "timed out", "Timed out")


def world_size() -> int:
    """Processes in this run: torchrun's WORLD_SIZE, 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on the rank that writes files and prints: rank 0."""
    return rank() == 0


def say(text: str) -> None:
    """Print a line (above any progress bar) on rank 0 only: the ranks would otherwise each print it."""
    if is_main():
        tqdm.write(text)


def is_local_main() -> bool:
    """True on the first rank of its machine (LOCAL_RANK 0), which prepares that machine's data and caches."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


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


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on each machine's first rank, then on the other ranks, which find what it built on their disk
    (prepared data, caches)."""
    if not is_local_main():
        barrier()
    yield
    if is_local_main():
        barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over every rank, in place (itself without torchrun)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``tensor`` (N_r, …), concatenated in rank order (itself without torchrun); built from two
    sums, so ranks with different row counts (an uneven validation shard) need no padding protocol."""
    if not active():
        return tensor
    sizes = torch.zeros(world_size(), dtype=torch.long, device=tensor.device)
    sizes[rank()] = len(tensor)
    sizes = all_reduce_sum(sizes).tolist()
    out = tensor.new_zeros((sum(sizes), *tensor.shape[1:]), dtype=torch.float64)
    start = sum(sizes[: rank()])
    out[start : start + len(tensor)] = tensor.double()
    return all_reduce_sum(out).to(tensor.dtype)


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


def is_lost_peer(exc: BaseException) -> bool:
    """True when ``exc`` is a collective that failed because another rank is gone or stopped answering."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in LOST_PEER_MARKERS)


@contextlib.contextmanager
def lost_rank_errors(resume_hint: str) -> Iterator[None]:
    """Turn a collective's failure (another rank crashed, was killed or hangs) into a one-line error that says how to
    resume; everything else passes through."""
    try:
        yield
    except RuntimeError as exc:
        if not active() or not is_lost_peer(exc):
            raise
        detail = " ".join(str(exc).split())
        detail = detail.split("] ", 1)[1] if detail.startswith("[") and "] " in detail else detail  # gloo's source
        detail = detail.split(". ")[0][:160]
        raise ImgclfError(
            f"rank {rank()} of {world_size()}: another rank stopped or stopped answering ({detail}); {resume_hint}"
        ) from None


class SumAcrossRanks(torch.autograd.Function):
    """``x`` summed over the ranks; its gradient, the sum of the ranks' gradients (each rank's output feeds its own
    loss, and the losses add up)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(x.clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(grad.clone())


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the global batch on CPU ranks: each channel's sum and sum of squares are summed across the
    ranks (autograd flows back through the reduction), so every rank normalises with the statistics one process
    would compute over the whole batch. PyTorch's own SyncBatchNorm runs on GPUs only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        channels, xd = x.shape[1], x.double()  # float64 sums: E[x²] - E[x]² without cancellation
        count = xd.new_tensor([xd.numel() / channels])
        stats = SumAcrossRanks.apply(torch.cat([xd.sum((0, 2, 3)), (xd * xd).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels : 2 * channels] / n - mean * mean).clamp_min(0).float()
        n, mean, xf = n.float(), mean.float(), x.float()
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(var * n / (n - 1).clamp_min(1), momentum)
        scale = torch.rsqrt(var + self.eps) * (self.weight.float() if self.weight is not None else 1)
        shift = (self.bias.float() if self.bias is not None else 0) - mean * scale
        return (xf * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm computing global-batch statistics across the ranks (``--sync-bn``):
    PyTorch's SyncBatchNorm on GPUs, :class:`GlooSyncBatchNorm` on the CPU. Weights and buffers are kept."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GlooSyncBatchNorm):
            synced = GlooSyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            ).to(device)
            synced.load_state_dict(child.state_dict())
            synced.train(child.training)
            for mine, theirs in zip(synced.parameters(), child.parameters(), strict=True):
                mine.requires_grad_(theirs.requires_grad)  # e.g. a BatchNorm whose scale does not train
            setattr(model, name, synced)
        else:
            sync_batchnorm(child, device)
    return model
