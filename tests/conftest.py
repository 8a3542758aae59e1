"""Shared fixtures: the real CIFAR-10 copy (IMGCLF_DATA_DIR or ../shared/data) and tiny training configs."""

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def find_data_dir() -> Path | None:
    for candidate in (os.environ.get("IMGCLF_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "cifar-10-batches-py").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = find_data_dir()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide CIFAR-10 through IMGCLF_DATA_DIR")
        pytest.skip("CIFAR-10 not found: set IMGCLF_DATA_DIR to the folder holding cifar-10-batches-py")
    return found


@pytest.fixture(scope="session")
def cifar_train(data_dir):
    from imgclf.data.cifar import load_cifar10

    return load_cifar10("train", data_dir)


@pytest.fixture
def tiny_options(data_dir, tmp_path) -> list[str]:
    """CLI flags of a seconds-long training run on a small slice of real CIFAR-10."""
    return [
        "--data-dir",
        str(data_dir),
        "--output",
        str(tmp_path),
        "--train-subset",
        "384",
        "--batch-size",
        "128",
        "--no-progress",
        "--no-tensorboard",
        "--no-evaluate",
    ]


@pytest.fixture(scope="session")
def evaluated_runs(data_dir, tmp_path_factory) -> dict[str, Path]:
    """Two tiny trained-and-evaluated runs (simple_cnn, resnet20), shared by the report tests."""
    from imgclf.cli import main

    output = tmp_path_factory.mktemp("runs")
    runs = {}
    for model in ("simple_cnn", "resnet20"):
        args = [
            "train",
            "--model",
            model,
            "--name",
            model,
            "--epochs",
            "2",
            "--data-dir",
            str(data_dir),
            "--output",
            str(output),
            "--train-subset",
            "384",
            "--batch-size",
            "128",
            "--no-progress",
        ]
        assert main(args) == 0
        runs[model] = output / model
    return runs


CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Chromium (Debian package 'chromium')")
        pytest.skip("Chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def folder_run(tmp_path_factory) -> Path:
    """A small simple_cnn run on a folder of four colour classes, trained in fp32 (so that logits computed in batches
    of any size agree to rounding) and evaluated: the run that predict, export and serve use."""
    from folders import make_folder

    from imgclf.cli import main

    root = tmp_path_factory.mktemp("folder_run")
    folder = make_folder(root / "colours", ["red", "green", "blue", "yellow"], 16)
    args = ["train", "--model", "simple_cnn", "--data", str(folder), "--prepare-dir", str(root / "prep")]
    args += ["--name", "run", "--output", str(root), "--epochs", "3", "--batch-size", "16", "--precision", "fp32"]
    args += ["--no-progress", "--no-tensorboard", "--val-fraction", "0.25", "--test-fraction", "0.25"]
    assert main(args) == 0
    return root / "run"
