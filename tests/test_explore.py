import json

import pytest
import torch

from imgclf.cli import main
from imgclf.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from imgclf.data.images import STATS_CHUNK_VALUES, channel_stats


def test_channel_stats_of_a_known_tensor():
    images = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    images[:, 1] = 255
    images[0, 2] = 255
    mean, std = channel_stats(images)
    assert mean == pytest.approx([0.0, 1.0, 0.5])
    assert std[:2] == pytest.approx([0.0, 0.0]) and std[2] > 0.5


def test_channel_stats_reads_large_images_in_bounded_chunks():
    """224-px images are read a few at a time (a 9,000-image split once took 24 GB here): the same statistics as
    one pass over everything, with no chunk above the value budget."""
    images = torch.randint(0, 256, (300, 3, 224, 224), dtype=torch.uint8)
    read = []

    class Recorded:
        shape = images.shape

        def __len__(self):
            return len(images)

        def __getitem__(self, index):
            read.append(len(images[index]))
            return images[index]

    mean, std = channel_stats(Recorded())
    x = images.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert std == pytest.approx(x.std(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert sum(read) == 300 and max(read) * 3 * 224 * 224 <= STATS_CHUNK_VALUES


def test_explore_writes_figures_and_the_normalisation_constants(tmp_path, data_dir):
    assert main(["explore", "--data-dir", str(data_dir), "--output", str(tmp_path), "--per-class", "4"]) == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["per_class"]["cat"] == 5000 and stats["images"] == 50_000
    assert stats["mean"] == pytest.approx(CIFAR10_MEAN, abs=5e-5)
    assert stats["std"] == pytest.approx(CIFAR10_STD, abs=5e-5)
    for name in ("samples.png", "class_distribution.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_explore_a_folder_reports_raw_sizes_modes_and_skipped_files(tmp_path):
    from folders import BAD_FILES, make_folder

    folder = make_folder(tmp_path / "pets", ["cat", "dog", "zebra"], 5, bad=True)
    out = tmp_path / "out"
    assert main(["explore", "--data", str(folder), "--output", str(out), "--per-class", "3"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["dataset"] == "pets" and stats["per_class"] == {"cat": 5, "dog": 11, "zebra": 5}
    raw = stats["raw"]
    assert raw["layout"] == "classes" and {"L", "RGBA", "P", "CMYK", "RGB"} <= set(raw["modes"])
    assert 24 <= raw["width"]["min"] <= raw["width"]["median"] <= raw["width"]["max"] <= 20_000
    assert {s["file"] for s in raw["skipped"]} == {f"cat/{name}" for name in BAD_FILES}
    for name in ("samples.png", "class_distribution.png", "image_sizes.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
