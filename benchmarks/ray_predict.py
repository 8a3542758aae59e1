"""Scoring many files: `imgclf predict --ray` on a local Ray (this machine's cores) against plain `imgclf predict`.

    uv run python benchmarks/ray_predict.py make benchmarks/data/jpegs100k --data-dir ../shared/data
    uv run python benchmarks/ray_predict.py run benchmarks/data/jpegs100k --model RUN_DIR [--rounds 3] [--actors 1]

``make`` writes 100,000 JPEG files (quality 90) in 100 folders: CIFAR-10's 50,000 training images, then the same
images mirrored. ``run`` times, alternating, each command in a fresh process over the whole folder: plain predict
(``--format csv --output FILE``) and ``--ray`` (a local Ray started by the command; ``--output DIR``, CSV files),
both with the same runtime. Reported: images/s of each (median of the rounds, start-up included: what a user waits
for), their ratio, and whether the two outputs agree row by row (the same files in the same order, the same top-5
classes, probabilities within 1e-5). Writes benchmarks/results/ray_predict.json.
"""

import csv
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, make_run_parser, write_result

COUNT = 100_000
FOLDERS = 100


def make(folder: Path, data_dir: str | None) -> None:
    """Write the JPEG files into ``folder``."""
    from imgclf.data.cifar import load_cifar10

    images = load_cifar10("train", data_dir).images.permute(0, 2, 3, 1).numpy()
    for i in range(COUNT):
        image = images[i % len(images)]
        image = image[:, ::-1] if i >= len(images) else image
        target = folder / f"part{i % FOLDERS:03d}" / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image)).save(target, quality=90)
    print(f"wrote {COUNT:,} JPEG files into {folder}")


def timed(command: list[str]) -> float:
    """Seconds ``command`` took (it must succeed)."""
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV file, or of every CSV file in a folder (in name order: Ray's block order)."""
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    return [row for f in files for row in csv.DictReader(f.open(newline=""))]


def agree(plain: list[dict], ray: list[dict]) -> tuple[bool, float]:
    """Whether the rows name the same files and classes in the same order, and the largest probability difference."""
    if [r["path"] for r in plain] != [r["path"] for r in ray]:
        return False, float("inf")
    worst, same = 0.0, True
    for a, b in zip(plain, ray, strict=True):
        for rank in range(1, 6):
            same &= a[f"class_{rank}"] == b[f"class_{rank}"]
            p, q = a[f"probability_{rank}"], b[f"probability_{rank}"]
            same &= bool(p) == bool(q)  # both predicted, or both skipped
            if p and q:
                worst = max(worst, abs(float(p) - float(q)))
    return same and worst <= 1e-5, worst


def run(folder: Path, model: str, rounds: int, actors: int, runtime: str, scratch: Path) -> dict:
    count = sum(1 for _ in folder.rglob("*.jpg"))
    base = [sys.executable, "-m", "imgclf.cli", "predict", model, str(folder), "--runtime", runtime]
    plain_out, ray_out = scratch / "plain.csv", scratch / "ray"
    seconds = {"plain": [], "ray": []}
    for _ in range(rounds):
        plain_out.unlink(missing_ok=True)
        seconds["plain"].append(timed([*base, "--format", "csv", "--output", str(plain_out), "--no-progress"]))
        shutil.rmtree(ray_out, ignore_errors=True)
        ray_args = ["--ray", "--output", str(ray_out), "--format", "csv", "--ray-actors", str(actors)]
        seconds["ray"].append(timed([*base, *ray_args]))
    identical, worst = agree(read_rows(plain_out), read_rows(ray_out))
    plain_rate, ray_rate = (count / statistics.median(seconds[k]) for k in ("plain", "ray"))
    return {
        "benchmark": "ray_predict",
        "model": model,
        "command": command_line(),
        "seed": None,
        "images": count,
        "rounds": rounds,
        "actors": actors,
        "runtime": runtime,
        "seconds": seconds,
        "plain_images_per_second": round(plain_rate, 1),
        "images_per_second": round(ray_rate, 1),
        "ratio_to_plain": round(ray_rate / plain_rate, 3),
        "identical": identical,
        "max_probability_difference": worst,
        "wall_seconds": round(sum(seconds["plain"]) + sum(seconds["ray"]), 1),
    }


def main() -> None:
    parser = make_run_parser(__doc__)
    parser.add_argument("--model", help="the run directory to predict with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/imgclf-ray-bench"))
    args = parser.parse_args()
    if args.action == "make":
        return make(args.folder, args.data_dir)
    args.scratch.mkdir(parents=True, exist_ok=True)
    record = run(args.folder, args.model, args.rounds, args.actors, args.runtime, args.scratch)
    write_result("ray_predict", record)
    print(
        f"plain {record['plain_images_per_second']:,.0f} img/s, ray {record['images_per_second']:,.0f} img/s "
        f"({record['ratio_to_plain']:.2f}×), identical: {record['identical']}"
    )


if __name__ == "__main__":
    main()
