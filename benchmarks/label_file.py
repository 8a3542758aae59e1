"""Preparation speed from a label file against the same images as a folder: reading the list (or walking the
folder) and decoding every image once into the memory-mapped array, each round from an empty cache.

    uv run python benchmarks/cifar_to_folder.py benchmarks/data/cifar10-jpeg
    uv run python benchmarks/label_file.py benchmarks/data/cifar10-jpeg

Writes FOLDER/labels.csv (file,label,split: the 60,000 files of the folder, in a shuffled order as exports list
them), then times folder and label file alternately (rounds in turn, so drift hits both). Writes
benchmarks/results/label_file.json: images_per_second (label file, median), ratio_to_folder (goal ≥ 0.95).
"""

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_label_file(folder: Path) -> Path:
    """FOLDER/labels.csv naming every image of the folder's split layout, shuffled (seed 0)."""
    from imgclf.data.folder import scan_folder

    scan = scan_folder(folder)
    rows = [
        (name, scan.classes[label], split)
        for split in scan.files
        for name, label in zip(scan.files[split], scan.labels[split], strict=True)
    ]
    order = np.random.default_rng(0).permutation(len(rows))
    path = folder / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "split"])
        writer.writerows(rows[i] for i in order)
    return path


def timed_preparation(source: Path, side: int, workers: int) -> tuple[float, int]:
    """Seconds to scan ``source`` and prepare its images into an empty cache, and the image count."""
    from imgclf.data.files import scan_source
    from imgclf.data.prepare import prepare

    with tempfile.TemporaryDirectory(dir=Path.home() / ".cache") as cache:
        start = time.perf_counter()
        scan = scan_source(str(source))
        prepared = prepare(scan.root, scan.all_files, side, "crop", cache, workers, progress=False)
        seconds = time.perf_counter() - start
        assert not any(prepared.reasons), "every CIFAR-10 JPEG decodes"
        count = len(scan.all_files)
        del prepared
    shutil.rmtree(cache, ignore_errors=True)
    return seconds, count


def main() -> None:
    # imported here: the decoding workers start by importing this script (spawn) and need not import torch
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import command_line, write_result

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a split-layout folder (benchmarks/cifar_to_folder.py)")
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="0: one per available core")
    args = parser.parse_args()
    label_file = write_label_file(args.folder)
    times: dict[str, list[float]] = {"folder": [], "label_file": []}
    for round_ in range(args.rounds):
        kinds = ["folder", "label_file"] if round_ % 2 == 0 else ["label_file", "folder"]
        for kind in kinds:
            seconds, images = timed_preparation(
                args.folder if kind == "folder" else label_file, args.side, args.workers
            )
            times[kind].append(round(seconds, 2))
            print(f"round {round_ + 1} {kind}: {images / seconds:,.0f} img/s ({seconds:.1f} s)", flush=True)
    rate = {kind: images / statistics.median(t) for kind, t in times.items()}
    record = {
        "benchmark": "label_file",
        "model": None,
        "command": command_line(),
        "seed": None,
        "wall_seconds": round(sum(sum(t) for t in times.values()), 1),
        "images": images,
        "side": args.side,
        "workers": args.workers or len(os.sched_getaffinity(0)),
        "round_seconds": times,
        "images_per_second": round(rate["label_file"]),
        "folder_images_per_second": round(rate["folder"]),
        "ratio_to_folder": round(rate["label_file"] / rate["folder"], 3),
    }
    print(f"label file {rate['label_file']:,.0f} img/s, folder {rate['folder']:,.0f}: {record['ratio_to_folder']}×")
    print("wrote", write_result("label_file", record))


if __name__ == "__main__":
    main()
