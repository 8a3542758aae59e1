"""Evaluation of a finished run. The test split is read here, once, after every fitted quantity is fixed:
the model was selected on the validation split during training, and the temperature (and, for multi-label data, each
class's decision threshold) is fitted on it below.

Writes ``metrics.json`` and the card's temperature into the run directory and returns an :class:`Evaluation`;
``report/run_report.py`` draws its figures and its ``report.html``.
"""

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.artifacts.card import ModelCard, model_card
from imgclf.artifacts.files import BEST_WEIGHTS
from imgclf.artifacts.runs import RunDir, check_card, run_splits
from imgclf.config.checks import check_abstain_option
from imgclf.config.options import TrainConfig
from imgclf.core.device import describe_device, resolve_precision, select_device
from imgclf.core.errors import ImgclfError
from imgclf.data.balance import class_counts, imbalance_ratio
from imgclf.data.images import ImageSet, Splits
from imgclf.data.multilabel import is_multilabel
from imgclf.evaluation.calibration import calibration_metrics, fit_temperature, reliability_bins, softmax
from imgclf.evaluation.metrics import classification_metrics, most_confused_pairs
from imgclf.evaluation.multilabel import (
    binary_calibration,
    binary_reliability,
    fit_thresholds,
    multilabel_scores,
    per_class_ap,
    sigmoid,
)
from imgclf.evaluation.selective import abstain_rule, selective_summary
from imgclf.inference.load import load_network
from imgclf.inference.predictor import TorchPredictor, abstain_score, accuracy
from imgclf.models import count_parameters
from imgclf.models.transfer import TransferModel, activation_cache, architecture, uses_cache
from imgclf.training.losses import multilabel_loss


@dataclass
class Evaluation:
    """What evaluating a run computed: its metrics, and what its figures are drawn from."""

    run: RunDir
    metrics: dict
    config: dict  # the run's training config
    history: list[dict]
    test: ImageSet
    test_logits: np.ndarray


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The configuration a run was trained with."""
    return RunDir(run_dir).read_config()


def mean_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of ``logits`` (multi-hot ``labels``: binary cross-entropy summed over the classes, the
    training loss)."""
    if is_multilabel(torch.from_numpy(labels)):
        return float(multilabel_loss(torch.from_numpy(logits), torch.from_numpy(labels)))
    return float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))


def evaluate_run(
    run_dir: str | Path,
    data_dir: str | None = None,
    device: str = "auto",
    tta: bool = False,
    data: str | None = None,
    overrides: dict | None = None,
) -> dict:
    """Test metrics, overfitting gaps, calibration before/after temperature scaling and figures of a run (``data``:
    the run's folder where it is now, if it moved; ``data_dir``: where CIFAR's files are; ``overrides``: options that
    replace the run's own for this evaluation: ``exclude`` and ``relabel`` files, ``abstain`` and ``target_risk``)."""
    run = RunDir(run_dir)
    cfg = run.read_config()  # a one-line error for a folder that is no run, before the lock touches it
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:  # a missing file is a one-line error before the lock is taken
        cfg = dataclasses.replace(cfg, **given).validate(saved=True)
    with run.lock():
        return evaluate_locked(run, cfg, data_dir, device, tta, data)


def open_run(
    run: RunDir, cfg: TrainConfig, data_dir: str | None, data: str | None, device: str
) -> tuple[Splits, ModelCard, TorchPredictor]:
    """A run's splits (its saved file lists; ``data``: its folder where it is now, ``data_dir``: CIFAR's files), its
    card (described now for a run of an earlier version) and a predictor of its best weights on ``device``."""
    lists, card = run.read_data_split(cfg), run.read_card()  # read and checked before anything is computed
    if data_dir:
        cfg = dataclasses.replace(cfg, data_dir=data_dir)
    if data:  # the run's folder, moved: the split's files are named relative to it
        cfg = dataclasses.replace(cfg, data=str(Path(data).expanduser().resolve()))
    splits = run_splits(cfg, lists, card)
    check_card(card, splits, run)
    arch = card.architecture if card is not None else architecture(cfg)
    model = load_network(arch, len(splits.classes), run.file(BEST_WEIGHTS))
    transfer = isinstance(model, TransferModel)
    if card is None:  # a run of an earlier version: describe its model now
        prep = (model.image_size, model.mean, model.std) if transfer else (splits.side, splits.mean, splits.std)
        card = model_card(cfg, splits, *prep)
    dev = select_device(device)
    precision = resolve_precision(cfg.precision, dev)
    cache = activation_cache(cfg, model, dev, precision) if transfer and uses_cache(cfg, model) else None
    return splits, card, TorchPredictor(model, card, dev, precision, cache)


