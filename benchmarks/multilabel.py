"""Multi-label CIFAR mosaics: 2×2 tiles of CIFAR-10 images at 64 px, each mosaic holding 1–3 distinct classes, and
from-scratch against transfer training on them.

    uv run python benchmarks/multilabel.py make benchmarks/data/cifar10-mosaics             # 10,000 + 2,000 mosaics
    uv run python benchmarks/multilabel.py run benchmarks/data/cifar10-mosaics --tag scratch -- --config speed94
    uv run python benchmarks/multilabel.py run benchmarks/data/cifar10-mosaics --tag transfer   # the no-flag command

A mosaic draws its number of classes k uniformly from 1–3 and k distinct classes, fills its four tiles with them
(each at least once, the rest at random among them, in a random order) and each tile with a random CIFAR-10 image of
its class: training mosaics from CIFAR's training images, test mosaics from its test images. Written as PNG files and
one labels.jsonl (``file``, ``labels`` as a JSON list, ``split``); imgclf holds its validation split out of train.
Writes benchmarks/results/multilabel_TAG.json with the run's mAP, macro F1 and wall time. Flags after ``--`` go to
`imgclf train`.
"""

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, command_line, make_run_parser, parse_with_passthrough, write_result

TILE = 32


def mosaic_tiles(labels: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """For each of ``count`` mosaics, the indices (into ``labels``) of its four tiles' images."""
    by_class = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
    mosaics = []
    for _ in range(count):
        k = int(rng.integers(1, 4))
        classes = rng.choice(len(by_class), k, replace=False)
        tiles = rng.permutation(np.concatenate([classes, rng.choice(classes, 4 - k)]))
        mosaics.append(np.array([rng.choice(by_class[c]) for c in tiles]))
    return mosaics


def make(folder: Path, data_dir: str | None, train: int, test: int, seed: int) -> None:
    """Write ``train`` training and ``test`` test mosaics and labels.jsonl into ``folder``."""
    from imgclf.data.cifar import load_cifar10

    rng = np.random.default_rng(seed)
    rows = []
    for split, count in (("train", train), ("test", test)):
        data = load_cifar10(split, data_dir)
        images, labels = data.images.permute(0, 2, 3, 1).numpy(), data.labels.numpy()
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        for i, tiles in enumerate(mosaic_tiles(labels, count, rng)):
            grid = images[tiles].reshape(2, 2, TILE, TILE, 3).transpose(0, 2, 1, 3, 4).reshape(2 * TILE, 2 * TILE, 3)
            name = f"images/{split}/{i:05d}.png"
            Image.fromarray(grid).save(folder / name)
            present = sorted({data.classes[labels[t]] for t in tiles})
            rows.append({"file": name, "labels": present, "split": split})
    (folder / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {train:,} training and {test:,} test mosaics and {folder / 'labels.jsonl'}")


def run(folder: Path, tag: str, seed: int, extra: list[str]) -> None:
    """Train and evaluate on the mosaics (a cold start); write the result."""
    from imgclf.artifacts.runs import RunDir

    name = f"multilabel_{tag}_seed{seed}"
    out = REPO / "benchmarks" / "runs"
    shutil.rmtree(out / name, ignore_errors=True)
    command = ["imgclf", "train", "--data", str(folder / "labels.jsonl"), "--seed", str(seed)]
    command += ["--output", str(out.relative_to(REPO)), "--name", name, "--no-progress", *extra]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    wall = time.perf_counter() - start
    run_dir = RunDir(out / name)
    metrics, summary, config = run_dir.read_metrics(), run_dir.read_summary(), run_dir.read_config()
    record = {
        "benchmark": "multilabel",
        "model": config.model,
        "command": "uv run " + shlex.join(command),
        "seed": seed,
        "wall_seconds": round(wall, 1),
        "train_seconds": round(summary["train_seconds"], 1),
        "map": metrics["map"],
        "macro_f1": metrics["macro_f1"],
        "micro_f1": metrics["micro_f1"],
        "exact_match": metrics["exact_match"],
        "hamming_loss": metrics["hamming_loss"],
        "cardinality": metrics["cardinality"],
        "train_map": metrics["train_map"],
        "ece": metrics["calibration"]["ece"],
        "ece_temperature_scaled": metrics["calibration_temperature_scaled"]["ece"],
        "per_class_ap": {c: v["ap"] for c, v in metrics["per_class"].items()},
        "thresholds": {c: round(v["threshold"], 4) for c, v in metrics["per_class"].items()},
        "img_size": config.img_size or config.data_size,
        "best_epoch": summary.get("best_epoch"),
        "test_images": metrics["test_images"],
        "engine": summary.get("engine"),
        "runner": command_line(),
    }
    write_result(f"multilabel_{tag}", record)
    print(f"{tag}: mAP {record['map']:.4f}, macro F1 {record['macro_f1']:.4f} in {wall / 60:.1f} min")


def main() -> None:
    parser = make_run_parser(__doc__)
    parser.add_argument("--train", type=int, default=10_000, help="training mosaics (make)")
    parser.add_argument("--test", type=int, default=2_000, help="test mosaics (make)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="run")
    args, extra = parse_with_passthrough(parser)
    if args.action == "make":
        return make(args.folder, args.data_dir, args.train, args.test, args.seed)
    return run(args.folder, args.tag, args.seed, extra)


if __name__ == "__main__":
    main()
