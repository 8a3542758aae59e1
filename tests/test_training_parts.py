import math

import pytest
import torch

from imgclf.artifacts.weights import load_weights, save_weights
from imgclf.core.errors import ImgclfError
from imgclf.models import create_model
from imgclf.training.callbacks import BestCheckpoint, Decision, EarlyStopping, EpochState, ReduceLROnPlateau
from imgclf.training.checkpoint import load_state, save_state
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
    assert not decayed["fused"]  # fused SGD on a GPU only: the CPU's arithmetic stays PyTorch's foreach SGD
    if torch.cuda.is_available():
        assert build_optimizer(create_model("vgg10").cuda(), "sgd", 0.1, 5e-4).param_groups[0]["fused"]
    assert isinstance(build_optimizer(model, "adamw", 1e-3, 0.05), torch.optim.AdamW)
    with pytest.raises(ImgclfError, match="unknown optimizer"):
        build_optimizer(model, "lion", 1e-3, 0.0)


def epoch_end(metrics: dict, model=None, last: bool = True) -> EpochState:
    """The loop's state at the end of an epoch, as a callback sees it (a checkpoint closes every epoch)."""
    return EpochState(metrics, model, last_epoch=last, checkpoint_time=False)


def test_early_stopping_waits_for_patience():
    stopper = EarlyStopping(patience=2)
    decisions = [
        stopper.on_epoch_end(epoch_end({"epoch": e, "val_acc": a})) for e, a in enumerate([0.5, 0.6, 0.59, 0.6])
    ]
    assert [d.stop for d in decisions] == [False, False, False, True] and stopper.best == 0.6
    loss_stopper = EarlyStopping(monitor="val_loss", mode="min", patience=2)
    for loss in [1.0, 0.9, 0.8]:
        assert loss_stopper.on_epoch_end(epoch_end({"val_loss": loss})) == Decision()
    assert not loss_stopper.stop


def test_reduce_lr_on_plateau_scales_and_resumes():
    plateau = ReduceLROnPlateau(patience=1, factor=0.5)
    scales = [plateau.on_epoch_end(epoch_end({"val_acc": acc})).lr_scale for acc in [0.5, 0.4, 0.4, 0.6]]
    assert scales == [1.0, 0.5, 0.25, 0.25] and plateau.scale == 0.25
    copy = ReduceLROnPlateau(patience=1, factor=0.5)
    copy.load_state_dict(plateau.state_dict())
    assert copy == plateau


def test_the_loop_folds_decisions_in_order_and_a_stop_makes_a_checkpoint_due():
    state = epoch_end({"val_acc": 0.5}, last=False)
    assert not state.checkpoint_due
    state.apply(Decision(lr_scale=0.5))
    state.apply(Decision(stop=True, lr_scale=0.5))
    assert state.stop and state.lr_scale == 0.25 and state.checkpoint_due


def test_best_checkpoint_saves_only_improvements_and_holds_them_until_a_checkpoint(tmp_path):
    model = create_model("simple_cnn")
    best = BestCheckpoint(tmp_path / "best.safetensors")
    assert best.on_epoch_end(epoch_end({"epoch": 1, "val_acc": 0.5}, model)) == Decision()
    saved = (tmp_path / "best.safetensors").stat().st_mtime_ns
    best.on_epoch_end(epoch_end({"epoch": 2, "val_acc": 0.4}, model))
    assert (tmp_path / "best.safetensors").stat().st_mtime_ns == saved
    assert load_weights(tmp_path / "best.safetensors", create_model("simple_cnn")) == {"epoch": 1, "val_acc": 0.5}
    best.on_epoch_end(epoch_end({"epoch": 3, "val_acc": 0.7}, model, last=False))  # no checkpoint: held, not written
    assert load_weights(tmp_path / "best.safetensors", create_model("simple_cnn"))["epoch"] == 1
    best.on_epoch_end(epoch_end({"epoch": 4, "val_acc": 0.6}, model))  # the checkpoint writes what was held
    assert load_weights(tmp_path / "best.safetensors", create_model("simple_cnn")) == {"epoch": 3, "val_acc": 0.7}


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
    (tmp_path / "damaged.pt").write_text("garbage")
    for name in ("evil.pt", "damaged.pt"):
        with pytest.raises(ImgclfError, match="cannot read checkpoint state") as error:
            load_state(tmp_path / name)
        assert "never loaded as code" in str(error.value) and "weights_only" not in str(error.value)