def fit_on_validation(card: ModelCard, logits: np.ndarray | None, labels: np.ndarray | None) -> None:
    """Set the card's temperature (and, for multi-hot ``labels``, per-class thresholds) from validation."""
    if logits is None:  # no validation split: nothing to fit on
        card.temperature = 1.0
        card.thresholds = [0.5] * card.num_classes if card.task == "multilabel" else None
        return
    card.temperature = fit_temperature(logits, labels)
    if labels.ndim == 2:
        card.thresholds = fit_thresholds(sigmoid(logits, card.temperature), labels).tolist()


def fit_abstain(card: ModelCard, logits: np.ndarray | None, labels: np.ndarray | None, cfg: TrainConfig) -> dict | None:
    """Set the card's abstain rule from ``--abstain`` (auto: on ``--abstain-score`` of the validation ``logits``,
    after the temperature; a number: on the top class's probability);
    the rule, for the report, also when not abstaining (then the one for ``--target-risk``). None for multi-label
    models, and without a validation split unless the threshold is a fixed one."""
    card.abstain = None
    check_abstain_option(cfg.abstain, cfg.target_risk, card.task)  # the task known now, where the config said auto
    if card.task == "multilabel" or (logits is None and cfg.abstain == "off"):
        return None
    score = cfg.abstain_score if cfg.abstain in ("off", "auto") else "probability"  # a fixed threshold: a probability
    scores, correct = None, None
    if logits is not None:
        scores, correct = abstain_score(logits, score, card.temperature), logits.argmax(1) == labels
    rule = abstain_rule(cfg.abstain, cfg.target_risk, scores, correct, score)
    card.abstain = None if cfg.abstain == "off" else rule
    return rule


def multilabel_held_out(logits: np.ndarray, labels: np.ndarray, classes: list[str], card: ModelCard) -> dict:
    """mAP, F1, exact match, Hamming loss, per-class AP and scores at the card's thresholds, and calibration over
    every class-probability before and after the temperature, of held-out ``logits`` against multi-hot ``labels``."""
    temperature = card.temperature or 1.0
    probs = sigmoid(logits, temperature)
    scores = multilabel_scores(probs, labels, np.asarray(card.thresholds), classes)
    raw = sigmoid(logits)
    return {
        **scores,
        "task": "multilabel",
        "temperature": temperature,
        "calibration": binary_calibration(raw, labels),
        "calibration_temperature_scaled": binary_calibration(probs, labels),
        "reliability": {k: v.tolist() for k, v in binary_reliability(raw, labels).items()},  # before, as single-label
    }


def held_out_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str], temperature: float) -> dict:
    """Per-class scores, confusion, calibration before and after dividing by ``temperature`` (fitted elsewhere, on
    validation), and reliability bins, of test ``logits`` (N, C) against ``labels`` (N,)."""
    report = classification_metrics(logits, labels, classes)
    return {
        "balanced_accuracy": report["balanced_accuracy"],
        "macro": report["macro"],
        "weighted": report["weighted"],
        "per_class": report["per_class"],
        "confusion_matrix": report["confusion_matrix"],
        "most_confused": most_confused_pairs(np.array(report["confusion_matrix"]), classes),
        "temperature": temperature,
        "calibration": calibration_metrics(logits, labels),
        "calibration_temperature_scaled": calibration_metrics(logits / temperature, labels),
        "reliability": {k: v.tolist() for k, v in reliability_bins(softmax(logits), labels).items()},
    }


