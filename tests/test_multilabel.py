"""Multi-label data: label files with several labels per image, the loss, thresholds fitted on validation, the metrics,
and the whole path — train → evaluate → predict → export → serve (JSON and page) — on CIFAR mosaics."""

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, f1_score
from test_serve import serving

import imgclf.data.images as images_module
from imgclf.artifacts.runs import RunDir, run_splits
from imgclf.cli import main
from imgclf.config.options import TrainConfig
from imgclf.core.errors import ImgclfError
from imgclf.data.decode import decode_file
from imgclf.data.images import stratified_split
from imgclf.data.labelfile import LabelFormat, scan_label_file
from imgclf.data.multilabel import multi_hot, strata
from imgclf.evaluation.calibration import fit_temperature
from imgclf.evaluation.multilabel import (
    binary_calibration,
    fit_thresholds,
    multilabel_scores,
    sigmoid,
)
from imgclf.inference.load import load_predictor
from imgclf.training.balance import class_balance
from imgclf.training.losses import hits, multilabel_loss

REPO = Path(__file__).resolve().parents[1]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# label files ---------------------------------------------------------------------------------------------------------


def test_several_labels_make_a_multilabel_scan(tmp_path):
    path = write_lines(tmp_path / "l.csv", ["file,labels", "a.png,cat;dog", "b.png,dog", "c.png, zebra ;cat;cat"])
    scan = scan_label_file(path)
    assert scan.task == "multilabel" and scan.classes == ["cat", "dog", "zebra"]
    assert scan.labels["all"] == [(0, 1), (1,), (0, 2)]  # sorted indices, spaces and repeats dropped
    jsonl = tmp_path / "l.jsonl"
    rows = [("a.png", ["dog", "cat"]), ("b.png", ["dog"]), ("c.png", ["zebra", "cat"])]
    jsonl.write_text("".join(json.dumps({"file": f, "labels": ls}) + "\n" for f, ls in rows))
    assert scan_label_file(jsonl).labels == scan.labels


def test_task_and_separator_options(tmp_path):
    single = write_lines(tmp_path / "s.csv", ["file,label", "a.png,cat", "b.png,dog"])
    assert scan_label_file(single).task == "single"
    forced = scan_label_file(single, LabelFormat(task="multilabel"))
    assert forced.task == "multilabel" and forced.labels["all"] == [(0,), (1,)]
    piped = write_lines(tmp_path / "p.csv", ["file,label", "a.png,cat|dog", "b.png,dog"])
    assert scan_label_file(piped).task == "single"  # ';' is the separator: 'cat|dog' is one class
    assert scan_label_file(piped, LabelFormat(label_separator="|")).labels["all"] == [(0, 1), (1,)]
    several = write_lines(tmp_path / "m.csv", ["file,label", "a.png,cat;dog", "b.png,dog"])
    as_one = scan_label_file(several, LabelFormat(task="single"))  # --task single: a ';' is part of a class name
    assert as_one.task == "single" and as_one.classes == ["cat;dog", "dog"]
    listed = tmp_path / "m.jsonl"
    listed.write_text('{"file": "a.png", "label": "cat"}\n{"file": "b.png", "label": ["cat", "dog"]}\n')
    with pytest.raises(ImgclfError, match=r"line 2 gives several labels \(cat, dog\) but --task is single"):
        scan_label_file(listed, LabelFormat(task="single"))


def test_repeated_files_compare_label_sets(tmp_path):
    same = write_lines(tmp_path / "a.csv", ["file,labels", "a.png,cat;dog", "a.png,dog;cat", "b.png,dog"])
    assert scan_label_file(same).files["all"] == ["a.png", "b.png"]
    other = write_lines(tmp_path / "b.csv", ["file,labels", "a.png,cat;dog", "b.png,dog", "a.png,cat"])
    with pytest.raises(ImgclfError, match=r"lists a\.png twice with different labels: 'cat;dog' on line 2, 'cat' on"):
        scan_label_file(other)
    empty = tmp_path / "c.jsonl"
    empty.write_text('{"file": "a.png", "labels": []}\n{"file": "b.png", "labels": ["x", "y"]}\n')
    scan = scan_label_file(empty)  # an empty list is a row without a label: skipped and listed
    assert scan.skipped == [{"file": "a.png", "reason": "no label (line 1)"}] and scan.labels["all"] == [(0, 1)]


