"""Leaks found by `imgclf audit`: 100 altered copies of CIFAR-10 training images planted in its 10,000-image test
split, among all 60,000 images.

    uv run python benchmarks/audit_leaks.py make benchmarks/data/audit-leaks --data-dir ../shared/data
    uv run python benchmarks/audit_leaks.py run benchmarks/data/audit-leaks [-- AUDIT FLAGS]

``make`` writes the 60,000 images as PNGs, 100 copies of seeded random training images altered by a random mix of
the edits copies meet (each copy gets a random non-empty subset of: resized by ±25%, JPEG quality 50–70, shifted
1–2 px, brightness ±15%, mirrored — written here, apart from the audit's own calibration code), a label file with
a split column, and truth.csv (copy, original). ``run`` times the audit from empty caches and measures its peak
memory (the audit process's maximum resident set), then scores the leak rows: recall of the planted pairs, and the
cross-split pairs that are not planted, per 10,000 test images. CIFAR-10 has real near-duplicates across its
splits (Barz & Denzler 2020), so every unplanted pair is also drawn (audit_leaks_unplanted.png) for a reader to
judge, and ``--cifair FILE`` (cvjena/cifair's meta/duplicates_cifar10.csv: test images with a near-duplicate in
training, judged by hand) counts how many of them that list holds. Writes benchmarks/results/audit_leaks.json;
``cifair FOLDER --cifair FILE`` adds the count to that file without auditing again.

    uv run python benchmarks/audit_leaks.py cifair benchmarks/data/audit-leaks --cifair FILE
"""

import csv
import io
import json
import resource
import shlex
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, cold_audit, command_line, make_or_run, read_csv, write_result

PLANTED, SEED = 100, 0
EDITS = ("resize", "jpeg", "shift", "brightness", "mirror")


def altered(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, list[str]]:
    """``image`` after a random non-empty subset of :data:`EDITS`, and the edits applied."""
    chosen = [e for e in EDITS if rng.random() < 0.5] or [EDITS[rng.integers(len(EDITS))]]
    w, h = image.size
    if "resize" in chosen:
        s = rng.uniform(0.75, 1.25)
        image = image.resize((round(w * s), round(h * s)), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    if "brightness" in chosen:
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
    if "shift" in chosen:
        dx, dy = (int(rng.integers(1, 3) * rng.choice([-1, 1])) for _ in range(2))
        image = image.transform(image.size, Image.AFFINE, (1, 0, dx, 0, 1, dy), fillcolor=(128, 128, 128))
    if "mirror" in chosen:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if "jpeg" in chosen:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(50, 71)))
        image = Image.open(buffer).convert("RGB")
    return image, chosen


def make(folder: Path, data_dir: str | None) -> None:
    """Write the images, the planted copies, labels.csv and truth.csv into ``folder``."""
    from imgclf.data.cifar import load_cifar10

    rows, truth = [], []
    rng = np.random.default_rng(SEED)
    for split in ("train", "test"):
        data = load_cifar10(split, data_dir)
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(len(data)):
            name = f"{split}/{i:05d}.png"
            Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(folder / name)
            rows.append((name, data.classes[int(data.labels[i])], split))
        if split == "train":
            originals = rng.choice(len(data), PLANTED, replace=False)
            (folder / "planted").mkdir(exist_ok=True)
            for k, i in enumerate(originals):
                image, chosen = altered(Image.fromarray(data.images[int(i)].permute(1, 2, 0).numpy()), rng)
                name = f"planted/{k:03d}.png"
                image.save(folder / name)
                rows.append((name, data.classes[int(data.labels[i])], "test"))
                truth.append((name, f"train/{int(i):05d}.png", "+".join(chosen)))
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "label", "split"), *rows])
    with open(folder / "truth.csv", "w", newline="") as f:
        csv.writer(f).writerows([("copy", "original", "edits"), *truth])
    print(f"wrote {len(rows):,} images ({PLANTED} planted copies in test) to {folder}")


