"""``imgclf predict RUN_DIR|MODEL IMAGES…``: the top-k classes of image files, folders (recursively) and globs.

Each file is decoded by ``data/decode.py`` at the model card's stored side and resize policy — the code that prepared
the training images — then goes through the :class:`Predictor` in batches, so a training image predicted from its
file gets the logits evaluation computed for it. Probabilities are calibrated with the temperature evaluation fitted on
the validation split (``--raw``: plain softmax). A multi-label model also gives each image its labels: the classes
at or above their thresholds, fitted on validation (a ``labels`` field, column, or the table's cells). A model
whose card holds an abstain rule (``--abstain``) also gives each image its answer: the top class, or ``unknown``
below the rule's threshold (an ``answer`` field or column; the table's first cell). ``--explain DIR`` writes each
image's Grad-CAM overlay for its top class into DIR (``explain.py``; a ``heatmap`` field or column names the file). A
file that cannot be used is reported on its own line and skipped.

    imgclf predict runs/resnet20-20261126-101500 photo.jpg holiday/ 'scans/**/*.png' --top-k 3
    imgclf predict runs/lite2/model.onnx images/ --format jsonl --output predictions.jsonl
    imgclf predict runs/resnet20-20261126-101500 photo.jpg --explain heatmaps/
"""

import csv
import io
import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm.auto import tqdm

from imgclf.core.errors import ImgclfError
from imgclf.core.io import written_in_place
from imgclf.data.decode import decode_file
from imgclf.data.loader import inference_batch_size
from imgclf.data.policies import below_threshold
from imgclf.inference.explain import Explainer, write_overlays
from imgclf.inference.inputs import input_files
from imgclf.inference.predictor import UNKNOWN, Predictor


@dataclass
class Row:
    """One input's outcome: its top-k (class, probability) pairs (and a multi-label model's labels: the pairs at or
    above their thresholds; an abstaining model's answer: the top class or unknown; with --explain, the file of its
    heatmap), or why it was skipped."""

    path: str
    top: list[tuple[str, float]] | None = None
    error: str = ""
    labels: list[tuple[str, float]] | None = None
    answer: str | None = None
    heatmap: str | None = None


def predict_files(
    predictor: Predictor,
    inputs: Iterable[tuple[str, str]] | list[str],
    top_k: int = 5,
    calibrated: bool = True,
    flip_tta: bool = False,
    batch_size: int = 0,
    bar: tqdm | None = None,
    explain: tuple[Explainer, Path] | None = None,
) -> Iterator[Row]:
    """A :class:`Row` per input, in order: ``(path, "")`` pairs (or plain paths) are decoded on worker threads and
    predicted in batches; ``(item, reason)`` pairs are rows of their own, skipped for that reason. ``explain``: an
    explainer and the folder its overlay of each image's top class goes to."""
    card = predictor.card
    size = batch_size or inference_batch_size(card.input_size, predictor.device)
    pairs = ((item, "") if isinstance(item, str) else item for item in inputs)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for chunk in batched(pairs, size):
            usable = [i for i, (_, reason) in enumerate(chunk) if not reason]
            files = [chunk[i][0] for i in usable]
            results = pool.map(lambda f: decode_file(f, card.data_size, card.resize, digest=False), files)
            decoded = dict(zip(usable, results, strict=True))
            good = [i for i in usable if decoded[i][0] is not None]
            rows = {}
            if good:
                images = np.stack([decoded[i][0] for i in good])
                paths = [chunk[i][0] for i in good]
                done = predicted_rows(predictor, images, paths, top_k, calibrated, flip_tta, explain)
                rows = dict(zip(good, done, strict=True))
            for i, (path, reason) in enumerate(chunk):
                yield rows[i] if i in rows else Row(path, error=reason or decoded[i][2])
            if bar is not None:
                bar.update(len(chunk))


