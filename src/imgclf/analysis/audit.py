"""`imgclf audit`: label issues, near duplicates and leaks, and strays of a dataset, from one embedding per image.

The steps, each a small function of its own module: embed every image (``embed.py``); out-of-fold probabilities and
cleanlab's label issues (``labels.py``); every image's nearest neighbours (``neighbours.py``), which give the
near-duplicate pairs at a threshold calibrated on altered copies (``duplicates.py``) and the stray scores
(``strays.py``). The result is a list of suspects, one row per image and issue, written as audit.csv.
"""

import csv
import io
from dataclasses import dataclass, field

import numpy as np
import torch

from imgclf.analysis import copies, duplicates, labels, strays
from imgclf.analysis.embed import Embedder
from imgclf.analysis.neighbours import nearest_neighbours, neighbour_pairs
from imgclf.data.images import ImageSet
from imgclf.data.inventory import Inventory

NEIGHBOURS = 10  # embedding neighbours per image: the stray score's, and candidate copies
SKETCH_NEIGHBOURS = 20  # nearest by sketch per image (and per mirror image), also candidate copies
IMPOSTOR_CANDIDATES = 10  # nearest other images by sketch each calibration copy is compared with
CSV_FIELDS = ("file", "split", "issue", "score", "given", "suggested", "other")
SCORE_FIELDS = ("file", "split", "given", "label_quality", "stray_score", "nearest_distance")
# issues in the order the page and the CSV list them: leaks first, they inflate the test score
ISSUES = ("leak", "label", "near-duplicate", "stray")


@dataclass
class Audit:
    """What an audit found: one row per suspect image and issue, and the facts behind them."""

    rows: list[dict]
    summary: dict
    confusable: list[dict] = field(default_factory=list)
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # per image: label quality, stray score, nearest


def label_rows(inv: Inventory, probs: np.ndarray) -> tuple[list[dict], dict, np.ndarray]:
    """Rows of the images cleanlab flags (most suspect first), the counts, and every image's label quality."""
    y = inv.images.labels.numpy()
    multilabel = y.ndim == 2
    if multilabel:
        flagged, quality, _ = labels.multilabel_issues(y, probs)
    else:
        flagged, quality = labels.label_issues(y, probs)
    suggested = labels.suggested_labels(probs, multilabel)
    given = [_classes_of(label) for label in y]
    names = inv.images.classes
    rows = [
        {
            "index": int(i),
            "issue": "label",
            "score": round(float(1 - quality[i]), 4),
            "given": label_text(given[i], names),
            "suggested": label_text(suggested[i], names),
            "other": "",
        }
        for i in np.flatnonzero(flagged)[np.argsort(quality[flagged])]
    ]
    agree = np.mean([set(g) == set(s) for g, s in zip(given, suggested, strict=True)])
    return rows, {"label_issues": len(rows), "out_of_fold_accuracy": round(float(agree), 4)}, quality


def copy_rows(pairs: list[dict], inv: Inventory) -> list[dict]:
    """Two rows per near-duplicate pair, one for each image, naming the other: leaks, then copies in one split."""
    rows = []
    for p in pairs:
        issue = "leak" if p["leak"] else "near-duplicate"
        similarity = round(1 - p["distance"] ** 2 / 2, 4)  # the correlation of the aligned thumbnails
        for me, other in ((p["a"], p["b"]), (p["b"], p["a"])):
            exact = "exact copy of " if p["exact"] else ""
            rows.append({"index": me, "issue": issue, "score": similarity, "other": exact + inv.names[other]})
    return rows


def calibrate(
    images: ImageSet, thumbs: torch.Tensor, sketched: np.ndarray, exact: np.ndarray, seed: int
) -> tuple[float, dict]:
    """The near-duplicate threshold for these images (``duplicates.py``), and how it was found: a seeded sample of
    them altered, each copy compared with its original and with its nearest other images by sketch."""
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(images), min(duplicates.CALIBRATION_IMAGES, len(images)), replace=False))
    originals = images.images[torch.from_numpy(picked)].numpy()
    altered = copies.thumbnails(np.stack([duplicates.alter(x, rng) for x in originals]))
    own = copies.aligned_distances(altered, thumbs[picked])
    nearest = copies.nearest_thumbnails(altered, sketched, IMPOSTOR_CANDIDATES)
    mine = np.broadcast_to(np.arange(len(picked))[:, None], nearest.shape)
    near = copies.pair_distances(altered, thumbs, mine, nearest)
    originals_at = np.broadcast_to(picked[:, None], nearest.shape)
    # an image as close to the original as its copies come is a copy of it too (the original itself included)
    same = copies.pair_distances(thumbs, thumbs, originals_at, nearest) <= np.quantile(own, duplicates.COPY_QUANTILE)
    impostor = duplicates.impostor_distances(near, same | (exact[nearest] == exact[originals_at]))
    threshold = duplicates.threshold_from(own, impostor)
    facts = {
        "images": len(picked),
        "measure": "aligned thumbnails",
        "copy_quantile": duplicates.COPY_QUANTILE,
        "copy_distance_median": round(float(np.median(own)), 4),
        "copy_distance_at_quantile": round(float(np.quantile(own, duplicates.COPY_QUANTILE)), 4),
        "impostor_quantile": duplicates.IMPOSTOR_QUANTILE,
        "impostor_distance_at_quantile": round(float(np.quantile(impostor, duplicates.IMPOSTOR_QUANTILE)), 4),
        "nearest_impostor": round(float(impostor.min()), 4),
        "threshold": round(threshold, 4),
        "expected_recall": round(float(np.mean(own <= threshold)), 4),
    }
    return threshold, facts


