"""Transfer learning: real ImageNet weights, freezing, the activation cache, bad backbones and weights files."""

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from timm.layers import DropPath

from imgclf.artifacts.runs import run_splits
from imgclf.config.options import TrainConfig
from imgclf.core.errors import ImgclfError
from imgclf.data.features import ActivationCache, module_digest, resize_normalise
from imgclf.data.images import ImageSet
from imgclf.models import count_parameters
from imgclf.models.backbones import (
    backbone_units,
    create_backbone,
    package_weights_path,
    split_backbone,
    unfrozen_units,
)
from imgclf.models.layers import DepthwiseConv2d
from imgclf.models.transfer import build_transfer_model
from imgclf.training import transfer
from imgclf.training.history import MACHINE_KEYS
from imgclf.training.trainer import Trainer
from imgclf.training.transfer import TransferTrainer


def imagenet_top1(model: torch.nn.Module, image: np.ndarray, size: int) -> str:
    from timm.data import ImageNetInfo

    x = resize_normalise(torch.from_numpy(image).permute(2, 0, 1)[None], size, (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        index = model.eval()(x).argmax(1).item()
    return ImageNetInfo().index_to_description(index)


@pytest.mark.parametrize("name,size", [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite2", 260)])
def test_installed_weights_are_imagenet_weights(name, size):
    """The scikit-image cat and espresso photos get their ImageNet labels from the offline weights."""
    skimage_data = pytest.importorskip("skimage.data")
    model = create_backbone(name, num_classes=1000, pretrained=True)
    # create_backbone gives a new (zeroed) head; the ImageNet classifier is in the weights file itself
    from imgclf.models.backbones import lukemelas_to_timm, read_weights_file

    model.load_state_dict(lukemelas_to_timm(read_weights_file(package_weights_path(name))))
    assert imagenet_top1(model, skimage_data.chelsea(), size) in ("Egyptian cat", "tabby, tabby cat", "tiger cat")
    assert imagenet_top1(model, skimage_data.coffee(), size) == "espresso"


def test_lite2_names_the_cat_egyptian_cat():
    skimage_data = pytest.importorskip("skimage.data")
    from imgclf.models.backbones import lukemelas_to_timm, read_weights_file

    model = create_backbone("tf_efficientnet_lite2", num_classes=1000)
    model.load_state_dict(lukemelas_to_timm(read_weights_file(package_weights_path("tf_efficientnet_lite2"))))
    assert imagenet_top1(model, skimage_data.chelsea(), 260) == "Egyptian cat"


def test_pretrained_backbone_gets_weights_and_a_new_zero_head():
    plain = create_backbone("tf_efficientnet_lite0", 10)
    pretrained = create_backbone("tf_efficientnet_lite0", 10, pretrained=True)
    assert not torch.equal(plain.conv_stem.weight, pretrained.conv_stem.weight)
    assert pretrained.classifier.out_features == 10 and not pretrained.classifier.weight.any()


def test_efficientnetv2_b0_builds_and_loads_a_local_weights_file(tmp_path):
    """The reference backbone: 7.14M parameters at 1000 classes; a local file loads through the same mechanism."""
    source = create_backbone("tf_efficientnetv2_b0", 1000)
    assert count_parameters(source) == 7_139_704
    state = {k: v.clone() for k, v in source.state_dict().items()}
    for ext in ("safetensors", "pth"):
        path = tmp_path / f"v2b0.{ext}"
        if ext == "safetensors":
            save_file(state, str(path))
        else:
            torch.save({"state_dict": state}, path)
        model = create_backbone("tf_efficientnetv2_b0", 10, weights=str(path))
        assert torch.equal(model.conv_stem.weight, state["conv_stem.weight"])
        assert torch.equal(model.blocks[5][7].conv_pwl.weight, state["blocks.5.7.conv_pwl.weight"])
        assert model.classifier.out_features == 10


def test_bad_backbones_and_weights_give_one_line_errors(tmp_path):
    with pytest.raises(ImgclfError, match="unknown model 'efficientnet_b99'"):
        create_backbone("efficientnet_b99", 10)
    with pytest.raises(ImgclfError, match="weights file not found"):
        create_backbone("tf_efficientnet_lite0", 10, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ImgclfError, match="do not fit tf_efficientnet_lite2"):
        create_backbone("tf_efficientnet_lite2", 10, weights=str(package_weights_path("tf_efficientnet_lite0")))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ImgclfError, match="cannot read weights file"):
        create_backbone("tf_efficientnet_lite0", 10, weights=str(corrupt))


def test_unfreeze_specs():
    assert unfrozen_units("0.25", 23) == 6
    assert unfrozen_units("3", 23) == 3
    assert unfrozen_units("all", 23) == 23
    assert unfrozen_units("0", 23) == 0
    with pytest.raises(ImgclfError, match="--unfreeze"):
        unfrozen_units("half", 23)


@pytest.mark.parametrize("unfreeze", ["0", "0.25", "5"])
def test_split_composes_to_the_whole_network(unfreeze):
    model = create_backbone("tf_efficientnet_lite0", 10, pretrained=True).eval()
    torch.nn.init.normal_(model.classifier.weight)
    prefix, tail = split_backbone(model, unfreeze)
    assert len(tail.units) == unfrozen_units(unfreeze, len(backbone_units(model)))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tail.eval()(prefix(x)), model(x), rtol=1e-4, atol=1e-4)


def test_drop_path_drops_residual_branches_in_training_only():
    model = create_backbone("tf_efficientnet_lite0", 10, pretrained=True, drop_path=0.5)
    rates = [b.drop_path.drop_prob for s in model.blocks for b in s if hasattr(b.drop_path, "drop_prob")]
    assert rates and max(rates) > 0.3 and rates == sorted(rates)  # timm's linear ramp, deepest blocks most
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        features = model.forward_features  # the new head starts at zero
        torch.testing.assert_close(features(x), features(x))
        torch.manual_seed(0)
        model.train()  # BatchNorm uses the same batch statistics in both draws: only drop-path differs
        assert not torch.allclose(features(x), features(x))
    with pytest.raises(ImgclfError, match="drop_path must be in"):
        TrainConfig(model="tf_efficientnet_lite0", drop_path=1.0).validate()
    # only the trained tail drops paths: the frozen prefix, and so its activation cache, is as without drop-path
    plain, dropping = (
        build_transfer_model(TrainConfig(model="tf_efficientnet_lite0", pretrained=True, drop_path=d), 10)
        for d in (0, 0.5)
    )
    assert module_digest(plain.prefix) == module_digest(dropping.prefix)
    assert any(isinstance(m, DropPath) for m in dropping.tail.modules())


def tiny_transfer_config(data_dir, tmp_path, **overrides) -> TrainConfig:
    options = dict(
        model="tf_efficientnet_lite0",
        pretrained=True,
        img_size=64,
        head_epochs=1,
        epochs=1,
        unfreeze="3",
        optimizer="adamw",
        lr=1e-3,
        batch_size=32,
        train_subset=64,
        data_dir=str(data_dir),
        output=str(tmp_path),
        cache_dir=str(tmp_path / "cache"),
        progress=False,
        tensorboard=False,
    )
    return TrainConfig(**{**options, **overrides}).validate()


@pytest.mark.parametrize("cache", [True, False])
def test_freezing_really_freezes(data_dir, tmp_path, cache):
    """Two phases change only the head and the unfrozen layers; no BatchNorm statistic moves (cached activations
    or the whole network on images)."""
    cfg = tiny_transfer_config(data_dir, tmp_path, cache=cache)
    trainer = TransferTrainer(cfg, tmp_path / "run", run_splits(cfg))
    before = {k: v.clone() for k, v in trainer.tm.network.state_dict().items()}
    prefix_names = {n for n, _ in trainer.tm.network.named_parameters()} - {
        n for n, _ in trainer.tm.network.named_parameters() if any(p is _ for p in trainer.tm.tail.parameters())
    }
    summary = trainer.fit()
    after = trainer.tm.network.state_dict()
    tail_ids = {id(p) for p in trainer.tm.tail.parameters()}
    for name, param in trainer.tm.network.named_parameters():
        if id(param) not in tail_ids:
            assert torch.equal(before[name], after[name]), f"frozen {name} changed"
            assert param.grad is None, f"frozen {name} got a gradient"
    assert prefix_names and all(torch.equal(before[n], after[n]) for n in prefix_names)
    for name in before:
        if "running_mean" in name or "running_var" in name:
            assert torch.equal(before[name], after[name]), f"BatchNorm statistic {name} changed"
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert not torch.equal(before["conv_head.weight"], after["conv_head.weight"])  # unfrozen in phase 2
    assert any(isinstance(m, DepthwiseConv2d) for m in trainer.tm.tail.modules())  # phase 2's fast CPU backward
    assert not any(isinstance(m, DepthwiseConv2d) for m in trainer.tm.prefix.modules())  # frozen: compiles whole
    phases = summary["phases"]
    assert phases["phase1"]["trainable_parameters"] == 1280 * 10 + 10
    assert phases["phase1"]["trainable_parameters"] < phases["phase2"]["trainable_parameters"]
    assert phases["phase2"]["total_parameters"] == count_parameters(trainer.tm.network)
    assert (tmp_path / "run" / "best.safetensors").is_file()
    assert [row["phase"] for row in map(eval_json, (tmp_path / "run" / "history.jsonl").read_text().splitlines())] == [
        1,
        2,
    ]


def eval_json(line: str) -> dict:
    import json

    return json.loads(line)


def test_activation_cache_is_reused_and_rebuilt_when_inputs_change(tmp_path, cifar_train):
    data = cifar_train.subset(torch.arange(12))
    cfg = TrainConfig(model="tf_efficientnet_lite0", pretrained=True, unfreeze="0.25")
    device = torch.device("cpu")

    def cache(name="tf_efficientnet_lite0", size=48, weights=None):
        tm = build_transfer_model(dataclasses.replace(cfg, model=name, weights=weights), 10)
        return ActivationCache(tmp_path, tm.prefix, size, tm.mean, tm.std, device, "fp32", 8, progress=False)

    first = cache()
    acts = first.get(data)
    assert (first.hits, first.misses) == (0, 1) and acts.dtype == torch.bfloat16 and len(acts) == 12
    again = cache()
    torch.testing.assert_close(again.get(data), acts, rtol=0, atol=0)
    assert (again.hits, again.misses) == (1, 0)
    mirrored = again.get(data, flip=True)
    assert again.misses == 1 and not torch.equal(mirrored, acts)

    for changed in (cache(size=64), cache(name="tf_efficientnet_lite1")):
        changed.get(data)
        assert (changed.hits, changed.misses) == (0, 1)
    # other weights (a modified copy of the installed file) rebuild the cache too
    from imgclf.models.backbones import read_weights_file

    state = read_weights_file(package_weights_path("tf_efficientnet_lite0"))
    state["_conv_stem.weight"] = state["_conv_stem.weight"] * 1.01
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    other = cache(weights=str(path))
    other.get(data)
    assert (other.hits, other.misses) == (0, 1)
    other_data = ImageSet(data.images.flip(2), data.labels, data.classes)
    fresh = cache()
    fresh.get(other_data)
    assert fresh.misses == 1


def test_onnxruntime_caches_the_same_activations_as_pytorch_and_keys_them_apart(tmp_path, cifar_train, monkeypatch):
    from imgclf.data import features

    data = cifar_train.subset(torch.arange(24))
    tm = build_transfer_model(TrainConfig(model="tf_efficientnet_lite0", pretrained=True, unfreeze="0.5"), 10)
    monkeypatch.setattr(features, "FAST_MIN_IMAGES", 16)
    cpu = torch.device("cpu")
    fast = ActivationCache(tmp_path, tm.prefix, 64, tm.mean, tm.std, cpu, "bf16", 16, progress=False)
    assert fast.engine(len(data)) == "onnxruntime" and fast.engine(8) == "eager"
    acts = fast.get(data)
    assert "onnxruntime" in fast._runners and acts.shape[0] == 24 and acts.dtype == torch.bfloat16
    with torch.inference_mode():
        exact = tm.prefix(resize_normalise(data.images, 64, tm.mean, tm.std))
    torch.testing.assert_close(acts.float(), exact, rtol=0.02, atol=0.02)  # bf16 storage, fp32 compute
    eager = ActivationCache(tmp_path, tm.prefix, 64, tm.mean, tm.std, cpu, "bf16", 16, compile=False, progress=False)
    assert eager.path(data, False) != fast.path(data, False)  # fp32 onnxruntime and bf16 PyTorch are cached apart

    def broken_export(*args, **kwargs):
        raise ImgclfError("ONNX export failed (no)")

    monkeypatch.setattr(features, "export_network", broken_export)
    monkeypatch.setattr(features.torch, "compile", lambda module, **kwargs: module)  # skip compiling in a test
    fallback = ActivationCache(tmp_path / "b", tm.prefix, 64, tm.mean, tm.std, cpu, "bf16", 16, progress=False)
    with pytest.warns(UserWarning, match="ONNX export of the backbone failed"):
        fallback.get(data)
    assert fallback.onnx_failed and fallback.engine(len(data)) == "compiled"
    assert fallback.path(data, False).name == eager.path(data, False).name and fallback.path(data, False).is_file()


def test_full_fine_tuning_trains_every_layer_and_evaluates(data_dir, tmp_path):
    from imgclf.evaluation.evaluate import evaluate_run
    from imgclf.report.run_report import render_evaluation

    cfg = tiny_transfer_config(data_dir, tmp_path, unfreeze="all", img_size=32, test_subset=50)
    from imgclf.artifacts.weights import read_weights
    from imgclf.training.run import train_run

    pretrained = create_backbone("tf_efficientnet_lite0", 10, pretrained=True).state_dict()
    summary = train_run(cfg, tmp_path / "run")
    trained, _ = read_weights(tmp_path / "run" / "best.safetensors")
    assert summary["phases"]["phase2"]["trainable_parameters"] == summary["parameters"]
    assert not torch.equal(pretrained["conv_stem.weight"], trained["conv_stem.weight"])
    assert torch.equal(pretrained["bn1.running_mean"], trained["bn1.running_mean"])
    metrics = render_evaluation(evaluate_run(tmp_path / "run"))
    assert metrics["test_images"] == 50 and metrics["model"] == "tf_efficientnet_lite0"
    assert metrics["parameters"] == summary["parameters"]


def test_discriminative_learning_rates():
    from imgclf.training.optim import build_optimizer, layer_lr_scales

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    scales = layer_lr_scales(list(model), 0.5)
    optimizer = build_optimizer(model, "adamw", 1.0, 0.01, lr_scales=scales)
    by_scale = {}
    for group in optimizer.param_groups:
        by_scale[group["lr_scale"]] = by_scale.get(group["lr_scale"], 0) + sum(p.numel() for p in group["params"])
    assert by_scale == {1.0: 6, 0.5: 6, 0.25: 6}
    assert {g["weight_decay"] for g in optimizer.param_groups if g["params"][0].ndim == 1} == {0.0}


def test_cli_rejects_bad_backbones_in_one_line(tmp_path, data_dir):
    from test_cli import assert_one_line_error, imgclf

    common = ["--output", str(tmp_path), "--data-dir", str(data_dir)]
    assert_one_line_error(imgclf("train", "--model", "efficientnet_b99", *common), "unknown model 'efficientnet_b99'")
    wrong = str(package_weights_path("tf_efficientnet_lite0"))
    result = imgclf("train", "--model", "tf_efficientnet_lite1", "--weights", wrong, *common)
    assert_one_line_error(result, "do not fit tf_efficientnet_lite1")
    assert not any(tmp_path.iterdir())  # nothing written for a run that could not start


def test_resume_in_phase_2_reproduces_the_run_without_redoing_phase_1(data_dir, tmp_path, monkeypatch):
    """A run interrupted in phase 2 resumes there, keeps phase 1 as it was (its pooled features are not recomputed)
    and ends with the uninterrupted run's history and weights."""
    cfg = tiny_transfer_config(data_dir, tmp_path, epochs=2, threads=1)  # one thread: the same sums in both runs
    TransferTrainer(cfg, tmp_path / "whole", run_splits(cfg)).fit()
    train_epoch = Trainer.train_epoch

    def interrupted(self, bar):
        if "phase 2" in self.phase.label and self.epoch == 1:
            raise KeyboardInterrupt
        return train_epoch(self, bar)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        TransferTrainer(cfg, tmp_path / "cut", run_splits(cfg)).fit()
    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)

    def no_pooled_features(*args, **kwargs):
        raise AssertionError("phase 1 is finished: its pooled features must not be recomputed")

    monkeypatch.setattr(transfer, "pooled_features", no_pooled_features)
    summary = TransferTrainer(cfg, tmp_path / "cut", run_splits(cfg)).fit(resume=True)
    assert summary["epochs_run"] == 3 and summary["phases"]["phase1"]["trainable_parameters"] == 1280 * 10 + 10

    def rows(run: str) -> list[dict]:
        lines = (tmp_path / run / "history.jsonl").read_text().splitlines()
        return [{k: v for k, v in eval_json(line).items() if k not in MACHINE_KEYS} for line in lines]

    assert rows("cut") == rows("whole") and len(rows("whole")) == 3
    whole, cut = (load_file(tmp_path / run / "best.safetensors") for run in ("whole", "cut"))
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)


