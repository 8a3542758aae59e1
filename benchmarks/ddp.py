"""torchrun on this machine's CPU: N gloo ranks against one process, the same run with the same global batch.

    uv run python benchmarks/ddp.py                                  # resnet20, 10,000 images, 4 epochs, 3 rounds
    uv run python benchmarks/ddp.py --nproc 4 --rounds 5             # a larger machine

Each round trains the same run twice, alternated: once as one process with every core's threads and global batch B,
once as ``torchrun --nproc-per-node N`` (gloo, cores / N threads per rank, batch B / N per rank). Throughput is the
run's training images over its train_seconds (validation included, sharded across the ranks); the median over the
rounds is reported. Equality: per-epoch training loss and validation accuracy, and test accuracy, of the two runs
of a round (the ranks' augmentation draws from their own streams, and BatchNorm sees B / N images: not bit-equal).
Writes benchmarks/results/ddp.json (rows with benchmark "ddp", world_size, backend, images_per_second).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, write_result

from imgclf.artifacts.runs import RunDir

REPO = Path(__file__).resolve().parent.parent


def train(args: argparse.Namespace, output: Path, name: str, world: int) -> dict:
    """Train (and evaluate) one run as ``world`` processes; its summary, history and test accuracy."""
    cores = os.cpu_count() or 1
    options = ["train", "--config", args.model, "--epochs", str(args.epochs), "--train-subset", str(args.images)]
    options += ["--batch-size", str(args.batch_size // world), "--val-fraction", "0.02", "--progressive-size", "0"]
    options += ["--output", str(output), "--name", name, "--no-progress", "--no-tensorboard", "--device", "cpu"]
    launcher = [sys.executable, "-m", "imgclf"]
    if world > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]
        launcher += ["-m", "imgclf"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // world))}
    result = subprocess.run([*launcher, *options], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"run {name} failed:\n{result.stderr[-3000:]}")
    run = output / name
    summary = RunDir(run).read_summary()
    history = RunDir(run).read_history()
    metrics = RunDir(run).read_metrics()
    return {
        "images_per_second": summary["num_train"] * summary["epochs_run"] / summary["train_seconds"],
        "train_loss": [r["train_loss"] for r in history],
        "val_acc": [r["val_acc"] for r in history],
        "test_accuracy": metrics["test_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", help="bundled recipe to train")
    parser.add_argument("--nproc", type=int, default=2, help="ranks under torchrun")
    parser.add_argument("--images", type=int, default=10_000, help="training images")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "runs" / "ddp"))
    args = parser.parse_args()
    output = Path(args.output)
    shutil.rmtree(output, ignore_errors=True)
    start = time.perf_counter()
    runs = {1: [], args.nproc: []}
    for number in range(args.rounds):
        for world in runs:  # alternated: both see the same state of the machine
            runs[world].append(train(args, output, f"world{world}-round{number}", world))
            print(f"round {number + 1}: {world} process(es): {runs[world][-1]['images_per_second']:,.0f} img/s")
    one, many = runs[1], runs[args.nproc]
    pairs = list(zip(many, one, strict=True))
    equality = {
        "max_train_loss_relative_difference": max(
            abs(a - b) / b for x, y in pairs for a, b in zip(x["train_loss"], y["train_loss"], strict=True)
        ),
        "max_val_acc_difference": max(
            abs(a - b) for x, y in pairs for a, b in zip(x["val_acc"], y["val_acc"], strict=True)
        ),
        "test_accuracy_difference": statistics.mean(x["test_accuracy"] - y["test_accuracy"] for x, y in pairs),
    }
    rows = []
    for world, found in runs.items():
        accuracy = [r["test_accuracy"] for r in found]
        rows.append(
            {
                "benchmark": "ddp",
                "model": args.model,
                "world_size": world,
                "backend": "gloo" if world > 1 else "none",
                "threads_per_process": max(1, (os.cpu_count() or 1) // world),
                "batch_size_per_process": args.batch_size // world,
                "images_per_second": round(statistics.median(r["images_per_second"] for r in found), 1),
                "runs": [round(r["images_per_second"], 1) for r in found],
                "test_accuracy": statistics.mean(accuracy),
                "test_accuracy_spread": max(accuracy) - min(accuracy),
                "train_loss": [r["train_loss"] for r in found],
                **(equality if world > 1 else {}),
            }
        )
    speedup = rows[1]["images_per_second"] / rows[0]["images_per_second"]
    record = {
        "benchmark": "ddp",
        "model": args.model,
        "command": command_line(),
        "seed": 0,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "images": args.images,
        "epochs": args.epochs,
        "global_batch_size": args.batch_size,
        "rounds": args.rounds,
        "speedup": round(speedup, 3),
        "rows": rows,
    }
    print(json.dumps(rows, indent=2))
    print(write_result("ddp", record))


if __name__ == "__main__":
    main()
