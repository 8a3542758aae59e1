"""Preparation speed of a folder dataset: scanning and decoding every image once into the memory-mapped array.

    uv run python benchmarks/cifar_to_folder.py benchmarks/data/cifar10-jpeg
    uv run python benchmarks/folder_prepare.py benchmarks/data/cifar10-jpeg --side 32 --side 96

Each round starts from an empty preparation cache (cold); the page cache holds the files after the first round, so
the rounds measure decoding, not the disk. Writes benchmarks/results/folder_prepare_NAME.json (median of rounds).
"""

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    # imported here, not at the top: the decoding workers start by importing this script (spawn), and should not
    # import torch for nothing — as they do not under the `imgclf` command
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import write_result

    from imgclf.data.folder import scan_folder
    from imgclf.data.prepare import prepare

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--side", type=int, action="append", help="storage side(s) to prepare at (default: 32)")
    parser.add_argument("--resize", default="crop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="0: one per available core")
    args = parser.parse_args()
    start = time.perf_counter()
    scan = scan_folder(args.folder)
    scan_seconds = time.perf_counter() - start
    files = scan.all_files
    rows = []
    for side in args.side or [32]:
        times = []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(dir=Path.home() / ".cache") as cache:
                start = time.perf_counter()
                prepared = prepare(scan.root, files, side, args.resize, cache, args.workers, progress=False)
                times.append(time.perf_counter() - start)
                assert not any(prepared.reasons), "every CIFAR-10 JPEG decodes"
                del prepared
            shutil.rmtree(cache, ignore_errors=True)
        median = statistics.median(times)
        rows.append(
            {"side": side, "round_seconds": [round(t, 2) for t in times], "images_per_second": len(files) / median}
        )
        print(f"side {side}: {len(files) / median:,.0f} img/s (median of {args.rounds}: {median:.1f} s)")
    command = "uv run python benchmarks/folder_prepare.py " + shlex.join(
        [os.path.relpath(args.folder, Path(__file__).resolve().parent.parent)]
        + [a for side in args.side or [32] for a in ("--side", str(side))]
    )
    record = {
        "benchmark": "folder_prepare",
        "model": None,
        "command": command,
        "seed": None,
        "wall_seconds": round(sum(sum(r["round_seconds"]) for r in rows) + scan_seconds, 1),
        "images": len(files),
        "workers": args.workers or len(os.sched_getaffinity(0)),
        "scan_seconds": round(scan_seconds, 2),
        "images_per_second": rows[0]["images_per_second"],
        "sides": rows,
    }
    print("wrote", write_result(f"folder_prepare_{args.folder.name}", record))


if __name__ == "__main__":
    main()
