"""Abstaining on what a model never saw: trained on 8 CIFAR-10 classes, tested on their test images and on the test
images of the 2 classes held out (ship, truck). Which confidence score tells them apart best?

    uv run python benchmarks/abstain.py make benchmarks/data/cifar10-open --data-dir ../shared/data
    uv run python benchmarks/abstain.py run benchmarks/data/cifar10-open [-- TRAIN FLAGS]

``make`` writes the 60,000 CIFAR-10 images as PNGs and known.csv (the 8 known classes, with the official split) and
unknown.csv (the 2,000 test images of the held-out classes). ``run`` trains `--config speed94` (seed 0) on known.csv,
then scores every known test image and every unknown one three ways: the maximum softmax probability (calibrated by
the run's temperature), the energy (logsumexp of the logits), and the distance from the image's frozen-backbone
embedding to its 10th nearest training embedding (the audit's embedder; negated, so that higher is surer). For each:
the AUROC of known against unknown images, and the risk (error rate among the answered; an unknown image answered is
an error) at 90% coverage and at full coverage of all 10,000 test images; and the threshold fitted on the validation
split for a 5% risk, with the coverage and risk it gives on the test images. Writes benchmarks/results/abstain.json.
"""

import csv
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, command_line, make_or_run, read_csv, write_result

if TYPE_CHECKING:
    from imgclf.data.images import ImageSet

HELD_OUT = ("ship", "truck")
CONFIG, SEED, TARGET_RISK, NEIGHBOURS = "speed94", 0, 0.05, 10
BACKBONE, SIDE = "tf_efficientnet_lite2", 224


def make(folder: Path, data_dir: str | None) -> None:
    """Write the images, known.csv and unknown.csv into ``folder``."""
    from imgclf.data.cifar import load_cifar10

    known, unknown = [], []
    for split in ("train", "test"):
        data = load_cifar10(split, data_dir)
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(len(data)):
            name, label = f"{split}/{i:05d}.png", data.classes[int(data.labels[i])]
            if label in HELD_OUT and split == "train":
                continue  # never seen
            Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(folder / name)
            (unknown if label in HELD_OUT else known).append((name, label, split))
    for path, rows in ((folder / "known.csv", known), (folder / "unknown.csv", unknown)):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([("file", "label", "split"), *rows])
    print(f"wrote {len(known):,} known and {len(unknown):,} unknown images to {folder}")


def train(folder: Path, extra: list[str]) -> tuple[Path, dict]:
    """Train the recipe on the known classes (a cold start): the run directory and its row."""
    name = f"abstain_{CONFIG}_seed{SEED}"
    out = REPO / "benchmarks" / "runs"
    shutil.rmtree(out / name, ignore_errors=True)
    command = ["imgclf", "train", "--data", str(folder / "known.csv"), "--config", CONFIG, "--seed", str(SEED)]
    command += ["--output", str(out.relative_to(REPO)), "--name", name, "--no-progress", *extra]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    return out / name, {"train_command": "uv run " + shlex.join(command), "train_seconds": time.perf_counter() - start}


def image_set(folder: Path, files: list[str], side: int) -> "ImageSet":
    """The files as an in-memory ImageSet (labels unused: zeros)."""
    import torch

    from imgclf.data.decode import decode_file
    from imgclf.data.images import ImageSet

    decoded = [decode_file(str(folder / f), side, "crop", digest=False) for f in files]
    bad = [f"{f}: {d[2]}" for f, d in zip(files, decoded, strict=True) if d[0] is None]
    if bad:
        raise SystemExit(f"unreadable images: {bad[:3]}")
    images = np.stack([d[0] for d in decoded])
    return ImageSet(torch.from_numpy(images), torch.zeros(len(files), dtype=torch.long), ["?"])


