"""Damaged run directories and interrupted checkpoints: one-line errors, nothing changed, nothing lost."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from imgclf.artifacts.card import INFERENCE_FIELDS
from imgclf.artifacts.runs import RunDir
from imgclf.cli import main
from imgclf.training.checkpoint import checkpoint_files
from imgclf.training.history import MACHINE_KEYS, read_history


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """A tiny trained and evaluated simple_cnn run."""
    output = tmp_path_factory.mktemp("runs")
    args = ["train", "--model", "simple_cnn", "--name", "r", "--epochs", "1", "--data-dir", str(data_dir)]
    args += ["--output", str(output), "--train-subset", "256", "--test-subset", "64", "--batch-size", "64"]
    assert main([*args, "--no-progress", "--no-tensorboard"]) == 0
    return output / "r"


def snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_of(run, tmp_path):
    """A copy of ``run`` to damage: ``tmp_path/r``."""
    shutil.copytree(run, tmp_path / "r")
    return tmp_path / "r"


def one_line_error(capsys, args):
    """Run ``imgclf args``, which must exit with status 2 and one error line on stderr; that line."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imgclf: error:"), (args, err)
    return err[0]


def state_of_the_wrong_structure(run):
    torch.save({"epoch": 1, "optimizer": [1, 2]}, checkpoint_files(run / "checkpoints")["state"])


DAMAGE = {
    "config-unknown-key": ("config.yaml", "model: simple_cnn\nlearning_rate: 3\n", "unknown config key"),
    "config-wrong-type": ("config.yaml", "model: simple_cnn\nepochs: many\n", "'epochs' must be"),
    "config-not-yaml": ("config.yaml", "model: [simple_cnn\n", "not valid YAML"),
    "config-binary": ("config.yaml", b"\xff\xfe\x00\x81binary", "config"),
    "config-list": ("config.yaml", "- model\n- epochs\n", "mapping"),
    "history-garbage": ("history.jsonl", '{"epoch": 1}\nnot json at all\n', "history.jsonl line 2"),
    "history-not-a-record": ("history.jsonl", "[1, 2]\n", "history.jsonl line 1"),
    "summary-garbage": ("summary.json", "{{{", "not valid JSON"),
    "summary-empty-object": ("summary.json", "{}", "summary.json: 'model' is missing"),
    "card-garbage": ("model.json", '{"model": 3}', "model.json: 'model' is missing or not str"),
    "split-garbage": ("split.json", '{"train": 1}', "split.json must map train, val and test"),
    "split-overlap": ("split.json", '{"train": ["a.png"], "val": [], "test": ["a.png"]}', "names a file twice"),
}


