"""Fine-tuning throughput with PyTorch's bf16 depthwise backward against imgclf's fp32 one (models/layers.py).

    uv run python benchmarks/depthwise_backward.py               # 5 repeats, median reported
    uv run python benchmarks/depthwise_backward.py --repeats 3

Cases are what imgclf trains on this CPU: the phase-2 tail of EfficientNet-Lite2 on cached activations (224 px,
last 25% and 30% of layers; 96 px, last 50%) and the whole of EfficientNet-Lite0 at 96 px (``--unfreeze all``).
Native and fast are measured alternately on the same model and batch, so their ratio is a side-by-side figure.
Writes benchmarks/results/depthwise_backward.json.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, write_result
from throughput import images_per_second

from imgclf.models.backbones import create_backbone, split_backbone
from imgclf.models.layers import use_fast_depthwise
from imgclf.training.trainer import set_train_mode

# (name, backbone, image size, unfreeze, batch size)
CASES = [
    ("lite2_224_tail_0.25", "tf_efficientnet_lite2", 224, "0.25", 128),
    ("lite2_224_tail_0.3", "tf_efficientnet_lite2", 224, "0.3", 128),
    ("lite2_96_tail_0.5", "tf_efficientnet_lite2", 96, "0.5", 128),
    ("lite0_96_all", "tf_efficientnet_lite0", 96, "all", 64),
]


def trainable_part(backbone: str, size: int, unfreeze: str, batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The part of the network phase 2 trains, in training mode with BatchNorm frozen, and one input batch for it."""
    model = create_backbone(backbone, 10, pretrained=True, dropout=0.2).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    if unfreeze != "all":
        prefix, model = split_backbone(model, unfreeze)
        with torch.no_grad():
            x = prefix.eval()(x).contiguous(memory_format=torch.channels_last)
    set_train_mode(model, freeze_batchnorm=True)
    return model, x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cpu")
    start = time.perf_counter()
    cases = {}
    for name, backbone, size, unfreeze, batch in CASES:
        model, x = trainable_part(backbone, size, unfreeze, batch)
        labels = torch.randint(0, 10, (batch,))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        rates = {"native": [], "fast": []}
        for _ in range(args.repeats):
            for variant in rates:
                use_fast_depthwise(model, fast=variant == "fast")
                rates[variant].append(images_per_second(model, optimizer, x, labels, device, "bf16", args.steps))
        medians = {k: statistics.median(v) for k, v in rates.items()}
        cases[name] = {
            "input": list(x.shape[1:]),
            "batch_size": batch,
            "images_per_second": medians,
            "speedup": medians["fast"] / medians["native"],
            "runs": rates,
        }
        print(
            f"{name}: native {medians['native']:.1f} img/s, fast {medians['fast']:.1f} img/s, "
            f"{medians['fast'] / medians['native']:.2f}x"
        )
    path = write_result(
        "depthwise_backward",
        {
            "benchmark": "depthwise_backward",
            "model": "tf_efficientnet_lite2/lite0",
            "command": command_line(),
            "seed": 0,
            "precision": "bf16",
            "repeats": args.repeats,
            "wall_seconds": round(time.perf_counter() - start, 1),
            "cases": cases,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
