import pytest
import torch

from imgclf.config.options import TrainConfig
from imgclf.core.errors import ImgclfError
from imgclf.data.augment import augment_batch, cutout, random_crop
from imgclf.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from imgclf.data.loader import ActivationLoader, BatchLoader


@pytest.fixture
def same_image_batch(cifar_train):
    return cifar_train.images[7:8].repeat(32, 1, 1, 1)


@pytest.mark.parametrize("kind", ["fast", "reference", "none"])
def test_augmentation_keeps_shape_and_range(same_image_batch, kind):
    out = augment_batch(same_image_batch, kind, torch.Generator().manual_seed(0))
    assert out.shape == same_image_batch.shape
    assert out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("kind", ["fast", "reference"])
def test_augmentation_differs_per_sample(same_image_batch, kind):
    out = augment_batch(same_image_batch, kind, torch.Generator().manual_seed(0))
    distinct = {tuple(x.flatten()[::7].tolist()) for x in out}
    assert len(distinct) >= 16  # 32 copies of one image come out (almost) all different


def test_augmentation_is_reproducible_from_the_seed(same_image_batch):
    a = augment_batch(same_image_batch, "reference", torch.Generator().manual_seed(3))
    b = augment_batch(same_image_batch, "reference", torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_no_augmentation_is_identity(same_image_batch):
    out = augment_batch(same_image_batch, "none", torch.Generator())
    assert torch.equal(out, same_image_batch.float() / 255)


def test_crop_is_a_shifted_window_of_the_padded_image():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).reshape(2, 3, 8, 8)
    out = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    # the centre 4x4 of every crop is a contiguous window of the original image (shift at most 2)
    for b in range(2):
        found = any(
            torch.equal(out[b, :, 2:6, 2:6], images[b, :, 2 + dy : 6 + dy, 2 + dx : 6 + dx])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )
        assert found


def test_cutout_zeroes_a_square():
    images = torch.ones(4, 3, 32, 32)
    out = cutout(images, 8, torch.Generator().manual_seed(0))
    zeros = (out[:, 0] == 0).sum(dim=(1, 2))
    assert ((zeros > 0) & (zeros <= 81)).all()


def test_loader_normalises_and_reshuffles_per_epoch(cifar_train):
    data = cifar_train.subset(torch.arange(1000))
    loader = BatchLoader(data, 250, CIFAR10_MEAN, CIFAR10_STD, augment="fast", shuffle=True, seed=0)
    loader.set_epoch(0)
    first = [y for _, y in loader]
    again = [y for _, y in loader]
    loader.set_epoch(1)
    other = [y for _, y in loader]
    assert len(first) == 4 and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    images, _ = next(iter(BatchLoader(data, 1000, CIFAR10_MEAN, CIFAR10_STD)))
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert abs(images.mean().item()) < 0.15 and abs(images.std().item() - 1) < 0.15


def test_loader_resizes_for_progressive_training(cifar_train):
    loader = BatchLoader(cifar_train.subset(torch.arange(64)), 64, CIFAR10_MEAN, CIFAR10_STD, augment="fast")
    loader.image_size = 24
    images, labels = next(iter(loader))
    assert images.shape == (64, 3, 24, 24) and labels.shape == (64,)


def test_activation_loader_shifts_cached_maps_per_sample_and_epoch():
    maps = torch.randn(64, 8, 6, 6).to(torch.bfloat16)
    loader = ActivationLoader(maps, torch.arange(64), 64, shift=1, seed=0)
    (shifted, labels), again = next(iter(loader)), next(iter(loader))[0]
    assert shifted.shape == maps.shape and shifted.dtype == torch.float32 and torch.equal(shifted, again)
    assert shifted.is_contiguous(memory_format=torch.channels_last)
    offsets = []
    for b in range(64):  # the centre 4x4 of every map is its original's window at an offset of at most 1
        original = maps[labels[b]].float()
        offsets += [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(shifted[b, :, 1:5, 1:5], original[:, 1 + dy : 5 + dy, 1 + dx : 5 + dx])
        ][:1]
    assert len(offsets) == 64 and len(set(offsets)) == 9  # every sample found; all nine offsets occur
    loader.set_epoch(1)
    assert not torch.equal(next(iter(loader))[0], shifted)
    plain = next(iter(ActivationLoader(maps, torch.arange(64), 64)))[0]
    assert torch.equal(plain, maps.float())
    with pytest.raises(ImgclfError, match="feature_shift 6"):
        ActivationLoader(maps, torch.arange(64), 64, shift=6)
    with pytest.raises(ImgclfError, match="applies to timm models"):
        TrainConfig(model="resnet20", feature_shift=1).validate()
