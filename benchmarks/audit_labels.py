"""Label errors found by `imgclf audit`: 10,000 CIFAR-10 training images with 8% of their labels flipped.

    uv run python benchmarks/audit_labels.py make benchmarks/data/audit-labels --data-dir ../shared/data
    uv run python benchmarks/audit_labels.py run benchmarks/data/audit-labels [-- AUDIT FLAGS]

``make`` writes the first 10,000 training images as PNGs, a label file (file,label) in which a seeded 8% of the
labels are changed to another class drawn uniformly, and truth.csv naming the changed files. ``run`` times the audit
from a cold start (empty preparation and embedding caches) and scores its flags: precision, recall and F1 of the
images flagged as label issues, and the AUROC of its per-image label-quality ranking. Beside it, from the same
embeddings and classifier, the baseline users have today: a model fitted on all images, its in-sample loss as the
ranking and its disagreements with the given labels as the flags (fastai's top losses).
Writes benchmarks/results/audit_labels.json (``--tag T``: audit_labels_T.json).
"""

import csv
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cold_audit, command_line, make_run_parser, parse_with_passthrough, read_csv, write_result

IMAGES, NOISE, SEED = 10_000, 0.08, 0


def make(folder: Path, data_dir: str | None) -> None:
    """Write the images, labels.csv (with flips) and truth.csv into ``folder``."""
    from imgclf.data.cifar import load_cifar10

    data = load_cifar10("train", data_dir)
    rng = np.random.default_rng(SEED)
    y = data.labels.numpy()[:IMAGES].copy()
    flipped = np.sort(rng.choice(IMAGES, int(NOISE * IMAGES), replace=False))
    given = y.copy()
    given[flipped] = (y[flipped] + rng.integers(1, 10, len(flipped))) % 10  # another class, uniformly
    (folder / "images").mkdir(parents=True, exist_ok=True)
    names = [f"images/{i:05d}.png" for i in range(IMAGES)]
    for i, name in enumerate(names):
        Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(folder / name)
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "label"), *((n, data.classes[c]) for n, c in zip(names, given, strict=True))])
    with open(folder / "truth.csv", "w", newline="") as f:
        rows = ((names[i], data.classes[y[i]], data.classes[given[i]]) for i in flipped)
        csv.writer(f).writerows([("file", "true", "given"), *rows])
    print(f"wrote {IMAGES:,} images, {len(flipped)} of them relabelled, to {folder}")


def scores(truth: np.ndarray, flagged: np.ndarray, suspicion: np.ndarray) -> dict:
    """Precision, recall and F1 of ``flagged`` and the AUROC of ``suspicion`` against ``truth`` (all (N,) arrays)."""
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    p, r, f, _ = precision_recall_fscore_support(truth, flagged, average="binary", zero_division=0)
    auroc = roc_auc_score(truth, suspicion)
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "auroc": round(auroc, 4)}


def in_sample_baseline(folder: Path, cache: Path, side: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(flagged, loss, files) of the in-sample baseline: the audit's classifier fitted on every image."""
    from imgclf.analysis.embed import Embedder
    from imgclf.analysis.labels import DEFAULT_C, classifier
    from imgclf.audit import default_backbone, preparation_side
    from imgclf.data.inventory import inventory
    from imgclf.data.labelfile import DEFAULT_FORMAT

    source = str(folder / "labels.csv")
    stored = preparation_side(source, DEFAULT_FORMAT, side)  # as the audit stored them: its embeddings are reused
    inv = inventory(source, side=stored, prepare_dir=str(cache / "prep"), progress=False)
    emb = Embedder(default_backbone(), side, cache_dir=str(cache / "emb"), progress=False).embed(inv.images)
    y = inv.images.labels.numpy()
    probs = classifier(False, DEFAULT_C).fit(emb, y).predict_proba(emb)
    loss = -np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12))
    return probs.argmax(1) != y, loss, inv.names


def run(folder: Path, extra: list[str], tag: str = "") -> None:
    """Time the audit from empty caches, then score it and the baseline."""
    truth_files = {row["file"] for row in read_csv(folder / "truth.csv")}
    with cold_audit(folder / "labels.csv", extra) as (out, cache, command, wall):
        every = read_csv(out / "scores.csv")
        flagged = {r["file"] for r in read_csv(out / "audit.csv") if r["issue"] == "label"}
        summary = json.loads((out / "audit.json").read_text())
        files = [r["file"] for r in every]
        truth = np.array([f in truth_files for f in files])
        tool = scores(
            truth, np.array([f in flagged for f in files]), -np.array([float(r["label_quality"]) for r in every])
        )
        side = summary["embedding"]["side"]
        base_flags, base_loss, base_files = in_sample_baseline(folder, cache, side)
        base_truth = np.array([f in truth_files for f in base_files])
        baseline = scores(base_truth, base_flags, base_loss)
    record = {
        "benchmark": "audit_labels",
        "model": summary["embedding"]["backbone"],
        "command": command_line(),
        "audit_command": "uv run " + shlex.join(command),
        "seed": SEED,
        "images": len(files),
        "noise": NOISE,
        "wall_seconds": round(wall, 1),
        **tool,
        "flagged": len(flagged),
        "out_of_fold_accuracy": summary["out_of_fold_accuracy"],
        "baseline_f1": baseline["f1"],
        "baseline_auroc": baseline["auroc"],
        "baseline": baseline,
        "embedding": summary["embedding"],
    }
    path = write_result(f"audit_labels{'_' + tag if tag else ''}", record)
    print(f"F1 {tool['f1']:.3f} AUROC {tool['auroc']:.4f} (baseline {baseline['f1']:.3f} / {baseline['auroc']:.4f})")
    print(f"in {wall / 60:.1f} min; wrote {path}")


def main() -> None:
    parser = make_run_parser(__doc__)
    parser.add_argument("--tag", default="", help="results file audit_labels_TAG.json (e.g. another --side)")
    args, extra = parse_with_passthrough(parser)
    if args.action == "make":
        return make(args.folder, args.data_dir)
    run(args.folder, extra, args.tag)


if __name__ == "__main__":
    main()
