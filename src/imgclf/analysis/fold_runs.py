"""Out-of-fold probabilities from a run's own recipe (``imgclf audit --run RUN``): its network trained once per fold.

The default audit fits a linear model per fold on frozen embeddings, in seconds. A user whose trained network sees
their images better than any frozen backbone can ask for that network instead: k trainings of the run's config, each
on the other folds (validation carved from them by the run's own fraction and seed), each predicting its held-out
fold. Every fold is a run directory of its own under the audit's output, so an interrupted audit resumes where it
stopped: a finished fold is read back, an unfinished one continues from its last checkpoint.
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from imgclf.analysis.labels import fold_indices, label_strata
from imgclf.artifacts.files import BEST_WEIGHTS, SUMMARY
from imgclf.artifacts.runs import RunDir
from imgclf.config.options import TrainConfig
from imgclf.core.errors import ImgclfError
from imgclf.core.io import read_json, write_json
from imgclf.data.images import ImageSet, Splits, channel_stats, stratified_split
from imgclf.inference.load import load_predictor
from imgclf.training.run import train_splits

FOLDS_FOLDER = "folds"  # under the audit's output: fold1/, fold2/, … one run directory each
FOLD_MARKER = "audit_fold.json"  # which recipe and files the fold was trained for
SPLITS = ("train", "val", "test")  # a fold run's file lists: test is its held-out fold


def fold_splits(
    images: ImageSet, names: list[str], fold: tuple[np.ndarray, np.ndarray], cfg: TrainConfig, source: str
) -> Splits:
    """The run's splits of one ``fold`` (train, held out): the images at ``train``, less a stratified validation
    part (the run's fraction and seed), normalised by their own statistics; the held-out images are its test split
    (the fold's run saves the three file lists)."""
    train, held = fold
    labels = images.labels.numpy()[train]
    kept, val = stratified_split(label_strata(labels), cfg.val_fraction, cfg.seed)
    part = images.subset(train[kept])
    mean, std = channel_stats(part.images)
    parts = zip(SPLITS, (train[kept], train[val], held), strict=True)
    lists = {split: [names[i] for i in rows] for split, rows in parts}
    return Splits(
        name=source,
        train=part,
        val=images.subset(train[val]),
        classes=images.classes,
        mean=mean,
        std=std,
        side=images.images.shape[-1],
        fingerprint=part.fingerprint(),
        load_test=lambda: images.subset(held),
        info={"source": source, "layout": "audit fold", **{k: len(v) for k, v in lists.items()}},
        lists=lists,
    )


def fold_key(cfg: TrainConfig, splits: Splits) -> str:
    """What identifies a fold's run: its recipe (progress bars aside) and the files of its splits."""
    recipe = {**cfg.to_dict(), "progress": False}
    text = json.dumps({"recipe": recipe, "files": splits.lists}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def train_fold(cfg: TrainConfig, folder: Path, splits: Splits, label: str) -> RunDir:
    """One fold's run in ``folder``: trained, continued from its last checkpoint, or (finished) left as it is; a
    one-line error when the folder holds a fold of another audit (reusing it would predict images it trained on)."""
    run, key = RunDir(folder), fold_key(cfg, splits)
    marker = run.file(FOLD_MARKER)
    stored = read_json(marker, "fold marker") if marker.is_file() else None
    if folder.exists() and any(folder.iterdir()) and (not isinstance(stored, dict) or stored.get("key") != key):
        raise ImgclfError(
            f"{folder} holds a fold of another audit (other images, folds, seed or --run): choose another "
            "--output, or remove that folder to train the folds again"
        )
    if run.file(SUMMARY).is_file() and run.file(BEST_WEIGHTS).is_file():
        print(f"{label}: trained earlier, read back from {folder}", flush=True)
        return run
    doing = "continuing" if run.exists() else "training"
    print(f"{label}: {doing} {cfg.model} on {len(splits.train):,} images ({len(splits.val):,} validate)", flush=True)
    write_json(marker, {"key": key})
    train_splits(cfg, run, splits, resume=run.exists())
    return run


def fold_probabilities(
    cfg: TrainConfig,
    images: ImageSet,
    names: list[str],
    folds: int,
    seed: int,
    output: Path,
    source: str,
    progress: bool = True,
) -> np.ndarray:
    """(N, C) probabilities of every image of ``images`` (the files ``names`` of ``source``) from ``cfg``'s network
    trained on the other ``folds`` (the same seeded, stratified folds as the linear model's), uncalibrated. Every
    fold's splits are made before any training, so a class too small to split fails at once."""
    cfg = dataclasses.replace(cfg, progress=progress, data=source)
    probs = np.zeros((len(images), len(images.classes)), dtype=np.float64)
    parts = fold_indices(images.labels.numpy(), folds, seed)
    every = [fold_splits(images, names, part, cfg, source) for part in parts]
    for k, ((_, held), splits) in enumerate(zip(parts, every, strict=True)):
        run = train_fold(cfg, output / FOLDS_FOLDER / f"fold{k + 1}", splits, f"fold {k + 1}/{folds}")
        predictor = load_predictor(run.path, device=cfg.device, runtime="torch")
        probs[held] = predictor.probabilities(predictor.dataset_logits(images.subset(held)), calibrated=False)
    return probs
