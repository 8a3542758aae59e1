"""`imgclf evaluate` on a real (tiny) run: metrics file, figures, and the test split read once, after fitting."""

import json

import numpy as np
import pytest

import imgclf.data.cifar as cifar
from imgclf.artifacts.runs import RunDir, run_splits
from imgclf.cli import main
from imgclf.evaluation.calibration import fit_temperature
from imgclf.inference.load import load_predictor


@pytest.fixture
def split_reads(monkeypatch):
    """Count the loads of each CIFAR-10 split (every source loads through cifar.load_cifar)."""
    reads = {"train": 0, "test": 0}
    original = cifar.load_cifar

    def counting(split, *args, **kwargs):
        reads[split] += 1
        return original(split, *args, **kwargs)

    monkeypatch.setattr(cifar, "load_cifar", counting)
    return reads


def test_test_split_feeds_no_fitting_and_is_read_once(tmp_path, tiny_options, split_reads):
    args = [
        "train",
        "--name",
        "r",
        "--model",
        "resnet20",
        "--epochs",
        "2",
        "--early-stopping",
        "3",
        "--reduce-lr-patience",
        "1",
        *tiny_options,
    ]
    assert main(args) == 0
    assert split_reads == {"train": 1, "test": 0}  # training, early stopping, LR plateau, best checkpoint: no test

    run_dir = tmp_path / "r"
    assert main(["evaluate", str(run_dir), "--tta"]) == 0
    assert split_reads["test"] == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())

    # the temperature is the one fitted on the validation split of the run
    predictor = load_predictor(run_dir, "cpu")
    val = run_splits(RunDir(run_dir).read_config()).val
    val_logits = predictor.dataset_logits(val)
    assert metrics["temperature"] == pytest.approx(fit_temperature(val_logits, val.labels.numpy()), rel=1e-3)
    assert predictor.temperature == metrics["temperature"]  # the card carries it to predict and serve


def test_metrics_file_and_figures(tmp_path, tiny_options):
    assert main(["train", "--name", "m", "--model", "simple_cnn", "--epochs", "2", *tiny_options]) == 0
    run_dir = tmp_path / "m"
    assert main(["evaluate", str(run_dir), "--tta"]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert np.array(m["confusion_matrix"]).sum() == 10_000 == m["test_images"]
    assert m["overfitting_gap"] == pytest.approx(m["train_accuracy"] - m["test_accuracy"])
    assert m["overfitting_gap_val"] == pytest.approx(m["train_accuracy"] - m["val_accuracy"])
    assert m["parameters"] == m["trainable_parameters"] == 315_914
    assert set(m["per_class"]) == {
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    }
    assert 0 <= m["calibration"]["ece"] <= 1 and m["calibration_temperature_scaled"]["nll"] > 0
    assert 0 <= m["tta"]["test_accuracy"] <= 1 and m["inference_images_per_second"] > 0
    assert m["model_bytes"] == (run_dir / "best.safetensors").stat().st_size
    for figure in m["figures"]:
        assert (run_dir / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    assert len(m["figures"]) == 6 and {"figures/risk_coverage.png", "figures/misclassified_gradcam.png"} <= set(
        m["figures"]
    )