def test_progressive_resizing_ramps_to_full_size():
    from imgclf.training.phases import progressive_image_size

    sizes = [progressive_image_size(e, 10, 16, 0.5, full=32) for e in range(10)]
    assert sizes == [16, 16, 20, 24, 28, 32, 32, 32, 32, 32]
    assert all(progressive_image_size(e, 10, 0, 0.5, full=32) == 32 for e in range(10))  # no ramp: full side


def test_mixup_mixes_inputs_and_labels():
    import torch.nn.functional as F

    from imgclf.training.balance import ClassBalance
    from imgclf.training.mixup import mix_batch

    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8), torch.arange(16)  # distinct labels name each input
    mixed, partners, lam = mix_batch(x, y, 0.4)
    assert mixed.shape == x.shape and 0 < lam < 1
    assert sorted(partners.tolist()) == list(range(16)) and not torch.equal(partners, y)
    # every mixed input is lam × itself + (1 − lam) × the input its partner label names
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[partners])
    logits = torch.randn(16, 16)
    loss = ClassBalance(counts=(1,) * 16).loss_function("cpu")  # the loss of a mixed batch: both labels
    torch.testing.assert_close(loss(logits, y, 0.0, partners, 1.0), F.cross_entropy(logits, y))
    expected = 0.3 * F.cross_entropy(logits, y) + 0.7 * F.cross_entropy(logits, partners)
    torch.testing.assert_close(loss(logits, y, 0.0, partners, 0.3), expected)


def test_cutmix_pastes_a_box_of_the_partner_and_weighs_labels_by_area():
    from imgclf.training.mixup import mix_batch

    torch.manual_seed(1)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16)
    kinds = set()
    for _ in range(20):
        mixed, partners, lam = mix_batch(x, y, 0.0, 1.0)
        moved = partners != y  # an image drawn as its own partner stays as it is
        pasted = (mixed != x).any(1)[moved]  # (B', H, W): where the partner's pixels are
        assert torch.equal(pasted, pasted[:1].expand_as(pasted))  # one box, the same for the whole batch
        assert lam == pytest.approx(1 - pasted[0].float().mean().item(), abs=1e-6)
        torch.testing.assert_close(mixed[:, :, pasted[0]], x[partners][:, :, pasted[0]])
        mixed, partners, _ = mix_batch(x, y, 0.4, 1.0)  # either per batch: a blend changes every pixel
        unchanged = (mixed == x).all(1)[partners != y]
        kinds.add("cutmix" if unchanged.any() else "mixup")
    assert kinds == {"cutmix", "mixup"}
    features = torch.randn(16, 7)  # pooled features cannot take a box: mixup alone, or nothing
    assert mix_batch(features, y, 0.0, 1.0)[2] == 1.0 and mix_batch(features, y, 0.4, 1.0)[2] < 1


