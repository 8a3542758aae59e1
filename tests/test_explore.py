import json

import pytest
import torch

from imgclf.cli import main
from imgclf.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from imgclf.data.datasets import channel_stats


def test_channel_stats_of_a_known_tensor():
    images = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    images[:, 1] = 255
    images[0, 2] = 255
    mean, std = channel_stats(images)
    assert mean == pytest.approx([0.0, 1.0, 0.5])
    assert std[:2] == pytest.approx([0.0, 0.0]) and std[2] > 0.5


def test_explore_writes_figures_and_the_normalisation_constants(tmp_path, data_dir):
    assert main(["explore", "--data-dir", str(data_dir), "--output", str(tmp_path), "--per-class", "4"]) == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["per_class"]["cat"] == 5000 and stats["images"] == 50_000
    assert stats["mean"] == pytest.approx(CIFAR10_MEAN, abs=5e-5)
    assert stats["std"] == pytest.approx(CIFAR10_STD, abs=5e-5)
    for name in ("samples.png", "class_distribution.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
