"""Abstaining: the threshold fitted on validation for a target risk, stored in the card, obeyed by predict (table,
CSV, JSONL), serve (JSON and the page) and the ONNX export, and drawn in the report."""

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgclf.artifacts.card import ModelCard
from imgclf.artifacts.runs import RunDir, run_splits
from imgclf.cli import main
from imgclf.core.errors import ImgclfError
from imgclf.data.policies import below_threshold
from imgclf.evaluation.selective import abstain_rule, threshold_for_risk
from imgclf.inference.app import create_app
from imgclf.inference.load import load_predictor
from imgclf.inference.options import Limits
from imgclf.inference.predict import predict_files
from imgclf.inference.predictor import UNKNOWN, abstain_score


@pytest.fixture(scope="module")
def abstaining_run(folder_run, tmp_path_factory):
    """A copy of the folder run, evaluated with ``--abstain auto --target-risk 0.1`` (the default score: energy)."""
    run = tmp_path_factory.mktemp("abstain") / "run"
    shutil.copytree(folder_run, run, ignore=shutil.ignore_patterns(".lock", "model.onnx*"))
    assert main(["evaluate", str(run), "--abstain", "auto", "--target-risk", "0.1"]) == 0
    return run


def test_the_rule_is_fitted_on_validation_for_the_target_risk(abstaining_run):
    card = RunDir(abstaining_run).read_card()
    rule = card.abstain
    assert rule["score"] == "energy" and rule["target_risk"] == 0.1
    predictor = load_predictor(abstaining_run, "cpu", runtime="torch")
    val = run_splits(RunDir(abstaining_run).read_config(), RunDir(abstaining_run).read_split(), card).val
    logits = predictor.dataset_logits(val)
    scores, correct = abstain_score(logits, "energy", card.temperature), logits.argmax(1) == val.labels.numpy()
    assert scores == pytest.approx(np.log(np.exp(logits.astype(np.float64)).sum(1)))
    assert rule["threshold"] == pytest.approx(threshold_for_risk(scores, correct, 0.1))
    answered = scores >= rule["threshold"]
    assert rule["validation"]["coverage"] == pytest.approx(answered.mean())
    assert rule["validation"]["risk"] <= 0.1
    metrics = json.loads((abstaining_run / "metrics.json").read_text())
    sel = metrics["selective"]
    assert sel["abstaining"] and sel["threshold"] == rule["threshold"]
    assert 0 <= sel["test"]["coverage"] <= 1 and 0 <= sel["test"]["aurc"] <= 1
    assert sel["curve"]["coverage"][-1] == 1.0 and len(sel["curve"]["coverage"]) == len(sel["curve"]["risk"])
    assert "figures/risk_coverage.png" in metrics["figures"]
    assert (abstaining_run / "figures/risk_coverage.png").read_bytes()[:4] == b"\x89PNG"
    page = (abstaining_run / "report.html").read_text()
    assert "Abstaining: answer only when sure" in page and "Score: the energy of the logits" in page
    assert f"when {below_threshold(rule)}" in page and below_threshold(rule) == f"energy below {rule['threshold']:.3g}"


def test_noise_images_are_unknown_and_validation_images_are_answered(abstaining_run, tmp_path):
    rng = np.random.default_rng(0)
    noise = []
    for i in range(16):
        path = tmp_path / f"noise{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        noise.append(str(path))
    predictor = load_predictor(abstaining_run, "cpu", runtime="torch")
    answers = [row.answer for row in predict_files(predictor, noise)]
    assert answers.count(UNKNOWN) >= 14, answers
    source = RunDir(abstaining_run)
    val = run_splits(source.read_config(), source.read_split(), source.read_card()).val
    answered = [a != UNKNOWN for a in predictor.answers(predictor.dataset_logits(val))]
    assert np.mean(answered) == pytest.approx(source.read_card().abstain["validation"]["coverage"])
    assert np.mean(answered) >= 0.5


def fixed_threshold_run(abstaining_run, tmp_path):
    """A copy evaluated with a fixed threshold at the median calibrated probability of its test images (a fixed
    threshold is a probability, whatever ``--abstain-score`` says), so that about half of them are answered; (run,
    threshold, images)."""
    run = tmp_path / "fixed"
    shutil.copytree(abstaining_run, run, ignore=shutil.ignore_patterns(".lock"))
    images = sorted(str(p) for p in Path(RunDir(run).read_config().data).rglob("*.png"))[:24]
    predictor = load_predictor(run, "cpu", runtime="torch")
    probs = [row.top[0][1] for row in predict_files(predictor, images)]
    threshold = float(np.median(probs))
    assert main(["evaluate", str(run), "--abstain", f"{threshold}", "--abstain-score", "energy"]) == 0
    return run, threshold, images