def balance_facts(train_labels: np.ndarray, val_labels: np.ndarray | None, per_class: dict) -> dict:
    """The training split's class sizes (added to ``per_class`` as ``train_images``) and imbalance ratio, and what
    the temperature was fitted on: the validation split, as imbalanced as training (stratified from it)."""
    counts = class_counts(torch.from_numpy(train_labels), len(per_class))
    for name, count in zip(per_class, counts.tolist(), strict=True):
        per_class[name]["train_images"] = count
    fitted = {"split": "validation", "images": 0 if val_labels is None else len(val_labels)}
    if val_labels is not None and len(val_labels):
        val_counts = class_counts(torch.from_numpy(val_labels), len(per_class))
        fitted["imbalance_ratio"] = round(imbalance_ratio(val_counts), 2)
    return {"imbalance_ratio": round(imbalance_ratio(counts), 2), "temperature_fitted_on": fitted}


def evaluate_locked(
    run: RunDir, cfg: TrainConfig, data_dir: str | None, device: str, tta: bool, data: str | None
) -> Evaluation:
    """:func:`evaluate_run` on a run this process holds, trained with ``cfg``."""
    summary, history = run.read_summary(), run.read_history()
    splits, card, predictor = open_run(run, cfg, data_dir, data, device)

    def logits(images: ImageSet, desc: str, flip_tta: bool = False) -> np.ndarray:
        return predictor.dataset_logits(images, flip_tta, desc, progress=cfg.progress and len(images) >= 5000)

    train, val = splits.train, splits.val
    train_logits, train_labels = logits(train, "train"), train.labels.numpy()
    val_logits, val_labels = (logits(val, "val"), val.labels.numpy()) if len(val) else (None, None)
    if val_logits is not None and not np.isfinite(val_logits).all():
        raise ImgclfError(
            f"the model of {run.path} gives non-finite outputs on the validation split (training diverged)"
        )
    fit_on_validation(card, val_logits, val_labels)
    rule = fit_abstain(card, val_logits, val_labels, cfg)
    run.write_card(card)  # with the fitted temperature (and thresholds): predict and serve decide with them

    test = splits.test()  # the only read of the test split
    test_labels = test.labels.numpy()
    start = time.perf_counter()
    test_logits = logits(test, "test")
    seconds = time.perf_counter() - start
    if not np.isfinite(test_logits).all():
        raise ImgclfError(f"the model of {run.path} gives non-finite outputs on the test split (training diverged)")
    network = predictor.network
    test_accuracy, train_accuracy = accuracy(test_logits, test_labels, card), accuracy(train_logits, train_labels, card)
    metrics = {
        "model": cfg.model,
        "dataset": splits.name,
        "classes": splits.classes,
        "test_accuracy": test_accuracy,
        "test_loss": mean_loss(test_logits, test_labels),
        "train_accuracy": train_accuracy,
        "train_loss": mean_loss(train_logits, train_labels),
        "overfitting_gap": train_accuracy - test_accuracy,
        "test_images": len(test),
        "parameters": count_parameters(network),
        "trainable_parameters": summary.get("trainable_parameters", count_parameters(network)),
        "model_bytes": run.file(BEST_WEIGHTS).stat().st_size,
        "inference_images_per_second": len(test) / seconds,
        "device": describe_device(predictor.device),
        "precision": predictor.precision,
    }
    if val_logits is not None:
        val_accuracy = accuracy(val_logits, val_labels, card)
        metrics.update(val_accuracy=val_accuracy, val_loss=mean_loss(val_logits, val_labels))
        metrics["overfitting_gap_val"] = train_accuracy - val_accuracy
    if test_labels.ndim == 2:
        metrics.update(multilabel_held_out(test_logits, test_labels, splits.classes, card))
        metrics["train_map"] = float(np.nanmean(per_class_ap(sigmoid(train_logits), train_labels)))
    else:
        metrics.update(held_out_metrics(test_logits, test_labels, splits.classes, card.temperature))
    metrics.update(balance_facts(train_labels, val_labels, metrics["per_class"]))
    if rule is not None:
        test_correct = test_logits.argmax(1) == test_labels
        metrics["selective"] = selective_summary(
            rule, card.abstain is not None, abstain_score(test_logits, rule["score"], card.temperature), test_correct
        )
    if tta:
        tta_logits = logits(test, "test", flip_tta=True)
        metrics["tta"] = {
            "test_accuracy": accuracy(tta_logits, test_labels, card),
            "test_loss": mean_loss(tta_logits, test_labels),
            "views": predictor.tta_views,
        }
    metrics["engine"] = predictor.engine()
    run.write_metrics(metrics)
    return Evaluation(run, metrics, cfg.to_dict(), history, test, test_logits)
