"""The results table of a comparison: its columns, formatted cells, Markdown and CSV."""

import csv
from pathlib import Path

from imgclf.core.io import atomic_write

Column = tuple[str, str, str]  # (run key, header, format of the value)

# the reference study's columns, then speed and calibration
COLUMNS: list[Column] = [
    ("run", "run", "{}"),
    ("model", "model", "{}"),
    ("test_accuracy", "test accuracy", "{:.2%}"),
    ("test_loss", "test loss", "{:.4f}"),
    ("overfitting_gap", "overfitting gap (train − test)", "{:+.2%}"),
    ("parameters", "parameters", "{:,}"),
    ("trainable_parameters", "trainable parameters", "{:,}"),
    ("train_seconds", "training time (s)", "{:,.0f}"),
    ("images_per_second", "inference img/s", "{:,.0f}"),
    ("ece", "ECE", "{:.2%}"),
    ("impact", "Δ accuracy vs previous", "{}"),
]
# after the test accuracy, when runs carry the reference study's accuracy (see reference.add_reference)
REFERENCE_COLUMNS: list[Column] = [
    ("reference_accuracy", "reference accuracy", "{:.2%}"),
    ("vs_reference", "Δ vs reference", "{:+.2%}"),
]


# before the test accuracy (then an exact-match ratio), when some run is multi-label
MULTILABEL_COLUMNS: list[Column] = [
    ("map", "test mAP", "{:.2%}"),
    ("macro_f1", "macro F1", "{:.4f}"),
]

# last, when the runs were computed differently (their summaries' engine records, in words)
ENGINE_COLUMN: Column = ("engine", "engine (where runs differ)", "{}")


def columns(runs: list[dict]) -> list[Column]:
    """The table's columns: mAP and macro F1 when some run is multi-label, the reference ones only when some run has a
    reference accuracy, the engine only when the runs' engines differ."""
    cols = COLUMNS
    if any(r.get("map") is not None for r in runs):
        at = [key for key, _, _ in COLUMNS].index("test_accuracy")
        accuracy = ("test_accuracy", "test accuracy (multi-label: exact match)", "{:.2%}")
        cols = COLUMNS[:at] + MULTILABEL_COLUMNS + [accuracy] + COLUMNS[at + 1 :]
    if any(r.get("reference_accuracy") is not None for r in runs):
        at = [key for key, _, _ in cols].index("test_accuracy") + 1
        cols = cols[:at] + REFERENCE_COLUMNS + cols[at:]
    if len({r.get("engine") for r in runs}) > 1:
        cols = [*cols, ENGINE_COLUMN]
    return cols


def engine_text(engine: dict | None) -> str:
    """A run's engine record in a few words: precision, CPU threads, compilation, the activation cache's engines."""
    if not engine:
        return "not recorded"
    parts = [engine.get("precision", "?")]
    if "threads" in engine:
        parts.append("threads " + "/".join(str(n) for n in engine["threads"]["counts"]))
    if str(engine.get("compile", "")).startswith("torch.compile"):
        parts.append("compiled")
    cache = engine.get("activation_cache")
    if isinstance(cache, dict) and cache.get("engines"):
        parts.append("cache " + "/".join(cache["engines"]))
    return " · ".join(parts)


def cell(run: dict, key: str, fmt: str) -> str:
    """One formatted value; "—" where the run has none."""
    value = run.get(key)
    return "—" if value is None else fmt.format(value)


def headers(runs: list[dict]) -> list[str]:
    """The column headers of the table of ``runs``."""
    return [header for _, header, _ in columns(runs)]


def rows(runs: list[dict]) -> list[list[str]]:
    """The formatted cells of the table, one row per run."""
    cols = columns(runs)
    return [[cell(r, key, fmt) for key, _, fmt in cols] for r in runs]


def markdown_table(runs: list[dict]) -> str:
    """The results table as GitHub Markdown."""
    head = headers(runs)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(runs)]
    return "\n".join(lines) + "\n"


def write_csv(runs: list[dict], path: Path) -> None:
    """The results table as CSV with raw (unformatted) values."""
    keys = [key for key, _, _ in columns(runs)]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(keys)
            writer.writerows([r.get(k) for k in keys] for r in runs)

    atomic_write(path, write)
