"""Abstaining on what a model never saw: trained on 8 CIFAR-10 classes, tested on their test images and on the test
images of the 2 classes held out. Which confidence score tells them apart best, and how much does that depend on
which two classes are held out?

    uv run python benchmarks/abstain.py make benchmarks/data/cifar10-open --data-dir ../shared/data
    uv run python benchmarks/abstain.py run benchmarks/data/cifar10-open [--splits 5] [-- TRAIN FLAGS]

``make`` writes the 60,000 CIFAR-10 images as PNGs and cifar10.csv (file, label, official split). ``run`` holds out
the hardest pair first — ship and truck, whose nearest known classes are airplane and automobile — then pairs drawn
at random (seeded) from the other 44. For each pair it writes known_A-B.csv (the 8 known classes, both splits) and
unknown_A-B.csv (the 2,000 test images of the pair), trains `--config speed94 --label-smoothing 0` (seed 0; label
smoothing squeezes the logits a score reads: the pair ship/truck gave AUROC 0.72 with the recipe's 0.2, 0.79 without,
benchmarks/results/README.md) on the known classes, and scores every known test image and every unknown one three
ways from the logits predict computes (one view): the maximum softmax probability (calibrated by the run's
temperature), the maximum logit, and the energy (logsumexp of the logits). For each: the AUROC of known against
unknown images, and the risk (error rate among the answered; an unknown image answered is an error) at 90% coverage
and at full coverage; and the threshold fitted on the validation split for a 5% risk, with the coverage and risk it
gives on the test images. Then the mean ± spread of each over the pairs. Writes benchmarks/results/abstain.json.
"""

import csv
import itertools
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, command_line, make_run_parser, parse_with_passthrough, read_csv, write_result

HARDEST = ("ship", "truck")
CONFIG, SEED, TARGET_RISK, SPLITS = "speed94", 0, 0.05, 5
RECIPE_FLAGS = ["--label-smoothing", "0"]


def make(folder: Path, data_dir: str | None) -> None:
    """Write every CIFAR-10 image as a PNG and cifar10.csv listing them into ``folder``."""
    from imgclf.data.cifar import load_cifar10

    rows = []
    for split in ("train", "test"):
        data = load_cifar10(split, data_dir)
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(len(data)):
            name = f"{split}/{i:05d}.png"
            Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(folder / name)
            rows.append((name, data.classes[int(data.labels[i])], split))
    write_csv(folder / "cifar10.csv", rows)
    print(f"wrote {len(rows):,} images to {folder}")


def write_csv(path: Path, rows: list[tuple]) -> None:
    """A label file: a header, then (file, label, split) rows."""
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("file", "label", "split"), *rows])


def held_out_pairs(classes: list[str], count: int) -> list[tuple[str, str]]:
    """The hardest pair, then ``count`` − 1 other pairs drawn at random (generator seeded 0)."""
    others = [p for p in itertools.combinations(sorted(classes), 2) if set(p) != set(HARDEST)]
    order = np.random.default_rng(0).permutation(len(others))  # a longer run adds pairs after the same ones
    return [HARDEST, *(others[i] for i in order[: count - 1])]


def split_files(folder: Path, pair: tuple[str, str]) -> tuple[Path, list[str]]:
    """Write known_A-B.csv (the other classes, both splits): its path, and the pair's test files."""
    rows = [(r["file"], r["label"], r["split"]) for r in read_csv(folder / "cifar10.csv")]
    known = folder / f"known_{'-'.join(pair)}.csv"
    write_csv(known, [r for r in rows if r[1] not in pair])
    return known, [r[0] for r in rows if r[1] in pair and r[2] == "test"]


def train(known: Path, pair: tuple[str, str], extra: list[str]) -> tuple[Path, dict]:
    """Train the recipe on the known classes (a cold start): the run directory, command and seconds."""
    name = f"abstain_{CONFIG}_{'-'.join(pair)}_seed{SEED}"
    out = REPO / "benchmarks" / "runs"
    shutil.rmtree(out / name, ignore_errors=True)
    command = ["imgclf", "train", "--data", str(known), "--config", CONFIG, "--seed", str(SEED), *RECIPE_FLAGS]
    command += ["--output", str(out.relative_to(REPO)), "--name", name, "--no-progress", *extra]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    return out / name, {"train_command": "uv run " + shlex.join(command), "train_seconds": time.perf_counter() - start}


