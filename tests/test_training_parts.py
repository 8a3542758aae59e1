import math

import pytest
import torch

from imgclf.errors import ImgclfError
from imgclf.models import create_model
from imgclf.training.callbacks import BestCheckpoint, EarlyStopping, ReduceLROnPlateau
from imgclf.training.checkpoint import load_state, load_weights, save_state, save_weights
from imgclf.training.optim import build_optimizer
from imgclf.training.schedule import lr_multiplier


def test_schedules():
    assert lr_multiplier("cosine", 0, 100, 10) == pytest.approx(0.1)
    assert lr_multiplier("cosine", 10, 100, 10) == pytest.approx(1.0)
    assert lr_multiplier("cosine", 55, 100, 10) == pytest.approx(0.5)
    assert lr_multiplier("cosine", 100, 100, 10) == pytest.approx(0.0, abs=1e-9)
    assert lr_multiplier("onecycle", 55, 100, 10) == pytest.approx(0.5)
    assert lr_multiplier("constant", 90, 100, 10) == 1.0


def test_weight_decay_skips_norms_and_biases():
    model = create_model("vgg10")
    decayed, undecayed = build_optimizer(model, "sgd", 0.1, 5e-4).param_groups
    assert decayed["weight_decay"] == 5e-4 and undecayed["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in undecayed["params"])
    bn = model.features[0][1]
    assert any(p is bn.weight for p in undecayed["params"]) and any(p is bn.bias for p in undecayed["params"])
    assert decayed["nesterov"] is True
    assert isinstance(build_optimizer(model, "adamw", 1e-3, 0.05), torch.optim.AdamW)
    with pytest.raises(ImgclfError, match="unknown optimizer"):
        build_optimizer(model, "lion", 1e-3, 0.0)


def test_early_stopping_waits_for_patience():
    stopper = EarlyStopping(patience=2)
    for epoch, acc in enumerate([0.5, 0.6, 0.59, 0.6], start=1):
        stopper.on_epoch_end({"epoch": epoch, "val_acc": acc})
    assert stopper.stop and stopper.best == 0.6
    loss_stopper = EarlyStopping(monitor="val_loss", mode="min", patience=2)
    for loss in [1.0, 0.9, 0.8]:
        loss_stopper.on_epoch_end({"val_loss": loss})
    assert not loss_stopper.stop


def test_reduce_lr_on_plateau_scales_and_resumes():
    plateau = ReduceLROnPlateau(patience=1, factor=0.5)
    for acc in [0.5, 0.4, 0.4, 0.6]:
        plateau.on_epoch_end({"val_acc": acc})
    assert plateau.scale == 0.25
    copy = ReduceLROnPlateau(patience=1, factor=0.5)
    copy.load_state_dict(plateau.state_dict())
    assert copy == plateau


def test_best_checkpoint_saves_only_improvements(tmp_path):
    model = create_model("simple_cnn")
    best = BestCheckpoint(tmp_path / "best.safetensors")
    best.on_epoch_end({"epoch": 1, "val_acc": 0.5}, model)
    saved = (tmp_path / "best.safetensors").stat().st_mtime_ns
    best.on_epoch_end({"epoch": 2, "val_acc": 0.4}, model)
    assert (tmp_path / "best.safetensors").stat().st_mtime_ns == saved
    assert load_weights(tmp_path / "best.safetensors", create_model("simple_cnn")) == {"epoch": 1, "val_acc": 0.5}


def test_weights_round_trip_and_incompatible_checkpoint(tmp_path):
    model = create_model("resnet20")
    save_weights(tmp_path / "w.safetensors", model, {"epoch": 3})
    other = create_model("resnet20")
    assert load_weights(tmp_path / "w.safetensors", other) == {"epoch": 3}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True))
    with pytest.raises(ImgclfError, match="incompatible checkpoint"):
        load_weights(tmp_path / "w.safetensors", create_model("vgg10"))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ImgclfError, match="cannot read weights file"):
        load_weights(tmp_path / "bad.safetensors", model)


def test_state_loads_without_executing_code(tmp_path):
    model = create_model("simple_cnn")
    opt = build_optimizer(model, "sgd", 0.1, 5e-4)
    model(torch.zeros(2, 3, 32, 32)).sum().backward()
    opt.step()
    save_state(tmp_path / "s.pt", {"epoch": 1, "optimizer": opt.state_dict(), "x": math.pi})
    assert load_state(tmp_path / "s.pt")["x"] == math.pi

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ImgclfError, match="cannot read checkpoint state"):
        load_state(tmp_path / "evil.pt")


def test_progressive_resizing_ramps_to_full_size():
    from imgclf.training.trainer import progressive_image_size

    sizes = [progressive_image_size(e, 10, 16, 0.5, full=32) for e in range(10)]
    assert sizes == [16, 16, 20, 24, 28, 0, 0, 0, 0, 0]
    assert all(progressive_image_size(e, 10, 0, 0.5, full=32) == 0 for e in range(10))


def test_mixup_mixes_inputs_and_labels():
    import torch.nn.functional as F

    from imgclf.training.mixup import mix_batch, mixed_cross_entropy

    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8), torch.arange(16)  # distinct labels name each input
    mixed, partners, lam = mix_batch(x, y, 0.4)
    assert mixed.shape == x.shape and 0 < lam < 1
    assert sorted(partners.tolist()) == list(range(16)) and not torch.equal(partners, y)
    # every mixed input is lam × itself + (1 − lam) × the input its partner label names
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[partners])
    logits = torch.randn(16, 16)
    torch.testing.assert_close(mixed_cross_entropy(logits, y, partners, 1.0), F.cross_entropy(logits, y))
    expected = 0.3 * F.cross_entropy(logits, y) + 0.7 * F.cross_entropy(logits, partners)
    torch.testing.assert_close(mixed_cross_entropy(logits, y, partners, 0.3), expected)
