"""Figures of an evaluation: confusion matrix, reliability diagram, training curves, misclassified gallery."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def save(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as PNG and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path) -> Path:
    """Counts and row-normalised confusion matrices side by side."""
    matrix = np.asarray(matrix)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    panels = ((axes[0], matrix, "counts", "d"), (axes[1], normalised, "normalised by true class", ".2f"))
    for ax, data, title, fmt in panels:
        image = ax.imshow(data, cmap="Blues")
        ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true", title=title)
        ax.set_xticklabels(classes, rotation=45, ha="right")
        ax.set_yticklabels(classes)
        for i in range(len(classes)):
            for j in range(len(classes)):
                color = "white" if data[i, j] > data.max() / 2 else "black"
                ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=7, color=color)
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


def plot_gallery(images: np.ndarray, captions: list[str], path: Path, columns: int = 8) -> Path:
    """A grid of uint8 (N, 3, H, W) images with a caption under each."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.9))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, image, caption in zip(np.atleast_1d(axes).ravel(), images, captions, strict=False):
        ax.imshow(np.transpose(image, (1, 2, 0)), interpolation="nearest")
        ax.set_title(caption, fontsize=7)
    return save(fig, path)


def plot_bars(labels: list[str], values: list[float], path: Path, title: str = "") -> Path:
    """A labelled bar chart."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bars = ax.bar(labels, values, color="#4c72b0")
    ax.bar_label(bars, fontsize=8)
    ax.set(title=title)
    ax.tick_params(axis="x", rotation=45)
    return save(fig, path)
