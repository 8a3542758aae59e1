import shutil

import numpy as np
import pytest
import torch

from imgclf.core.errors import ImgclfError
from imgclf.data.cifar import load_cifar10
from imgclf.data.images import stratified_split


def test_cifar10_loads_as_uint8_tensors(cifar_train):
    assert cifar_train.images.shape == (50_000, 3, 32, 32)
    assert cifar_train.images.dtype == torch.uint8
    assert torch.bincount(cifar_train.labels).tolist() == [5000] * 10
    assert cifar_train.classes[0] == "airplane" and len(cifar_train.classes) == 10


@pytest.mark.parametrize("fraction, n_val", [(0.1, 5000), (0.2, 10_000)])
def test_split_is_stratified_and_disjoint(cifar_train, fraction, n_val):
    train_idx, val_idx = stratified_split(cifar_train.labels, fraction, seed=0)
    assert len(val_idx) == n_val and len(train_idx) == 50_000 - n_val
    assert not set(train_idx) & set(val_idx)
    assert torch.bincount(cifar_train.labels[val_idx]).tolist() == [n_val // 10] * 10


def test_split_is_deterministic_per_seed(cifar_train):
    a = stratified_split(cifar_train.labels, 0.1, seed=1)[1]
    b = stratified_split(cifar_train.labels, 0.1, seed=1)[1]
    c = stratified_split(cifar_train.labels, 0.1, seed=2)[1]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_missing_data_dir_is_one_clear_error(tmp_path):
    with pytest.raises(ImgclfError, match=r"data dir not found: .*nowhere"):
        load_cifar10("train", tmp_path / "nowhere")
    with pytest.raises(ImgclfError, match="CIFAR-10 not found"):
        load_cifar10("train", tmp_path)


def copy_with(data_dir, tmp_path, name: str, content: bytes | None):
    """A copy of the dataset folder (links to the real files) where ``name`` is replaced or removed."""
    src = data_dir / "cifar-10-batches-py"
    dst = tmp_path / "cifar-10-batches-py"
    dst.mkdir()
    for f in src.iterdir():
        if f.name != name:
            (dst / f.name).symlink_to(f)
    if content is not None:
        (dst / name).write_bytes(content)
    return tmp_path


def test_corrupt_batch_file_is_named(data_dir, tmp_path):
    good = (data_dir / "cifar-10-batches-py" / "data_batch_3").read_bytes()
    root = copy_with(data_dir, tmp_path, "data_batch_3", good[: len(good) // 2])
    with pytest.raises(ImgclfError, match=r"corrupt.*data_batch_3"):
        load_cifar10("train", root)


def test_missing_batch_file_is_named(data_dir, tmp_path):
    root = copy_with(data_dir, tmp_path, "test_batch", None)
    with pytest.raises(ImgclfError, match=r"missing.*test_batch"):
        load_cifar10("test", root)


def test_data_dir_may_be_the_batches_folder_itself(data_dir):
    test = load_cifar10("test", data_dir / "cifar-10-batches-py")
    assert len(test) == 10_000


def test_environment_variable_selects_data_dir(data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("IMGCLF_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(ImgclfError, match="elsewhere"):
        load_cifar10("test")
    monkeypatch.setenv("IMGCLF_DATA_DIR", str(data_dir))
    assert len(load_cifar10("test")) == 10_000


def test_shared_copy_is_not_modified(data_dir, tmp_path):
    shutil.copy(data_dir / "cifar-10-batches-py" / "batches.meta", tmp_path / "m")
    assert (tmp_path / "m").read_bytes() == (data_dir / "cifar-10-batches-py" / "batches.meta").read_bytes()


def test_ranks_share_out_each_epoch_like_one_batch_of_the_global_size():
    """Under torchrun, step i of rank 0 and rank 1 (batch 4 each) holds exactly the samples step i of one process
    takes with batch 8, in every epoch; the ranks' samples never overlap; a rank's augmentation is its own."""
    from imgclf.data.images import ImageSet
    from imgclf.data.loader import ActivationLoader, BatchLoader

    n = 103
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8)
    data = ImageSet(images, torch.arange(n), [str(i) for i in range(n)])  # labels name the samples
    common = dict(mean=(0.5,) * 3, std=(0.5,) * 3, shuffle=True, drop_last=True, seed=3, channels_last=False)
    single = BatchLoader(data, 8, augment="none", **common)
    ranks = [BatchLoader(data, 4, augment="none", **common) for _ in range(2)]
    for rank, loader in enumerate(ranks):
        loader.set_shard(rank, 2)
    for epoch in (0, 1):
        for loader in (single, *ranks):
            loader.set_epoch(epoch)
        assert len(single) == len(ranks[0]) == len(ranks[1]) == n // 8
        taken = []
        for (x, y), (x0, y0), (x1, y1) in zip(single, *ranks, strict=True):
            assert sorted(torch.cat([y0, y1]).tolist()) == sorted(y.tolist())
            assert torch.equal(torch.cat([x0, x1])[torch.cat([y0, y1]).argsort()], x[y.argsort()])
            taken += [*y0.tolist(), *y1.tolist()]
        assert len(taken) == len(set(taken)) == n // 8 * 8
    augmented = [BatchLoader(data, 4, augment="fast", **common) for _ in range(2)]
    for rank, loader in enumerate(augmented):
        loader.set_shard(rank, 2)
    seeds = [loader.rank_generator(loader.generator()).initial_seed() for loader in augmented]
    assert seeds[0] != seeds[1] and all(next(iter(loader))[0].shape == (4, 3, 8, 8) for loader in augmented)

    acts = torch.randn(n, 5)
    shards = [ActivationLoader(acts, torch.arange(n), 10, shuffle=True, seed=1) for _ in range(3)]
    for rank, loader in enumerate(shards):
        loader.set_shard(rank, 3)
    labels = [torch.cat([y for _, y in loader]).tolist() for loader in shards]
    assert all(len(part) == n // 3 for part in labels) and len({i for part in labels for i in part}) == 3 * (n // 3)
    for rank, loader in enumerate(shards):  # validation: uneven shards that cover every sample once
        loader.set_shard(rank, 3, even=False)
    labels = [torch.cat([y for _, y in loader]).tolist() for loader in shards]
    assert sorted(i for part in labels for i in part) == list(range(n)) and n % 3
    with pytest.raises(ValueError, match="outside a world"):
        shards[0].set_shard(3, 3)
