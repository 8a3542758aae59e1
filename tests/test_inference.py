"""Using a trained model: `imgclf predict` on files, folders and globs, and `imgclf export` to ONNX with its parity
check, for a network from scratch and an EfficientNet-Lite."""

import csv
import io
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from folders import make_folder, write_bad_files, write_messy_images

from imgclf.artifacts.runs import RunDir, run_splits
from imgclf.cli import main
from imgclf.core.errors import ImgclfError
from imgclf.data.decode import decode_file
from imgclf.evaluation.calibration import softmax
from imgclf.inference import export as export_module
from imgclf.inference.load import load_predictor
from imgclf.inference.predictor import OnnxPredictor, Predictor


def run_predict(capsys, *args) -> tuple[int, str, str]:
    code = main(["predict", *map(str, args), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def split_files(run) -> dict[str, list[str]]:
    """The run's split, as absolute file paths."""
    run = RunDir(run)
    folder = run.read_config().data
    return {split: [f"{folder}/{name}" for name in names] for split, names in run.read_split().items()}


def test_a_prediction_from_a_file_equals_the_evaluations(folder_run, capsys):
    """Decoding a training file the way `predict` does gives the prepared training image; the predicted top-1 over
    the test files reproduces the evaluation's test accuracy exactly, and the probabilities are the evaluation's
    logits calibrated by its temperature."""
    run = RunDir(folder_run)
    cfg, card, metrics = run.read_config(), run.read_card(), run.read_metrics()
    splits = run_splits(cfg, run.read_split(), card)
    files = split_files(folder_run)
    prepared = splits.train.images[np.arange(len(splits.train))].numpy()
    decoded = np.stack([decode_file(f, card.data_size, card.resize)[0] for f in files["train"]])
    assert np.array_equal(prepared, decoded)

    predictor = load_predictor(folder_run, "cpu")
    assert predictor.runtime == "torch" and predictor.temperature == metrics["temperature"]
    expected = predictor.probabilities(predictor.dataset_logits(splits.train))
    code, out, _ = run_predict(capsys, folder_run, *files["train"], "--format", "jsonl", "--top-k", "4")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["path"] for r in rows] == files["train"]
    got = np.array([[p["probability"] for p in sorted(r["predictions"], key=lambda p: card.classes.index(p["class"]))]
                    for r in rows])  # fmt: skip
    np.testing.assert_allclose(got, expected, atol=2e-6)

    code, out, _ = run_predict(capsys, folder_run, *files["test"], "--format", "jsonl", "--top-k", "1")
    top1 = [json.loads(line)["predictions"][0]["class"] for line in out.splitlines()]
    truth = [card.classes[label] for label in splits.test().labels.tolist()]
    assert np.mean([a == b for a, b in zip(top1, truth, strict=True)]) == pytest.approx(metrics["test_accuracy"])


def test_files_folders_and_globs_with_bad_files_mixed_in(folder_run, tmp_path, capsys):
    photos = make_folder(tmp_path / "photos", ["a", "b"], 3)
    write_bad_files(photos / "a", np.random.default_rng(0))
    messy = write_messy_images(photos / "b", 1)
    single = photos / "a" / "000.png"
    items = [photos, f"{photos}/b/*.jpg", single, tmp_path / "missing.png", f"{tmp_path}/*.nothing"]
    code, out, err = run_predict(capsys, folder_run, *items, "--format", "jsonl", "--top-k", "3")
    rows = [json.loads(line) for line in out.splitlines()]
    by_path = {r["path"]: r for r in rows}
    assert code == 0 and len(rows) == len(by_path)  # each file once, though named by a folder, a glob and itself
    errors = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in rows if "error" in r}
    assert errors == {
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated",
        "text.png": "not an image",
        "garbage.jpg": "not an image",
        "bomb.png": "decompression bomb (over Pillow's limit of 89,478,485 pixels)",
        "broken.png": errors["broken.png"],
        "missing.png": "no such file or folder",
        "*.nothing": "no file matches this pattern",
    }
    assert errors["broken.png"].startswith("undecodable")
    good = [r for r in rows if "predictions" in r]
    assert len(good) == 6 + len(messy)  # hidden files and notes.txt are not images: not listed
    for row in good:
        probs = [p["probability"] for p in row["predictions"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert "skipped 8" in err

    assert run_predict(capsys, folder_run, *items, "--strict")[0] == 1  # --strict: a skipped file fails the run
    code, out, _ = run_predict(capsys, folder_run, single, photos / "a" / "empty.jpg", "--format", "csv")
    table = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["error"] for r in table] == ["", "empty file"]
    assert table[0]["class_1"] in RunDir(folder_run).read_card().classes and float(table[0]["probability_1"]) > 0
    code, out, _ = run_predict(capsys, folder_run, single, "--top-k", "2")
    assert code == 0 and out.startswith(str(single)) and out.count("%") == 2


def test_pipes_are_skipped_and_written_in_place(folder_run, tmp_path, capsys):
    import os
    import stat
    import threading

    pipe = tmp_path / "pipe.jpg"  # named on the command line: reading it would wait for a writer forever
    os.mkfifo(pipe)
    assert run_predict(capsys, folder_run, pipe, "--strict")[0] == 1
    code, out, _ = run_predict(capsys, folder_run, pipe, "--format", "jsonl")
    assert code == 0 and json.loads(out)["error"] == "not a regular file (a pipe, device or socket)"
    image = split_files(folder_run)["val"][0]
    target, got = tmp_path / "out.jsonl", []  # --output a pipe (or /dev/null): written into, never replaced
    os.mkfifo(target)
    reader = threading.Thread(target=lambda: got.append(target.read_text()), daemon=True)
    reader.start()
    code, _, _ = run_predict(capsys, folder_run, image, "--format", "jsonl", "--output", target)
    reader.join(10)
    assert code == 0 and got and stat.S_ISFIFO(target.stat().st_mode) and json.loads(got[0])["path"] == image
    code, _, err = run_predict(capsys, folder_run, image, "--output", tmp_path)
    assert code == 2 and f"{tmp_path} is a folder: name a file to write" in err


def test_calibrated_raw_tta_and_output_file(folder_run, tmp_path, capsys):
    image = split_files(folder_run)["val"][0]
    predictor = load_predictor(folder_run, "cpu")
    logits = predictor.logits(decode_file(image, 32, "crop")[0][None])
    outputs = {}
    for name, extra in {"calibrated": [], "raw": ["--raw"], "tta": ["--tta", "--raw"]}.items():
        out_file = tmp_path / f"{name}.jsonl"
        code, out, err = run_predict(capsys, folder_run, image, "--format", "jsonl", "--output", out_file, *extra)
        assert code == 0 and out == "" and "into" in err
        row = json.loads(out_file.read_text())
        outputs[name] = {p["class"]: p["probability"] for p in row["predictions"]}
    classes = predictor.classes
    raw = softmax(logits)[0]
    calibrated = softmax(logits / predictor.temperature)[0]
    assert [outputs["raw"][c] for c in classes] == pytest.approx(raw, abs=1e-6)
    assert [outputs["calibrated"][c] for c in classes] == pytest.approx(calibrated, abs=1e-6)
    mirrored = predictor.logits(decode_file(image, 32, "crop")[0][None], flip_tta=True)
    assert not np.allclose(mirrored, logits)  # the probabilities of these colours saturate: compare the logits
    assert [outputs["tta"][c] for c in classes] == pytest.approx(softmax(mirrored)[0], abs=1e-6)


def test_predict_errors_are_one_line(folder_run, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"")
    cases = {
        (tmp_path / "nothing", tmp_path / "x.png"): "no such run directory or model file",
        (tmp_path, tmp_path / "x.png"): "not a run directory",
        (tmp_path / "x.png", tmp_path / "x.png"): "is not a run directory, .safetensors or .onnx file",
        (folder_run, tmp_path / "x.png", "--top-k", "0"): "--top-k must be a positive integer",
        (folder_run, tmp_path / "x.png", "--runtime", "onnxruntime"): "has no current ONNX export",
    }
    for args, message in cases.items():
        code, _, err = run_predict(capsys, *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not onnx at all")
    code, _, err = run_predict(capsys, fake, tmp_path / "x.png")
    assert code == 2 and "not an ONNX model" in err


def test_export_from_scratch_parity_metadata_and_onnx_predict(folder_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(folder_run, run)
    assert main(["export", str(run)]) == 0
    out = capsys.readouterr().out
    assert "top-1 agreement 100.00%" in out
    assert not [f.name for f in run.iterdir() if ".tmp" in f.name or f.suffix == ".data"]  # no stray files
    parity = json.loads((run / "model.parity.json").read_text())
    val_images = len(RunDir(run).read_split()["val"])  # the test split is left to the evaluation
    assert parity["parity"]["images"] == min(val_images, 1000) > 0 and parity["parity"]["split"] == "validation"
    assert parity["parity"]["passed"] and f"on {min(val_images, 1000):,} validation images" in out
    assert parity["parity"]["relative_diff"] <= 1e-3 and parity["parity"]["top1_agreement"] == 1.0
    meta = {p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props}
    card = RunDir(run).read_card()
    assert json.loads(meta["classes"]) == card.classes and int(meta["input_size"]) == card.input_size
    assert json.loads(meta["mean"]) == card.mean and json.loads(meta["std"]) == card.std
    assert json.loads(meta["temperature"]) == card.temperature

    # predict runs an .onnx (given, or the run's current export) through onnxruntime, with the same answers
    files = split_files(run)["test"]
    code, out_onnx, _ = run_predict(capsys, run / "model.onnx", *files, "--format", "jsonl")
    code2, out_torch, _ = run_predict(capsys, run, *files, "--format", "jsonl", "--runtime", "torch")
    assert code == code2 == 0
    top = [[json.loads(line)["predictions"][0]["class"] for line in out.splitlines()] for out in (out_onnx, out_torch)]
    assert top[0] == top[1]
    # onnxruntime's input is prepared in NumPy where no resize is needed: the same values as PyTorch's preparation
    exported = load_predictor(run / "model.onnx", "cpu")
    for side in (card.input_size, card.input_size // 2):
        images = torch.randint(0, 256, (3, 3, side, side), dtype=torch.uint8)
        assert torch.equal(exported.prepare(images).contiguous(), Predictor.prepare(exported, images).contiguous())
    auto = load_predictor(run, "cpu")  # auto: the faster of PyTorch and the run's current export, measured now
    assert set(auto.measured) == {"torch", "onnxruntime"} and auto.measured[auto.runtime] == max(auto.measured.values())


def test_a_stale_export_is_not_used(folder_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(folder_run, run)
    assert main(["export", str(run), "--check-images", "0"]) == 0
    assert isinstance(load_predictor(run, "cpu", runtime="onnxruntime"), OnnxPredictor)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(run / "best.safetensors"))
    tensors[next(iter(tensors))] += 1  # the run was trained further: its old export no longer applies
    save_file(tensors, str(run / "best.safetensors"))
    predictor = load_predictor(run, "cpu")
    assert predictor.runtime == "torch" and predictor.measured is None
    with pytest.raises(ImgclfError, match="has no current ONNX export"):
        load_predictor(run, "cpu", runtime="onnxruntime")


def test_export_falls_back_to_torchscript_and_fails_loudly_beyond_tolerance(folder_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(folder_run, run)
    original = torch.onnx.export

    def no_dynamo(*args, dynamo=False, **kwargs):
        if dynamo:
            raise RuntimeError("simulated failure of torch.export")
        return original(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    assert main(["export", str(run), "--output", str(tmp_path / "ts.onnx")]) == 0
    assert json.loads((tmp_path / "ts.parity.json").read_text())["exporter"] == "torchscript"
    assert "torchscript" in capsys.readouterr().out

    forward = OnnxPredictor.forward
    monkeypatch.setattr(OnnxPredictor, "forward", lambda self, x: forward(self, x) * 1.01)  # a 1% error
    assert main(["export", str(run), "--output", str(tmp_path / "bad.onnx")]) == 2
    err = capsys.readouterr().err
    assert "ONNX parity check failed" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.onnx").exists()  # nothing left behind that serve or predict could pick up
    assert json.loads((tmp_path / "bad.parity.json").read_text())["parity"]["passed"] is False


def test_export_of_an_efficientnet_lite_with_same_padding(tmp_path, capsys):
    """An EfficientNet-Lite (TF "SAME" padding in timm) transfer run exports with a dynamic batch axis and passes the
    parity check; its ONNX file predicts the same classes as PyTorch."""
    folder = make_folder(tmp_path / "leaves", ["maple", "oak", "pine"], 12)
    args = ["train", "--model", "tf_efficientnet_lite0", "--pretrained", "--img-size", "64", "--head-epochs", "1"]
    args += ["--epochs", "1", "--unfreeze", "2", "--batch-size", "16", "--data", str(folder), "--name", "lite"]
    args += ["--output", str(tmp_path), "--cache-dir", str(tmp_path / "acts"), "--prepare-dir", str(tmp_path / "p")]
    assert main([*args, "--no-progress", "--no-tensorboard"]) == 0
    run = tmp_path / "lite"
    assert main(["export", str(run)]) == 0
    capsys.readouterr()
    result = json.loads((run / "model.parity.json").read_text())
    assert result["model"] == "tf_efficientnet_lite0" and result["parity"]["passed"]
    assert result["parity"]["images"] == len(RunDir(run).read_split()["test"])
    assert result["parity"]["max_abs_logit"] > 0.01  # a trained head: logits that differ between classes
    onnx_predictor = load_predictor(run / "model.onnx")
    torch_predictor = load_predictor(run, "cpu", runtime="torch", precision="fp32")
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    np.testing.assert_allclose(onnx_predictor.logits(images), torch_predictor.logits(images), atol=1e-3)
    inputs = onnx.load(str(run / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in inputs[1:]] == [3, 64, 64] and not inputs[0].dim_value  # the batch axis is free


def test_export_errors(folder_run, tmp_path, capsys):
    assert main(["export", str(folder_run), "--output", str(tmp_path / "model.txt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert main(["export", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    (tmp_path / "dir.onnx").mkdir()
    assert main(["export", str(folder_run), "--output", str(tmp_path / "dir.onnx")]) == 2
    assert "is a folder" in capsys.readouterr().err and not list((tmp_path / "dir.onnx").iterdir())
    assert main(["export", str(folder_run), "--format", "tflite"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert export_module.parity_path(tmp_path / "m.onnx") == tmp_path / "m.parity.json"