def test_multilabel_needs_a_label_file(tmp_path):
    with pytest.raises(ImgclfError, match="--task multilabel needs a label file"):
        run_splits(TrainConfig(data=str(tmp_path), task="multilabel"))
    with pytest.raises(ImgclfError, match="cifar10 is single-label"):
        run_splits(TrainConfig(data="cifar10", task="multilabel"))


def test_strata_and_multi_hot():
    rows = [(0, 1), (1,), (1, 2), (0, 1, 2), (1,)]
    assert strata(rows) == [0, 1, 1, 0, 1]  # the rarest class (ties: the lower index); class 2 would be alone
    # a class of two images can be the rarest class of one: that image joins its next class with company
    assert strata([(0, 1), (0, 1), (1,)]) == [0, 0, 0] and strata([(0,), (1,), (2, 3)]) == [-1, -1, -1]
    many = [(0, 1), (0, 1), (1,)] * 4 + [(2,), (2, 3), (3,)] * 3
    keep, held = stratified_split(strata(many), 0.25, seed=0)  # the split the strata are for: no error
    assert len(held) == 6 and len(keep) == 15
    hot = multi_hot(rows, 3)
    assert hot.dtype == torch.uint8 and hot.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 1], [1, 1, 1], [0, 1, 0]]


# loss, balance and metrics ------------------------------------------------------------------------------------------


def test_multilabel_loss_is_bce_summed_over_classes():
    logits, targets = torch.randn(6, 4), torch.randint(0, 2, (6, 4), dtype=torch.uint8)
    expected = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none").sum(1).mean()
    assert multilabel_loss(logits, targets) == pytest.approx(float(expected), rel=1e-6)
    smoothed = F.binary_cross_entropy_with_logits(logits, targets.float() * 0.8 + 0.1, reduction="none").sum(1).mean()
    assert multilabel_loss(logits, targets, 0.2) == pytest.approx(float(smoothed), rel=1e-6)
    exact = torch.tensor([[3.0, -2.0], [1.0, 1.0], [-1.0, -1.0]])
    assert int(hits(exact, torch.tensor([[1, 0], [1, 0], [0, 0]]))) == 2


def test_balance_of_multilabel_data():
    labels = multi_hot([(0, 1), (1,), (1, 2), (1,)], 3)
    balance = class_balance(TrainConfig(), labels, 3)
    assert balance.multilabel and balance.mode == "none" and balance.monitor == "val_map"
    assert balance.counts == (1, 4, 1) and balance.record()["task"] == "multilabel"
    loss = balance.loss_function("cpu")
    logits = torch.randn(4, 3)
    assert float(loss(logits, labels, 0.0)) == pytest.approx(float(multilabel_loss(logits, labels)))
    with pytest.raises(ImgclfError, match=r"--balance sampler is for single-label data \(multi-label data trains"):
        class_balance(TrainConfig(balance="sampler"), labels, 3)
    with pytest.raises(ImgclfError, match=r"--monitor val_acc is for single-label data \(multi-label data watches"):
        class_balance(TrainConfig(monitor="val_acc"), labels, 3)
    with pytest.raises(ImgclfError, match="--monitor val_map is for multi-label data"):
        class_balance(TrainConfig(monitor="val_map"), labels[:, 0].long(), 2)
    with pytest.raises(ImgclfError, match="--balance weights is for single-label data"):  # before any data is read
        TrainConfig(task="multilabel", balance="weights").validate()