def copy_pairs(images: ImageSet, indices: np.ndarray, exact: np.ndarray, seed: int, progress: bool) -> tuple:
    """Candidate pairs (each image with its embedding neighbours ``indices`` and its nearest by sketch), their
    aligned-thumbnail distances, the calibrated threshold and how it was found."""
    thumbs = copies.thumbnails(images.images)
    sketched = copies.sketches(thumbs)
    pairs = np.unique(
        np.concatenate([neighbour_pairs(indices), copies.candidate_pairs(sketched, SKETCH_NEIGHBOURS, progress)]),
        axis=0,
    )
    distances = copies.pair_distances(thumbs, thumbs, pairs[:, 0], pairs[:, 1])
    threshold, facts = calibrate(images, thumbs, sketched, exact, seed)
    return pairs, distances, threshold, {**facts, "candidate_pairs": len(pairs)}


def stray_rows(scores: np.ndarray) -> list[dict]:
    """Rows of the images flagged as strays, farthest first."""
    far = np.flatnonzero(strays.stray_flags(scores))
    return [
        {"index": int(i), "issue": "stray", "score": round(float(scores[i]), 4)} for i in far[np.argsort(-scores[far])]
    ]


def name_rows(rows: list[dict], inv: Inventory) -> list[dict]:
    """``rows`` with each image's file, split and given label filled in, ordered by :data:`ISSUES`."""
    y = inv.images.labels.numpy()
    for row in rows:
        i = row["index"]
        row.update(file=inv.names[i], split=str(inv.splits[i]))
        row.setdefault("given", label_text(_classes_of(y[i]), inv.images.classes))
        row.setdefault("suggested", "")
        row.setdefault("other", "")
    return sorted(rows, key=lambda r: ISSUES.index(r["issue"]))  # stable: each issue keeps its own order


def audit(
    inv: Inventory,
    embedder: Embedder,
    folds: int = labels.DEFAULT_FOLDS,
    seed: int = 0,
    probs: np.ndarray | None = None,
    label_model: str = labels.METHOD,
) -> Audit:
    """Audit every image of ``inv`` with ``embedder``'s embeddings; ``probs``: out-of-fold probabilities made
    elsewhere (``label_model`` says how), instead of a linear model's on the embeddings."""
    y = inv.images.labels.numpy()
    folds = labels.usable_folds(y, inv.images.classes, folds)
    emb = embedder.embed(inv.images)
    if probs is None:
        classes, progress = len(inv.images.classes), embedder.progress
        probs = labels.out_of_fold_probabilities(emb, y, classes, folds, seed, progress=progress)
    rows, summary, quality = label_rows(inv, probs)
    distances, indices = nearest_neighbours(emb, NEIGHBOURS, embedder.progress)
    exact = duplicates.exact_groups(duplicates.pixel_digests(inv.images.images))
    candidates, near, threshold, calibration = copy_pairs(inv.images, indices, exact, seed, embedder.progress)
    pairs = duplicates.near_pairs(candidates, near, threshold, inv.splits, exact)
    stray = strays.stray_scores(distances)
    rows = name_rows(rows + copy_rows(pairs, inv) + stray_rows(stray), inv)
    summary.update(
        images=len(inv.names),
        leaks=sum(p["leak"] for p in pairs),
        near_duplicates=sum(not p["leak"] for p in pairs),
        exact_pairs=sum(p["exact"] for p in pairs),
        strays=sum(r["issue"] == "stray" for r in rows),
        calibration=calibration,
        embedding=embedder.record(),
        folds=folds,
        seed=seed,
        label_model=label_model,
    )
    confusable = strays.confusable_classes(y, probs, inv.images.classes) if y.ndim == 1 else []
    scores = {"label_quality": quality, "stray_score": stray, "nearest_distance": distances[:, 0]}
    return Audit(rows, summary, confusable, scores)


def _classes_of(label: np.ndarray) -> list[int]:
    """The class indices of one image's label (an index, or a multi-hot row)."""
    return np.flatnonzero(label).tolist() if np.ndim(label) else [int(label)]


def label_text(classes: list[int], names: list[str]) -> str:
    """An image's classes as the CSV columns write them: their names joined by ';'."""
    return ";".join(names[c] for c in classes)


def scores_rows(inv: Inventory, scores: dict[str, np.ndarray]) -> list[dict]:
    """One row per image with its scores (scores.csv): rank all of them, not only the flagged ones."""
    y = inv.images.labels.numpy()
    names = inv.images.classes
    return [
        {
            "file": inv.names[i],
            "split": str(inv.splits[i]),
            "given": label_text(_classes_of(y[i]), names),
            **{k: round(float(v[i]), 5) for k, v in scores.items()},
        }
        for i in range(len(inv.names))
    ]


def csv_text(rows: list[dict], fields: tuple[str, ...] = CSV_FIELDS) -> str:
    """CSV text of ``rows`` in the columns ``fields`` (audit.csv: one line per suspect image and issue)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
