"""Reports and figures from synthetic metrics (no training): dataset names, many classes, the reference column."""

import ast
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from imgclf.report import figures, plots
from imgclf.report.compare import compare
from imgclf.report.html import evaluation_report, hide_paths

LONG = "a-class-name-far-longer-than-eighteen-characters"


def class_names(k: int) -> list[str]:
    return [f"{LONG}-{i}" if i % 7 == 0 else f"class_{i}" for i in range(k)]


def fake_metrics(model: str, k: int = 10, accuracy: float = 0.5, dataset: str | None = None) -> dict:
    rng = np.random.default_rng(k)
    classes = class_names(k)
    accuracies = rng.random(k).tolist()
    matrix = rng.integers(0, 5, (k, k)) + np.eye(k, dtype=int) * 20
    scores = {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    calibration = {"ece": 0.05, "mce": 0.1, "nll": 1.2, "brier": 0.3}
    metrics = {
        "model": model,
        "test_accuracy": accuracy,
        "test_loss": 1.1,
        "train_accuracy": accuracy + 0.1,
        "overfitting_gap": 0.1,
        "parameters": 1000,
        "trainable_parameters": 1000,
        "inference_images_per_second": 5000.0,
        "device": "cpu",
        "precision": "fp32",
        "macro": scores,
        "weighted": scores,
        "per_class": {
            name: {**scores, "support": 20, "accuracy": a} for name, a in zip(classes, accuracies, strict=True)
        },
        "confusion_matrix": matrix.tolist(),
        "most_confused": [{"true": classes[1], "predicted": classes[2], "count": 7}],
        "temperature": 1.5,
        "calibration": calibration,
        "calibration_temperature_scaled": calibration,
        "reliability": None,
        "figures": [],
    }
    if dataset is not None:
        metrics.update(dataset=dataset, classes=classes)
    return metrics


def make_run(folder, name: str, metrics: dict):
    run = folder / name
    run.mkdir(parents=True)
    config = {"model": metrics["model"], "data_dir": str(folder / "data"), "output": str(folder)}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {"model": metrics["model"], "parameters": metrics["parameters"], "epochs_run": 1, "train_seconds": 12.0}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "history.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": 0.4, "val_loss": 1.5}) + "\n")
    return run


