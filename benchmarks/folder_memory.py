"""Peak memory of preparing and training on a folder larger than comfortable: 200,000 synthetic 64-px JPEGs.

    uv run python benchmarks/folder_memory.py benchmarks/data/synthetic-200k

Creates the folder (100 classes × 2,000 JPEG images of 64×64, smooth random patterns in a colour per class) unless
it exists, then runs `imgclf train` on it — preparation at 64 px from an empty cache, one epoch of simple_cnn,
evaluation — under GNU time (`/usr/bin/time -v`), whose "Maximum resident set size" is the figure reported
(the largest process: the trainer; the decoding workers are smaller). The prepared array alone is 2.46 GB.
Writes benchmarks/results/folder_memory.json.
"""

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from imgclf.artifacts.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent
CLASSES, PER_CLASS, SIDE = 100, 2000, 64


def write_class(folder: str, label: int, count: int) -> int:
    """``count`` smooth random 64-px JPEGs of class ``label`` (a colour per class) in ``folder``."""
    from PIL import Image

    rng = np.random.default_rng(label)
    colour = rng.integers(40, 216, 3)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        small = rng.integers(-40, 40, (8, 8, 3)) + colour
        image = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((SIDE, SIDE), Image.BICUBIC)
        image.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
    return count


def make_folder(root: Path) -> None:
    """The synthetic dataset, written by one process per core."""
    with ProcessPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        jobs = [pool.submit(write_class, str(root / f"class_{c:03d}"), c, PER_CLASS) for c in range(CLASSES)]
        print(f"wrote {sum(j.result() for j in jobs):,} images to {root}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default="simple_cnn")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=0, help="train on N of the images: does the peak follow N?")
    args = parser.parse_args()
    if not args.folder.is_dir():
        make_folder(args.folder)
    folder = os.path.relpath(args.folder.resolve(), ROOT)
    prepare_dir = Path("benchmarks") / "runs" / "prepared_folder_memory"
    output = Path("benchmarks") / "runs"
    for path in (ROOT / prepare_dir, ROOT / output / "folder_memory"):
        shutil.rmtree(path, ignore_errors=True)
    command = ["imgclf", "train", "--data", folder, "--model", args.model, "--data-size", str(SIDE)]
    command += ["--epochs", str(args.epochs), "--prepare-dir", str(prepare_dir), "--output", str(output)]
    command += ["--name", "folder_memory", "--no-progress", "--no-tensorboard"]
    if args.train_subset:
        command += ["--train-subset", str(args.train_subset), "--test-subset", str(args.train_subset // 10)]
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v", *command], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    print(result.stdout[-2000:], result.stderr[-3000:])
    result.check_returncode()
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    metrics = RunDir(ROOT / output / "folder_memory").read_metrics()
    record = {
        "benchmark": "folder_memory",
        "model": args.model,
        "command": "uv run /usr/bin/time -v " + shlex.join(command),
        "seed": 0,
        "wall_seconds": round(wall, 1),
        "images": CLASSES * PER_CLASS,
        "side": SIDE,
        "prepared_bytes": CLASSES * PER_CLASS * 3 * SIDE * SIDE,
        "peak_rss_bytes": peak_kb * 1024,
        "test_accuracy": metrics["test_accuracy"],
        "epochs": args.epochs,
        "train_subset": args.train_subset,
    }
    print(f"peak RSS {peak_kb / 2**20:.2f} GiB in {wall / 60:.1f} min")
    print("wrote", write_result("folder_memory" + (f"_subset{args.train_subset}" if args.train_subset else ""), record))


if __name__ == "__main__":
    main()
