"""One evaluated run as people look at it: its figures (``figures/*.png``) and its ``report.html``."""

import numpy as np

from imgclf.artifacts.runs import FIGURES
from imgclf.evaluation.calibration import reliability_bins, softmax
from imgclf.evaluation.evaluate import Evaluation
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


def write_figures(result: Evaluation) -> list[str]:
    """Confusion matrix, reliability diagram, training curves and the most confident mistakes, as PNG files."""
    run, metrics, test, logits = result.run, result.metrics, result.test, result.test_logits
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
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    worst = wrong[np.argsort(-probs[wrong].max(1))][:24]
    captions = [f"{test.classes[labels[i]]} → {test.classes[probs[i].argmax()]}\n{probs[i].max():.0%}" for i in worst]
    paths.append(plots.plot_gallery(test.images[worst].numpy(), captions, figures / "misclassified.png"))
    return [str(p.relative_to(run.path)) for p in paths]