def test_predict_answers_unknown_below_the_threshold(abstaining_run, tmp_path, capsys):
    run, threshold, images = fixed_threshold_run(abstaining_run, tmp_path)
    card = RunDir(run).read_card()
    assert card.abstain["threshold"] == pytest.approx(threshold) and card.abstain["target_risk"] is None
    assert card.abstain["score"] == "probability"
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(run), *images, "--format", "jsonl", "--output", str(out), "--runtime", "torch"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    unknown = 0
    for record in records:
        top = record["predictions"][0]
        if abs(top["probability"] - threshold) < 1e-5:
            continue  # rounded to 6 decimals in the file: too close to call
        expected = UNKNOWN if top["probability"] < threshold else top["class"]
        assert record["answer"] == expected, record
        unknown += expected == UNKNOWN
    assert 0 < unknown < len(records)
    capsys.readouterr()
    assert main(["predict", str(run), *images, "--format", "csv", "--runtime", "torch"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["answer"] for r in rows] == [r["answer"] for r in records]
    assert main(["predict", str(run), *images[:24], "--runtime", "torch"]) == 0
    table = capsys.readouterr().out
    assert table.count(f"{UNKNOWN} (top class below {threshold:.1%})") == sum(r["answer"] == UNKNOWN for r in records)
    # the export carries the rule: the ONNX model answers alike
    assert main(["export", str(run)]) == 0
    onnx = tmp_path / "o.jsonl"
    assert main(["predict", str(run / "model.onnx"), *images, "--format", "jsonl", "--output", str(onnx)]) == 0
    assert [json.loads(line)["answer"] for line in onnx.read_text().splitlines()] == [r["answer"] for r in records]


def test_serve_answers_unknown_below_the_threshold(abstaining_run, tmp_path):
    run, threshold, images = fixed_threshold_run(abstaining_run, tmp_path)
    predictor = load_predictor(run, "cpu", runtime="torch")
    with TestClient(create_app(predictor, Limits(max_images=32, max_body_bytes=4_000_000))) as client:
        files = [("files", (p, Path(p).read_bytes(), "image/png")) for p in images[:16]]
        predictions = client.post("/predict", files=files).json()["predictions"]
    answers = [p["answer"] for p in predictions]
    for p in predictions:
        top = p["top"][0]
        if abs(top["probability"] - threshold) >= 1e-5:
            assert p["answer"] == (UNKNOWN if top["probability"] < threshold else top["class"])
    assert UNKNOWN in answers or min(p["top"][0]["probability"] for p in predictions) >= threshold


def test_without_abstain_the_rule_is_reported_not_applied(folder_run):
    metrics = json.loads((folder_run / "metrics.json").read_text())
    assert RunDir(folder_run).read_card().abstain is None
    assert metrics["selective"]["abstaining"] is False and metrics["selective"]["target_risk"] == 0.05
    assert metrics["selective"]["score"] == "energy"
    assert "not abstaining" in (folder_run / "report.html").read_text()
    predictor = load_predictor(folder_run, "cpu", runtime="torch")
    assert predictor.answers(np.zeros((2, 4))) is None


def test_abstain_rule_pure():
    scores = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([True, True, False, True, False, False])
    rule = abstain_rule("auto", 0.25, scores, correct, "probability")
    assert rule["threshold"] == 0.8 and rule["validation"] == {"images": 6, "coverage": 4 / 6, "risk": 0.25}
    assert abstain_rule("0.9", 0.05, scores, correct, "probability")["validation"]["coverage"] == 0.5
    assert abstain_rule("auto", 0.01, scores, correct, "probability")["threshold"] == 0.95  # the two surest are right
    # the surest errs: nothing is within the risk; a probability answers only 1, an energy nothing seen on validation
    assert abstain_rule("auto", 0.01, scores, ~correct, "probability")["threshold"] == 1.0
    energies = scores * 10
    rule = abstain_rule("auto", 0.01, energies, ~correct, "energy")
    assert rule["threshold"] > 9.9 and rule["validation"]["coverage"] == 0 and rule["score"] == "energy"
    fixed = {"score": "probability", "threshold": 0.5, "target_risk": None}
    assert abstain_rule("0.5", 0.05, None, None, "probability") == fixed
    with pytest.raises(ImgclfError, match="needs a validation split"):
        abstain_rule("auto", 0.05, None, None, "energy")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--abstain", "maybe"], "--abstain must be off, auto or a probability from 0 to 1, got 'maybe'"),
        (["--abstain", "1.5"], "--abstain must be off, auto or a probability"),
        (["--abstain", "nan"], "--abstain must be off, auto or a probability"),
        (["--abstain-score", "margin"], "invalid choice: 'margin'"),
        (["--target-risk", "0"], "--target-risk must be in (0, 1), got 0.0"),
        (["--target-risk", "abc"], "invalid float value"),
    ],
)
def test_bad_abstain_options_are_one_line_errors(folder_run, tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    shutil.copytree(folder_run, run, ignore=shutil.ignore_patterns(".lock", "model.onnx*"))
    assert main(["evaluate", str(run), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and len(err) <= 2  # a usage line for argument errors, then the error


@pytest.mark.parametrize(
    "rule, message",
    [
        ({"score": "margin", "threshold": 0.5}, "abstain 'score' must be one of energy, probability, got 'margin'"),
        ({"score": "probability", "threshold": 2}, "abstain 'threshold' must be a probability"),
        ({"score": "probability"}, "'threshold' is missing or not a number"),
        ({"score": "probability", "threshold": 0.5, "target_risk": 1}, "'target_risk' must be a number in (0, 1)"),
        ([0.5], "must hold a JSON object"),
    ],
)
def test_a_damaged_abstain_rule_in_a_card_is_a_one_line_error(folder_run, rule, message):
    data = json.loads((folder_run / "model.json").read_text())
    with pytest.raises(ImgclfError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelCard.from_dict({**data, "abstain": rule}, "model.json")


def test_an_energy_rule_in_a_card_may_hold_any_number(folder_run):
    data = json.loads((folder_run / "model.json").read_text())
    card = ModelCard.from_dict({**data, "abstain": {"score": "energy", "threshold": 12.5}}, "model.json")
    assert card.abstain["threshold"] == 12.5
    with pytest.raises(ImgclfError, match="'threshold' is missing or not a number"):
        ModelCard.from_dict({**data, "abstain": {"score": "energy", "threshold": float("inf")}}, "model.json")
