"""Figures of an evaluation: confusion matrix, reliability diagram, precision–recall curves, training curves,
misclassified gallery."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

matplotlib.rcParams["text.parse_math"] = False  # class names are text: a '$' in a folder name is no formula

ANNOTATE_UP_TO = 20  # classes (or bars): above this, figures drop the number written on every cell
TICK_LABELS_UP_TO = 50  # class tick labels: above this, only every k-th class is named
NAME_CHARS = 18  # class names longer than this are cut in figures


def save(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as PNG and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def shorten(name: str, limit: int = NAME_CHARS) -> str:
    """``name``, cut to ``limit`` characters with an ellipsis when longer."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def class_ticks(ax: plt.Axes, classes: list[str], axis: str = "x") -> None:
    """Legible class tick labels on ``axis``: names shortened, smaller font above 20, only every k-th above 50."""
    n = len(classes)
    step = -(-n // TICK_LABELS_UP_TO)
    positions = list(range(0, n, step))
    labels = [shorten(classes[i]) for i in positions]
    fontsize = 8 if n <= ANNOTATE_UP_TO else 7
    if axis == "x":
        few = n <= ANNOTATE_UP_TO
        ax.set_xticks(positions, labels, rotation=45 if few else 90, ha="right" if few else "center", fontsize=fontsize)
    else:
        ax.set_yticks(positions, labels, fontsize=fontsize)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path) -> Path:
    """Counts and row-normalised confusion matrices side by side; above 20 classes only the latter, without numbers."""
    matrix = np.asarray(matrix)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    if n > ANNOTATE_UP_TO:
        side = min(5 + 0.09 * n, 14)
        fig, ax = plt.subplots(figsize=(side + 1.5, side))
        image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        ax.set(xlabel="predicted", ylabel="true", title="confusion matrix, normalised by true class")
        class_ticks(ax, classes, "x")
        class_ticks(ax, classes, "y")
        fig.colorbar(image, ax=ax, fraction=0.046)
        return save(fig, path)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
    cell_font = 7 if n <= 10 else 5
    panels = ((axes[0], matrix, "counts", "d"), (axes[1], normalised, "normalised by true class", ".2f"))
    for ax, data, title, fmt in panels:
        image = ax.imshow(data, cmap="Blues")
        ax.set(xlabel="predicted", ylabel="true", title=title)
        class_ticks(ax, classes, "x")
        class_ticks(ax, classes, "y")
        for i in range(n):
            for j in range(n):
                color = "white" if data[i, j] > data.max() / 2 else "black"
                ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=cell_font, color=color)
        fig.colorbar(image, ax=ax, fraction=0.046)
    return save(fig, path)


def plot_reliability(bins: dict[str, dict], path: Path) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, one bar series per variant."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    width = 1 / len(next(iter(bins.values()))["count"])
    for k, (label, b) in enumerate(bins.items()):
        filled = b["count"] > 0
        centres = (b["edges"][:-1] + b["edges"][1:]) / 2
        offset = (k - (len(bins) - 1) / 2) * width / len(bins)
        ax.bar(centres[filled] + offset, b["accuracy"][filled], width=width / len(bins), alpha=0.8, label=label)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="reliability diagram")
    ax.legend(loc="upper left")
    return save(fig, path)


def plot_risk_coverage(curve: dict[str, list[float]], point: dict, path: Path, target: float | None = None) -> Path:
    """The risk–coverage curve of a confidence score (error rate among the answered images against the fraction
    answered), with ``point`` (its ``coverage`` and ``risk``: where a threshold lands) and the ``target`` risk."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(curve["coverage"], curve["risk"], lw=2, label="answering the surest first")
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target risk {target:.1%}")
    ax.plot([point["coverage"]], [point["risk"]], "o", color="C3", label="the threshold (fitted on validation)")
    ax.set(xlabel="coverage (fraction answered)", ylabel="risk (error rate among answered)", xlim=(0, 1))
    ax.set(ylim=(0, max(max(curve["risk"]), target or 0) * 1.1 or 1), title="risk–coverage (test split)")
    ax.legend(loc="upper left")
    return save(fig, path)


def plot_pr_curves(curves: dict[str, dict], path: Path, title: str = "precision–recall per class") -> Path:
    """Precision against recall, one line per class (``curves``: name → precision, recall and AP), in the given
    order; the legend names each class with its AP."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name, curve in curves.items():
        ax.plot(curve["recall"], curve["precision"], lw=1.2, label=f"{shorten(name)} (AP {curve['ap']:.2f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(fontsize=7, loc="lower left", ncol=1 if len(curves) <= 10 else 2)
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_history(history: list[dict], path: Path, title: str = "") -> Path:
    """Loss, accuracy and learning rate per epoch (train and validation)."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key in ((axes[0], "loss"), (axes[1], "acc")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], label="train")
        if "val_" + key in history[0]:
            ax.plot(epochs, [h[f"val_{key}"] for h in history], label="validation")
        ax.set(xlabel="epoch", ylabel=key, title=f"{title} {key}".strip())
        ax.legend()
        ax.grid(alpha=0.3)
    axes[2].plot(epochs, [h["lr"] for h in history])
    axes[2].set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    axes[2].grid(alpha=0.3)
    return save(fig, path)


def short_caption(caption: str) -> str:
    """``caption`` with each class name (the parts between " → " and newlines) shortened; a long line split at " → "."""
    lines = []
    for line in caption.split("\n"):
        parts = [shorten(part) for part in line.split(" → ")]
        joined = " → ".join(parts)
        lines += [joined] if len(joined) <= NAME_CHARS + 6 else [part + " →" for part in parts[:-1]] + parts[-1:]
    return "\n".join(lines)


def plot_gallery(images: np.ndarray, captions: list[str], path: Path, columns: int = 8) -> Path:
    """A grid of uint8 (N, 3, H, W) images with a short caption over each."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.9))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, image, caption in zip(np.atleast_1d(axes).ravel(), images, captions, strict=False):
        ax.imshow(np.transpose(image, (1, 2, 0)), interpolation="nearest")
        ax.set_title(short_caption(caption), fontsize=7)
    return save(fig, path)


def plot_bars(labels: list[str], values: list[float], path: Path, title: str = "") -> Path:
    """A bar chart, one bar per label; above 20 bars without the value on each and with small ticks."""
    n = len(labels)
    fig, ax = plt.subplots(figsize=(min(max(8, 0.16 * n), 16), 3.5))
    bars = ax.bar(range(n), values, color="#4c72b0")
    if n <= ANNOTATE_UP_TO:
        ax.bar_label(bars, fontsize=8)
    class_ticks(ax, labels, "x")
    ax.set(title=title, xlim=(-0.6, n - 0.4))
    return save(fig, path)


def plot_sizes(sizes: list[tuple[int, int]], path: Path, title: str = "") -> Path:
    """Width against height of raw images, one dot per image (log scales)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if sizes:
        widths, heights = zip(*sizes, strict=True)
        ax.scatter(widths, heights, s=6, alpha=0.4, color="#4c72b0")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set(xlabel="width (px)", ylabel="height (px)", title=title)
    ax.grid(alpha=0.3)
    return save(fig, path)