@pytest.mark.parametrize("case", list(DAMAGE), ids=list(DAMAGE))
def test_evaluate_of_a_damaged_run_is_a_one_line_error(finished_run, tmp_path, capsys, case):
    run = copy_of(finished_run, tmp_path)
    name, content, message = DAMAGE[case]
    (run / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    before = snapshot(run)
    assert message in one_line_error(capsys, ["evaluate", str(run)])
    assert snapshot(run) == before


CARD_DAMAGE = {  # model.json fields a hand edit can break: (field, value, message)
    "architecture-nameless": ("architecture", {"dropout": 0.2}, "'architecture' must be an object naming the network"),
    "precision-unknown": ("precision", "fp16", "'precision' must be auto, bf16 or fp32"),
    "tta-shift-huge": ("tta_shift", 99, "'tta_shift' must be a whole number of pixels from 0 to 8"),
    "input-size-zero": ("input_size", 0, "'input_size' must be a side of 1 to"),
    "input-size-huge": ("input_size", 100_000, "'input_size' must be a side of 1 to"),
    "std-zero": ("std", [0, 0, 0], "'std' must be three positive numbers"),
    "resize-unknown": ("resize", "zoom", "'resize' must be one of"),
}


@pytest.mark.parametrize("case", list(CARD_DAMAGE), ids=list(CARD_DAMAGE))
def test_a_damaged_model_card_is_a_one_line_error_in_predict_and_evaluate(finished_run, tmp_path, capsys, case):
    run = copy_of(finished_run, tmp_path)
    field, value, message = CARD_DAMAGE[case]
    card = json.loads((run / "model.json").read_text())
    card[field] = value
    (run / "model.json").write_text(json.dumps(card))
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    for command in (["predict", str(run), str(image)], ["evaluate", str(run)]):
        assert message in one_line_error(capsys, command), command


@pytest.mark.parametrize(
    "content, message",
    [("{}", "metrics.json: 'model' is missing"), ("[]", "must hold a JSON object"), ("nan", "not")],
    ids=["empty-object", "list", "garbage"],
)
def test_compare_of_damaged_metrics_is_a_one_line_error(finished_run, tmp_path, capsys, content, message):
    run = copy_of(finished_run, tmp_path)
    (run / "metrics.json").write_text(content)
    assert message in one_line_error(capsys, ["compare", str(run), "--output", str(tmp_path / "cmp")])
    assert not (tmp_path / "cmp" / "report.html").exists()


def test_resume_from_a_state_of_the_wrong_structure(finished_run, tmp_path, capsys):
    run = copy_of(finished_run, tmp_path)
    state_of_the_wrong_structure(run)
    before = snapshot(run)
    assert "does not fit this run" in one_line_error(capsys, ["train", "--resume", str(run), "--no-progress"])
    assert snapshot(run) == before


def test_resume_of_a_finished_run_without_its_checkpoints_is_refused(finished_run, tmp_path, capsys):
    run = copy_of(finished_run, tmp_path)
    shutil.rmtree(run / "checkpoints")
    before = snapshot(run)
    assert "nothing to resume" in one_line_error(capsys, ["train", "--resume", str(run), "--no-progress"])
    assert snapshot(run) == before  # not trained again over its weights, history and summary


KILLER = """
import os, signal, sys
import imgclf.training.checkpoint as checkpoint
save_state = checkpoint.save_state
def save_state_then_die(path, state):
    if state["epoch"] == int(os.environ["KILL_AT_EPOCH"]):
        os.kill(os.getpid(), signal.SIGKILL)  # killed with the epoch's weights written, its state not
    save_state(path, state)
checkpoint.save_state = save_state_then_die
from imgclf.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_while_a_checkpoint_is_written_loses_nothing(data_dir, tmp_path):
    """SIGKILL inside the checkpoint window (weights of epoch 2 written, state not): the run resumes from epoch 1
    and ends with the uninterrupted run's history and weights."""
    common = ["--model", "resnet20", "--epochs", "3", "--data-dir", str(data_dir), "--output", str(tmp_path)]
    common += ["--train-subset", "256", "--batch-size", "64", "--lr", "0.05", "--no-progress", "--no-tensorboard"]
    common += ["--no-evaluate", "--threads", "1"]  # one thread: a count following the load changes bf16 sums
    assert main(["train", "--name", "whole", *common]) == 0
    env = {**os.environ, "KILL_AT_EPOCH": "2"}
    killed = subprocess.run([sys.executable, "-c", KILLER, "train", "--name", "cut", *common], env=env, timeout=300)
    assert killed.returncode == -9
    cut = tmp_path / "cut"
    assert checkpoint_files(cut / "checkpoints")["state"].parent.name == "epoch-0001"
    assert (cut / "checkpoints" / "epoch-0002" / "weights.safetensors").is_file()  # the unfinished unit
    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0
    whole = tmp_path / "whole"
    strip = [{k: v for k, v in r.items() if k not in MACHINE_KEYS} for r in read_history(whole / "history.jsonl")]
    assert [{k: v for k, v in r.items() if k not in MACHINE_KEYS} for r in read_history(cut / "history.jsonl")] == strip
    from safetensors.torch import load_file

    a = load_file(checkpoint_files(whole / "checkpoints")["weights"])
    b = load_file(checkpoint_files(cut / "checkpoints")["weights"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["epoch-0002", "epoch-0003", "last.json"]


def test_a_run_of_the_earlier_layout_evaluates_resumes_and_gets_its_card(finished_run, tmp_path):
    """Before model cards and checkpoint folders: no model.json, checkpoints/last.safetensors + last_state.pt."""
    import json

    run = copy_of(finished_run, tmp_path)
    (run / "model.json").unlink()
    checkpoint = checkpoint_files(run / "checkpoints")["state"].parent
    shutil.move(checkpoint / "weights.safetensors", run / "checkpoints" / "last.safetensors")
    shutil.move(checkpoint / "state.pt", run / "checkpoints" / "last_state.pt")
    shutil.rmtree(checkpoint)
    (run / "checkpoints" / "last.json").unlink()
    history = (run / "history.jsonl").read_text()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # finished: the old checkpoint is read
    assert (run / "history.jsonl").read_text() == history
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("dataset", "classes"):
        del metrics[key]
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["compare", str(run), "--output", str(tmp_path / "cmp")]) == 0
    assert "Model comparison on CIFAR-10" in (tmp_path / "cmp" / "report.html").read_text()
    assert main(["evaluate", str(run)]) == 0
    card = json.loads((run / "model.json").read_text())
    assert card["num_classes"] == 10 and card["classes"][0] == "airplane" and card["input_size"] == 32


def test_a_model_that_outputs_nan_is_an_error_not_a_result(finished_run, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = copy_of(finished_run, tmp_path)
    with safe_open(str(run / "best.safetensors"), "pt") as f:
        metadata = f.metadata()
    weights = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in load_file(run / "best.safetensors").items()
    }
    save_file(weights, str(run / "best.safetensors"), metadata=metadata)
    (run / "metrics.json").unlink()
    assert "non-finite outputs" in one_line_error(capsys, ["evaluate", str(run)])
    assert not (run / "metrics.json").exists()


def test_a_run_in_use_by_another_process_is_a_one_line_error(finished_run, tmp_path, capsys):
    run = copy_of(finished_run, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom imgclf.artifacts.runs import RunDir\n"
         "with RunDir(sys.argv[1]).lock():\n"
         "    print('held', flush=True); time.sleep(60)", str(run)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["evaluate", str(run)], ["train", "--resume", str(run), "--no-progress"]):
            assert "in use by another imgclf process" in one_line_error(capsys, args), args
    finally:
        holder.kill()
        holder.wait()
    assert main(["evaluate", str(run)]) == 0  # released with its holder


def test_a_card_stands_alone_and_one_of_the_earlier_layout_reads_its_config(finished_run, tmp_path, capsys):
    """Predicting reads the card's own fields: a renamed training option in its config (kept for the record) changes
    nothing. A card of the earlier layout (no architecture field) is read from its config, which is then checked."""
    run = copy_of(finished_run, tmp_path)
    card = json.loads((run / "model.json").read_text())
    assert card["architecture"] == {"name": card["model"]} and card["channels_last"] is True
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    renamed = {**card, "config": {**card["config"], "learning_rate": card["config"]["lr"]}}
    del renamed["config"]["lr"]
    (run / "model.json").write_text(json.dumps(renamed))
    assert main(["predict", str(run), str(image), "--format", "jsonl", "--runtime", "torch"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["predictions"][0]["class"] in card["classes"]
    earlier = {k: v for k, v in renamed.items() if k not in INFERENCE_FIELDS}
    (run / "model.json").write_text(json.dumps(earlier))
    assert "unknown config key 'learning_rate'" in one_line_error(capsys, ["predict", str(run), str(image)])


FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_29b1695"


def test_a_run_made_by_29b1695_predicts_evaluates_and_exports(data_dir, tmp_path, capsys):
    """A tiny ResNet-20 run written by commit 29b1695 (fp32, 512 training images, 100 test images; weights, card,
    config, history, summary, metrics): its card loads, and evaluating it again gives the test accuracy it stored."""
    run = Path(shutil.copytree(FIXTURE, tmp_path / "run"))
    stored = json.loads((FIXTURE / "metrics.json").read_text())
    card = RunDir(run).read_card()
    assert (card.architecture, card.precision, card.channels_last, card.tta_shift) == (
        {"name": "resnet20"},
        "fp32",
        True,
        0,
    )
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (20, 30, 200)).save(image)
    assert main(["predict", str(run), str(image), "--format", "jsonl", "--runtime", "torch"]) == 0
    top = json.loads(capsys.readouterr().out.splitlines()[0])["predictions"]
    assert top[0]["class"] in card.classes and 0 < top[0]["probability"] <= 1
    assert main(["evaluate", str(run), "--data-dir", str(data_dir)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_images"] == stored["test_images"] == 100
    assert metrics["test_accuracy"] == stored["test_accuracy"]
    assert metrics["test_loss"] == pytest.approx(stored["test_loss"], rel=1e-4)
    assert main(["export", str(run), "--data-dir", str(data_dir), "--check-images", "20"]) == 0
    assert (run / "model.onnx").is_file()
