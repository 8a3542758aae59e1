"""The whole reference study in the reference's own framework beside imgclf's study: wall time, row by row.

    uv run python benchmarks/study.py                               # first: imgclf's side, end to end
    uv sync --group keras                                           # TensorFlow (CPU), an optional dependency group
    uv run --group keras python benchmarks/peer_keras_study.py      # then the Keras side
    uv sync                                                         # back to the default install
    uv run python benchmarks/peer_keras_study.py --keep-keras       # a new imgclf study against the stored Keras side
                                                                    # (its rates scaled to the study's epochs now)

Keras side: every row of imgclf's reference study (src/imgclf/studies/reference.yaml: the same epochs and batch size,
45,000 training and 5,000 validation images per epoch, the 10,000 test images once) as the reference notebook runs
it — the networks trained from scratch (keras_models.py: the twins of imgclf's, same trainable parameter counts, and
the notebook's ResNet-20) on a tf.data pipeline with the notebook's augmentation as Keras preprocessing layers, Adam;
transfer learning as two phases of ``model.fit`` on EfficientNetV2-B0, the notebook's backbone, with the 32-px images
resized inside the model: phase 1 the new head on the frozen backbone, phase 2 also the backbone's last layers (the
fraction of its layers that imgclf's recipe unfreezes of Lite2's), BatchNorm kept in inference mode, flips as the
only augmentation. fp32, TensorFlow's default threads.

Not whole runs (the Keras study would take hours): each phase's training rate is timed over ``--steps`` steps after
two warm-up steps (tracing), the inference rate over ``--predict`` images (medians of ``--rounds`` processes per
row), and the row's time is scaled to the
study's images and epochs (training, a validation pass per epoch, the test pass) — stated so in the result. imgclf's
side is measured, not scaled: the study's wall time in benchmarks/results/study_reference.json.
Writes benchmarks/results/peer_keras_study.json (benchmark "peer_keras", model "reference study").
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
TEST_IMAGES = 10_000


def keras_worker(arrays: Path, row: dict) -> dict:
    """Time one study row in Keras in this process (TensorFlow only); images per second per phase and inference."""
    import keras_models
    import numpy as np
    import tensorflow as tf

    with np.load(arrays, allow_pickle=False) as saved:
        x, y = saved["images"], saved["labels"]
    batch, steps = row["batch_size"], row["steps"]
    if row["kind"] == "scratch":
        model = getattr(keras_models, row["model"])()
        augment = keras_models.reference_augmentation()
    else:
        model, backbone = keras_models.efficientnetv2_b0(row["side"], dropout=row["dropout"])
        augment = tf.keras.layers.RandomFlip("horizontal")
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .repeat()
        .shuffle(len(x), seed=0)
        .batch(batch)
        .map(lambda a, b: (augment(tf.cast(a, tf.float32) / 255, training=True), b), tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def rate() -> float:
        model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # traces the step and warms up
        start = time.perf_counter()
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
        return steps * batch / (time.perf_counter() - start)

    phases = {}
    if row["kind"] == "scratch":
        model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss=loss)
        phases["train"] = rate()
    else:
        backbone.trainable = False
        model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss=loss)
        phases["phase1"] = rate()
        backbone.trainable = True
        cut = round(len(backbone.layers) * (1 - row["unfreeze_fraction"]))
        for layer in backbone.layers[:cut]:
            layer.trainable = False
        model.compile(optimizer=tf.keras.optimizers.Adam(1e-4), loss=loss)
        phases["phase2"] = rate()
    images = x[: row["predict"]].astype("float32") / 255
    model.predict(images[:batch], batch_size=batch, verbose=0)
    start = time.perf_counter()
    model.predict(images, batch_size=batch, verbose=0)
    predict_rate = len(images) / (time.perf_counter() - start)
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    return {
        "train_images_per_second": phases,
        "predict_images_per_second": predict_rate,
        "trainable": trainable,
        "tensorflow": tf.__version__,
    }


def study_rows(steps: int, transfer_steps: int, predict: int) -> dict[str, dict]:
    """Each run of imgclf's reference study as a Keras row: kind, network, epochs per phase, images."""
    from imgclf.models import count_parameters, create_model
    from imgclf.models.backbones import backbone_units, create_backbone, unfrozen_units
    from imgclf.study import study_configs

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        configs = study_configs("reference", Path(tmp), {})
    for name, cfg in configs.items():
        row = {"batch_size": cfg.batch_size, "predict": predict, "val_fraction": cfg.val_fraction}
        if cfg.pretrained:
            units = len(backbone_units(create_backbone(cfg.model, 10, pretrained=False)))
            fraction = unfrozen_units(cfg.unfreeze, units) / units
            row |= {"kind": "transfer", "model": "efficientnetv2_b0", "side": cfg.img_size, "dropout": cfg.dropout}
            row |= {"epochs": {"phase1": cfg.head_epochs, "phase2": cfg.epochs}, "unfreeze_fraction": fraction}
            row |= {"steps": transfer_steps}
        else:
            row |= {"kind": "scratch", "model": cfg.model, "epochs": {"train": cfg.epochs}, "steps": steps}
            row["imgclf_trainable"] = count_parameters(create_model(cfg.model, 10))
        rows[name] = row
    return rows


