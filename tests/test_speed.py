"""The speed94 recipe's parts: whitening, Lookahead, alternating flips, shifted TTA, per-parameter scales."""

import json

import pytest
import torch
from safetensors.torch import load_file

from imgclf.cli import main
from imgclf.config.options import TrainConfig
from imgclf.core.errors import ImgclfError
from imgclf.data.augment import augment_batch
from imgclf.data.loader import alternating_flips
from imgclf.models import create_model
from imgclf.models.speed import BIAS_LR_SCALE, SpeedNet
from imgclf.training.build import first_images
from imgclf.training.checkpoint import checkpoint_files
from imgclf.training.ema import Lookahead
from imgclf.training.optim import build_optimizer
from imgclf.training.schedule import lr_multiplier


def test_whitening_filters_decorrelate_the_training_patches(cifar_train):
    from imgclf.data.cifar import CIFAR10_MEAN, CIFAR10_STD

    images = first_images(cifar_train, CIFAR10_MEAN, CIFAR10_STD, count=2000)
    assert images.shape == (2000, 3, 32, 32) and images.dtype == torch.float32
    net = SpeedNet()
    net.init_from_data(images)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, net.whiten.weight[:12])  # the 12 positive filters, no bias
    flat = out.permute(1, 0, 2, 3).reshape(12, -1).double()
    covariance = flat @ flat.T / flat.shape[1]
    # unit variance along the whitened directions (ε keeps the smallest below 1), nothing across them
    assert torch.allclose(covariance.diagonal()[:6], torch.ones(6, dtype=torch.double), atol=0.02)
    off_diagonal = covariance - torch.diag(covariance.diagonal())
    assert off_diagonal.abs().max() < 0.02
    assert torch.equal(net.whiten.weight[12:], -net.whiten.weight[:12])
    assert not net.whiten.weight.requires_grad


def test_speed_net_scales_and_shapes():
    net = create_model("speed94", num_classes=7)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 7)  # a folder at 64 px: global max-pool
    groups = build_optimizer(net, "sgd", 1.0, 0.01, 0.85, net.lr_scales(), net.decay_scales()).param_groups
    shifts = next(g for g in groups if g["lr_scale"] == BIAS_LR_SCALE)
    others = next(g for g in groups if g["lr_scale"] == 1.0)
    # the same weight decay per step everywhere: rate × scale × decay
    assert shifts["weight_decay"] * BIAS_LR_SCALE == pytest.approx(others["weight_decay"])
    assert any(p is net.whiten.bias for p in others["params"])  # biases decay too
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in net.parameters() if p.requires_grad)
    assert net.trainable_epochs() == {id(net.whiten.bias): 3}


@pytest.mark.parametrize("side", [3, 5])
def test_global_max_pool_matches_the_adaptive_pool_bit_for_bit(side):
    from imgclf.models.speed import GlobalMaxPool

    x = torch.randn(64, 32, side, side).bfloat16().float().contiguous(memory_format=torch.channels_last)
    x[:32, :, 0, 0] = x[:32, :, -1, -1]  # ties: which maximum gets the gradient must agree too
    weights = torch.randn(64, 32, 1, 1)
    outputs = []
    for pool in (GlobalMaxPool(), torch.nn.AdaptiveMaxPool2d(1)):
        leaf = x.clone().requires_grad_(True)
        with torch.autocast("cpu", torch.bfloat16):
            y = pool(leaf.bfloat16())
        (y.float() * weights).sum().backward()
        outputs.append((y, leaf.grad))
    (y, grad), (y_adaptive, grad_adaptive) = outputs
    assert y.shape == (64, 32, 1, 1) and torch.equal(y, y_adaptive)
    assert torch.equal(grad, grad_adaptive) and (grad != 0).sum() == 64 * 32  # one winner per map


def test_schedule_starts_and_ends_at_fractions():
    assert lr_multiplier("onecycle", 0, 100, 20, start=0.2, end=0.07) == pytest.approx(0.2 + 0.8 / 20)
    assert lr_multiplier("onecycle", 19, 100, 20, start=0.2, end=0.07) == pytest.approx(1.0)
    assert lr_multiplier("onecycle", 100, 100, 20, start=0.2, end=0.07) == pytest.approx(0.07)
    assert lr_multiplier("cosine", 100, 100, 20, end=0.1) == pytest.approx(0.1)


