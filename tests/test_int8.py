"""`imgclf export --int8`: onnxruntime static quantization calibrated on training images, gated on validation
accuracy, refused in one line when it drops too far; predict and serve run the int8 file."""

import json
import shutil
from pathlib import Path

import onnx
import pytest
from fastapi.testclient import TestClient

from imgclf.artifacts.runs import RunDir
from imgclf.cli import main
from imgclf.data.images import Splits
from imgclf.inference import quantize
from imgclf.inference.app import create_app
from imgclf.inference.load import card_from_metadata, load_predictor, onnx_metadata, runtime_note
from imgclf.inference.predictor import OnnxPredictor


@pytest.fixture
def run_copy(folder_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(folder_run, run, ignore=shutil.ignore_patterns(".lock", "model*.onnx", "*.parity.json"))
    return run


def test_int8_export_is_calibrated_on_training_images_and_gated(run_copy, monkeypatch, capsys):
    def no_test_split(self):
        raise AssertionError("the int8 export read the test split")

    monkeypatch.setattr(Splits, "test", no_test_split)
    assert main(["export", str(run_copy), "--int8"]) == 0
    out = capsys.readouterr().out
    path = run_copy / "model.int8.onnx"
    assert path.is_file() and not (run_copy / "model.onnx").exists()
    assert "int8 gate on" in out and "validation images" in out
    card = card_from_metadata(onnx_metadata(path), path)
    q = card.quantization
    assert q["precision"] == "int8" and q["format"] == "QDQ" and q["calibrated_on"] == "train"
    train_images = len(json.loads((run_copy / "split.json").read_text())["train"])
    assert q["calibration_images"] == min(quantize.CALIBRATION_IMAGES, train_images)
    gate = q["gate"]
    assert gate["passed"] and gate["split"] == "validation" and gate["max_drop_points"] == 0.5
    assert gate["drop_points"] == pytest.approx((gate["fp32_accuracy"] - gate["int8_accuracy"]) * 100, abs=1e-3)
    figures = json.loads((run_copy / "model.int8.parity.json").read_text())
    assert figures["gate"] == gate and figures["precision"] == "int8"
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ: the int8 graph, not a copy of the float one
    # predict and serve run it, and say it is int8
    predictor = load_predictor(path)
    assert isinstance(predictor, OnnxPredictor) and predictor.card.quantization["precision"] == "int8"
    images = sorted(Path(RunDir(run_copy).read_config().data).rglob("*.png"))[:8]
    assert main(["predict", str(path), *map(str, images), "--format", "jsonl"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 8 and all(r["predictions"][0]["class"] in card.classes for r in records)
    assert runtime_note(predictor) == "onnxruntime int8"
    with TestClient(create_app(predictor)) as client:
        assert client.get("/info").json()["quantization"]["precision"] == "int8"
        answer = client.post("/predict", content=images[0].read_bytes(), headers={"content-type": "image/png"})
        assert answer.status_code == 200 and answer.json()["predictions"][0]["top"][0]["class"] in card.classes


def test_int8_refused_beyond_max_drop_leaves_no_model(run_copy, monkeypatch, capsys):
    monkeypatch.setattr(quantize, "gate_accuracy", lambda p, data: 0.5 if isinstance(p, OnnxPredictor) else 1.0)
    assert main(["export", str(run_copy), "--int8", "--max-drop", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imgclf: error: int8 model refused: validation accuracy 100.00% (fp32)")
    assert "→ 50.00% (int8), a drop of 50.00 points, more than --max-drop 1" in err[0]
    assert not (run_copy / "model.int8.onnx").exists()
    assert not list(run_copy.glob("*.tmp*")) and not list(run_copy.glob("*.fp32.onnx"))
    assert json.loads((run_copy / "model.int8.parity.json").read_text())["gate"]["passed"] is False


@pytest.mark.parametrize("value", ["-1", "nan", "101"])
def test_bad_max_drop_is_one_line(run_copy, capsys, value):
    assert main(["export", str(run_copy), "--int8", "--max-drop", value]) == 2
    assert "--max-drop must be a number of points from 0 to 100" in capsys.readouterr().err
