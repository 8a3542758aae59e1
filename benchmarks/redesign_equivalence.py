"""Behaviour preserved across the redesign (issue 27): the quick study and a short folder study give the same
numbers before and after.

    uv run python benchmarks/redesign_equivalence.py record before --checkout /path/to/29b1695-checkout
    uv run python benchmarks/redesign_equivalence.py record after            # this checkout
    uv run python benchmarks/redesign_equivalence.py compare

``record`` runs ``imgclf study --quick`` on CIFAR-10 and on a small folder of images written from CIFAR-10 (3 classes,
varied sides, JPEG and PNG, two unreadable files), each with fresh caches, 2 pinned CPU threads and PyTorch's own
BatchNorm/ReLU layers, and keeps every run's metrics and per-epoch history without the keys that describe the machine
(timings, thread counts, device name). ``compare`` writes ``redesign_equivalence.json``: identical or not, and where.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, command_line, write_result
from PIL import Image

from imgclf.artifacts.runs import RunDir

# keys that say how long something took or on what machine, not what was computed
MACHINE = {"epoch_seconds", "cpu_threads", "wall_seconds", "inference_images_per_second", "device", "figures", "engine"}
MACHINE |= {"train_seconds", "seconds", "date", "commit", "torch", "cpu", "threads", "images_per_second"}
# keys of the files' layout, not of what was computed: the weights file's size includes its model card (metadata),
# which the redesign gave explicit inference fields and an engine record
LAYOUT = {"model_bytes"}
FOLDER_CLASSES = (0, 1, 3)  # airplane, automobile, cat
FOLDER_IMAGES = 120  # per class


def write_folder(root: Path, data_dir: str | None) -> Path:
    """A messy little folder dataset from CIFAR-10's training images, the same bytes every time."""
    from imgclf.data.cifar import load_cifar10

    data, rng = load_cifar10("train", data_dir), np.random.default_rng(0)
    labels = data.labels.numpy()
    for label in FOLDER_CLASSES:
        folder = root / data.classes[label]
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(labels == label)[:FOLDER_IMAGES]):
            image = Image.fromarray(data.images[index].permute(1, 2, 0).numpy())
            image = image.resize(tuple(int(s) for s in rng.integers(28, 72, 2)), Image.BICUBIC)
            image.save(folder / f"{index:05d}.{'jpg' if i % 2 else 'png'}", quality=90)
    (root / data.classes[FOLDER_CLASSES[0]] / "empty.jpg").write_bytes(b"")
    (root / data.classes[FOLDER_CLASSES[1]] / "notes.png").write_text("not an image")
    return root


def strip(value: object) -> object:
    """``value`` without the keys in :data:`MACHINE`, at every depth."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in MACHINE}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def run_study(imgclf: list[str], output: Path, work: Path, extra: list[str]) -> dict:
    """``imgclf study --quick`` into ``output``; every run's metrics and history, machine keys left out."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "IMGCLF_FUSED_BATCHNORM": "0"}  # 29b1695 fused them by default
    caches = ["--set", f"cache_dir={work / 'activations'}", "--set", f"prepare_dir={work / 'prepared'}"]
    command = [*imgclf, "study", "--quick", "--no-progress", "--output", str(output), *caches, *extra]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    runs = {}
    for name, row in json.loads((output / "study.json").read_text())["runs"].items():
        history = RunDir(output / name).read_history()
        runs[name] = {
            "metrics": strip(RunDir(output / name).read_metrics()),
            "history": strip(history),
        }
        runs[name]["test_accuracy"] = row["test_accuracy"]
    return {"wall_seconds": time.perf_counter() - start, "runs": runs}


def record(args: argparse.Namespace) -> None:
    """Run both studies with the checkout's imgclf and keep their numbers under ``args.label``."""
    imgclf = [str(Path(args.checkout).resolve() / ".venv" / "bin" / "imgclf")] if args.checkout else ["imgclf"]
    studies = {}
    with tempfile.TemporaryDirectory(prefix="equivalence-") as tmp:
        work = Path(tmp)
        studies["cifar10"] = run_study(imgclf, work / "cifar10", work / "cifar10-caches", [])
        folder = write_folder(work / "folder-data" / "little3", args.data_dir)
        studies["folder"] = run_study(imgclf, work / "folder", work / "folder-caches", ["--data", str(folder)])
    commit = subprocess.run(["git", "-C", args.checkout or ".", "rev-parse", "--short", "HEAD"], capture_output=True)
    path = RESULTS / f"redesign_equivalence_{args.label}.json"
    payload = {"label": args.label, "checkout_commit": commit.stdout.decode().strip(), "command": command_line()}
    path.write_text(json.dumps({**payload, "studies": studies}, indent=1) + "\n")
    print(f"wrote {path}")


def differences(a: object, b: object, where: str = "") -> list[str]:
    """Where ``a`` and ``b`` differ, as paths with both values (the machine and layout keys left out)."""
    if isinstance(a, dict) and isinstance(b, dict):
        a, b = ({k: v for k, v in x.items() if k not in MACHINE | LAYOUT} for x in (a, b))
        out = [f"{where}/{k}: only in {'before' if k in a else 'after'}" for k in sorted(a.keys() ^ b.keys())]
        return out + [d for k in sorted(a.keys() & b.keys()) for d in differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def compare(_: argparse.Namespace) -> None:
    """Write redesign_equivalence.json from the two records."""
    before, after = (json.loads((RESULTS / f"redesign_equivalence_{x}.json").read_text()) for x in ("before", "after"))
    diffs = differences(before["studies"], after["studies"])
    accuracies = {
        study: {
            run: [before["studies"][study]["runs"][run]["test_accuracy"], row["test_accuracy"]]
            for run, row in s["runs"].items()
        }
        for study, s in after["studies"].items()
    }
    record = {
        "benchmark": "redesign_equivalence",
        "model": "study --quick (cifar10, folder)",
        "command": command_line(),
    }
    record.update(seed=0, wall_seconds=sum(s["wall_seconds"] for s in after["studies"].values()))
    record.update(identical=not diffs, differences=diffs[:50], test_accuracy_before_after=accuracies)
    record.update(before_commit=before["checkout_commit"], after_commit=after["checkout_commit"])
    record.update(compared="every run's metrics.json and history.jsonl", left_out=sorted(MACHINE | LAYOUT))
    print(json.dumps({"identical": not diffs, "differences": len(diffs), "test_accuracy": accuracies}, indent=1))
    write_result("redesign_equivalence", record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    rec = sub.add_parser("record", help="run both studies and keep their numbers")
    rec.add_argument("label", choices=["before", "after"])
    rec.add_argument("--checkout", help="another checkout whose .venv/bin/imgclf to run (default: this one's)")
    rec.add_argument("--data-dir", default=os.environ.get("IMGCLF_DATA_DIR"), help="folder holding cifar-10-batches-py")
    sub.add_parser("compare", help="write redesign_equivalence.json")
    args = parser.parse_args()
    {"record": record, "compare": compare}[args.verb](args)


if __name__ == "__main__":
    sys.exit(main())