def test_lookahead_pulls_every_fifth_step_and_ends_on_the_slow_weights():
    model = torch.nn.Linear(3, 2)
    look = Lookahead(model, total_steps=12)
    start = model.weight.detach().clone()
    for step in range(1, 13):
        before = look.module.weight.detach().clone()
        with torch.no_grad():
            model.weight.add_(1.0)
        fast = model.weight.detach().clone()
        look.update(model, step)
        if step % 5 == 0:
            keep = 0.95**5 * (step / 12) ** 3
            expected = keep * before + (1 - keep) * fast
            assert torch.allclose(look.module.weight, expected)
            assert torch.equal(model.weight, look.module.weight)  # the model restarts from the slow weights
        elif step < 12:
            assert torch.equal(look.module.weight, before)
    assert torch.equal(model.weight, look.module.weight)  # the last step: the slow weights, unchanged by it
    assert not torch.equal(model.weight, start + 12)


def test_alternating_flips_mirror_each_image_every_other_epoch():
    first, second, third = (alternating_flips(1000, 3, e) for e in range(3))
    assert torch.equal(first, ~second) and torch.equal(first, third)
    assert 400 < int(first.sum()) < 600
    assert torch.equal(alternating_flips(1000, 3, 0), first) and not torch.equal(alternating_flips(1000, 4, 0), first)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    flips = torch.tensor([True, False, True, False])
    out = augment_batch(images, "alternating", torch.Generator().manual_seed(0), flips=flips)
    unflipped = augment_batch(images, "alternating", torch.Generator().manual_seed(0), flips=~flips)
    assert torch.equal(out, unflipped.flip(3))  # same crops, opposite mirrors
    padded = torch.nn.functional.pad(images.float(), (2, 2, 2, 2), mode="reflect") / 255
    crops = [padded[i, :, y : y + 8, x : x + 8] for i in range(4) for y in range(5) for x in range(5)]
    assert all(any(torch.equal(out[i] if not flips[i] else unflipped[i], c) for c in crops[25 * i : 25 * i + 25])
               for i in range(4))  # fmt: skip


def test_speed_options_are_checked():
    with pytest.raises(ImgclfError, match="choose one"):
        TrainConfig(model="speed94", lookahead=True, ema_decay=0.9).validate()
    with pytest.raises(ImgclfError, match="--tta-shift applies"):
        TrainConfig(model="efficientnet_lite0", tta_shift=1).validate()
    with pytest.raises(ImgclfError, match="--lr-end must be in"):
        TrainConfig(lr_end=1.5).validate()


def test_speed94_trains_resumes_and_evaluates_with_shifted_tta(tmp_path, tiny_options):
    options = [o for o in tiny_options if o != "--no-evaluate"]
    options += ["--config", "speed94", "--epochs", "4", "--warmup-epochs", "1", "--test-subset", "500"]
    assert main(["train", "--name", "s", *options]) == 0
    run_dir = tmp_path / "s"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 < metrics["tta"]["test_accuracy"] <= 1.0 and metrics["test_images"] == 500
    weights = load_file(checkpoint_files(run_dir / "checkpoints")["weights"])
    slow = load_file(checkpoint_files(run_dir / "checkpoints")["ema"])
    assert all(torch.equal(weights[k], slow[k]) for k in weights if weights[k].is_floating_point())  # ended slow

    from imgclf.inference.load import load_predictor

    predictor = load_predictor(run_dir, device="cpu")
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    x = predictor.prepare(images)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, padded[..., :32, :32], padded[..., 2:, 2:]]
    mean = [(predictor.forward(v.contiguous()) + predictor.forward(v.flip(3).contiguous())) / 2 for v in views]
    expected = mean[0] / 2 + (mean[1] + mean[2]) / 4
    assert predictor.logits(images, flip_tta=True) == pytest.approx(expected, abs=1e-4)

    # exported to ONNX: the same logits, and the same six views from the exported file's card
    assert main(["export", str(run_dir)]) == 0
    assert json.loads((run_dir / "model.parity.json").read_text())["parity"]["passed"]
    exported = load_predictor(run_dir / "model.onnx")
    assert exported.runtime == "onnxruntime" and exported.tta_views == predictor.tta_views
    got = exported.logits(images, flip_tta=True)
    assert got == pytest.approx(expected, rel=0.05, abs=0.05 * float(abs(expected).max()))


def test_sync_batchnorm_keeps_the_scaleless_norms_and_their_rates():
    from imgclf.training.distributed import GlooSyncBatchNorm, sync_batchnorm

    net = sync_batchnorm(SpeedNet(), torch.device("cpu"))
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(isinstance(m, GlooSyncBatchNorm) for m in norms)
    assert not any(m.weight.requires_grad for m in norms) and all(m.bias.requires_grad for m in norms)
    assert set(net.lr_scales()) == {id(m.bias) for m in norms}