def scaled_seconds(row: dict, rates: dict[str, float], predict_rate: float, split: int) -> float:
    """A Keras row's wall time scaled to the study: each phase's epochs over the training images at its measured
    rate, then a validation pass per epoch and the test pass at the inference rate."""
    train = round(split * (1 - row["val_fraction"]))
    seconds = sum(epochs * train / rates[phase] for phase, epochs in row["epochs"].items())
    return seconds + (sum(row["epochs"].values()) * (split - train) + TEST_IMAGES) / predict_rate


def compare_again(imgclf_study: dict, rows: dict[str, dict], split: int, results: Path, write_result) -> None:
    """Rewrite peer_keras_study.json with its stored Keras rates, scaled to the study's epochs as they are now, beside
    the imgclf study now in study_reference.json."""
    record = json.loads((results / "peer_keras_study.json").read_text())
    record.setdefault("keras_measured", {"date": record["date"], "commit": record["commit"]})
    keras_total = 0.0
    for name, row in record["rows"].items():
        rates, predict_rate = row["keras_train_images_per_second"], row["keras_predict_images_per_second"]
        seconds = scaled_seconds(rows[name], rates, predict_rate, split)
        mine = imgclf_study["runs"][name]["wall_seconds"]
        row.update(epochs=rows[name]["epochs"], keras_wall_seconds_scaled=round(seconds))
        row.update(imgclf_wall_seconds=round(mine, 1), ratio=round(seconds / mine, 2))
        keras_total += seconds
    record.update(
        keras_wall_seconds_scaled=round(keras_total),
        imgclf_wall_seconds=imgclf_study["wall_seconds"],
        imgclf_study={"commit": imgclf_study["commit"], "date": imgclf_study["date"]},
        ratio=round(keras_total / imgclf_study["wall_seconds"], 2),
        command=record["command"].split(" (Keras side)")[0]
        + " (Keras side); uv run python benchmarks/peer_keras_study.py --keep-keras",
    )
    for key in ("date", "device", "torch", "commit"):  # write_result fills these in afresh
        record.pop(key, None)
    print(f"Keras (scaled, {record['keras_measured']['date']}) {keras_total / 60:.0f} min, "
          f"imgclf {imgclf_study['wall_seconds'] / 60:.1f} min: {record['ratio']}×")  # fmt: skip
    print(write_result("peer_keras_study", record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per from-scratch row")
    parser.add_argument("--transfer-steps", type=int, default=5, help="timed steps per transfer phase")
    parser.add_argument("--predict", type=int, default=1024, help="images of the timed inference pass")
    parser.add_argument("--rounds", type=int, default=3, help="Keras processes per row; median rates")
    parser.add_argument("--keep-keras", action="store_true", help="compare the current imgclf study with the Keras "
                        "side stored in peer_keras_study.json instead of measuring it again")  # fmt: skip
    parser.add_argument("--keras-worker", metavar="NPZ", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keras_worker:
        print(json.dumps(keras_worker(Path(args.keras_worker), json.loads(args.row))))
        return
    from common import RESULTS, command_line, write_result

    from imgclf.data.cifar import load_cifar10

    imgclf_study = json.loads((RESULTS / "study_reference.json").read_text())
    start = time.perf_counter()
    rows = study_rows(args.steps, args.transfer_steps, args.predict)
    split = len(load_cifar10("train", os.environ.get("IMGCLF_DATA_DIR")))  # training images before the validation split
    if args.keep_keras:
        compare_again(imgclf_study, rows, split, RESULTS, write_result)
        return
    from peer_keras import keras_process, save_images

    arrays = save_images(10_000, REPO / "benchmarks" / "runs" / "peer_keras_study" / "images.npz")
    out, keras_total = {}, 0.0
    for name, row in rows.items():
        worker = ["--keras-worker", str(arrays), "--row", json.dumps(row)]
        rounds = [keras_process(__file__, worker) for _ in range(args.rounds)]
        measured = {
            "train_images_per_second": {
                phase: statistics.median(r["train_images_per_second"][phase] for r in rounds) for phase in row["epochs"]
            },
            "predict_images_per_second": statistics.median(r["predict_images_per_second"] for r in rounds),
            "trainable": rounds[0]["trainable"],
            "tensorflow": rounds[0]["tensorflow"],
        }
        rates = measured["train_images_per_second"]
        seconds = scaled_seconds(row, rates, measured["predict_images_per_second"], split)
        mine = imgclf_study["runs"][name]["wall_seconds"]
        out[name] = {
            **{k: v for k, v in row.items() if k not in ("predict", "val_fraction", "steps")},
            "keras_train_images_per_second": {k: round(v, 1) for k, v in rates.items()},
            "keras_predict_images_per_second": round(measured["predict_images_per_second"], 1),
            "keras_rounds": [{k: round(v, 1) for k, v in r["train_images_per_second"].items()} for r in rounds],
            "keras_trainable": measured["trainable"],
            "keras_wall_seconds_scaled": round(seconds),
            "imgclf_wall_seconds": round(mine, 1),
            "ratio": round(seconds / mine, 2),
        }
        keras_total += seconds
        if row["kind"] == "scratch" and name != "resnet20" and measured["trainable"] != row["imgclf_trainable"]:
            sys.exit(
                f"{name}: the Keras twin has {measured['trainable']:,} trainable parameters, imgclf's network "
                f"{row['imgclf_trainable']:,}"
            )
        print(name, json.dumps(out[name]), flush=True)
    record = {
        "benchmark": "peer_keras",
        "model": "reference study",
        "command": command_line("uv run --group keras python"),
        "seed": 0,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "tensorflow": measured["tensorflow"],
        "keras_wall_seconds_scaled": round(keras_total),
        "imgclf_wall_seconds": imgclf_study["wall_seconds"],
        "imgclf_study": {"commit": imgclf_study["commit"], "date": imgclf_study["date"]},
        "ratio": round(keras_total / imgclf_study["wall_seconds"], 2),
        "scaled": f"median of {args.rounds} Keras processes per row, each timed over {args.steps} steps (from scratch) "
        f"and {args.transfer_steps} steps per "
        f"transfer phase after 2 warm-up steps, inference over {args.predict} images, scaled to the study's images "
        "and epochs; imgclf's study measured end to end",
        "rows": out,
    }
    print(
        f"Keras (scaled) {keras_total / 60:.0f} min, imgclf {imgclf_study['wall_seconds'] / 60:.0f} min: "
        f"{record['ratio']}×"
    )
    print(write_result("peer_keras_study", record))


if __name__ == "__main__":
    main()