def draw_pairs(folder: Path, pairs: list[tuple[str, str]], path: Path, limit: int = 60) -> None:
    """The first ``limit`` pairs side by side, two images a row group, as one PNG."""
    if not pairs:
        return
    shown = pairs[:limit]
    columns = 6  # three pairs a row
    rows = (len(shown) * 2 + columns - 1) // columns
    sheet = Image.new("RGB", (columns * 68, rows * 68), "white")
    for k, (a, b) in enumerate(shown):
        for j, name in enumerate((a, b)):
            cell = 2 * k + j
            image = Image.open(folder / name).convert("RGB").resize((64, 64), Image.NEAREST)
            sheet.paste(image, ((cell % columns) * 68 + (2 if j == 0 else 0), (cell // columns) * 68 + 2))
    sheet.save(path)


def cifair_counts(unplanted: list[list[str]], listed: Path) -> dict:
    """How many of the ``unplanted`` (test or planted file, train file) pairs ciFAIR's hand-judged list of CIFAR-10
    test images with training near-duplicates holds: the same pair, or the same test image (with another partner:
    the list names one training image per test image)."""
    rows = read_csv(listed)
    pairs, tests = {(int(r["TestID"]), int(r["TrainID"])) for r in rows}, {int(r["TestID"]) for r in rows}
    real = [(int(Path(a).stem), int(Path(b).stem)) for a, b in unplanted if a.startswith("test/")]
    return {
        "cifair_list": "cvjena/cifair meta/duplicates_cifar10.csv (Barz & Denzler 2020)",
        "cifair_listed_pairs": len(rows),
        "unplanted_test_train_pairs": len(real),
        "unplanted_in_cifair_same_pair": sum(p in pairs for p in real),
        "unplanted_in_cifair_same_test_image": sum(t in tests for t, _ in real),
    }


def run(folder: Path, extra: list[str], cifair: Path | None = None) -> None:
    """Time the audit from empty caches, then score its leak rows."""
    truth = {(r["copy"], r["original"]) for r in read_csv(folder / "truth.csv")}
    with cold_audit(folder / "labels.csv", extra) as (out, _, command, wall):
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
        summary = json.loads((out / "audit.json").read_text())
        rows = [r for r in read_csv(out / "audit.csv") if r["issue"] == "leak"]
        leaks = {(r["file"], r["other"].removeprefix("exact copy of ")) for r in rows}
        leaks = {p for p in leaks if p[0].startswith(("test/", "planted/"))}  # each pair once: its test side first
    found = truth & leaks
    unplanted = sorted(leaks - truth)
    test_images = 10_000 + len(truth)
    draw_pairs(folder, unplanted, RESULTS / "audit_leaks_unplanted.png")
    draw_pairs(folder, sorted(truth - leaks), RESULTS / "audit_leaks_missed.png")
    record = {
        "benchmark": "audit_leaks",
        "model": summary["embedding"]["backbone"],
        "command": command_line(),
        "audit_command": "uv run " + shlex.join(command),
        "seed": SEED,
        "images": summary["images"],
        "planted": len(truth),
        "wall_seconds": round(wall, 1),
        "recall": round(len(found) / len(truth), 4),
        "false_pairs_per_10k": round(len(unplanted) / test_images * 10_000, 2),
        "unplanted_pairs": [list(p) for p in unplanted],
        "missed": [list(p) for p in sorted(truth - leaks)],
        "peak_rss_bytes": peak,
        "calibration": summary["calibration"],
        "embedding": summary["embedding"],
        **(cifair_counts([list(p) for p in unplanted], cifair) if cifair else {}),
    }
    path = write_result("audit_leaks", record)
    print(f"recall {record['recall']:.3f}, {len(unplanted)} unplanted pairs, {wall / 60:.1f} min; wrote {path}")


def add_cifair(_folder: Path, cifair: Path) -> None:
    """Add ciFAIR's counts to the last result, without auditing again."""
    path = RESULTS / "audit_leaks.json"
    record = json.loads(path.read_text())
    record |= cifair_counts(record["unplanted_pairs"], cifair)
    record["cifair_command"] = command_line()
    path.write_text(json.dumps(record, indent=2) + "\n")
    print({k: v for k, v in record.items() if k.startswith(("cifair", "unplanted_in", "unplanted_test"))})


if __name__ == "__main__":
    option = ("--cifair", "cvjena/cifair's meta/duplicates_cifar10.csv")
    make_or_run(__doc__, make, run, option, more={"cifair": add_cifair}, needs_file=("cifair",))
