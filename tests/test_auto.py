"""What `imgclf train` does when it is not told: the automatic model, the fine-tuning defaults of timm models, and a
one-line error where pretrained weights cannot be had."""

import pytest
from folders import make_folder
from PIL import Image

import imgclf.config.auto as auto
from imgclf.cli import main
from imgclf.config.auto import auto_side
from imgclf.config.build import build_config, merged_values
from imgclf.config.files import load_config_file
from imgclf.core.errors import ImgclfError
from imgclf.models.backbones import best_installed_backbone, check_weights_available


@pytest.mark.parametrize("image, side", [(10, 96), (27, 96), (32, 112), (48, 176), (64, 224), (500, 224)])
def test_the_side_grows_with_the_images_3_5x(image, side):
    assert auto_side(image) == side


def test_the_best_installed_backbone_is_lite2():
    assert best_installed_backbone() == "tf_efficientnet_lite2"  # the three Lite packages are dependencies


def sized_folder(root, side: int, per_class: int = 3):
    """DIR/<class>/… of ``per_class`` images of ``side``×``side + 10`` px."""
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (side + 10, side), (i * 40, 90, 200)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("side, img_size, recipe", [(32, 112, "lite2_96"), (300, 224, "lite2_224")])
def test_no_model_chooses_transfer_at_a_side_suited_to_the_images(tmp_path, side, img_size, recipe):
    folder = sized_folder(tmp_path / "d", side)
    values, why = merged_values({}, {"data": str(folder), "epochs": 1})
    expected = {**load_config_file(recipe), "model": "tf_efficientnet_lite2", "img_size": img_size, "epochs": 1}
    assert {k: values[k] for k in expected} == expected  # the recipe for the side, the flags over it
    assert why == f"images of ~{side} px; the {recipe} recipe"


def test_cifar_counts_as_small_images_and_the_choice_is_said(tmp_path, capsys):
    cfg = build_config({}, {"output": str(tmp_path), "epochs": 2})
    assert (cfg.model, cfg.img_size, cfg.pretrained, cfg.lr, cfg.epochs) == (
        "tf_efficientnet_lite2",
        112,
        True,
        3e-4,
        2,
    )
    note = capsys.readouterr().out.strip()
    assert note == (
        "imgclf: no --model given: transfer learning from tf_efficientnet_lite2 (ImageNet weights) at 112 px "
        "(images of ~32 px; the lite2_96 recipe); choose with --model NAME or --config RECIPE"
    )
    build_config({}, {"output": str(tmp_path), "model": "resnet20"})
    assert capsys.readouterr().out == ""  # a model given: nothing to say


def test_without_an_installed_backbone_the_choice_is_resnet20(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(auto, "best_installed_backbone", lambda: None)
    cfg = build_config({}, {"output": str(tmp_path)})
    assert cfg.model == "resnet20" and cfg.lr == 0.2
    assert "no --model given: resnet20 from scratch (no pretrained backbone is installed)" in capsys.readouterr().out


def test_a_timm_model_fine_tunes_by_default_and_a_scratch_model_keeps_its_rate(tmp_path):
    finetune = load_config_file("finetune")
    cfg = build_config({}, {"output": str(tmp_path), "model": "tf_efficientnet_lite0"})
    assert {k: getattr(cfg, k) for k in finetune} == finetune
    assert (cfg.lr, cfg.optimizer, cfg.pretrained, cfg.head_epochs) == (3e-4, "adamw", True, 10)
    cfg = build_config({"lr": 0.01}, {"output": str(tmp_path), "model": "tf_efficientnet_lite0", "epochs": 2})
    assert (cfg.lr, cfg.epochs, cfg.optimizer) == (0.01, 2, "adamw")  # a config file, then flags, over the family
    cfg = build_config({}, {"output": str(tmp_path), "model": "resnet20"})
    assert (cfg.lr, cfg.optimizer) == (0.2, "sgd")


def test_weights_that_cannot_be_had_are_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without internet, whatever this one has
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    with pytest.raises(ImgclfError, match=r"no ImageNet weights for 'resnet18' here: .*--no-pretrained"):
        check_weights_available("resnet18")
    check_weights_available("tf_efficientnet_lite0")  # installed as a package: fine offline
    args = ["train", "--model", "resnet18", "--output", str(tmp_path / "runs"), "--data", str(tmp_path / "none")]
    make_folder(tmp_path / "none", ["a", "b"], 2)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no ImageNet weights for 'resnet18'" in err[0]
    assert not list((tmp_path / "runs").glob("*"))  # stopped before a run folder was made
