"""Training throughput (images/second) of every model, fp32 vs bf16 autocast, channels_last, on this machine.

    uv run python benchmarks/throughput.py                     # all models, 5 repeats each, median reported
    uv run python benchmarks/throughput.py --models resnet20 --repeats 3

fp32 and bf16 are measured alternately in the same process, so their ratio is a side-by-side figure.
Writes benchmarks/results/throughput_MODEL.json.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, seconds_per_step, training_step, write_result

from imgclf.core.device import select_device
from imgclf.models import MODELS, create_model
from imgclf.training.optim import build_optimizer


def images_per_second(model, optimizer, images, labels, device, precision: str, steps: int) -> float:
    """Timed optimizer steps (after two warm-up steps) on one fixed batch."""
    step = training_step(model, optimizer, images, labels, precision)
    return len(images) / seconds_per_step(step, 2, steps, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = select_device(args.device)
    torch.manual_seed(0)
    for name in args.models:
        model = create_model(name).to(device, memory_format=torch.channels_last).train()
        optimizer = build_optimizer(model, "sgd", 0.01, 5e-4)
        images = torch.randn(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 10, (args.batch_size,), device=device)
        runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
        start = time.perf_counter()
        for _ in range(args.repeats):
            for precision in runs:
                runs[precision].append(
                    images_per_second(model, optimizer, images, labels, device, precision, args.steps)
                )
        fp32, bf16 = statistics.median(runs["fp32"]), statistics.median(runs["bf16"])
        print(f"{name:<11} fp32 {fp32:7.0f} img/s   bf16 {bf16:7.0f} img/s   bf16/fp32 {bf16 / fp32:.2f}x")
        write_result(
            f"throughput_{name}",
            {
                "benchmark": "train_throughput",
                "model": name,
                "command": command_line(),
                "seed": 0,
                "wall_seconds": round(time.perf_counter() - start, 1),
                "batch_size": args.batch_size,
                "images_per_second": round(bf16, 1),
                "images_per_second_fp32": round(fp32, 1),
                "images_per_second_bf16": round(bf16, 1),
                "bf16_speedup": round(bf16 / fp32, 2),
                "runs": {k: [round(v, 1) for v in vs] for k, vs in runs.items()},
            },
        )


if __name__ == "__main__":
    main()
