import csv
import json

import pytest

from imgclf.cli import main


def test_compare_writes_tables_impact_and_figures(evaluated_runs, tmp_path):
    out = tmp_path / "cmp"
    dirs = [str(evaluated_runs["resnet20"]), str(evaluated_runs["simple_cnn"])]
    assert main(["compare", *dirs, "--order", "simple_cnn", "resnet20", "--output", str(out)]) == 0

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["model"] for r in rows] == ["simple_cnn", "resnet20"]
    accuracy = {m: json.loads((d / "metrics.json").read_text())["test_accuracy"] for m, d in evaluated_runs.items()}
    assert float(rows[0]["test_accuracy"]) == pytest.approx(accuracy["simple_cnn"])
    assert rows[0]["impact"] == "—"
    delta = (accuracy["resnet20"] - accuracy["simple_cnn"]) * 100
    assert rows[1]["impact"] == f"{delta:+.2f} pts vs simple_cnn"
    assert {"parameters", "trainable_parameters", "overfitting_gap", "ece", "images_per_second"} <= set(rows[0])

    markdown = (out / "results.md").read_text().splitlines()
    assert len(markdown) == 4 and "test accuracy" in markdown[0] and "simple_cnn" in markdown[2]
    assert (out / "results.html").read_text().count("<tr>") == 3
    for name in ("curves", "accuracy_vs_parameters", "accuracy_vs_time", "per_class_accuracy", "reliability"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name


def test_compare_needs_evaluated_runs(evaluated_runs, tmp_path):
    (tmp_path / "config.yaml").write_text("model: vgg10\n")
    (tmp_path / "summary.json").write_text("{}")
    assert main(["compare", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert main(["compare", str(evaluated_runs["resnet20"]), "--order", "vgg10", "--output", str(tmp_path)]) == 2