def test_trivial_augment_operations_match_torchvision():
    """Each operation at a given strength equals torchvision's functional op with TrivialAugmentWide's magnitude."""
    from torchvision.transforms.v2 import functional as TF

    from imgclf.data.augment import trivial_op

    images = torch.randint(0, 256, (4, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = images.float() / 255
    strength = torch.tensor([0.0, 0.3, 0.6, 1.0])
    signed = strength * torch.tensor([1.0, -1.0, 1.0, -1.0])
    cases = {
        "brightness": TF.adjust_brightness,
        "color": TF.adjust_saturation,
        "contrast": TF.adjust_contrast,
        "sharpness": TF.adjust_sharpness,
    }
    for name, reference in cases.items():
        ours = trivial_op(name, x, strength, signed)
        for i in range(4):
            expected = reference(x[i : i + 1], 1 + signed[i].item() * 0.99)
            torch.testing.assert_close(ours[i : i + 1], expected, atol=2e-6, rtol=0)
    ours = trivial_op("posterize", x, strength, signed)
    for i, bits in enumerate([8, 6, 4, 2]):  # 8 - round(6 · strength) bits
        torch.testing.assert_close((ours[i] * 255).round().to(torch.uint8), TF.posterize(images[i], bits))
    ours = trivial_op("solarize", x, strength, signed)
    for i in range(4):
        torch.testing.assert_close(ours[i], TF.solarize(x[i], 1 - strength[i].item()))
    for name, reference in (("autocontrast", TF.autocontrast), ("equalize", TF.equalize)):
        torch.testing.assert_close(trivial_op(name, x, strength, signed), reference(images).float() / 255)
    for name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):  # strength 0: unchanged
        torch.testing.assert_close(trivial_op(name, x[:1], strength[:1], signed[:1]), x[:1], atol=1e-6, rtol=0)
        assert not torch.allclose(trivial_op(name, x[3:], strength[3:], signed[3:]), x[3:])


def test_trivial_policy_gives_each_image_its_own_operation():
    from imgclf.data.augment import augment_batch

    images = torch.randint(0, 256, (64, 3, 24, 24), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    first = augment_batch(images, "trivial", torch.Generator().manual_seed(5))
    again = augment_batch(images, "trivial", torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and first.dtype == torch.float32 and first.shape == (64, 3, 24, 24)
    assert first.min() >= 0 and first.max() <= 1
    cropped = augment_batch(images, "fast", torch.Generator().manual_seed(5))  # the same crops and flips first
    changed = (first != cropped).flatten(1).any(1)
    assert 0.5 < changed.float().mean() < 1  # most images got an operation, a few identity (1 in 14)


def test_cpu_threads_follow_the_cores_other_processes_leave_free(monkeypatch):
    """CpuShare re-measures the machine's busy CPU seconds minus its own: others busy on 3 of 4 cores → 1 thread, on
    1.4 → 2 (a core counts when 3/4 of it is free), on 1.2 → 3, none → 4; a fixed count (--threads,
    OMP_NUM_THREADS) is kept whatever the load."""
    import imgclf.core.device as device

    before = torch.get_num_threads()
    clock = {"now": 0.0, "busy": 0.0, "own": 0.0}
    monkeypatch.setattr(device.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(device, "busy_seconds", lambda cores: (clock["busy"], clock["own"]))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        share = device.CpuShare(interval=2.0, first=2.0)
        share.cores = 4
        for others, own, expected in [(3.0, 1.0, 1), (1.4, 2.6, 2), (1.2, 2.8, 3), (0.0, 4.0, 4), (3.9, 0.1, 1)]:
            clock["now"] += 1.0
            share.update()  # within the interval: nothing measured
            clock["now"] += 1.0
            clock["busy"] += 2 * (others + own)  # 2 seconds of the machine's busy cores
            clock["own"] += 2 * own
            share.update()
            assert torch.get_num_threads() == expected, (others, own)
        assert share.threads_used() == sorted({before, 1, 2, 3, 4})  # recorded in each epoch's history
        assert share.threads_used() == [1]  # since then: the count it ended with
        fixed = device.CpuShare(threads=2)
        clock["now"] += 5
        clock["busy"] += 20
        fixed.update()
        assert torch.get_num_threads() == 2 and fixed.threads_used() == [2]
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun's one thread per rank
        assert device.CpuShare().fixed == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_an_empty_validation_shard_gives_zero_sums():
    """A torchrun rank may get no validation image (fewer images than ranks): its sums are zero, not a crash."""
    from imgclf.data.images import ImageSet
    from imgclf.data.loader import BatchLoader
    from imgclf.training.validation import evaluate_loader

    images = ImageSet(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), torch.arange(3), ["a", "b", "c"])
    loader = BatchLoader(images, 2, mean=(0.5,) * 3, std=(0.5,) * 3, channels_last=False)
    loader.set_shard(3, 4, even=False)
    assert len(loader) == 0
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3))
    zeros = {"loss": 0.0, "acc": 0.0, "balanced_acc": 0.0}
    assert evaluate_loader(model, loader, torch.device("cpu"), "fp32", 3) == zeros


def test_busy_seconds_counts_only_the_cores_this_process_may_use():
    import imgclf.core.device as device

    every = device.busy_seconds(device.usable_cores())
    if every is None:
        pytest.skip("no /proc/stat here")
    none = device.busy_seconds(set())
    assert none[0] == 0 and every[0] > 0 and every[1] >= 0


def test_cpu_name_gives_the_generation_a_virtual_machine_hides(tmp_path):
    from imgclf.core.device import cpu_name

    info = tmp_path / "cpuinfo"
    processor = "processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
    info.write_text(processor.format(0) + "\n" + processor.format(1).replace("EPYC", "other"))
    assert cpu_name(info) == "AMD EPYC (family 25, model 17)"  # the first processor's
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\n")  # no family (not x86)
    assert cpu_name(info) == "Some CPU"
    assert cpu_name(tmp_path / "absent")  # a name still, from the platform


def test_freed_memory_is_kept_for_reuse_on_linux(monkeypatch):
    """glibc's malloc takes the setting on Linux; IMGCLF_REUSE_MEMORY=0 leaves the allocator's defaults."""
    import sys

    import imgclf.core.device as device

    monkeypatch.setenv("IMGCLF_REUSE_MEMORY", "0")
    assert device.reuse_freed_memory() is False
    monkeypatch.setenv("IMGCLF_REUSE_MEMORY", "1")
    assert device.reuse_freed_memory() is sys.platform.startswith("linux")
