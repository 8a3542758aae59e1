import shutil

import numpy as np
import pytest
import torch

from imgclf.data.cifar import load_cifar10
from imgclf.data.datasets import stratified_split
from imgclf.errors import ImgclfError


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
