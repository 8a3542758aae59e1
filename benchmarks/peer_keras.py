"""The reference study's own framework beside imgclf: ResNet-20 on the same 10,000 CIFAR-10 images, training img/s.

    uv sync --group keras                        # TensorFlow (CPU), an optional dependency group
    uv run --group keras python benchmarks/peer_keras.py            # 3 rounds, alternated
    uv sync                                      # back to the default install

Keras side: the reference notebook's pipeline — a Keras ResNet-20 (v1: 3 stages of 3 basic blocks, 16/32/64
filters, BatchNorm, L2 1e-4), its augmentation as Keras preprocessing layers (rotation ±15°, zoom ±10%, shifts
±10%, horizontal flip) mapped over a tf.data pipeline (parallel calls, prefetch), batch 128, Adam. imgclf side:
``imgclf train --model resnet20 --augment reference`` (the same augmentation as one affine warp per image on
batches), batch 128, bf16 autocast where the CPU has it. Each framework runs in its own process (they would fight
over the threads), rounds alternated. A process trains 4 epochs: the first traces and warms up, its rate is the
median of the others (Keras has single epochs 2× slower than its neighbours: a single timed epoch would count such
an outlier as the round's rate). The result: the medians of the rounds' rates, each round's epoch seconds kept.
Writes benchmarks/results/peer_keras.json (rows with benchmark "peer_keras").
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
REPO = Path(__file__).resolve().parent.parent


def keras_worker(arrays: Path, epochs: int) -> dict:
    """Train the Keras pipeline in this process (TensorFlow without torch: their LLVMs clash in one process) on the
    images saved in ``arrays``; the seconds of each epoch."""
    import keras_models
    import numpy as np
    import tensorflow as tf

    with np.load(arrays, allow_pickle=False) as saved:
        x, y = saved["images"], saved["labels"]
    images = len(x)
    model = keras_models.resnet20()
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-3),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    augment = keras_models.reference_augmentation()
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(images, seed=0)
        .batch(128)
        .map(lambda a, b: (augment(tf.cast(a, tf.float32) / 255, training=True), b), tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )

    class EpochTimes(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    timer = EpochTimes()
    model.fit(dataset, epochs=epochs, verbose=0, callbacks=[timer])
    return {"epoch_seconds": timer.seconds, "tensorflow": tf.__version__}


def imgclf_run(images: int, epochs: int, output: Path, name: str) -> dict:
    """Train imgclf's ResNet-20 with the reference augmentation in a subprocess; the seconds of each epoch."""
    shutil.rmtree(output / name, ignore_errors=True)  # a fresh run each time the benchmark runs
    command = [sys.executable, "-m", "imgclf", "train", "--model", "resnet20", "--augment", "reference"]
    command += ["--train-subset", str(images), "--val-fraction", "0", "--epochs", str(epochs), "--batch-size", "128"]
    command += ["--no-evaluate", "--no-progress", "--no-tensorboard", "--output", str(output), "--name", name]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"imgclf failed:\n{result.stderr[-2000:]}")
    from imgclf.artifacts.runs import RunDir

    history = RunDir(output / name).read_history()
    return {"epoch_seconds": [r["epoch_seconds"] for r in history]}


def save_images(images: int, path: Path) -> Path:
    """The first ``images`` CIFAR-10 training images (NHWC uint8) and labels, for the Keras process."""
    import numpy as np

    from imgclf.data.cifar import load_cifar10

    data = load_cifar10("train", os.environ.get("IMGCLF_DATA_DIR"))
    path.parent.mkdir(parents=True, exist_ok=True)
    x, y = data.images[:images].permute(0, 2, 3, 1).numpy(), data.labels[:images].numpy()
    np.savez(path, images=x, labels=y)
    return path


def keras_process(script: str, arguments: list[str]) -> dict:
    """Run ``script``'s Keras worker (TensorFlow only) in its own process with ``arguments``; its last JSON line."""
    command = [sys.executable, script, *arguments]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"keras failed (uv sync --group keras installs TensorFlow):\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def timed_rate(images: int, epoch_seconds: list[float]) -> float:
    """Images per second of a process: its epochs after the first (the warm-up), the median epoch."""
    if len(epoch_seconds) < 2:
        sys.exit("--epochs must be at least 2: the first one warms up and is not timed")
    return images / statistics.median(epoch_seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per process; all but the first are timed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keras-worker", metavar="NPZ", help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "runs" / "peer_keras"))
    args = parser.parse_args()
    if args.keras_worker:
        print(json.dumps(keras_worker(Path(args.keras_worker), args.epochs)))
        return
    from common import command_line, write_result

    start, rounds = time.perf_counter(), []
    arrays = save_images(args.images, Path(args.output) / "images.npz")  # imgclf's --train-subset takes these
    for number in range(args.rounds):
        keras = keras_process(__file__, ["--keras-worker", str(arrays), "--epochs", str(args.epochs)])
        mine = imgclf_run(args.images, args.epochs, Path(args.output), f"round{number}")
        rounds.append(
            {
                "keras_images_per_second": timed_rate(args.images, keras["epoch_seconds"]),
                "imgclf_images_per_second": timed_rate(args.images, mine["epoch_seconds"]),
                "keras_epoch_seconds": [round(t, 2) for t in keras["epoch_seconds"]],
                "imgclf_epoch_seconds": [round(t, 2) for t in mine["epoch_seconds"]],
                "tensorflow": keras["tensorflow"],
            }
        )
        print(json.dumps(rounds[-1]), flush=True)
    keras_rate = statistics.median(r["keras_images_per_second"] for r in rounds)
    imgclf_rate = statistics.median(r["imgclf_images_per_second"] for r in rounds)
    row = {
        "benchmark": "peer_keras",
        "model": "resnet20",
        "tensorflow": rounds[0]["tensorflow"],
        "images": args.images,
        "batch_size": 128,
        "keras_images_per_second": round(keras_rate, 1),
        "imgclf_images_per_second": round(imgclf_rate, 1),
        "ratio": round(imgclf_rate / keras_rate, 2),
        "rounds": [{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()} for r in rounds],
    }
    record = {
        "benchmark": "peer_keras",
        "model": "resnet20",
        "command": command_line("uv run --group keras python"),
        "seed": 0,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "rows": [row],
    }
    print(json.dumps(row, indent=2))
    print(write_result("peer_keras", record))


if __name__ == "__main__":
    main()
