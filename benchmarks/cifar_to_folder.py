"""Write CIFAR-10 out as a folder of JPEG files (quality 95): the dataset the folder benchmarks train on.

    uv run python benchmarks/cifar_to_folder.py benchmarks/data/cifar10-jpeg
    uv run python benchmarks/cifar_to_folder.py benchmarks/data/cifar10-jpeg444 --subsampling 4:4:4

Layout DIR/train/<class>/NNNNN.jpg (50,000) and DIR/test/<class>/NNNNN.jpg (10,000), the numbers being the images'
indices in the official batches; imgclf holds its validation split out of train/ (seeded, stratified).
Pillow's default chroma subsampling is 4:2:0 (colour at half resolution: much of a 32-px image's colour detail);
``--subsampling 4:4:4`` keeps colour at full resolution.
"""

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

QUALITY = 95


def write_chunk(folder: str, names: list[str], images: np.ndarray, subsampling: str) -> int:
    """Save ``images`` (N, 32, 32, 3) as JPEG files ``folder/names[i]``."""
    options = {"quality": QUALITY} | ({"subsampling": subsampling} if subsampling else {})
    for name, image in zip(names, images, strict=True):
        Image.fromarray(image).save(os.path.join(folder, name), **options)
    return len(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="folder to create")
    parser.add_argument("--data-dir", help="folder holding cifar-10-batches-py (default: $IMGCLF_DATA_DIR)")
    parser.add_argument("--subsampling", default="", help="JPEG chroma subsampling, e.g. 4:4:4 (default: Pillow's)")
    args = parser.parse_args()
    from imgclf.data.cifar import load_cifar10

    if (args.output / "test").is_dir():
        sys.exit(f"{args.output} exists already")
    jobs = []
    with ProcessPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        for split in ("train", "test"):
            data = load_cifar10(split, args.data_dir)
            pixels = data.images.permute(0, 2, 3, 1).numpy()
            for label, name in enumerate(data.classes):
                folder = args.output / split / name
                folder.mkdir(parents=True, exist_ok=True)
                index = np.flatnonzero(data.labels.numpy() == label)
                for start in range(0, len(index), 1000):
                    part = index[start : start + 1000]
                    names = [f"{i:05d}.jpg" for i in part]
                    jobs.append(pool.submit(write_chunk, str(folder), names, pixels[part], args.subsampling))
        written = sum(job.result() for job in jobs)
    print(f"wrote {written:,} JPEG files to {args.output}")


if __name__ == "__main__":
    main()
