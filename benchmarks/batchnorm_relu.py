"""Training img/s with the fused BatchNorm → (+ residual) → ReLU kernels against PyTorch's separate layers.

    uv run python benchmarks/batchnorm_relu.py              # ResNet-20 and VGG-10 at 32 px, 7 rounds

One process, the same network and batch, the two settings alternated round by round (they share the process's
memory state and the machine's mood): the training step as the trainer runs it (bf16 autocast, channels_last, SGD
with Nesterov momentum and weight decay, label smoothing, batch 128, reused freed memory), 3 warm-up and 15 timed
steps per round; medians of the rounds, and their ratio. A third setting runs the step without BatchNorm and ReLU
at all (convolutions, residual adds, loss and optimizer): the ceiling that no BatchNorm/ReLU kernel can pass.
models/vgg.py keeps PyTorch's layers; here its
conv → BatchNorm → ReLU blocks are switched to the fused ones (same modules, :class:`ConvBatchNormReLU`) to measure
what fusing would give it.
Writes benchmarks/results/batchnorm_relu.json.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import seconds_per_step, training_step

from imgclf.device import reuse_freed_memory
from imgclf.models import batchnorm_relu, create_model, resnet


def without_batchnorm_relu(bn: torch.nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None):
    """The layer left out: its input (plus the residual), for the ceiling setting."""
    return x if residual is None else x + residual


def step_function(model_name: str, batch: int, side: int):
    """A closure running one training step of ``model_name`` on a fixed random batch."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10).to(memory_format=torch.channels_last).train()
    for module in model.modules():  # VGG-10's conv → BatchNorm → ReLU blocks, run through the fused layer
        kinds = [type(m) for m in module.children()]
        if type(module) is torch.nn.Sequential and kinds == [torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU]:
            module.__class__ = batchnorm_relu.ConvBatchNormReLU
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))

    return training_step(model, optimizer, x, labels, label_smoothing=0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg10"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--side", type=int, default=32)
    args = parser.parse_args()
    from common import command_line, write_result

    reuse_freed_memory()
    build_start = time.perf_counter()
    if batchnorm_relu.kernels() is None:
        sys.exit("the fused kernels could not be built here (a C++ compiler is needed)")
    build_seconds = time.perf_counter() - build_start
    fuses, layer_function = batchnorm_relu.fuses, batchnorm_relu.batchnorm_relu
    start, rows = time.perf_counter(), []
    for name in args.models:
        step = step_function(name, args.batch_size, args.side)
        seconds = {"fused": [], "pytorch": [], "without": []}
        for _ in range(args.rounds):
            for setting in seconds:
                batchnorm_relu.fuses = fuses if setting == "fused" else (lambda *_: False)
                layer = without_batchnorm_relu if setting == "without" else layer_function
                resnet.batchnorm_relu = batchnorm_relu.batchnorm_relu = layer
                seconds[setting].append(seconds_per_step(step, 3, args.steps))
        batchnorm_relu.fuses = fuses
        resnet.batchnorm_relu = batchnorm_relu.batchnorm_relu = layer_function
        rate = {k: args.batch_size / statistics.median(v) for k, v in seconds.items()}
        rows.append(
            {
                "model": name,
                "fused_images_per_second": round(rate["fused"], 1),
                "pytorch_images_per_second": round(rate["pytorch"], 1),
                "ratio": round(rate["fused"] / rate["pytorch"], 3),
                "without_batchnorm_relu_images_per_second": round(rate["without"], 1),
                **{f"{k}_step_ms": [round(s * 1e3, 2) for s in v] for k, v in seconds.items()},
            }
        )
        print(
            f"{name}: fused {rate['fused']:.0f} img/s, PyTorch's layers {rate['pytorch']:.0f} img/s, "
            f"without BatchNorm and ReLU {rate['without']:.0f} img/s",
            flush=True,
        )
    path = write_result(
        "batchnorm_relu",
        {
            "benchmark": "batchnorm_relu",
            "command": command_line(),
            "seed": 0,
            "batch_size": args.batch_size,
            "side": args.side,
            "precision": "bf16",
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "threads": torch.get_num_threads(),
            "kernel_build_or_load_seconds": round(build_seconds, 1),
            "wall_seconds": round(time.perf_counter() - start, 1),
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
