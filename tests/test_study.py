"""`imgclf study`: the quick preset end to end on a tiny slice, continuing a finished study, bad presets."""

import json

import pytest

from imgclf.cli import main
from imgclf.core.errors import ImgclfError
from imgclf.study import parse_overrides, study_configs

TINY = ["train_subset=64", "test_subset=64", "epochs=1", "head_epochs=1", "batch_size=32", "tensorboard=false"]


def study_args(output, data_dir, cache_dir, *extra: str) -> list[str]:
    sets = [a for pair in [*TINY, f"cache_dir={cache_dir}"] for a in ("--set", pair)]
    return ["study", "--quick", "--output", str(output), "--data-dir", str(data_dir), "--no-progress", *sets, *extra]


def test_quick_study_trains_evaluates_and_compares_every_run(data_dir, tmp_path, capsys):
    output = tmp_path / "study"
    assert main(study_args(output, data_dir, tmp_path / "cache")) == 0
    record = json.loads((output / "study.json").read_text())
    names = ["simple_cnn", "vgg10", "resnet20", "transfer_96", "transfer_224"]
    assert list(record["runs"]) == names
    assert all(run["status"] == "trained" and 0 <= run["test_accuracy"] <= 1 for run in record["runs"].values())
    metrics = json.loads((output / "transfer_224" / "metrics.json").read_text())
    assert metrics["test_images"] == 64 and metrics["model"] == "tf_efficientnet_lite2"
    assert (output / "transfer_96" / "phase1" / "best.safetensors").is_file()
    rows = [line for line in (output / "comparison" / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == names
    assert (output / "comparison" / "report.html").stat().st_size > 10_000
    assert "study finished" in capsys.readouterr().out

    # a second call keeps every finished run instead of training it again; asking for TTA only re-evaluates
    assert all("tta_test_accuracy" not in run for run in record["runs"].values())
    assert main(study_args(output, data_dir, tmp_path / "cache", "--tta")) == 0
    record = json.loads((output / "study.json").read_text())
    assert all(run["status"] == "kept" for run in record["runs"].values())
    assert all(0 <= run["tta_test_accuracy"] <= 1 for run in record["runs"].values())

    # the same folder with other options is refused, nothing overwritten
    assert main(study_args(output, data_dir, tmp_path / "cache", "--set", "seed=7")) == 2
    assert "holds a run with other options" in capsys.readouterr().err


def test_study_on_a_folder_compares_from_scratch_and_transfer(tmp_path, capsys):
    """`imgclf study --data DIR`: every run trains on the folder, the report names it and shows no machine paths."""
    from folders import make_folder

    folder = make_folder(tmp_path / "leaves", ["maple", "oak", "pine"], 12)
    preset = tmp_path / "mini.yaml"
    preset.write_text(
        "runs:\n  scratch:\n    model: simple_cnn\n    epochs: 2\n"
        "  transfer:\n    model: tf_efficientnet_lite0\n    pretrained: true\n    img_size: 64\n"
        "    head_epochs: 2\n    epochs: 1\n    unfreeze: '2'\n    batch_size: 16\n"
    )
    output = tmp_path / "study"
    args = ["study", "--preset", str(preset), "--data", str(folder), "--output", str(output), "--no-progress"]
    sets = [f"cache_dir={tmp_path / 'acts'}", f"prepare_dir={tmp_path / 'prep'}", "tensorboard=false"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    record = json.loads((output / "study.json").read_text())
    assert record["dataset"] == "leaves" and list(record["runs"]) == ["scratch", "transfer"]
    cards = [json.loads((output / run / "model.json").read_text()) for run in ("scratch", "transfer")]
    assert [c["input_size"] for c in cards] == [32, 64] and all(c["classes"] == ["maple", "oak", "pine"] for c in cards)
    page = (output / "comparison" / "report.html").read_text()
    assert "Model comparison on leaves" in page and str(tmp_path) not in page and "reference accuracy" not in page
    assert "study finished" in capsys.readouterr().out
    make_folder(folder, ["maple"], 13, seed=1)  # one more maple leaf: finished runs are kept, with a warning
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    assert all(r["status"] == "kept" for r in json.loads((output / "study.json").read_text())["runs"].values())
    assert capsys.readouterr().err.count("has changed since") == 2


def test_study_presets_and_overrides_are_checked(tmp_path):
    configs = study_configs("reference", tmp_path, {})
    assert [c.model for c in configs.values()][:3] == ["simple_cnn", "vgg10", "resnet20"]
    assert {configs["transfer_96"].img_size, configs["transfer_224"].img_size} == {96, 224}
    # transfer-only overrides leave the from-scratch runs alone
    configs = study_configs("quick", tmp_path, parse_overrides(["img_size=128"]))
    assert configs["resnet20"].img_size == 0 and configs["transfer_224"].img_size == 128
    with pytest.raises(ImgclfError, match="study preset not found"):
        study_configs("nonexistent", tmp_path, {})
    added = study_configs("reference", tmp_path, parse_overrides(["epochs=3"]), ["speed94"])
    assert list(added)[-1] == "speed94" and added["speed94"].lookahead and added["speed94"].epochs == 3
    quick = study_configs("quick", tmp_path, {}, ["speed94"])["speed94"]  # the quick preset's options for added runs
    assert (quick.epochs, quick.train_subset, quick.lookahead) == (2, 10000, True)
    assert study_configs("reference", tmp_path, {}, ["speed94"])["speed94"].epochs == 16
    with pytest.raises(ImgclfError, match="already has a run named 'resnet20'"):
        study_configs("reference", tmp_path, {}, ["resnet20"])
    with pytest.raises(ImgclfError, match=r"^--add nope: config file not found"):
        study_configs("reference", tmp_path, {}, ["nope"])
    with pytest.raises(ImgclfError, match="--set expects KEY=VALUE"):
        parse_overrides(["bogus=1"])
    with pytest.raises(ImgclfError, match="must be int"):
        parse_overrides(["epochs=many"])
