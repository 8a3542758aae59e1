"""Batches from a memory-mapped folder dataset against the same images in memory, side by side.

    uv run python benchmarks/folder_loader.py benchmarks/data/cifar10-jpeg

Iterates the training split's augmented batches (pad-4 crop + flip, normalised, channels-last; no model) for
`--rounds` epochs of each, alternating in-memory and mapped, and reports the median images/s of each and their
ratio: what gathering batches from the file costs over the in-memory path that CIFAR-10 keeps.
Writes benchmarks/results/folder_loader.json.
"""

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from imgclf.data.images import ImageSet
from imgclf.data.loader import BatchLoader
from imgclf.data.sources import load_splits

ROOT = Path(__file__).resolve().parent.parent


def epoch_seconds(loader: BatchLoader, epoch: int) -> float:
    """Seconds to draw every batch of one epoch."""
    loader.set_epoch(epoch)
    start = time.perf_counter()
    for _images, _labels in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    splits = load_splits(str(args.folder), seed=0, val_fraction=0.1)
    mapped = splits.train
    in_memory = ImageSet(mapped.images[:], mapped.labels, mapped.classes)
    common = dict(batch_size=args.batch_size, mean=splits.mean, std=splits.std, augment="fast", shuffle=True)
    loaders = {"in_memory": BatchLoader(in_memory, **common), "mapped": BatchLoader(mapped, **common)}
    times = {name: [] for name in loaders}
    for epoch in range(args.rounds):
        for name, loader in loaders.items():
            times[name].append(epoch_seconds(loader, epoch))
    rate = {name: len(mapped) / statistics.median(t) for name, t in times.items()}
    for name in loaders:
        print(f"{name}: {rate[name]:,.0f} img/s (epochs: {', '.join(f'{t:.2f}' for t in times[name])} s)")
    print(f"mapped / in memory: {rate['mapped'] / rate['in_memory']:.2f}")
    record = {
        "benchmark": "folder_loader",
        "model": None,
        "command": "uv run python benchmarks/folder_loader.py " + shlex.join([os.path.relpath(args.folder, ROOT)]),
        "seed": 0,
        "wall_seconds": round(sum(sum(t) for t in times.values()), 1),
        "images": len(mapped),
        "batch_size": args.batch_size,
        "images_per_second": rate["mapped"],
        "in_memory_images_per_second": rate["in_memory"],
        "mapped_over_in_memory": rate["mapped"] / rate["in_memory"],
        "epoch_seconds": times,
    }
    print("wrote", write_result("folder_loader", record))


if __name__ == "__main__":
    main()