def model_scores(run: Path, sets: dict) -> tuple[dict, dict]:
    """Per set: the run's top-1 classes, and its scores (maximum calibrated probability, energy)."""
    from imgclf.evaluation.selective import energy, max_probability
    from imgclf.inference.load import load_predictor

    predictor = load_predictor(run, "cpu", runtime="torch")
    top, scores = {}, {"max_probability": {}, "energy": {}}
    for name, images in sets.items():
        logits = predictor.dataset_logits(images)
        top[name] = logits.argmax(1)
        scores["max_probability"][name] = max_probability(predictor.probabilities(logits))
        scores["energy"][name] = energy(logits)
    return top, scores


def knn_scores(sets: dict, train_images: "ImageSet") -> dict:
    """Per set: minus the distance of each image's embedding to its 10th nearest training embedding."""
    from imgclf.analysis.embed import Embedder
    from imgclf.analysis.neighbours import nearest_among

    embedder = Embedder(BACKBONE, SIDE, progress=False)
    reference = embedder.embed(train_images, "training embeddings")
    return {name: -nearest_among(embedder.embed(s), reference, NEIGHBOURS)[0][:, -1] for name, s in sets.items()}


def score_row(name: str, scores: dict, correct: dict) -> dict:
    """AUROC of known against unknown test images, risk at 90% and full coverage, and the validation threshold."""
    from sklearn.metrics import roc_auc_score

    from imgclf.evaluation.selective import risk_at_coverage, selective_metrics, threshold_for_risk

    known, unknown = scores["test"], scores["unknown"]
    both = np.concatenate([known, unknown])
    right = np.concatenate([correct["test"], np.zeros(len(unknown), bool)])  # an unknown image answered: wrong
    threshold = threshold_for_risk(scores["val"], correct["val"], TARGET_RISK)
    test = selective_metrics(both, right, threshold)
    return {
        "score": name,
        "auroc": round(float(roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unknown))], both)), 4),
        "risk_at_90_coverage": round(risk_at_coverage(both, right, 0.9), 4),
        "full_coverage_risk": round(test["full_coverage_risk"], 4),
        "aurc": round(test["aurc"], 4),
        "target_risk": TARGET_RISK,
        "threshold": threshold if np.isfinite(threshold) else None,  # None: even the surest images err more
        "test_coverage": round(test["coverage"], 4),
        "test_risk": round(test["risk"], 4),
        "unknown_rejected": round(float(np.mean(unknown < threshold)), 4),
        "known_answered": round(float(np.mean(known >= threshold)), 4),
    }


def run(folder: Path, extra: list[str]) -> None:
    """Train, score and write the result."""
    from imgclf.artifacts.runs import RunDir, run_splits

    start = time.perf_counter()
    run_dir, row = train(folder, extra)
    source = RunDir(run_dir)
    splits = run_splits(source.read_config(), source.read_split(), source.read_card())
    unknown = [r["file"] for r in read_csv(folder / "unknown.csv")]
    sets = {"val": splits.val, "test": splits.test(), "unknown": image_set(folder, unknown, splits.side)}
    labels = {"val": splits.val.labels.numpy(), "test": sets["test"].labels.numpy()}
    top, scores = model_scores(run_dir, sets)
    scores["knn_embedding"] = knn_scores(sets, splits.train)
    correct = {k: top[k] == labels[k] for k in labels}
    rows = [score_row(name, by_set, correct) for name, by_set in scores.items()]
    metrics = source.read_metrics()
    record = {
        "benchmark": "abstain",
        "model": CONFIG,
        "command": command_line(),
        "seed": SEED,
        "held_out": list(HELD_OUT),
        "known_test_accuracy": round(float(correct["test"].mean()), 4),
        "run_test_accuracy": metrics["test_accuracy"],
        "embedding": f"{BACKBONE} at {SIDE} px, {NEIGHBOURS}th nearest training image",
        "wall_seconds": round(time.perf_counter() - start, 1),
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()},
        "rows": rows,
    }
    path = write_result("abstain", record)
    for r in rows:
        print(f"{r['score']}: AUROC {r['auroc']:.3f}, risk at 90% coverage {r['risk_at_90_coverage']:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    make_or_run(__doc__, make, run)
