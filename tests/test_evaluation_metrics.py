"""Evaluation metrics against scikit-learn and constructed cases with known answers."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, precision_score, recall_score

from imgclf.evaluation.calibration import (
    TEMPERATURE_BOUNDS,
    calibration_metrics,
    fit_temperature,
    reliability_bins,
    softmax,
)
from imgclf.evaluation.metrics import classification_metrics, most_confused_pairs

CLASSES = [f"c{i}" for i in range(4)]


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    logits = rng.normal(size=(500, 4)) + 2.5 * np.eye(4)[labels] * rng.random((500, 1))
    return logits, labels


def test_classification_metrics_match_sklearn(predictions):
    logits, labels = predictions
    pred = logits.argmax(1)
    m = classification_metrics(logits, labels, CLASSES)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert m["macro"]["f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert m["weighted"]["precision"] == pytest.approx(precision_score(labels, pred, average="weighted"))
    per_class_recall = recall_score(labels, pred, average=None)
    for i, name in enumerate(CLASSES):
        assert m["per_class"][name]["recall"] == pytest.approx(per_class_recall[i])
        assert m["per_class"][name]["accuracy"] == pytest.approx(per_class_recall[i])  # per-class acc = recall
    assert np.array(m["confusion_matrix"]).sum() == 500


def test_most_confused_pairs():
    matrix = np.array([[5, 3, 0], [1, 6, 0], [0, 7, 2]])
    pairs = most_confused_pairs(matrix, ["a", "b", "c"], top=5)
    assert pairs == [
        {"true": "c", "predicted": "b", "count": 7},
        {"true": "a", "predicted": "b", "count": 3},
        {"true": "b", "predicted": "a", "count": 1},
    ]


def test_ece_of_constructed_cases():
    labels = np.zeros(100, dtype=int)
    # every prediction has confidence 0.8 for class 0 and all are correct: ECE = |1.0 - 0.8| = 0.2
    probs = np.tile([0.8, 0.2], (100, 1))
    assert calibration_metrics(np.log(probs), labels)["ece"] == pytest.approx(0.2)
    # confidence 0.8, and exactly 80% correct: perfectly calibrated
    labels80 = np.array([0] * 80 + [1] * 20)
    metrics = calibration_metrics(np.log(probs), labels80)
    assert metrics["ece"] == pytest.approx(0.0, abs=1e-12) and metrics["mce"] == pytest.approx(0.0, abs=1e-12)
    # two bins: 50 samples at 0.95 all wrong (gap 0.95), 50 at 0.6 all right (gap 0.4): ECE 0.675, MCE 0.95
    probs2 = np.vstack([np.tile([0.95, 0.05], (50, 1)), np.tile([0.6, 0.4], (50, 1))])
    labels2 = np.array([1] * 50 + [0] * 50)
    m2 = calibration_metrics(np.log(probs2), labels2)
    assert m2["ece"] == pytest.approx(0.675) and m2["mce"] == pytest.approx(0.95)


def test_nll_and_brier_match_sklearn(predictions):
    logits, labels = predictions
    probs = softmax(logits)
    m = calibration_metrics(logits, labels)
    assert m["nll"] == pytest.approx(log_loss(labels, probs, labels=range(4)))
    binary = np.array([0, 1, 1, 0])
    binary_probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.2, 0.8]])
    # the multi-class Brier score of two classes is twice sklearn's binary one
    assert calibration_metrics(np.log(binary_probs), binary)["brier"] == pytest.approx(
        2 * brier_score_loss(binary, binary_probs[:, 1])
    )


def test_reliability_bins_count_everything(predictions):
    logits, labels = predictions
    bins = reliability_bins(softmax(logits), labels, n_bins=15)
    assert bins["count"].sum() == 500 and len(bins["edges"]) == 16


def test_temperature_scaling_keeps_accuracy_and_lowers_nll(predictions):
    logits, labels = predictions
    overconfident = logits * 4
    t = fit_temperature(overconfident, labels)
    assert t > 1.5
    before, after = calibration_metrics(overconfident, labels), calibration_metrics(overconfident / t, labels)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    assert ((overconfident / t).argmax(1) == overconfident.argmax(1)).all()


def test_temperature_is_bounded_and_near_one_for_calibrated_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20_000, 10)) * 2
    drawn = np.array([rng.choice(10, p=p) for p in softmax(logits)])  # labels as likely as the logits say
    assert fit_temperature(logits, drawn) == pytest.approx(1.0, abs=0.05)
    wrong = logits.copy()
    wrong[np.arange(len(drawn)), drawn] -= 20  # confidently wrong: the NLL keeps falling as T grows
    assert fit_temperature(wrong, drawn) == pytest.approx(TEMPERATURE_BOUNDS[1], rel=1e-3)


def test_risk_coverage_aurc_and_threshold_on_a_small_case():
    from imgclf.evaluation.selective import (
        aurc,
        risk_at_coverage,
        risk_coverage,
        selective_metrics,
        threshold_for_risk,
    )

    scores = np.array([0.9, 0.8, 0.8, 0.6, 0.5, 0.3])
    correct = np.array([1, 1, 0, 1, 0, 0], bool)
    curve = risk_coverage(scores, correct)
    assert curve["threshold"].tolist() == [0.9, 0.8, 0.6, 0.5, 0.3]  # the tie at 0.8 is answered together
    assert curve["coverage"] == pytest.approx([1 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    assert curve["risk"] == pytest.approx([0, 1 / 3, 1 / 4, 2 / 5, 1 / 2])
    # among the equal scores the wrong answer counts first: a score earns nothing from ties
    assert aurc(scores, correct) == pytest.approx(np.mean([0, 1 / 2, 1 / 3, 1 / 4, 2 / 5, 1 / 2]))
    assert aurc(-scores, correct) > aurc(scores, correct)  # the reversed ranking answers its mistakes first
    assert threshold_for_risk(scores, correct, 0.3) == 0.6  # risk 1/4 at coverage 4/6, 2/5 beyond
    assert threshold_for_risk(scores, correct, 0.0) == 0.9
    assert threshold_for_risk(scores, np.zeros(6, bool), 0.1) == float("inf")
    metrics = selective_metrics(scores, correct, 0.6)
    assert metrics["coverage"] == pytest.approx(4 / 6) and metrics["risk"] == pytest.approx(1 / 4)
    assert metrics["full_coverage_risk"] == 0.5 and risk_at_coverage(scores, correct, 0.5) == pytest.approx(1 / 3)
    from imgclf.inference.predictor import abstain_score

    logits = np.array([[2.0, 1.0, -1.0], [0.1, 0.0, 0.2]])
    assert abstain_score(logits, "energy", 2.0) == pytest.approx(np.log(np.exp(logits).sum(1)))  # raw logits
    assert abstain_score(logits, "probability", 2.0) == pytest.approx(softmax(logits / 2).max(1))
