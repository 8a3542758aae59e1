"""CIFAR-10-LT (Cao et al. 2019), imbalance 100: from-scratch training with each balance mode, on the full balanced
test set.

    uv run python benchmarks/long_tail.py make benchmarks/data/cifar10-lt100          # the dataset, once
    uv run python benchmarks/long_tail.py run benchmarks/data/cifar10-lt100 --config resnet20 \\
        --balance none logit-adjust --seeds 0 1 2 --tag resnet20 -- --epochs 60

The construction is the standard one: class c keeps the first ``5000 · 100^(-c/9)`` of its training images in the
official order (5,000 airplanes down to 50 trucks, 12,406 in all), written losslessly (PNG) as DIR/train/<class>/…;
the 10,000 test images as DIR/test/<class>/…. imgclf holds its validation split out of train/ (stratified, 10%),
so a run trains on ~11,170 images and selects its epoch on the validation split, never the test split.
Writes benchmarks/results/long_tail_TAG.json: one row per (balance, seed) with test_accuracy, balanced_accuracy and
wall_seconds, and per balance mode the mean ± spread over seeds (``--append``: adds to the file's rows, e.g. more
seeds later, keeping every command). Flags after ``--`` go to `imgclf train`.
"""

import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, command_line, make_run_parser, parse_with_passthrough, write_result

IMBALANCE = 100
HEAD = 5000  # images of class 0
SPREAD_KEYS = ("test_accuracy", "tta_test_accuracy", "balanced_accuracy", "wall_seconds")


def lt_counts(classes: int = 10, imbalance: int = IMBALANCE, head: int = HEAD) -> list[int]:
    """Images per class of the exponential long tail: ``head · imbalance^(-c/(classes-1))``, rounded down."""
    return [int(head * imbalance ** (-c / (classes - 1))) for c in range(classes)]


def make(folder: Path, data_dir: str | None) -> None:
    """Write CIFAR-10-LT into ``folder`` (train/ long-tailed, test/ complete)."""
    from imgclf.data.cifar import load_cifar10

    counts = lt_counts()
    for split in ("train", "test"):
        data = load_cifar10(split, data_dir)
        labels = data.labels.numpy()
        for c, name in enumerate(data.classes):
            rows = np.flatnonzero(labels == c)
            rows = rows[: counts[c]] if split == "train" else rows
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for row in rows:
                image = data.images[int(row)].permute(1, 2, 0).numpy()
                Image.fromarray(image).save(folder / split / name / f"{row:05d}.png")
    print(f"wrote {sum(counts):,} training images ({counts[0]} … {counts[-1]}) and the test set to {folder}")


def run_one(folder: Path, config: str, balance: str, seed: int, extra: list[str], tag: str) -> dict:
    """Train and evaluate one run (a cold start); its row."""
    from imgclf.artifacts.runs import RunDir

    name = f"long_tail_{tag}_{balance}_seed{seed}"
    out = REPO / "benchmarks" / "runs"
    shutil.rmtree(out / name, ignore_errors=True)
    command = ["imgclf", "train", "--data", str(folder), *(["--config", config] if config != "auto" else [])]
    command += ["--balance", balance]
    command += ["--seed", str(seed), "--output", str(out.relative_to(REPO)), "--name", name, "--no-progress", *extra]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    wall = time.perf_counter() - start
    run = RunDir(out / name)
    metrics, summary = run.read_metrics(), run.read_summary()
    recall = {c: round(v["recall"], 4) for c, v in metrics["per_class"].items()}
    row = {
        "balance": balance,
        "seed": seed,
        "command": "uv run " + shlex.join(command),
        "wall_seconds": round(wall, 1),
        "test_accuracy": metrics["test_accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro"]["f1"],
        "per_class_recall": recall,
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "monitor": summary["balance"]["monitor"],
        "ece": metrics["calibration"]["ece"],
        "ece_temperature_scaled": metrics["calibration_temperature_scaled"]["ece"],
        "tta_test_accuracy": metrics.get("tta", {}).get("test_accuracy"),
        "model": metrics["model"],
    }
    print(f"{balance} seed {seed}: test {row['test_accuracy']:.4f} in {wall / 60:.1f} min", flush=True)
    return row


def spread(rows: list[dict], key: str) -> dict:
    """Mean, standard deviation, min and max of ``key`` over ``rows``."""
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return {}
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.mean(values), "sd": sd, "min": min(values), "max": max(values), "n": len(values)}


def main() -> None:
    parser = make_run_parser(__doc__)
    parser.add_argument("--config", default="resnet20", help="a recipe, or auto: no --config (the no-flag choice)")
    parser.add_argument("--balance", nargs="+", default=["none", "logit-adjust"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--tag", default="")
    parser.add_argument("--append", action="store_true", help="add the rows to long_tail_TAG.json's (other seeds)")
    args, extra = parse_with_passthrough(parser)
    if args.action == "make":
        return make(args.folder, args.data_dir)
    tag = args.tag or args.config
    earlier = json.loads((RESULTS / f"long_tail_{tag}.json").read_text()) if args.append else {}
    rows, commands = earlier.get("rows", []), earlier.get("commands", [earlier["command"]] if earlier else [])
    commands.append(command_line())
    for seed in args.seeds:  # seeds outermost: the modes alternate, so drift of the machine hits each alike
        for balance in args.balance:
            rows.append(run_one(args.folder, args.config, balance, seed, extra, tag))
            record = {
                "benchmark": "long_tail",
                "model": args.config,
                "command": commands[-1],
                "commands": commands,
                "seed": sorted({r["seed"] for r in rows}),
                "imbalance_ratio": IMBALANCE,
                "train_images": sum(lt_counts()),
                "wall_seconds": round(sum(r["wall_seconds"] for r in rows), 1),
                "rows": rows,
                "by_balance": {
                    b: {k: spread([r for r in rows if r["balance"] == b], k) for k in SPREAD_KEYS}
                    for b in dict.fromkeys(r["balance"] for r in rows)
                },
            }
            write_result(f"long_tail_{tag}", record)  # after every run: a cut-off benchmark keeps its rows
    print(f"wrote benchmarks/results/long_tail_{tag}.json")


if __name__ == "__main__":
    main()