def test_thresholds_maximise_validation_f1():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (400, 3)).astype(bool)
    labels[:, 2] = False  # a class with no positive image keeps ½
    probs = np.where(labels, rng.uniform(0.25, 1.0, labels.shape), rng.uniform(0.0, 0.2, labels.shape))
    thresholds = fit_thresholds(probs, labels)
    assert 0.2 <= thresholds[0] <= 0.25 and 0.2 <= thresholds[1] <= 0.25 and thresholds[2] == 0.5
    scores = multilabel_scores(probs, labels, thresholds, ["a", "b", "c"])
    assert scores["per_class"]["a"]["f1"] == 1.0 and scores["per_class"]["c"]["ap"] is None


def test_scores_match_scikit_learn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (200, 4)).astype(bool)
    probs = np.clip(labels * 0.3 + rng.uniform(0, 0.7, labels.shape), 0, 1)
    thresholds = np.array([0.4, 0.5, 0.6, 0.5])
    scores = multilabel_scores(probs, labels, thresholds, list("abcd"))
    predicted = probs >= thresholds
    assert scores["map"] == pytest.approx(average_precision_score(labels, probs, average="macro"))
    assert scores["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert scores["micro_f1"] == pytest.approx(f1_score(labels, predicted, average="micro"))
    assert scores["exact_match"] == pytest.approx((predicted == labels).all(1).mean())
    assert scores["hamming_loss"] == pytest.approx((predicted != labels).mean())
    assert scores["cardinality"] == {"predicted": predicted.sum(1).mean(), "true": labels.sum(1).mean()}


def test_sigmoid_temperature_and_calibration():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, (4000, 5))
    labels = rng.uniform(size=logits.shape) < sigmoid(logits / 3)  # drawn from logits three times too confident
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.1)
    assert (
        binary_calibration(sigmoid(logits, 3.0), labels)["ece"]
        < 0.02
        < binary_calibration(sigmoid(logits), labels)["ece"]
    )


# the whole path on CIFAR mosaics ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mosaics(data_dir, tmp_path_factory) -> Path:
    """Mosaics of 2×2 real CIFAR-10 images, 1–3 classes each (the benchmark's own generator)."""
    folder = tmp_path_factory.mktemp("mosaics")
    script = [sys.executable, str(REPO / "benchmarks" / "multilabel.py"), "make", str(folder)]
    subprocess.run([*script, "--data-dir", str(data_dir), "--train", "320", "--test", "80"], check=True)
    return folder / "labels.jsonl"


