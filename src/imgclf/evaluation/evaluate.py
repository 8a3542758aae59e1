"""Evaluation of a finished run. The test split is read here, once, after every fitted quantity is fixed:
the model was selected on the validation split during training, and the temperature is fitted on it below.

Writes ``metrics.json``, figures (``figures/*.png``) and a self-contained ``report.html`` into the run directory.
"""

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from imgclf.config import TrainConfig
from imgclf.data.cifar import CIFAR10_MEAN, CIFAR10_STD, ImageSet, load_cifar10, load_train_val
from imgclf.data.loader import BatchLoader
from imgclf.device import describe_device, resolve_precision, select_device
from imgclf.errors import ImgclfError
from imgclf.evaluation import plots
from imgclf.evaluation.calibration import calibration_metrics, fit_temperature, reliability_bins, softmax
from imgclf.evaluation.metrics import classification_metrics, most_confused_pairs
from imgclf.models import count_parameters, create_model
from imgclf.report.html import evaluation_report
from imgclf.training.checkpoint import atomic_write, load_weights
from imgclf.training.history import read_history
from imgclf.training.trainer import BEST_WEIGHTS, predict
from imgclf.training.transfer import TransferModel, build_transfer_model, transfer_logits


def load_run_config(run_dir: Path) -> TrainConfig:
    """The configuration a run was trained with."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ImgclfError(f"not a run directory (no config.yaml): {run_dir}")
    return TrainConfig(**yaml.safe_load(path.read_text()))


def load_run_model(
    run_dir: Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module | TransferModel, TrainConfig]:
    """The run's selected (best-validation) model, in eval mode on ``device``: an imgclf network, or a timm network
    with its frozen/trainable split for transfer runs."""
    cfg = load_run_config(run_dir)
    if cfg.is_transfer:
        tm = build_transfer_model(cfg, 10, pretrained=False)
        load_weights(Path(run_dir) / BEST_WEIGHTS, tm.network)
        tm.network.to(device).eval()
        if cfg.channels_last:
            tm.network.to(memory_format=torch.channels_last)
        return tm, cfg
    model = create_model(cfg.model)
    load_weights(Path(run_dir) / BEST_WEIGHTS, model)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), cfg


def run_logits(
    model: torch.nn.Module | TransferModel,
    cfg: TrainConfig,
    data: ImageSet,
    device: torch.device,
    precision: str,
    flip_tta: bool = False,
    desc: str = "",
) -> np.ndarray:
    """Logits (N, C) of a run's model for ``data``; transfer models go through the activation cache."""
    if not isinstance(model, TransferModel):
        return predict_logits(model, data, device, precision, flip_tta, cfg.channels_last)
    if not len(data):
        return np.zeros((0, len(data.classes)), np.float32)
    logits = transfer_logits(cfg, model, data, device, precision, desc=desc)
    if flip_tta:
        logits = (logits + transfer_logits(cfg, model, data, device, precision, flip=True, desc=desc)) / 2
    return logits.cpu().numpy()


def predict_logits(
    model: torch.nn.Module,
    data: ImageSet,
    device: torch.device,
    precision: str,
    flip_tta: bool = False,
    channels_last: bool = True,
) -> np.ndarray:
    """Logits (N, C) in float32 for every image of ``data`` (see :func:`predict`)."""
    if not len(data):
        return np.zeros((0, len(data.classes)), np.float32)
    loader = BatchLoader(data, 1000, CIFAR10_MEAN, CIFAR10_STD, device=device, channels_last=channels_last)
    return predict(model, loader, device, precision, flip_tta)[0].cpu().numpy()


def mean_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of ``logits``."""
    return float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))


def evaluate_run(run_dir: str | Path, data_dir: str | None = None, device: str = "auto", tta: bool = False) -> dict:
    """Test metrics, overfitting gaps, calibration before/after temperature scaling and figures of a run."""
    run_dir = Path(run_dir)
    dev = select_device(device)
    model, cfg = load_run_model(run_dir, dev)
    precision = resolve_precision(cfg.precision, dev)
    data_dir = data_dir or cfg.data_dir
    train, val = load_train_val(data_dir, cfg.download or None, cfg.val_fraction, cfg.seed, cfg.train_subset)
    classes = train.classes

    train_logits = run_logits(model, cfg, train, dev, precision, desc="train")
    train_labels = train.labels.numpy()
    val_labels = val.labels.numpy()
    val_logits = run_logits(model, cfg, val, dev, precision, desc="val") if len(val) else None
    temperature = fit_temperature(val_logits, val_labels) if val_logits is not None else 1.0

    test = load_cifar10("test", data_dir, download=cfg.download or None)  # the only read of the test split
    if cfg.test_subset:
        test = test.subset(torch.arange(min(cfg.test_subset, len(test))))
    test_labels = test.labels.numpy()
    start = time.perf_counter()
    test_logits = run_logits(model, cfg, test, dev, precision, desc="test")
    seconds = time.perf_counter() - start

    report = classification_metrics(test_logits, test_labels, classes)
    network = model.network if isinstance(model, TransferModel) else model
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    test_bins = reliability_bins(softmax(test_logits), test_labels)
    train_acc = float((train_logits.argmax(1) == train_labels).mean())
    metrics = {
        "model": cfg.model,
        "test_accuracy": report["accuracy"],
        "test_loss": mean_loss(test_logits, test_labels),
        "train_accuracy": train_acc,
        "train_loss": mean_loss(train_logits, train_labels),
        "overfitting_gap": train_acc - report["accuracy"],
        "test_images": len(test),
        "parameters": count_parameters(network),
        "trainable_parameters": summary.get("trainable_parameters", count_parameters(network)),
        "model_bytes": (run_dir / BEST_WEIGHTS).stat().st_size,
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
        tta_logits = run_logits(model, cfg, test, dev, precision, flip_tta=True, desc="test")
        metrics["tta"] = {
            "test_accuracy": float((tta_logits.argmax(1) == test_labels).mean()),
            "test_loss": mean_loss(tta_logits, test_labels),
        }
    metrics["figures"] = write_figures(run_dir, cfg, test, test_logits, temperature, report, test_bins)
    atomic_write(run_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
    evaluation_report(run_dir, metrics, cfg.to_dict())
    return metrics


def write_figures(
    run_dir: Path,
    cfg: TrainConfig,
    test: ImageSet,
    logits: np.ndarray,
    temperature: float,
    report: dict,
    bins: dict[str, np.ndarray],
) -> list[str]:
    """Confusion matrix, reliability diagram, training curves and the most confident mistakes, as PNG files."""
    figures = run_dir / "figures"
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
    history = read_history(run_dir / "history.jsonl")
    if history:
        paths.append(plots.plot_history(history, figures / "training_curves.png", title=cfg.model))
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    worst = wrong[np.argsort(-probs[wrong].max(1))][:24]
    captions = [f"{test.classes[labels[i]]} → {test.classes[probs[i].argmax()]}\n{probs[i].max():.0%}" for i in worst]
    paths.append(plots.plot_gallery(test.images[worst].numpy(), captions, figures / "misclassified.png"))
    return [str(p.relative_to(run_dir)) for p in paths]
