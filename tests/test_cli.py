"""The command line as users meet it: the installed `imgclf` script, one-line errors, exit codes."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from imgclf.cli import main
from imgclf.config.build import build_config
from imgclf.config.files import load_config_file
from imgclf.core.errors import ImgclfError


def imgclf(*args, cwd=None) -> subprocess.CompletedProcess:
    exe = shutil.which("imgclf") or sys.executable.replace("python", "imgclf")
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(result, pattern):
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert pattern in lines[0], lines[0]


def test_models_lists_names_with_parameter_counts():
    result = imgclf("models")
    assert result.returncode == 0
    assert "resnet20" in result.stdout and "269,722" in result.stdout
    lines = result.stdout.strip().splitlines()
    assert sum("parameters" in line for line in lines) == 9
    assert any(line.split()[0] == "speed94" and "1,972,792" in line for line in lines), lines
    assert any(line.split()[0] == "speed94" and "airbench94" in line for line in lines), lines  # its recipe
    assert any("tf_efficientnet_lite2" in line and "4,8" in line for line in lines), lines


def test_unknown_model(tmp_path):
    assert_one_line_error(imgclf("train", "--model", "resnet21", "--output", str(tmp_path)), "unknown model 'resnet21'")


def test_negative_epochs(tmp_path):
    assert_one_line_error(imgclf("train", "--epochs", "-3", "--output", str(tmp_path)), "epochs must be a positive")


def test_unknown_config_key(tmp_path):
    (tmp_path / "c.yaml").write_text("model: vgg10\nlearning_rate: 0.1\n")
    assert_one_line_error(imgclf("train", "--config", str(tmp_path / "c.yaml")), "unknown config key 'learning_rate'")


def test_missing_data_dir(tmp_path):
    result = imgclf("train", "--data-dir", str(tmp_path / "missing"), "--output", str(tmp_path))
    assert_one_line_error(result, "data dir not found")


def test_corrupt_batch_file(tmp_path, data_dir):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for f in (data_dir / "cifar-10-batches-py").iterdir():
        (folder / f.name).symlink_to(f)
    (folder / "data_batch_2").unlink()
    (folder / "data_batch_2").write_bytes(b"\x80\x04garbage")
    result = imgclf("train", "--data-dir", str(tmp_path / "data"), "--output", str(tmp_path / "runs"))
    assert_one_line_error(result, "data_batch_2")


def test_evaluate_of_a_non_run(tmp_path):
    assert_one_line_error(imgclf("evaluate", str(tmp_path)), "not a run directory")


def test_config_file_then_flags_take_precedence(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": "vgg10", "epochs": 7, "lr": 0.05}))
    cfg = build_config(load_config_file(tmp_path / "c.yaml"), {"lr": 0.01})
    assert (cfg.model, cfg.epochs, cfg.lr) == ("vgg10", 7, 0.01)
    (tmp_path / "bad.yaml").write_text("epochs: many\n")
    with pytest.raises(ImgclfError, match="'epochs' must be int"):
        load_config_file(tmp_path / "bad.yaml")


def test_train_can_report_flip_tta(tmp_path, tiny_options):
    options = [o for o in tiny_options if o != "--no-evaluate"]
    args = ["train", "--name", "t", "--model", "simple_cnn", "--epochs", "1", "--test-subset", "64", "--tta", *options]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["test_images"] == 64 and 0 <= metrics["tta"]["test_accuracy"] <= 1


def test_existing_run_is_not_overwritten(tmp_path, tiny_options):
    args = ["train", "--name", "x", "--model", "simple_cnn", "--epochs", "1", *tiny_options]
    assert main(args) == 0
    assert main(args) == 2


def test_the_command_line_imports_no_torch_before_it_runs_a_command():
    """Decoding workers start (spawn) by importing the main script: with torch in it, each would spend seconds."""
    loaded = "[m for m in ('torch', 'torchvision') if m in sys.modules]"
    code = f"import sys, imgclf.cli as cli; cli.build_parser(); print({loaded})"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