def predicted_rows(
    predictor: Predictor,
    images: np.ndarray,
    paths: list[str],
    top_k: int = 5,
    calibrated: bool = True,
    flip_tta: bool = False,
    explain: tuple[Explainer, Path] | None = None,
) -> list[Row]:
    """The :class:`Row` of each decoded uint8 image (N, 3, S, S) of ``paths``: its top-k, labels, answer, heatmap."""
    logits = predictor.logits(images, flip_tta)
    heatmaps = [None] * len(paths)
    if explain is not None:
        heatmaps = write_overlays(explain[0], images, logits.argmax(1), paths, explain[1])
    probs = predictor.probabilities(logits, calibrated)
    labels = predictor.labels(logits, probs) or [None] * len(paths)
    answers = predictor.answers(logits) or [None] * len(paths)
    return [
        Row(path, top, labels=label, answer=answer, heatmap=heatmap)
        for path, top, label, answer, heatmap in zip(
            paths, predictor.top_k(probs, top_k), labels, answers, heatmaps, strict=True
        )
    ]


def columns(top_k: int, multilabel: bool, abstains: bool, explained: bool) -> list[str]:
    """The columns of a CSV (or Parquet) row: path, labels or answer, class and probability of each rank, heatmap,
    error."""
    decided = ["labels"] if multilabel else ["answer"] if abstains else []
    ranks = [f"{name}_{r}" for r in range(1, top_k + 1) for name in ("class", "probability")]
    return ["path", *decided, *ranks, *(["heatmap"] if explained else []), "error"]


def values(row: Row, top_k: int, multilabel: bool, abstains: bool, explained: bool) -> list[str | float | None]:
    """``row`` in :func:`columns` order: strings, and each rank's probability as a float (None where there is none:
    fewer classes than k, or a skipped file)."""
    out: list[str | float | None] = [row.path]
    if multilabel:
        out.append(";".join(c for c, _ in row.labels) if row.labels is not None else "")
    elif abstains:
        out.append(row.answer or "")
    pairs = row.top or []
    for rank in range(top_k):
        out += list(pairs[rank]) if rank < len(pairs) else ["", None]
    if explained:
        out.append(row.heatmap or "")
    return [*out, row.error]


