"""Figures that compare runs: training curves, accuracy vs size and time, per-class heat map, reliability."""

from pathlib import Path

import numpy as np
from matplotlib import ticker

from imgclf.report.plots import ANNOTATE_UP_TO, class_ticks, plt, save


def plot_curves(runs: list[dict], path: Path) -> Path:
    """Validation (or training) accuracy and loss per epoch, one line per run."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for run in runs:
        history = run["history"]
        if not history:
            continue
        split = "val" if "val_acc" in history[0] else "train"
        epochs = [h["epoch"] for h in history]
        axes[0].plot(epochs, [h[f"{split}_acc"] for h in history], label=run["run"])
        axes[1].plot(epochs, [h[f"{split}_loss"] for h in history], label=run["run"])
    axes[0].set(xlabel="epoch", ylabel="validation accuracy", title="accuracy")
    axes[1].set(xlabel="epoch", ylabel="validation loss", title="loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def plot_scatter(runs: list[dict], x_key: str, x_label: str, path: Path, log_x: bool = False) -> Path:
    """Test accuracy against ``x_key``, each point labelled with its run."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for run in runs:
        ax.scatter(run[x_key], run["test_accuracy"] * 100, s=40)
        ax.annotate(
            run["run"], (run[x_key], run["test_accuracy"] * 100), fontsize=8, xytext=(4, 4), textcoords="offset points"
        )
    if log_x:  # plain tick labels (100k, 1M): text.parse_math is off, so the default's mathtext would show raw
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set(xlabel=x_label, ylabel="test accuracy (%)", title=f"accuracy vs {x_label}")
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_per_class(runs: list[dict], path: Path) -> Path:
    """Heat map of per-class test accuracy: runs × classes (the first run's classes); numbers up to 20 classes."""
    classes = list(runs[0]["per_class_accuracy"])
    data = np.array([[r["per_class_accuracy"].get(c, np.nan) for c in classes] for r in runs]) * 100
    few = len(classes) <= ANNOTATE_UP_TO
    width = 1.0 * len(classes) + 2 if few else min(4 + 0.12 * len(classes), 16)
    fig, ax = plt.subplots(figsize=(width, 0.5 * len(runs) + 1.5))
    image = ax.imshow(data, cmap="viridis", aspect="auto")
    ax.set(yticks=range(len(runs)), title="per-class test accuracy (%)")
    class_ticks(ax, classes, "x")
    ax.set_yticklabels([r["run"] for r in runs])
    if few:
        for (i, j), value in np.ndenumerate(data):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8, color="white")
    fig.colorbar(image, ax=ax)
    return save(fig, path)


def plot_reliability_overlay(runs: list[dict], path: Path) -> Path:
    """Reliability curves (accuracy per confidence bin) of every run on one diagram."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for run in runs:
        bins = run["reliability"]
        filled = np.array(bins["count"]) > 0
        ax.plot(
            np.array(bins["confidence"])[filled],
            np.array(bins["accuracy"])[filled],
            "o-",
            ms=3,
            label=f"{run['run']} (ECE {run['ece']:.1%})",
        )
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="reliability")
    ax.legend(fontsize=8, loc="upper left")
    return save(fig, path)


def comparison_figures(runs: list[dict], folder: Path) -> list[Path]:
    """Every comparison figure, as PNG files in ``folder``."""
    paths = [
        plot_curves(runs, folder / "curves.png"),
        plot_scatter(runs, "parameters", "parameters", folder / "accuracy_vs_parameters.png", log_x=True),
        plot_scatter(runs, "train_seconds", "training time (s)", folder / "accuracy_vs_time.png"),
        plot_per_class(runs, folder / "per_class_accuracy.png"),
    ]
    if all(r["reliability"] for r in runs):
        paths.append(plot_reliability_overlay(runs, folder / "reliability.png"))
    return paths