def image_set(folder: Path, files: list[str], side: int):
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
    """Per set: the run's top-1 classes, and its scores (maximum calibrated probability, maximum logit, energy)."""
    from imgclf.inference.load import load_predictor
    from imgclf.inference.predictor import abstain_score

    predictor = load_predictor(run, "cpu", runtime="torch")
    top, scores = {}, {"max_probability": {}, "max_logit": {}, "energy": {}}
    for name, images in sets.items():
        logits = predictor.dataset_logits(images)
        top[name] = logits.argmax(1)
        scores["max_probability"][name] = abstain_score(logits, "probability", predictor.temperature)
        scores["max_logit"][name] = logits.max(1)
        scores["energy"][name] = abstain_score(logits, "energy", predictor.temperature)
    return top, scores


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
        "threshold": float(threshold) if np.isfinite(threshold) else None,  # None: even the surest images err more
        "test_coverage": round(test["coverage"], 4),
        "test_risk": round(test["risk"], 4),
        "unknown_rejected": round(float(np.mean(unknown < threshold)), 4),
        "known_answered": round(float(np.mean(known >= threshold)), 4),
    }


def run_pair(folder: Path, pair: tuple[str, str], extra: list[str]) -> dict:
    """Train on the classes outside ``pair``, score, and return the pair's record."""
    from imgclf.artifacts.runs import RunDir, run_splits

    known, unknown = split_files(folder, pair)
    run_dir, row = train(known, pair, extra)
    source = RunDir(run_dir)
    splits = run_splits(source.read_config(), source.read_split(), source.read_card())
    sets = {"val": splits.val, "test": splits.test(), "unknown": image_set(folder, unknown, splits.side)}
    labels = {"val": splits.val.labels.numpy(), "test": sets["test"].labels.numpy()}
    top, scores = model_scores(run_dir, sets)
    correct = {k: top[k] == labels[k] for k in labels}
    rows = [score_row(name, by_set, correct) for name, by_set in scores.items()]
    for r in rows:
        print(f"{'/'.join(pair)} {r['score']}: AUROC {r['auroc']:.3f}, risk at 90% coverage {r['risk_at_90_coverage']}")
    return {
        "held_out": list(pair),
        "known_test_accuracy": round(float(correct["test"].mean()), 4),
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()},
        "rows": rows,
    }


def summary(pairs: list[dict]) -> list[dict]:
    """Per score: the mean and spread (sample standard deviation) over the pairs of AUROC, risks and AURC."""
    out = []
    for i, score in enumerate(r["score"] for r in pairs[0]["rows"]):
        row = {"score": score}
        for key in ("auroc", "risk_at_90_coverage", "full_coverage_risk", "aurc", "test_coverage", "test_risk"):
            values = np.array([p["rows"][i][key] for p in pairs])
            row[key] = round(float(values.mean()), 4)
            row[f"{key}_std"] = round(float(values.std(ddof=1)), 4) if len(values) > 1 else 0.0
        out.append(row)
    return out


def run(folder: Path, count: int, extra: list[str]) -> None:
    """Every pair in turn, then the summary; the result is rewritten after each pair."""
    classes = sorted({r["label"] for r in read_csv(folder / "cifar10.csv")})
    start, pairs = time.perf_counter(), []
    for pair in held_out_pairs(classes, count):
        pairs.append(run_pair(folder, pair, extra))
        record = {
            "benchmark": "abstain",
            "model": CONFIG,
            "command": command_line(),
            "seed": SEED,
            "recipe_flags": RECIPE_FLAGS,
            "held_out": [p["held_out"] for p in pairs],
            "wall_seconds": round(time.perf_counter() - start, 1),
            "rows": summary(pairs),  # mean and spread over the pairs
            "pairs": pairs,
        }
        path = write_result("abstain", record)
    for r in record["rows"]:
        print(f"mean over {len(pairs)} pairs, {r['score']}: AUROC {r['auroc']:.3f} ± {r['auroc_std']:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = make_run_parser(__doc__)
    parser.add_argument("--splits", type=int, default=SPLITS, help="held-out pairs: the hardest, then random ones")
    args, flags = parse_with_passthrough(parser)
    make(args.folder, args.data_dir) if args.action == "make" else run(args.folder, args.splits, flags)
