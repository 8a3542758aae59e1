"""One evaluated run as people look at it: its figures (``figures/*.png``) and its ``report.html``."""

import sys

import numpy as np

from imgclf.artifacts.files import FIGURES
from imgclf.core.errors import ImgclfError
from imgclf.evaluation.calibration import reliability_bins, softmax
from imgclf.evaluation.evaluate import Evaluation
from imgclf.evaluation.multilabel import binary_reliability, pr_curve, sigmoid
from imgclf.inference.explain import load_explainer, overlay
from imgclf.report import plots
from imgclf.report.html import evaluation_report


def render_evaluation(result: Evaluation) -> dict:
    """Draw ``result``'s figures and write its report; returns its metrics, which now list the figures (and are
    written again with them)."""
    run, metrics = result.run, result.metrics
    with run.lock():
        metrics["figures"] = write_figures(result)
        run.write_metrics(metrics)
        evaluation_report(run.path, metrics, result.config)
    return metrics


PR_CURVES = 10  # classes drawn in the precision–recall figure: the worst by AP


def write_multilabel_figures(result: Evaluation) -> list:
    """Precision–recall curves of the worst classes, reliability over every class-probability before and after the
    temperature, training curves and the most confident wrong decisions, as PNG files."""
    run, metrics, test, logits = result.run, result.metrics, result.test, result.test_logits
    figures, temperature, classes = run.file(FIGURES), metrics["temperature"], test.classes
    labels = test.labels.numpy().astype(bool)
    probs = sigmoid(logits, temperature)
    by_ap = sorted((v["ap"], i) for i, v in enumerate(metrics["per_class"].values()) if v["ap"] is not None)
    curves = {classes[i]: {**pr_curve(probs[:, i], labels[:, i]), "ap": ap} for ap, i in by_ap[:PR_CURVES]}
    title = "precision–recall, worst classes by AP" if len(by_ap) > PR_CURVES else "precision–recall per class"
    reliability = {"before scaling": binary_reliability(sigmoid(logits), labels)}
    reliability[f"temperature {temperature:.2f}"] = binary_reliability(probs, labels)
    paths = [
        plots.plot_pr_curves(curves, figures / "pr_curves.png", title),
        plots.plot_reliability(reliability, figures / "reliability.png"),
    ]
    if result.history:
        paths.append(plots.plot_history(result.history, figures / "training_curves.png", title=metrics["model"]))
    thresholds = np.array([v["threshold"] for v in metrics["per_class"].values()])
    predicted = probs >= thresholds
    wrong = np.flatnonzero((predicted != labels).any(1))
    worst_miss = np.where(predicted != labels, np.abs(probs - thresholds), 0).max(1)  # the most confident error
    worst = wrong[np.argsort(-worst_miss[wrong])][:24]

    def names(row: np.ndarray) -> str:
        return "+".join(classes[j] for j in np.flatnonzero(row)) or "none"

    captions = [f"{names(labels[i])} → {names(predicted[i])}" for i in worst]
    paths.append(plots.plot_gallery(test.images[worst].numpy(), captions, figures / "misclassified.png"))
    return paths


def write_figures(result: Evaluation) -> list[str]:
    """Confusion matrix, reliability diagram, training curves and the most confident mistakes, as PNG files."""
    run, metrics, test, logits = result.run, result.metrics, result.test, result.test_logits
    if metrics.get("task") == "multilabel":
        return [str(p.relative_to(run.path)) for p in write_multilabel_figures(result)]
    figures, temperature = run.file(FIGURES), metrics["temperature"]
    labels = test.labels.numpy()
    probs = softmax(logits)
    bins = {k: np.asarray(v) for k, v in metrics["reliability"].items()}
    paths = [
        plots.plot_confusion(np.array(metrics["confusion_matrix"]), test.classes, figures / "confusion_matrix.png"),
        plots.plot_reliability(
            {
                "before scaling": bins,
                f"temperature {temperature:.2f}": reliability_bins(softmax(logits / temperature), labels),
            },
            figures / "reliability.png",
        ),
    ]
    if result.history:
        paths.append(plots.plot_history(result.history, figures / "training_curves.png", title=metrics["model"]))
    if selective := metrics.get("selective"):
        path, target = figures / "risk_coverage.png", selective["target_risk"]
        paths.append(plots.plot_risk_coverage(selective["curve"], selective["test"], path, target))
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    worst = wrong[np.argsort(-probs[wrong].max(1))][:24]
    captions = [f"{test.classes[labels[i]]} → {test.classes[probs[i].argmax()]}\n{probs[i].max():.0%}" for i in worst]
    paths.append(plots.plot_gallery(test.images[worst].numpy(), captions, figures / "misclassified.png"))
    try:
        if len(worst):
            heatmaps = gradcam_overlays(result, test.images[worst].numpy(), probs[worst].argmax(1))
            paths.append(plots.plot_gallery(heatmaps, captions, figures / "misclassified_gradcam.png"))
    except ImgclfError as exc:  # a network without a spatial feature map: the report goes without heatmaps
        print(f"imgclf: note: no heatmaps in the report ({exc})", file=sys.stderr)
    return [str(p.relative_to(run.path)) for p in paths]


GALLERY_SIDE = 96  # the heatmaps of smaller images are drawn at this side


def gradcam_overlays(result: Evaluation, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, H, W) Grad-CAM overlays of the run's test ``images`` for the classes ``targets`` it predicted."""
    maps = load_explainer(result.run.path).maps(images, targets)
    side = max(images.shape[-1], GALLERY_SIDE)
    return np.stack([overlay(i, m, side).transpose(2, 0, 1) for i, m in zip(images, maps, strict=True)])