def png_size(path) -> tuple[int, int]:
    height, width = imread(path).shape[:2]
    return width, height


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The figures the plotting functions save, kept open for inspection."""
    kept, save = [], plots.save

    def keep(fig, path):
        kept.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    monkeypatch.setattr(figures, "save", keep)
    monkeypatch.setattr(plots.plt, "close", lambda fig: None)
    yield kept
    plots.plt.close("all")


def texts_and_ticks(fig) -> tuple[int, int, int]:
    """Texts written in the axes, the most tick labels on one axis, the longest tick label."""
    plots_only = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    labels = [[t.get_text() for t in get()] for ax in plots_only for get in (ax.get_xticklabels, ax.get_yticklabels)]
    return sum(len(ax.texts) for ax in fig.axes), max(map(len, labels)), max(len(t) for ls in labels for t in ls)


def test_confusion_matrix_of_100_classes_stays_legible(tmp_path, drawn):
    matrix = np.array(fake_metrics("m", 100)["confusion_matrix"])
    path = plots.plot_confusion(matrix, class_names(100), tmp_path / "confusion.png")
    width, height = png_size(path)
    assert 600 < width < 2200 and 600 < height < 2200
    texts, most_ticks, longest = texts_and_ticks(drawn[-1])
    assert texts == 0 and most_ticks <= plots.TICK_LABELS_UP_TO and longest <= plots.NAME_CHARS
    small = plots.plot_confusion(matrix[:10, :10], class_names(10), tmp_path / "small.png")
    assert png_size(small)[0] > png_size(small)[1]  # counts and normalised side by side
    assert texts_and_ticks(drawn[-1])[0] == 2 * 100  # a number in every cell of both panels


def test_many_class_figures_stay_legible(tmp_path, drawn):
    runs = [{"run": f"r{i}", "per_class_accuracy": dict.fromkeys(class_names(100), 0.5)} for i in range(3)]
    assert png_size(figures.plot_per_class(runs, tmp_path / "per_class.png"))[0] < 2200
    texts, most_ticks, longest = texts_and_ticks(drawn[-1])
    assert texts == 0 and most_ticks <= plots.TICK_LABELS_UP_TO and longest <= plots.NAME_CHARS
    bars = plots.plot_bars(class_names(100), list(range(100)), tmp_path / "bars.png", title="per class")
    assert png_size(bars)[0] < 2200
    texts, most_ticks, longest = texts_and_ticks(drawn[-1])
    assert texts == 0 and most_ticks <= plots.TICK_LABELS_UP_TO and longest <= plots.NAME_CHARS
    plots.plot_bars(class_names(10), list(range(10)), tmp_path / "bars10.png")
    assert texts_and_ticks(drawn[-1])[0] == 10  # each bar labelled with its value
    images = np.zeros((4, 3, 8, 8), np.uint8)
    captions = [f"{LONG} → {LONG}\n90%", "cat", f"{LONG}-x", "dog → cat\n51%"]
    gallery = plots.plot_gallery(images, captions, tmp_path / "gallery.png", columns=4)
    assert png_size(gallery)[0] < 1200
    titles = [ax.get_title() for ax in drawn[-1].axes]
    assert titles[1:] == ["cat", plots.shorten(LONG), "dog → cat\n51%"]
    assert all(len(line) <= plots.NAME_CHARS + 2 for line in titles[0].split("\n"))


def test_shorten_and_hide_paths(tmp_path):
    assert plots.shorten("cat") == "cat"
    assert len(plots.shorten(LONG)) == plots.NAME_CHARS and plots.shorten(LONG).endswith("…")
    hidden = hide_paths({"data": str(tmp_path / "plant-leaves"), "output": "runs", "list": [str(tmp_path)]})
    assert hidden == {"data": "…/plant-leaves", "output": "runs", "list": [f"…/{tmp_path.name}"]}


def test_evaluation_report_names_the_dataset(tmp_path):
    page = evaluation_report(tmp_path, fake_metrics("resnet20", 10, dataset="plant-leaves"), {"data": str(tmp_path)})
    text = page.read_text()
    assert "<title>resnet20 on plant-leaves</title>" in text
    assert str(tmp_path) not in text
    old = evaluation_report(tmp_path, fake_metrics("resnet20", 10), {})
    assert "<title>resnet20 on CIFAR-10</title>" in old.read_text()


def first_column(table_html: str) -> list[str]:
    return re.findall(r"<tr><td>([^<]*)</td>", table_html)


def test_evaluation_report_sorts_many_classes_worst_first(tmp_path):
    metrics = fake_metrics("resnet20", 100, dataset="plant-leaves")
    text = evaluation_report(tmp_path, metrics, {}).read_text()
    assert "worst accuracy first" in text and "Most confused pairs" in text
    first_table = text[text.index("<table") : text.index("</table>")]
    expected = sorted(metrics["per_class"], key=lambda c: metrics["per_class"][c]["accuracy"])
    assert first_column(first_table) == [*expected, "macro avg", "weighted avg"]

    few = fake_metrics("resnet20", 10)
    text = evaluation_report(tmp_path, few, {}).read_text()
    first_table = text[text.index("<table") : text.index("</table>")]
    assert "worst accuracy first" not in text
    assert first_column(first_table) == [*few["per_class"], "macro avg", "weighted avg"]


def test_cifar10_comparison_has_the_reference_column_and_no_paths(tmp_path):
    runs = [
        make_run(tmp_path, "simple_cnn", fake_metrics("simple_cnn", accuracy=0.70, dataset="CIFAR-10")),
        make_run(tmp_path, "resnet20", fake_metrics("resnet20", accuracy=0.85)),  # old metrics: CIFAR-10
        make_run(tmp_path, "mine", fake_metrics("mobilenetv3_small_050", accuracy=0.8, dataset="CIFAR-10")),
    ]
    out = tmp_path / "cmp"
    result = compare(runs, out)
    assert all("path" not in r for r in result)
    markdown = (out / "results.md").read_text().splitlines()
    assert "reference accuracy" in markdown[0]
    assert "67.47%" in markdown[2] and "+2.53%" in markdown[2]
    assert "87.70%" in markdown[3] and "-2.70%" in markdown[3]
    assert markdown[4].split(" | ")[3:5] == ["—", "—"]  # no match: no reference accuracy, no Δ
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert float(rows[0]["reference_accuracy"]) == pytest.approx(0.6747) and rows[2]["reference_accuracy"] == ""
    report = (out / "report.html").read_text()
    assert "<title>Model comparison on CIFAR-10</title>" in report and "67.47%" in report
    assert "87.70%" in (out / "results.html").read_text()
    for name in ("report.html", "results.md", "results.csv", "results.html"):
        assert str(tmp_path) not in (out / name).read_text(), name
    assert "<pre>[" not in report


def test_other_datasets_get_no_reference_column(tmp_path):
    runs = [
        make_run(tmp_path, "simple_cnn", fake_metrics("simple_cnn", 100, dataset="plant-leaves")),
        make_run(tmp_path, "resnet20", fake_metrics("resnet20", 100, dataset="CIFAR-10")),
    ]
    out = tmp_path / "cmp"
    compare(runs, out)
    report = (out / "report.html").read_text()
    assert "<title>Model comparison on plant-leaves / CIFAR-10</title>" in report
    assert "reference" not in (out / "results.md").read_text()
    assert "reference" not in report and "67.47%" not in report
    assert "reference_accuracy" not in (out / "results.csv").read_text()
    assert str(tmp_path) not in report


def test_unmatched_cifar10_runs_get_no_reference_column(tmp_path):
    out = tmp_path / "cmp"
    compare([make_run(tmp_path, "mine", fake_metrics("convnext_tiny", dataset="CIFAR-10"))], out)
    assert "reference" not in (out / "results.md").read_text()


def imported_modules(module) -> set[str]:
    """Every module ``module``'s source imports, at module level or inside functions."""
    tree = ast.parse(Path(module.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def test_html_does_not_import_compare():
    code = "import sys, imgclf.report.html; print('imgclf.report.compare' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    from imgclf.report import compare as compare_module
    from imgclf.report import html

    assert "imgclf.report.compare" not in imported_modules(html)
    assert "imgclf.report.html" in imported_modules(compare_module)  # the one direction


def drawn_texts(fig) -> list[str]:
    """Every text the figure shows once drawn: titles, labels, annotations and the tick labels matplotlib makes."""
    import matplotlib.text

    fig.canvas.draw()
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]


def test_comparison_figures_show_plain_text_not_raw_mathtext(tmp_path, drawn):
    """Log-scale axes label their ticks in plain text (100k, 1M): with mathtext off for class names, matplotlib's
    default log labels came out raw, as '$\\mathdefault{10^{5}}$'."""
    runs = []
    for name, model, params, acc in [
        ("simple_cnn", "simple_cnn", 315_914, 0.7),
        ("lite2", "tf_efficientnet_lite2", 4_823_882, 0.9),
    ]:
        metrics = {**fake_metrics(model, accuracy=acc, dataset="CIFAR-10"), "parameters": params}
        runs.append(make_run(tmp_path, name, metrics))
    compare(runs, tmp_path / "cmp")
    texts = [text for fig in drawn for text in drawn_texts(fig)]
    assert texts and not [t for t in texts if "$" in t or "mathdefault" in t]
    ticks = [t.get_text() for fig in drawn if fig.axes for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert any(t.endswith(("k", "M")) for t in ticks), ticks
