"""Acting on an audit: the resnet20 recipe on 10,000 CIFAR-10 training images with 8% of their labels flipped, with
and without `--exclude` of the audit's flags, and on the true labels; tested on the whole CIFAR-10 test set.

    uv run python benchmarks/audit_labels.py make benchmarks/data/audit-labels --data-dir ../shared/data
    uv run python benchmarks/audit_exclude.py make benchmarks/data/audit-labels --data-dir ../shared/data
    uv run python benchmarks/audit_exclude.py run benchmarks/data/audit-labels [-- TRAIN FLAGS]

``make`` adds the 10,000 test images (test/NNNNN.png) and two label files with a split column beside labels.csv:
noisy.csv (the training images with their flipped labels) and clean.csv (with their true labels). ``run`` audits
labels.csv (the training images only, as a user audits their data) and trains `--config resnet20` (seed 0) three
times: on noisy.csv, on noisy.csv with `--exclude audit.csv` (every suspect left out, as the audit writes it), and on
clean.csv. Validation is carved from the training images as train does, so it is as noisy as they are.
Writes benchmarks/results/audit_exclude.json.
"""

import csv
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cold_audit, command_line, make_or_run, read_csv, write_result

CONFIG, SEED = "resnet20", 0
RUNS = {"noisy": ("noisy.csv", False), "excluded": ("noisy.csv", True), "clean": ("clean.csv", False)}


def make(folder: Path, data_dir: str | None) -> None:
    """Write the test images and noisy.csv, clean.csv into ``folder`` (audit_labels.py's)."""
    from imgclf.data.cifar import load_cifar10

    data = load_cifar10("test", data_dir)
    (folder / "test").mkdir(exist_ok=True)
    test = []
    for i in range(len(data)):
        name = f"test/{i:05d}.png"
        Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(folder / name)
        test.append((name, data.classes[int(data.labels[i])], "test"))
    given = read_csv(folder / "labels.csv")
    true = {r["file"]: r["true"] for r in read_csv(folder / "truth.csv")}
    for name, label_of in (
        ("noisy.csv", lambda r: r["label"]),
        ("clean.csv", lambda r: true.get(r["file"], r["label"])),
    ):
        with open(folder / name, "w", newline="") as f:
            rows = [(r["file"], label_of(r), "train") for r in given]
            csv.writer(f).writerows([("file", "label", "split"), *rows, *test])
    print(f"wrote {len(test):,} test images, noisy.csv and clean.csv to {folder}")


def train(folder: Path, label_file: str, exclude: Path | None, name: str, extra: list[str]) -> dict:
    """Train and evaluate one run (a cold start); its row."""
    from imgclf.artifacts.runs import RunDir

    out = REPO / "benchmarks" / "runs"
    shutil.rmtree(out / name, ignore_errors=True)
    command = ["imgclf", "train", "--data", str(folder / label_file), "--config", CONFIG, "--seed", str(SEED)]
    command += ["--output", str(out.relative_to(REPO)), "--name", name, "--no-progress", *extra]
    command += ["--exclude", str(exclude)] if exclude else []
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    wall = time.perf_counter() - start
    run = RunDir(out / name)
    metrics, data = run.read_metrics(), json.loads((out / name / "data.json").read_text())
    row = {
        "command": "uv run " + shlex.join(command),
        "wall_seconds": round(wall, 1),
        "test_accuracy": metrics["test_accuracy"],
        "train_images": data["train"],
        "val_images": data["val"],
        "excluded": data.get("excluded", 0),
    }
    print(f"{name}: test {row['test_accuracy']:.4f} in {wall / 60:.1f} min", flush=True)
    return row


def run(folder: Path, extra: list[str]) -> None:
    """Audit the training images, then the three runs; write the result."""
    truth = {r["file"] for r in read_csv(folder / "truth.csv")}
    start = time.perf_counter()
    with cold_audit(folder / "labels.csv", []) as (out, _, audit_command, audit_wall):
        flags = REPO / "benchmarks" / "runs" / "audit_exclude_flags.csv"
        flags.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "audit.csv", flags)
    listed = {r["file"] for r in read_csv(flags)}
    rows = {}
    for kind, (label_file, exclude) in RUNS.items():
        rows[kind] = train(folder, label_file, flags if exclude else None, f"audit_exclude_{kind}", extra)
    noisy, excluded, clean = (rows[k]["test_accuracy"] for k in RUNS)
    record = {
        "benchmark": "audit_exclude",
        "model": CONFIG,
        "command": command_line(),
        "audit_command": "uv run " + shlex.join(audit_command),
        "seed": SEED,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "audit_wall_seconds": round(audit_wall, 1),
        "excluded_files": len(listed),
        "excluded_flipped": len(listed & truth),
        "flipped": len(truth),
        "test_accuracy_noisy": noisy,
        "test_accuracy_excluded": excluded,
        "test_accuracy_clean": clean,
        "recovered_fraction": round((excluded - noisy) / (clean - noisy), 4) if clean != noisy else None,
        "runs": rows,
    }
    path = write_result("audit_exclude", record)
    print(f"noisy {noisy:.4f}, excluded {excluded:.4f}, clean {clean:.4f}; wrote {path}")


if __name__ == "__main__":
    make_or_run(__doc__, make, run)
