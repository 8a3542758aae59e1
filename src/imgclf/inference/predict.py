"""``imgclf predict RUN_DIR|MODEL IMAGES…``: the top-k classes of image files, folders (recursively) and globs.

Each file is decoded by ``data/decode.py`` at the model card's stored side and resize policy — the code that prepared
the training images — then goes through the :class:`Predictor` in batches, so a training image predicted from its
file gets the logits evaluation computed for it. Probabilities are calibrated with the temperature evaluation fitted on
the validation split (``--raw``: plain softmax). A multi-label model also gives each image its labels: the classes
at or above their thresholds, fitted on validation (a ``labels`` field, column, or the table's cells). A file that
cannot be used is reported on its own line and skipped.

    imgclf predict runs/resnet20-20261126-101500 photo.jpg holiday/ 'scans/**/*.png' --top-k 3
    imgclf predict runs/lite2/model.onnx images/ --format jsonl --output predictions.jsonl
"""

import csv
import glob
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm.auto import tqdm

from imgclf.core.io import atomic_write
from imgclf.data.decode import decode_file
from imgclf.data.folder import image_files
from imgclf.data.loader import inference_batch_size
from imgclf.inference.predictor import Predictor

GLOB_CHARACTERS = "*?["


@dataclass
class Row:
    """One input's outcome: its top-k (class, probability) pairs (and a multi-label model's labels: the pairs at or
    above their thresholds), or why it was skipped."""

    path: str
    top: list[tuple[str, float]] | None = None
    error: str = ""
    labels: list[tuple[str, float]] | None = None


# streams a shell opened for this process (``<(command)``, ``/dev/stdin``): read though they are pipes, a writer exists
OPEN_STREAMS = ("/dev/fd/", "/dev/stdin", "/proc/self/fd/")


def expand_inputs(items: list[str]) -> tuple[list[str], list[Row]]:
    """The image files named by ``items`` (files, folders searched recursively for image files, globs) in the order
    given, each once; and a row for each item that names nothing."""
    files, missing, seen = [], [], set()

    def add(path: str) -> None:
        if path not in seen:
            seen.add(path)
            files.append(path)

    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = image_files(path, path)[0]
            if not found:
                missing.append(Row(item, error="no image files in this folder"))
            for name in found:
                add(str(path / name))
        elif path.is_file() or (path.exists() and item.startswith(OPEN_STREAMS)):
            add(str(path))
        elif path.exists():  # reading a named pipe would wait for a writer forever
            missing.append(Row(item, error="not a regular file (a pipe, device or socket)"))
        elif any(c in item for c in GLOB_CHARACTERS):
            matches = sorted(m for m in glob.glob(os.path.expanduser(item), recursive=True) if Path(m).is_file())
            if not matches:
                missing.append(Row(item, error="no file matches this pattern"))
            for match in matches:
                add(match)
        else:
            missing.append(Row(item, error="no such file or folder"))
    return files, missing


def predict_files(
    predictor: Predictor,
    paths: list[str],
    top_k: int = 5,
    calibrated: bool = True,
    flip_tta: bool = False,
    batch_size: int = 0,
    progress: bool | None = None,
) -> Iterator[Row]:
    """A :class:`Row` per file of ``paths``, in order: decoded on worker threads, predicted in batches."""
    card = predictor.card
    size = batch_size or inference_batch_size(card.input_size, predictor.device)
    hide = None if progress is None else not progress  # None: a bar only on a terminal
    with (
        ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool,
        tqdm(total=len(paths), unit="img", desc="predicting", disable=hide) as bar,
    ):
        for chunk in batched(paths, size):
            decoded = list(pool.map(lambda p: decode_file(p, card.data_size, card.resize, digest=False), chunk))
            good = [i for i, (image, _, _) in enumerate(decoded) if image is not None]
            tops, labels = {}, {}
            if good:
                images = np.stack([decoded[i][0] for i in good])
                logits = predictor.logits(images, flip_tta)
                probs = predictor.probabilities(logits, calibrated)
                tops = dict(zip(good, predictor.top_k(probs, top_k), strict=True))
                labels = dict(zip(good, predictor.labels(logits, probs) or [None] * len(good), strict=True))
            for i, path in enumerate(chunk):
                yield Row(path, tops[i], labels=labels[i]) if i in tops else Row(path, error=decoded[i][2])
            bar.update(len(chunk))


def batched(items: list, size: int) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RowWriter:
    """Writes rows as an aligned table, CSV or JSON lines."""

    def __init__(
        self, out: TextIO, kind: str, top_k: int, path_width: int, class_width: int = 0, multilabel: bool = False
    ) -> None:
        self.out, self.kind, self.width, self.top_k = out, kind, min(path_width, 60), top_k
        self.class_width, self.multilabel = class_width, multilabel
        if kind == "csv":
            self.csv = csv.writer(out)
            ranks = [f"{name}_{r}" for r in range(1, top_k + 1) for name in ("class", "probability")]
            self.csv.writerow(["path", *(["labels"] if multilabel else []), *ranks, "error"])

    def write(self, row: Row) -> None:
        if self.kind == "jsonl":
            record = {"path": row.path}
            if row.top is not None:
                if self.multilabel:
                    record["labels"] = [{"class": c, "probability": round(p, 6)} for c, p in row.labels]
                record["predictions"] = [{"class": c, "probability": round(p, 6)} for c, p in row.top]
            else:
                record["error"] = row.error
            self.out.write(json.dumps(record) + "\n")
        elif self.kind == "csv":
            cells = [v for c, p in row.top for v in (c, f"{p:.6f}")] if row.top is not None else []
            cells += [""] * (2 * self.top_k - len(cells))  # fewer classes than k, or a skipped file
            if self.multilabel:
                cells.insert(0, ";".join(c for c, _ in row.labels) if row.labels is not None else "")
            self.csv.writerow([row.path, *cells, row.error])
        else:
            shown = row.path.ljust(self.width)
            if row.top is None:
                self.out.write(f"{shown}  skipped: {row.error}\n")
            else:
                pairs = row.labels if self.multilabel else row.top
                cells = [f"{c:<{self.class_width}} {p:6.1%}" for c, p in pairs] or ["no class above its threshold"]
                self.out.write(f"{shown}  " + "  ".join(cells) + "\n")


def run_predict(
    predictor: Predictor,
    items: list[str],
    kind: str = "table",
    output: str | None = None,
    top_k: int = 5,
    calibrated: bool = True,
    flip_tta: bool = False,
    batch_size: int = 0,
    progress: bool | None = None,
) -> tuple[int, int]:
    """Predict the images ``items`` name and write the rows to ``output`` (stdout when None); (predicted, skipped)."""
    files, missing = expand_inputs(items)
    counts = [0, len(missing)]

    def write_all(out: TextIO) -> None:
        widths = max((len(p) for p in files), default=0), max(len(c) for c in predictor.classes)
        writer = RowWriter(out, kind, top_k, *widths, multilabel=predictor.multilabel)
        for row in missing:
            writer.write(row)
        for row in predict_files(predictor, files, top_k, calibrated, flip_tta, batch_size, progress):
            writer.write(row)
            counts[row.top is None] += 1
            if out is sys.stdout:
                out.flush()

    if output is None:
        write_all(sys.stdout)
    else:
        atomic_write(Path(output), lambda tmp: write_to(tmp, write_all))
    return counts[0], counts[1]


def write_to(path: Path, write_all) -> None:
    """Call ``write_all`` with a UTF-8 text file open at ``path``."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        write_all(handle)