def batched(items: Iterable, size: int) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last one shorter), drawn lazily."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class RowWriter:
    """Writes rows as an aligned table, CSV or JSON lines."""

    def __init__(
        self,
        out: TextIO,
        kind: str,
        top_k: int,
        path_width: int,
        class_width: int = 0,
        multilabel: bool = False,
        rule: dict | None = None,
        header: bool = True,
        explained: bool = False,
    ) -> None:
        """``rule``: an abstaining model's (None: no answer column); ``explained``: rows name their heatmap files (a
        field, or a column before the error)."""
        self.out, self.kind, self.width, self.top_k = out, kind, min(path_width, 60), top_k
        self.class_width, self.multilabel, self.explained = class_width, multilabel, explained
        self.rule, self.abstains = rule, rule is not None
        if kind == "csv":
            self.csv = csv.writer(out)
            if header:
                self.csv.writerow(columns(top_k, multilabel, self.abstains, explained))

    def write(self, row: Row) -> None:
        if self.kind == "jsonl":
            record = {"path": row.path}
            if row.top is not None:
                if self.multilabel:
                    record["labels"] = [{"class": c, "probability": round(p, 6)} for c, p in row.labels]
                if self.abstains:
                    record["answer"] = row.answer
                record["predictions"] = [{"class": c, "probability": round(p, 6)} for c, p in row.top]
                if self.explained:
                    record["heatmap"] = row.heatmap
            else:
                record["error"] = row.error
            self.out.write(json.dumps(record) + "\n")
        elif self.kind == "csv":
            cells = values(row, self.top_k, self.multilabel, self.abstains, self.explained)
            self.csv.writerow(["" if v is None else f"{v:.6f}" if isinstance(v, float) else v for v in cells])
        else:
            shown = row.path.ljust(self.width)
            if row.top is None:
                self.out.write(f"{shown}  skipped: {row.error}\n")
            else:
                pairs = row.labels if self.multilabel else row.top
                cells = [f"{c:<{self.class_width}} {p:6.1%}" for c, p in pairs] or ["no class above its threshold"]
                if self.abstains and row.answer == UNKNOWN:
                    cells.insert(0, f"{UNKNOWN} ({below_threshold(self.rule)}):")
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
    resume: bool = False,
    explain: tuple[Explainer, Path] | None = None,
) -> tuple[int, int]:
    """Predict the images ``items`` name, as a stream, and write the rows to ``output`` (stdout when None):
    (predicted, skipped). A file ``output`` grows as ``OUTPUT.partial`` and takes its name when every row is written;
    ``resume`` continues an interrupted ``.partial`` after its last complete row; ``explain``: an explainer and the
    folder of the heatmaps."""
    if resume and (output is None or kind == "table"):
        raise ImgclfError("--resume continues an --output file written as --format csv or jsonl")
    shown = progress if progress is not None else sys.stderr.isatty()
    total = sum(1 for _ in input_files(items)) if shown else None  # a walk of the folders: the bar's ETA
    inputs, counts = input_files(items), [0, 0]
    rule = predictor.card.abstain
    first = list(itertools.islice(inputs, 1000))  # the table's path column fits these
    path_width = max((len(p) for p, _ in first), default=0)
    class_width = max(len(c) for c in predictor.classes)

    def write_rows(out: TextIO, done: int, header: bool) -> None:
        writer = RowWriter(
            out, kind, top_k, path_width, class_width, predictor.multilabel, rule, header, explain is not None
        )
        stream = itertools.islice(itertools.chain(first, inputs), done, None)
        with tqdm(total=total, initial=done, unit="img", desc="predicting", disable=not shown) as bar:
            for row in predict_files(predictor, stream, top_k, calibrated, flip_tta, batch_size, bar, explain):
                writer.write(row)
                counts[row.top is None] += 1
                if out is sys.stdout:
                    out.flush()

    if output is None:
        write_rows(sys.stdout, 0, True)
    elif written_in_place(Path(output)):
        with open(output, "w", encoding="utf-8", newline="") as out:
            write_rows(out, 0, True)
    else:
        write_partial(Path(output), kind, resume, write_rows, input_files(items))
    return counts[0], counts[1]


def write_partial(path: Path, kind: str, resume: bool, write_rows, inputs: Iterator[tuple[str, str]]) -> None:
    """Write the rows to ``PATH.partial`` (appending after its complete rows when ``resume``), flushed batch by batch,
    then rename it to ``path``."""
    partial = path.with_name(path.name + ".partial")
    done = 0
    if resume:
        if not partial.is_file():
            raise ImgclfError(f"nothing to resume: {partial} does not exist")
        done, last = complete_rows(partial, kind)
        if done:
            expected = next(itertools.islice(inputs, done - 1, None), (None, ""))[0]
            if expected != last:
                raise ImgclfError(
                    f"{partial} does not match these inputs: its row {done} is {last!r}, the inputs' is {expected!r}"
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "a" if resume else "w", encoding="utf-8", newline="") as out:
        try:
            write_rows(out, done, header=out.tell() == 0)  # a resumed file keeps its CSV header
        except KeyboardInterrupt:
            out.flush()
            print(f"imgclf: {partial} holds the rows so far: continue with --resume", file=sys.stderr)
            raise
    os.replace(partial, path)


def complete_rows(partial: Path, kind: str) -> tuple[int, str | None]:
    """The rows of an interrupted output that were written whole, and the path of the last one; a row cut short is
    removed from the file."""
    raw = partial.read_bytes()
    keep = raw[: raw.rfind(b"\n") + 1]  # a last line without its newline was cut short
    text = keep.decode("utf-8", errors="replace")
    if kind == "csv":
        rows = list(csv.reader(io.StringIO(text, newline="")))[1:]  # the header; quoted newlines stay in their field
        last = rows[-1][0] if rows else None
    else:
        rows = text.splitlines()
        try:
            last = json.loads(rows[-1])["path"] if rows else None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ImgclfError(f"{partial} is not an output of imgclf predict --format jsonl") from None
    with open(partial, "r+b") as handle:
        handle.truncate(len(keep))
    return len(rows), last
