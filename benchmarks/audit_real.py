"""Real label errors: `imgclf audit` on the CIFAR-10 test set as published, its top 50 suspects drawn, and compared
with the errors people confirmed (Northcutt et al. 2021, labelerrors.com).

    uv run python benchmarks/audit_real.py make benchmarks/data/cifar10-test --data-dir ../shared/data
    uv run python benchmarks/audit_real.py run benchmarks/data/cifar10-test [--published FILE] [-- AUDIT FLAGS]

``make`` writes the 10,000 test images as PNGs (images/NNNNN.png, NNNNN: the index in the official test batch) and
labels.csv. ``run`` times the audit from empty caches, draws its 50 most suspect label rows (given → suggested) into
benchmarks/results/audit_real_top50.png and, given ``--published`` (cleanlab/label-errors' mturk/cifar10_mturk.json:
the 275 test images its authors sent to five Mechanical Turk workers each), counts how many of the tool's flags are
among the 54 images fewer than three workers saw as their given label (the paper's confirmed errors) and among
the 275 candidates (marked ERR and cand in the picture). Writes benchmarks/results/audit_real.json; ``draw``
draws the picture again from it.
"""

import csv
import json
import shlex
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, cold_audit, command_line, make_or_run, read_csv, write_result

TOP, COLUMNS, CELL = 50, 10, 128


def make(folder: Path, data_dir: str | None) -> None:
    """Write the test images and labels.csv into ``folder``."""
    from imgclf.data.cifar import load_cifar10

    data = load_cifar10("test", data_dir)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(len(data)):
        name = f"images/{i:05d}.png"
        Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(folder / name)
        rows.append((name, data.classes[int(data.labels[i])]))
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "label"), *rows])
    print(f"wrote {len(rows):,} test images to {folder}")


def draw(folder: Path, rows: list[dict], path: Path, marks: dict[int, str] | None = None) -> None:
    """The ``rows`` (audit.csv label rows) as a grid of enlarged images captioned 'rank. index' and
    'given->suggested', with ``marks`` (by test index) after the index: the published verdict."""
    lines = (len(rows) + COLUMNS - 1) // COLUMNS
    sheet = Image.new("RGB", (COLUMNS * CELL, lines * (CELL + 26)), "white")
    pen = ImageDraw.Draw(sheet)
    for k, row in enumerate(rows):
        x, y = (k % COLUMNS) * CELL, (k // COLUMNS) * (CELL + 26)
        sheet.paste(
            Image.open(folder / row["file"]).convert("RGB").resize((CELL - 4, CELL - 4), Image.NEAREST), (x + 2, y)
        )
        index = int(Path(row["file"]).stem)
        mark = (marks or {}).get(index, "")
        pen.text((x + 2, y + CELL - 2), f"{k + 1}. {index} {mark}", fill="black")
        pen.text((x + 2, y + CELL + 10), f"{row['given'][:6]}->{row['suggested'][:6]}", fill="firebrick")
    sheet.save(path)


def verdicts(published: Path) -> dict[int, str]:
    """Test index → 'confirmed' (fewer than 3 of 5 workers chose the given label) or 'candidate' (sent to the
    workers, not confirmed), from cleanlab/label-errors' mturk/cifar10_mturk.json."""
    votes = {item["id"]: item["mturk"] for item in json.loads(published.read_text())}
    return {i: "confirmed" if v["given"] < 3 else "candidate" for i, v in votes.items()}


def published_counts(label: list[dict], verdict: dict[int, str]) -> dict:
    """How many of the flagged ``label`` rows (and of their top 50) the published list confirmed or held."""
    index = [int(Path(r["file"]).stem) for r in label]
    confirmed = {i for i, v in verdict.items() if v == "confirmed"}
    return {
        "published": "cleanlab/label-errors mturk/cifar10_mturk.json (Northcutt et al. 2021)",
        "published_candidates": len(verdict),
        "published_confirmed": len(confirmed),
        "top50_confirmed": len(set(index[:TOP]) & confirmed),
        "top50_candidates": len(set(index[:TOP]) & set(verdict)),
        "flagged_confirmed": len(set(index) & confirmed),
        "confirmed_recall": round(len(set(index) & confirmed) / len(confirmed), 4),
    }


def draw_top(folder: Path, top: list[dict], verdict: dict[int, str]) -> None:
    """The top suspects into audit_real_top50.png, each marked ERR (confirmed) or cand (a published candidate)."""
    marks = {i: "ERR" if v == "confirmed" else "cand" for i, v in verdict.items()}
    draw(folder, top, RESULTS / "audit_real_top50.png", marks)


def run(folder: Path, extra: list[str], published: Path | None) -> None:
    """Time the audit from empty caches; draw and score its label rows."""
    with cold_audit(folder / "labels.csv", extra) as (out, _, command, wall):
        summary = json.loads((out / "audit.json").read_text())
        label = [r for r in read_csv(out / "audit.csv") if r["issue"] == "label"]
    verdict = verdicts(published) if published else {}
    draw_top(folder, label[:TOP], verdict)
    record = {
        "benchmark": "audit_real",
        "model": summary["embedding"]["backbone"],
        "command": command_line(),
        "audit_command": "uv run " + shlex.join(command),
        "seed": summary["seed"],
        "images": summary["images"],
        "wall_seconds": round(wall, 1),
        "flagged": len(label),
        "out_of_fold_accuracy": summary["out_of_fold_accuracy"],
        "top50": [{k: r[k] for k in ("file", "score", "given", "suggested")} for r in label[:TOP]],
        "embedding": summary["embedding"],
        **(published_counts(label, verdict) if published else {}),
    }
    path = write_result("audit_real", record)
    print(f"{len(label)} flagged in {wall / 60:.1f} min; wrote {path}")


def redraw(folder: Path, published: Path | None) -> None:
    """Draw the picture again from the last result."""
    top = json.loads((RESULTS / "audit_real.json").read_text())["top50"]
    draw_top(folder, top, verdicts(published) if published else {})


if __name__ == "__main__":
    option = ("--published", "cleanlab/label-errors' mturk/cifar10_mturk.json")
    make_or_run(__doc__, make, run, option, more={"draw": redraw})
