"""Evaluation of a finished run. The test split is read here, once, after every fitted quantity is fixed:
the model was selected on the validation split during training, and the temperature is fitted on it below.

Writes ``metrics.json``, figures (``figures/*.png``) and a self-contained ``report.html`` into the run directory.
"""

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.config import TrainConfig
from imgclf.data.datasets import ImageSet
from imgclf.device import describe_device, select_device
from imgclf.errors import ImgclfError
from imgclf.evaluation import plots
from imgclf.evaluation.calibration import calibration_metrics, fit_temperature, reliability_bins, softmax
from imgclf.evaluation.metrics import classification_metrics, most_confused_pairs
from imgclf.inference.predictor import TorchPredictor, load_network
from imgclf.models import count_parameters
from imgclf.report.html import evaluation_report
from imgclf.runs import BEST_WEIGHTS, FIGURES, RunDir, check_card, model_card, run_splits
from imgclf.training.transfer import TransferModel


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The configuration a run was trained with."""
    return RunDir(run_dir).read_config()


def mean_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of ``logits``."""
    return float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))


def evaluate_run(
    run_dir: str | Path, data_dir: str | None = None, device: str = "auto", tta: bool = False, data: str | None = None
) -> dict:
    """Test metrics, overfitting gaps, calibration before/after temperature scaling and figures of a run (``data``:
    the run's folder where it is now, if it moved; ``data_dir``: where CIFAR's files are)."""
    run = RunDir(run_dir)
    cfg = run.read_config()  # a one-line error for a folder that is no run, before the lock touches it
    with run.lock():
        return evaluate_locked(run, cfg, data_dir, device, tta, data)


def evaluate_locked(
    run: RunDir, cfg: TrainConfig, data_dir: str | None, device: str, tta: bool, data: str | None
) -> dict:
    """:func:`evaluate_run` on a run this process holds, trained with ``cfg``."""
    run_dir = run.path
    dev = select_device(device)
    # every run file is read (and checked) before anything is computed or written
    summary, history, lists, card = run.read_summary(), run.read_history(), run.read_data_split(cfg), run.read_card()
    if data_dir:
        cfg = dataclasses.replace(cfg, data_dir=data_dir)
    if data:  # the run's folder, moved: the split's files are named relative to it
        cfg = dataclasses.replace(cfg, data=str(Path(data).expanduser().resolve()))
    splits = run_splits(cfg, lists, side=card.data_size if card is not None else None)
    check_card(card, splits, run)
    model = load_network(cfg, len(splits.classes), run.file(BEST_WEIGHTS))
    if card is None:  # a run of an earlier version: describe its model now
        transfer = isinstance(model, TransferModel)
        prep = (model.image_size, model.mean, model.std) if transfer else (splits.side, splits.mean, splits.std)
        card = model_card(cfg, splits, *prep)
    predictor = TorchPredictor(model, card, dev, cfg.precision, use_cache=True)
    precision = predictor.precision
    classes = splits.classes
    train, val = splits.train, splits.val

    def logits(data: ImageSet, desc: str, flip_tta: bool = False) -> np.ndarray:
        return predictor.dataset_logits(data, flip_tta, desc, progress=cfg.progress and len(data) >= 5000)

    train_logits = logits(train, "train")
    train_labels = train.labels.numpy()
    val_labels = val.labels.numpy()
    val_logits = logits(val, "val") if len(val) else None
    temperature = fit_temperature(val_logits, val_labels) if val_logits is not None else 1.0
    card.temperature = temperature
    run.write_card(card)  # with the fitted temperature: predict and serve calibrate with it

    test = splits.test()  # the only read of the test split
    test_labels = test.labels.numpy()
    start = time.perf_counter()
    test_logits = logits(test, "test")
    seconds = time.perf_counter() - start
    if not np.isfinite(test_logits).all():
        raise ImgclfError(f"the model of {run_dir} gives non-finite outputs on the test split (training diverged)")

    report = classification_metrics(test_logits, test_labels, classes)
    network = predictor.network
    test_bins = reliability_bins(softmax(test_logits), test_labels)
    train_acc = float((train_logits.argmax(1) == train_labels).mean())
    metrics = {
        "model": cfg.model,
        "dataset": splits.name,
        "classes": classes,
        "test_accuracy": report["accuracy"],
        "test_loss": mean_loss(test_logits, test_labels),
        "train_accuracy": train_acc,
        "train_loss": mean_loss(train_logits, train_labels),
        "overfitting_gap": train_acc - report["accuracy"],
        "test_images": len(test),
        "parameters": count_parameters(network),
        "trainable_parameters": summary.get("trainable_parameters", count_parameters(network)),
        "model_bytes": run.file(BEST_WEIGHTS).stat().st_size,
        "inference_images_per_second": len(test) / seconds,
        "device": describe_device(dev),
        "precision": precision,
    }
    if val_logits is not None:
        val_acc = float((val_logits.argmax(1) == val_labels).mean())
        metrics.update(val_accuracy=val_acc, val_loss=mean_loss(val_logits, val_labels))
        metrics["overfitting_gap_val"] = train_acc - val_acc
    metrics.update(
        macro=report["macro"],
        weighted=report["weighted"],
        per_class=report["per_class"],
        confusion_matrix=report["confusion_matrix"],
        most_confused=most_confused_pairs(np.array(report["confusion_matrix"]), classes),
        temperature=temperature,
        calibration=calibration_metrics(test_logits, test_labels),
        calibration_temperature_scaled=calibration_metrics(test_logits / temperature, test_labels),
        reliability={k: v.tolist() for k, v in test_bins.items()},
    )
    if tta:
        tta_logits = logits(test, "test", flip_tta=True)
        metrics["tta"] = {
            "test_accuracy": float((tta_logits.argmax(1) == test_labels).mean()),
            "test_loss": mean_loss(tta_logits, test_labels),
            "views": predictor.tta_views,
        }
    metrics["figures"] = write_figures(run, cfg, history, test, test_logits, temperature, report, test_bins)
    run.write_metrics(metrics)
    evaluation_report(run_dir, metrics, cfg.to_dict())
    return metrics


def write_figures(
    run: RunDir,
    cfg: TrainConfig,
    history: list[dict],
    test: ImageSet,
    logits: np.ndarray,
    temperature: float,
    report: dict,
    bins: dict[str, np.ndarray],
) -> list[str]:
    """Confusion matrix, reliability diagram, training curves and the most confident mistakes, as PNG files."""
    figures, run_dir = run.file(FIGURES), run.path
    labels = test.labels.numpy()
    probs = softmax(logits)
    paths = [
        plots.plot_confusion(np.array(report["confusion_matrix"]), test.classes, figures / "confusion_matrix.png"),
        plots.plot_reliability(
            {
                "before scaling": bins,
                f"temperature {temperature:.2f}": reliability_bins(softmax(logits / temperature), labels),
            },
            figures / "reliability.png",
        ),
    ]
    if history:
        paths.append(plots.plot_history(history, figures / "training_curves.png", title=cfg.model))
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    worst = wrong[np.argsort(-probs[wrong].max(1))][:24]
    captions = [f"{test.classes[labels[i]]} → {test.classes[probs[i].argmax()]}\n{probs[i].max():.0%}" for i in worst]
    paths.append(plots.plot_gallery(test.images[worst].numpy(), captions, figures / "misclassified.png"))
    return [str(p.relative_to(run_dir)) for p in paths]
