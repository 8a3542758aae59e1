"""Folders of images: layouts, messy and bad files, the split, the preparation cache, and a run on a folder."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from folders import BAD_FILES, make_folder, make_split_folder, write_images
from PIL import Image

from imgclf.cli import main
from imgclf.core.errors import ImgclfError
from imgclf.data import images as datasets
from imgclf.data.decode import decode_file
from imgclf.data.folder import scan_folder
from imgclf.data.loader import BatchLoader
from imgclf.data.prepare import prepare
from imgclf.data.sources import load_splits

CLASSES = ["cat", "dog", "zebra"]


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """DIR/<class>/… with 8 good images per class, one of each bad file in cat/ and messy modes in dog/."""
    return make_folder(tmp_path_factory.mktemp("data") / "pets", CLASSES, 8, bad=True)


def splits_of(folder, prepare_dir, **options):
    defaults = dict(seed=0, val_fraction=0.2, test_fraction=0.2, prepare_dir=str(prepare_dir), progress=False)
    return load_splits(str(folder), **{**defaults, **options})


def test_preparation_skips_exactly_the_bad_files_with_their_reasons(messy, tmp_path, capsys):
    splits = splits_of(messy, tmp_path)
    skipped = {s["file"]: s["reason"] for s in splits.info["skipped"]}
    assert set(skipped) == {f"cat/{name}" for name in BAD_FILES}
    for name, reason in BAD_FILES.items():
        assert skipped[f"cat/{name}"].startswith(reason), (name, skipped[f"cat/{name}"])
    assert splits.info["ignored_files"] == 1  # notes.txt has no image extension; .DS_Store is hidden, not counted
    readable = 3 * 8 + 6  # the messy images of dog/ all decode
    assert splits.info["files"] - len(BAD_FILES) == readable
    assert len(splits.train) + len(splits.val) + len(splits.test()) == readable
    assert splits.classes == CLASSES and splits.name == "pets"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"skipped {len(BAD_FILES)} of" in err[0] and "1 truncated" in err[0]


def test_modes_become_rgb_and_exif_orientation_is_applied(tmp_path):
    picture = Image.new("RGB", (40, 20), (255, 0, 0))
    picture.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: red on top
    picture.save(tmp_path / "r.jpg", exif=exif, quality=95)
    image, _, reason = decode_file(tmp_path / "r.jpg", 32, "stretch")
    assert reason == "" and image.shape == (3, 32, 32)
    assert image[0, 4, 16] > 200 and image[2, 4, 16] < 60  # top: red
    assert image[2, 28, 16] > 200 and image[0, 28, 16] < 60  # bottom: blue
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "white16.png")
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    for name in ("white16.png", "clear.png"):  # full-scale 16-bit, and transparency on white
        assert decode_file(tmp_path / name, 8, "crop")[0].min() == 255, name


def test_a_thin_strip_is_cropped_without_a_huge_intermediate(tmp_path):
    Image.new("RGB", (1, 30_000), (9, 9, 9)).save(tmp_path / "strip.png")
    image, _, reason = decode_file(tmp_path / "strip.png", 224, "crop")
    assert reason == "" and image.shape == (3, 224, 224) and image.max() == 9


@pytest.mark.parametrize("policy, corner", [("crop", 200), ("pad", 0), ("stretch", 200)])
def test_resize_policies(tmp_path, policy, corner):
    Image.new("RGB", (90, 30), (200, 200, 200)).save(tmp_path / "wide.png")
    image = decode_file(tmp_path / "wide.png", 30, policy)[0]
    assert image.shape == (3, 30, 30) and image[0, 0, 0] == corner and image[0, 15, 15] == 200


def test_both_layouts_and_missing_classes(tmp_path):
    one = scan_folder(make_folder(tmp_path / "one", CLASSES, 3))
    assert one.layout == "classes" and one.classes == CLASSES and len(one.files["all"]) == 9
    split = make_split_folder(tmp_path / "two", CLASSES, {"train": 6, "valid": 2, "test": 2})
    scan = scan_folder(split)
    assert scan.layout == "splits" and set(scan.files) == {"train", "val", "test"}
    splits = splits_of(split, tmp_path / "prep")
    assert (len(splits.train), len(splits.val), len(splits.test())) == (18, 6, 6)  # used as given
    assert all(f.startswith("test/") for f in splits.lists["test"])
    no_val = make_split_folder(tmp_path / "three", CLASSES, {"train": 10, "test": 2})
    splits = splits_of(no_val, tmp_path / "prep", val_fraction=0.2)
    assert len(splits.val) == 6 and all(f.startswith("train/") for f in splits.lists["val"])
    for folder in split.glob("test/zebra/*"):
        folder.unlink()
    (split / "test" / "zebra").rmdir()
    with pytest.raises(ImgclfError, match="class 'zebra' of train/ is missing from test/"):
        scan_folder(split)


def test_layouts_that_would_train_the_wrong_task_are_refused(tmp_path):
    kaggle = make_split_folder(tmp_path / "kaggle", CLASSES, {"Training_Set": 4, "Test_Set": 2})
    scan = scan_folder(kaggle)
    assert scan.layout == "splits" and scan.classes == CLASSES and set(scan.files) == {"train", "test"}
    extra = make_split_folder(tmp_path / "extra", CLASSES, {"train": 4, "unlabeled": 2})
    with pytest.raises(ImgclfError, match="'unlabeled', which is no split folder"):
        scan_folder(extra)
    wrapper = make_folder(tmp_path / "wrapper" / "dataset", CLASSES, 3).parent
    with pytest.raises(ImgclfError, match=r"one class folder, 'dataset'.*point --data at it"):
        scan_folder(wrapper)
    both = make_split_folder(tmp_path / "both", CLASSES, {"train": 4, "val": 2, "valid": 2})
    with pytest.raises(ImgclfError, match="keep one val folder"):
        scan_folder(both)


def test_split_is_stratified_reproducible_and_seeded(tmp_path):
    folder = make_folder(tmp_path / "d", CLASSES, 20)
    a = splits_of(folder, tmp_path / "p", val_fraction=0.1, test_fraction=0.1)
    b = splits_of(folder, tmp_path / "p", val_fraction=0.1, test_fraction=0.1)
    c = splits_of(folder, tmp_path / "p", val_fraction=0.1, test_fraction=0.1, seed=1)
    assert a.lists == b.lists and a.lists["val"] != c.lists["val"]
    assert a.lists["test"] == c.lists["test"]  # like CIFAR's, the test set does not change with the seed
    assert torch.bincount(a.test().labels).tolist() == [2, 2, 2]
    assert torch.bincount(a.val.labels).tolist() == [2, 2, 2]
    assert not set(a.lists["train"]) & set(a.lists["test"]) and not set(a.lists["val"]) & set(a.lists["test"])
    with pytest.raises(ImgclfError, match="one image per class"):
        splits_of(folder, tmp_path / "p", test_fraction=0.02)


def test_preparation_is_cached_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "d", CLASSES, 6)
    first = splits_of(folder, tmp_path / "p")
    assert len(list((tmp_path / "p").iterdir())) == 1
    calls = []
    monkeypatch.setattr("imgclf.data.prepare.decode_all", lambda *a, **k: calls.append(a) or [])
    again = splits_of(folder, tmp_path / "p")  # no decoding: served from the cache
    assert not calls and again.fingerprint == first.fingerprint
    assert torch.equal(again.train.images[:], first.train.images[:])
    assert again.val.images[np.array([], dtype=np.int64)].shape == (0, *again.val.images.shape[1:])  # no mistakes
    monkeypatch.undo()
    Image.new("RGB", (40, 40), (0, 0, 0)).save(folder / "cat" / "000.png")  # a file changes
    changed = splits_of(folder, tmp_path / "p")
    assert changed.fingerprint != first.fingerprint and len(list((tmp_path / "p").iterdir())) == 2
    split = next(s for s, names in changed.lists.items() if "cat/000.png" in names)
    images = {"train": changed.train, "val": changed.val, "test": changed.test()}[split]
    assert images.images[torch.tensor([changed.lists[split].index("cat/000.png")])].max() == 0  # the new content


def test_worker_processes_prepare_the_same_array(tmp_path):
    folder = tmp_path / "many"
    rng = np.random.default_rng(0)
    for index, name in enumerate(["a", "b"]):
        write_images(folder / name, index, 300, rng)
    files = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*.*"))]
    one = prepare(folder, files, 16, "crop", tmp_path / "p1", workers=1, progress=False)
    two = prepare(folder, files, 16, "crop", tmp_path / "p2", workers=2, progress=False)
    assert np.array_equal(one.array, two.array) and one.digests == two.digests and not any(two.reasons)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: (root / "cat").mkdir(parents=True), "class folder .*cat has no image files"),
        (lambda root: make_folder(root, ["a", "b"], 1), "class 'a' has 1 readable images"),
        (lambda root: [p.write_text("no") for p in make_folder(root, ["a", "b"], 1).rglob("*.*")], "no readable"),
        (lambda root: root.mkdir(), "no class folders"),
    ],
    ids=["empty-class", "one-image", "nothing-readable", "no-classes"],
)
def test_folders_that_cannot_train_are_one_line_errors(tmp_path, make, message):
    make(tmp_path / "d")
    with pytest.raises(ImgclfError, match=message):
        splits_of(tmp_path / "d", tmp_path / "p")


def test_identical_files_in_two_splits_are_reported(tmp_path, capsys):
    folder = make_split_folder(tmp_path / "d", CLASSES, {"train": 4, "test": 2})
    (folder / "test" / "cat" / "copy.png").write_bytes((folder / "train" / "cat" / "train-000.png").read_bytes())
    splits = splits_of(folder, tmp_path / "p")
    leaks = splits.info["duplicates_across_splits"]
    assert len(leaks) == 1 and leaks[0]["files"]["test"] == ["test/cat/copy.png"]
    assert "identical files appear in more than one split" in capsys.readouterr().err


def test_mapped_batches_equal_in_memory_batches(tmp_path):
    splits = splits_of(make_folder(tmp_path / "d", CLASSES, 10), tmp_path / "p")
    in_memory = datasets.ImageSet(splits.train.images[:], splits.train.labels, splits.classes)
    options = dict(batch_size=8, mean=splits.mean, std=splits.std, augment="fast", shuffle=True, seed=3)
    for (a, la), (b, lb) in zip(BatchLoader(splits.train, **options), BatchLoader(in_memory, **options), strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_train_evaluate_compare_on_a_folder(messy, tmp_path, monkeypatch):
    """The whole path on a folder: the split saved in the run and reused by evaluate, test split read once,
    class names in the metrics, a model card, the skipped files listed; then resume and compare."""
    reads = []
    original = datasets.Splits.test
    monkeypatch.setattr(datasets.Splits, "test", lambda self: reads.append(1) or original(self))
    common = ["--data", str(messy), "--prepare-dir", str(tmp_path / "p"), "--output", str(tmp_path / "runs")]
    common += ["--batch-size", "8", "--no-progress", "--no-tensorboard", "--val-fraction", "0.2"]
    assert main(["train", "--model", "simple_cnn", "--name", "s", "--epochs", "2", "--no-evaluate", *common]) == 0
    run = tmp_path / "runs" / "s"
    assert not reads
    split = json.loads((run / "split.json").read_text())
    assert main(["evaluate", str(run)]) == 0 and len(reads) == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_images"] == len(split["test"]) and metrics["dataset"] == "pets"
    assert list(metrics["per_class"]) == CLASSES == metrics["classes"]
    card = json.loads((run / "model.json").read_text())
    assert card["classes"] == CLASSES and card["num_classes"] == 3 and card["input_size"] == 32
    assert {s["file"] for s in json.loads((run / "skipped.json").read_text())} == {f"cat/{n}" for n in BAD_FILES}

    args = ["train", "--model", "resnet20", "--name", "r", "--epochs", "3", "--data-size", "48", *common]
    cut = {"n": 0}
    original_iter = BatchLoader.__iter__

    def interrupting(self):
        for batch in original_iter(self):
            if self.shuffle:
                cut["n"] += 1
                if cut["n"] == 5:
                    raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(BatchLoader, "__iter__", interrupting)
    assert main(args) == 130
    monkeypatch.setattr(BatchLoader, "__iter__", original_iter)
    assert main(["train", "--resume", str(tmp_path / "runs" / "r"), "--no-progress"]) == 0
    history = [json.loads(line) for line in (tmp_path / "runs" / "r" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert json.loads((tmp_path / "runs" / "r" / "model.json").read_text())["input_size"] == 48
    out = tmp_path / "cmp"
    assert main(["compare", str(run), str(tmp_path / "runs" / "r"), "--output", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "Model comparison on pets" in page and str(tmp_path) not in page
    assert "zebra" in (run / "report.html").read_text()
    moved = tmp_path / "moved"
    shutil.copytree(messy, moved)
    assert main(["evaluate", str(run), "--data", str(moved)]) == 0  # a moved folder: the split names files in it
    assert json.loads((run / "metrics.json").read_text())["test_images"] == len(split["test"])


def cifar100_miniature(root, monkeypatch):
    """A cifar-100-python folder in the official format with 40 training and 10 test images of 2 classes."""
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.utils import calculate_md5

    folder = root / CIFAR100.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", 40), ("test", 10)):
        labels = [i % 2 for i in range(n)]
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {"data": data, "fine_labels": labels, "coarse_labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": ["apple", "aquarium_fish"]}))
    md5 = {name: calculate_md5(str(folder / name)) for name in ("train", "test", "meta")}
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5["meta"]})
    return root


def test_cifar100_adapter_on_a_miniature_file(tmp_path, monkeypatch):
    root = cifar100_miniature(tmp_path, monkeypatch)
    splits = load_splits("cifar100", seed=0, val_fraction=0.25, data_dir=str(root))
    assert splits.name == "CIFAR-100" and splits.classes == ["apple", "aquarium_fish"]
    assert (len(splits.train), len(splits.val), len(splits.test())) == (30, 10, 10)
    assert splits.train.images.shape[1:] == (3, 32, 32) and splits.side == 32


def test_odd_entries_neither_hang_nor_crash(tmp_path):
    """A symlink loop, a pipe named like an image, a folder named like an image, a file name that is not UTF-8."""
    import os

    folder = make_folder(tmp_path / "d", CLASSES, 6)
    (folder / "cat" / "loop").symlink_to(folder / "cat")
    os.mkfifo(folder / "cat" / "pipe.jpg")
    (folder / "dog" / "folder.png").mkdir()
    Image.new("RGB", (30, 30), (1, 2, 3)).save(folder / "dog" / "in.png")
    (folder / "dog" / "in.png").rename(os.fsdecode(bytes(folder / "dog") + b"/caf\xe9.png"))
    splits = splits_of(folder, tmp_path / "p")
    files = splits.lists["train"] + splits.lists["val"] + splits.lists["test"]
    assert len(files) == 19 and not any("pipe" in f or "loop" in f for f in files)
    assert any(f.startswith("dog/caf") for f in files)
    (folder / "zebra").rename(os.fsdecode(bytes(folder) + b"/zebr\xe9"))
    with pytest.raises(ImgclfError, match="not valid UTF-8"):
        splits_of(folder, tmp_path / "p")


def test_links_that_would_relabel_images_are_skipped_and_a_link_farm_is_read(tmp_path, capsys):
    """cat/loop → .. would pull every class into cat; cat/stray.png → dog/… would label a dog 'cat': both skipped
    with a reason. Links to images outside the dataset (a farm of links to a central store) are read."""
    folder = make_folder(tmp_path / "d", CLASSES, 6)
    (folder / "cat" / "loop").symlink_to("..")
    (folder / "cat" / "up").symlink_to(tmp_path)
    dog = sorted((folder / "dog").iterdir())[0]
    (folder / "cat" / "stray.png").symlink_to(dog)
    store = write_images(tmp_path / "store", 2, 2, np.random.default_rng(1))
    for path in store:
        (folder / "zebra" / f"farm-{path.name}").symlink_to(path)
    splits = splits_of(folder, tmp_path / "p")
    files = [f for names in splits.lists.values() for f in names]
    assert len(files) == 3 * 6 + 2 and sum(f.startswith("zebra/farm-") for f in files) == 2
    skipped = {s["file"]: s["reason"] for s in splits.info["skipped"]}
    assert skipped == {
        "cat/loop": f"link leads back up (to {folder.resolve()})",
        "cat/up": f"link leads back up (to {tmp_path.resolve()})",
        "cat/stray.png": f"link leads outside its class folder (to dog/{dog.name})",
    }
    assert "(2 link leads back up, 1 link leads outside its class folder)" in capsys.readouterr().err


def test_a_class_missing_from_a_split_folder_is_named(tmp_path):
    folder = make_split_folder(tmp_path / "d", CLASSES[:2], {"train": 4, "test": 2})
    shutil.rmtree(folder / "test" / "dog")
    with pytest.raises(ImgclfError, match="class 'dog' of train/ is missing from test/"):
        scan_folder(folder)


def test_image_extensions_are_torchvisions_and_gif():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from imgclf.data.folder import IMAGE_EXTENSIONS

    assert (*IMG_EXTENSIONS, ".gif") == IMAGE_EXTENSIONS