@pytest.mark.parametrize("unfreeze", ["3", "all"])
def test_progressive_resizing_ramps_to_the_transfer_side_without_the_cache(data_dir, tmp_path, unfreeze):
    """Uncached transfer (`--no-cache`, `--unfreeze all`) with `--progressive-size`: training ramps from 16 px to
    `--img-size` as validation sees it, never the stored 32-px images (the loaders' side was once lost: 0, native)."""
    cfg = tiny_transfer_config(
        data_dir, tmp_path, cache=False, unfreeze=unfreeze, img_size=48, head_epochs=2, epochs=2, train_subset=64
    )
    cfg = dataclasses.replace(cfg, progressive_size=16, progressive_fraction=0.5).validate()
    sides: list[tuple[bool, int]] = []  # (training?, side) of every forward pass of the network
    trainer = TransferTrainer(cfg, tmp_path / "run", run_splits(cfg))
    trainer.tm.network.register_forward_pre_hook(lambda m, args: sides.append((m.training, args[0].shape[-1])))
    if trainer.tm.tail is not None:
        trainer.tm.prefix.register_forward_pre_hook(lambda m, args: sides.append((m.training, args[0].shape[-1])))
    trainer.fit()
    trained = [side for training, side in sides if training]
    validated = {side for training, side in sides if not training}
    assert validated == {48}
    steps = len(trained) // 4  # two phases of two epochs, the same steps each
    assert trained == ([16] * steps + [48] * steps) * 2, trained