@pytest.fixture(scope="module")
def multilabel_run(mosaics, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mlrun")
    args = ["train", "--model", "simple_cnn", "--data", str(mosaics), "--prepare-dir", str(root / "prep"), "--name"]
    args += ["run", "--output", str(root), "--epochs", "3", "--batch-size", "32", "--precision", "fp32"]
    assert main([*args, "--no-progress", "--no-tensorboard", "--val-fraction", "0.2", "--no-evaluate"]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def evaluated_run(multilabel_run) -> Path:
    if not (multilabel_run / "metrics.json").exists():
        assert main(["evaluate", str(multilabel_run)]) == 0
    return multilabel_run


def test_train_and_evaluate_fit_on_validation_and_read_test_once(multilabel_run, monkeypatch):
    run = RunDir(multilabel_run)
    summary = run.read_summary()
    assert summary["balance"]["task"] == "multilabel" and summary["balance"]["monitor"] == "val_map"
    history = run.read_history()
    assert all(0 <= h["val_map"] <= 1 for h in history) and "val_balanced_acc" not in history[0]
    reads = []
    original = images_module.Splits.test
    monkeypatch.setattr(images_module.Splits, "test", lambda self: reads.append(1) or original(self))
    assert main(["evaluate", str(multilabel_run)]) == 0
    assert len(reads) == 1
    metrics = run.read_metrics()
    assert metrics["task"] == "multilabel" and metrics["test_images"] == 80
    for key in ("map", "macro_f1", "micro_f1", "exact_match", "hamming_loss", "train_map"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["test_accuracy"] == metrics["exact_match"]
    assert 1.0 <= metrics["cardinality"]["true"] <= 3.0
    # the thresholds and temperature are those fitted on the run's validation split
    card = run.read_card()
    predictor = load_predictor(multilabel_run, "cpu", runtime="torch")
    val = run_splits(run.read_config(), run.read_split()).val
    val_logits, val_labels = predictor.dataset_logits(val), val.labels.numpy()
    assert card.temperature == pytest.approx(fit_temperature(val_logits, val_labels), rel=1e-3)
    expected = fit_thresholds(sigmoid(val_logits, card.temperature), val_labels)
    assert np.allclose(card.thresholds, expected, atol=1e-4)
    assert [v["threshold"] for v in metrics["per_class"].values()] == pytest.approx(card.thresholds)
    page = (multilabel_run / "report.html").read_text()
    assert "Per-class average precision, worst first" in page and "test mAP" in page
    aps = [v["ap"] for v in metrics["per_class"].values()]
    ap_table = page.split("Per-class average precision")[1].split("</table>")[0]
    shown = [float(v) for v in re.findall(r"<tr><td>[a-z]+</td><td>([0-9.]+)</td>", ap_table)]
    assert shown == pytest.approx(sorted(aps), abs=1e-3)  # worst first
    assert {"figures/pr_curves.png", "figures/reliability.png"} <= set(metrics["figures"])


def test_predict_gives_the_labels_above_their_thresholds(evaluated_run, mosaics, capsys):
    multilabel_run = evaluated_run
    files = sorted((mosaics.parent / "images" / "test").glob("*.png"))[:6]
    capsys.readouterr()
    assert main(["predict", str(multilabel_run), *map(str, files), "--format", "jsonl", "--runtime", "torch"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    predictor = load_predictor(multilabel_run, "cpu", runtime="torch")
    thresholds = dict(zip(predictor.classes, predictor.card.thresholds, strict=True))
    for row in rows:
        chosen = {p["class"]: p["probability"] for p in row["labels"]}
        every = {p["class"]: p["probability"] for p in row["predictions"]}
        assert all(p >= thresholds[c] - 1e-6 for c, p in chosen.items())
        assert all(p < thresholds[c] + 1e-6 for c, p in every.items() if c not in chosen)
        assert list(chosen.values()) == sorted(chosen.values(), reverse=True)
    assert main(["predict", str(multilabel_run), str(files[0]), "--format", "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("path,labels,class_1,probability_1")


def test_export_and_serve_return_the_same_labels(evaluated_run, mosaics, browser, tmp_path):
    multilabel_run = evaluated_run
    assert main(["export", str(multilabel_run), "--check-images", "40"]) == 0
    torch_predictor = load_predictor(multilabel_run, "cpu", runtime="torch")
    onnx_predictor = load_predictor(multilabel_run / "model.onnx")
    files = sorted((mosaics.parent / "images" / "test").glob("*.png"))[:16]
    card = torch_predictor.card
    batch = np.stack([decode_file(f, card.data_size, card.resize)[0] for f in files])
    predictors = {p.runtime: p for p in (torch_predictor, onnx_predictor)}
    logits = {name: p.logits(batch) for name, p in predictors.items()}
    probs = {name: p.probabilities(logits[name]) for name, p in predictors.items()}
    assert np.abs(probs["torch"] - probs["onnxruntime"]).max() < 1e-4
    near = np.abs(probs["torch"] - np.asarray(card.thresholds)) < 1e-4  # decisions too close to call
    labels = {name: p.labels(logits[name]) for name, p in predictors.items()}
    parity = json.loads((multilabel_run / "model.parity.json").read_text())["parity"]
    assert parity["labels_agreement"] == 1.0 and parity["passed"] and parity["split"] == "validation"
    assert 0 <= parity["labels_too_close"] < parity["images"]  # decisions at a fitted threshold: not compared
    for i in range(len(files)):
        if not near[i].any():
            assert [c for c, _ in labels["torch"][i]] == [c for c, _ in labels["onnxruntime"][i]]
    # the server (torch runtime): JSON and the page show those labels
    with serving(multilabel_run, tmp_path / "server.log", "--runtime", "torch") as (url, _):
        uploads = [("files", (f.name, f.read_bytes(), "image/png")) for f in files[:4]]
        body = httpx.post(f"{url}/predict", files=uploads, timeout=30).json()
        for i, prediction in enumerate(body["predictions"]):
            assert [p["class"] for p in prediction["labels"]] == [c for c, _ in labels["torch"][i]]
        page = browser.new_page()
        page.goto(url, wait_until="load")
        page.set_input_files("#file", str(files[0]))
        result = page.locator(".prediction").first
        result.wait_for(timeout=15_000)
        expected = [c for c, _ in labels["torch"][0]]
        assert result.get_attribute("data-labels") == ";".join(expected)
        shown = page.locator(".prediction .labels").first.inner_text()
        assert shown == (f"labels: {', '.join(expected)}" if expected else "no class above its threshold")
        page.close()


def test_study_compares_scratch_and_transfer_on_multilabel_data(mosaics, tmp_path, capsys):
    preset = tmp_path / "mini.yaml"
    preset.write_text(
        "runs:\n  scratch:\n    model: simple_cnn\n    epochs: 2\n"
        "  transfer:\n    model: tf_efficientnet_lite0\n    img_size: 64\n"
        "    head_epochs: 2\n    epochs: 1\n    unfreeze: '2'\n    batch_size: 32\n"
    )
    output = tmp_path / "study"
    args = ["study", "--preset", str(preset), "--data", str(mosaics), "--output", str(output), "--no-progress"]
    sets = [f"cache_dir={tmp_path / 'acts'}", f"prepare_dir={tmp_path / 'prep'}", "tensorboard=false"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    record = json.loads((output / "study.json").read_text())
    assert all(0 <= run["map"] <= 1 and 0 <= run["macro_f1"] <= 1 for run in record["runs"].values())
    cards = [json.loads((output / run / "model.json").read_text()) for run in ("scratch", "transfer")]
    assert [c["task"] for c in cards] == ["multilabel"] * 2 and all(len(c["thresholds"]) == 10 for c in cards)
    table = (output / "comparison" / "results.md").read_text()
    assert "| test mAP | macro F1 | test accuracy (multi-label: exact match) |" in table
    assert "scratch: test mAP" in capsys.readouterr().out


def test_validation_map_under_torchrun_is_the_whole_splits(mosaics, tmp_path):
    """Two gloo ranks each validate their shard; the mAP they record is the whole validation split's (the
    predictions gathered, not the shards' mAPs averaged)."""
    from test_distributed import torchrun

    args = ["train", "--model", "simple_cnn", "--device", "cpu", "--data", str(mosaics), "--output", str(tmp_path)]
    args += ["--name", "ddp", "--epochs", "1", "--batch-size", "32", "--precision", "fp32", "--no-progress"]
    args += ["--no-tensorboard", "--no-evaluate", "--prepare-dir", str(tmp_path / "prep"), "--val-fraction", "0.25"]
    result = torchrun(args)
    assert result.returncode == 0, result.stderr[-3000:]
    run = RunDir(tmp_path / "ddp")
    recorded = run.read_history()[0]["val_map"]
    val = run_splits(run.read_config(), run.read_split()).val
    predictor = load_predictor(run.path, "cpu", runtime="torch", precision="fp32")
    logits, labels = predictor.dataset_logits(val), val.labels.numpy()
    whole = average_precision_score(labels, logits, average="macro")
    shards = [average_precision_score(labels[r::2], logits[r::2], average="macro") for r in (0, 1)]  # rank r's share
    # the predictor's folded BatchNorm moves logits in the last digits: a tie or two in the ranking, not the shards'
    assert abs(recorded - whole) < 5e-4 < abs(recorded - np.mean(shards))
